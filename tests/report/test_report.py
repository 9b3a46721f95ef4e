import json

import pytest

from ssp.cli import main as cli
from ssp.errors import SSPError
from ssp.paper import TABLE2
from ssp.report.report import build_report, row_numbers


def result(s4, ms3, avss, scenarios=None):
    return {
        "binary": {"v1s": {"miou": s4, "fscore": s4 + 0.01}, "v1m": {"miou": ms3, "fscore": ms3 + 0.01}},
        "semantic": {"all": {"miou": avss, "fscore": avss + 0.02}},
        "per_scenario": scenarios or {},
    }


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def cell(metrics, row, seed=0):
    """Where the ablation matrix writes a cell's test metrics."""
    return metrics / "ablation" / row / f"seed{seed}.json"


def test_row_numbers_are_percent_in_paper_column_order():
    assert row_numbers(result(0.5, 0.25, 0.125)) == pytest.approx((50, 51, 25, 26, 12.5, 14.5))
    assert row_numbers({}) == (None,) * 6


def test_report_tables_plots_and_cli(tmp_path, capsys):
    metrics = tmp_path / "metrics"
    for i, row in enumerate(TABLE2):
        write(cell(metrics, row), result(0.5, 0.4, 0.10 + i / 100))
    for lam, m in [(1, 0.12), (10, 0.16), (50, 0.11)]:
        write(metrics / "sweep" / f"lambda_{lam}.json", result(0.5, 0.4, m))
    write(
        metrics / "stage2.json",
        result(0.5, 0.4, 0.16, {"still_sounding": {"miou": 0.2, "fscore": 0.3, "miou_present": 0.5, "frames": 40}}),
    )
    path, text = build_report(metrics, tmp_path / "reports")
    assert path.read_text() == text
    assert "| AAVS [29] | 50.0 | 51.0 | 40.0 | 41.0 | 10.0 | 12.0 | 83.2 | 91.3 | 67.3 | 77.6 | 48.5 | 53.2 |" in text
    assert "| Full model | 50.0 | 51.0 | 40.0 | 41.0 | 16.0 | 18.0 | 85.4 |" in text
    assert "| 10 | 16.0 | 18.0 |" in text and text.index("| 1 |") < text.index("| 10 |") < text.index("| 50 |")
    assert "| still_sounding | 40 | 20.0 | 30.0 | 50.0 |" in text
    assert (tmp_path / "reports" / "lambda_sweep.png").stat().st_size > 1000
    assert (tmp_path / "reports" / "ablation.png").stat().st_size > 1000

    assert cli(["report", "--metrics", str(metrics), "--out", str(tmp_path / "r2")]) == 0
    assert "Full model" in capsys.readouterr().out


def test_several_seeds_show_mean_and_sample_std(tmp_path):
    metrics = tmp_path / "metrics"
    for seed, avss in ((0, 0.10), (1, 0.12), (2, 0.14)):
        write(cell(metrics, "full", seed), result(0.5, 0.4, avss))
    write(cell(metrics, "aavs", 3), result(0.5, 0.4, 0.08))  # a single seed, whichever it is
    write(metrics / "ablation" / "full" / "notes.json", {"not": "a seed"})
    _, text = build_report(metrics, tmp_path / "reports")
    assert (
        "| Full model | 50.0 ± 0.0 | 51.0 ± 0.0 | 40.0 ± 0.0 | 41.0 ± 0.0 | 12.0 ± 2.0 | 14.0 ± 2.0 | 85.4 |"
    ) in text
    assert "| AAVS [29] | 50.0 | 51.0 | 40.0 | 41.0 | 8.0 | 10.0 | 83.2 |" in text
    assert "seeds per row: aavs 1, full 3" in text


def test_missing_rows_show_dashes_and_missing_folder_is_an_error(tmp_path):
    write(cell(tmp_path / "m", "aavs"), result(0.5, 0.4, 0.1))
    _, text = build_report(tmp_path / "m", tmp_path / "r")
    assert "| Full model | – | – | – | – | – | – | 85.4 |" in text
    assert "no sweep metrics yet" in text
    with pytest.raises(SSPError, match="no metrics folder"):
        build_report(tmp_path / "absent", tmp_path / "r")


def test_sample_grid_is_linked_relative_to_the_report_when_it_exists(tmp_path):
    write(cell(tmp_path / "m", "aavs"), result(0.5, 0.4, 0.1))
    grid = tmp_path / "reports" / "samples" / "ablation_grid.png"
    _, text = build_report(tmp_path / "m", tmp_path / "reports", samples=grid)
    assert "no sample grid yet" in text and "![ablation samples]" not in text
    grid.parent.mkdir(parents=True)
    grid.write_bytes(b"\x89PNG\r\n\x1a\n")
    _, text = build_report(tmp_path / "m", tmp_path / "reports", samples=grid)
    assert "![ablation samples](samples/ablation_grid.png)" in text
    assert text.index("## Ablation") < text.index("![ablation samples]") < text.index("## λ'_mask sweep")
    assert cli(["report", "--metrics", str(tmp_path / "m"), "--out", str(tmp_path / "r"), "--samples", str(grid)]) == 0
    assert "![ablation samples](../reports/samples/ablation_grid.png)" in (tmp_path / "r" / "report.md").read_text()

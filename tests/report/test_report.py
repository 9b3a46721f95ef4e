import io
import json

import numpy as np
import pytest
from PIL import Image

from ssp.cli import main as cli
from ssp.errors import SSPError
from ssp.paper import COLUMNS, TABLE2
from ssp.report.report import PLOT_DPI, ablation_figure, ablation_table, build_report, row_numbers, sweep_figure


def result(s4, ms3, avss, scenarios=None):
    return {
        "binary": {"v1s": {"miou": s4, "fscore": s4 + 0.01}, "v1m": {"miou": ms3, "fscore": ms3 + 0.01}},
        "semantic": {"all": {"miou": avss, "fscore": avss + 0.02}},
        "per_scenario": scenarios or {},
    }


def stage1_result(s4, ms3):
    """What `ssp train --stage 1 --test-out` writes: binary numbers per subset, no semantic."""
    return {
        "stage": 1,
        "binary": {"v1s": {"miou": s4, "fscore": s4 + 0.01}, "v1m": {"miou": ms3, "fscore": ms3 + 0.01}},
    }


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def cell(metrics, row, seed=0):
    """Where the `ablation` matrix writes a stage-2 cell's test metrics (AVSS columns)."""
    return metrics / "ablation" / row / f"seed{seed}.json"


def avs_cell(metrics, row, seed=0):
    """Where the `ablation_avs` matrix writes a stage-1 cell's test metrics (S4/MS3 columns)."""
    return metrics / "ablation_avs" / row / f"seed{seed}.json"


def table_rows(text: str, heading: str) -> dict[str, list[str]]:
    """label -> the cells of that label's line in the table under ``heading``."""
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and "---" not in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_row_numbers_are_percent_in_paper_column_order():
    assert row_numbers(result(0.5, 0.25, 0.125)) == pytest.approx((50, 51, 25, 26, 12.5, 14.5))
    assert row_numbers({}) == (None,) * 6


def test_report_tables_plots_and_cli(tmp_path, capsys):
    metrics = tmp_path / "metrics"
    for i, row in enumerate(TABLE2):
        # the stage-2 file's own binary numbers (its foreground) must not reach S4/MS3
        write(cell(metrics, row), result(0.99, 0.99, 0.10 + i / 100))
        write(avs_cell(metrics, row), stage1_result(0.50 + i / 100, 0.30 + i / 100))
    for lam, m in [(1, 0.12), (10, 0.16), (50, 0.11)]:
        write(metrics / "sweep" / f"lambda_{lam}.json", result(0.5, 0.4, m))
    write(
        metrics / "stage2.json",
        result(0.5, 0.4, 0.16, {"still_sounding": {"miou": 0.2, "fscore": 0.3, "miou_present": 0.5, "frames": 40}}),
    )
    path, text = build_report(metrics, tmp_path / "reports")
    assert path.read_text() == text
    table2 = table_rows(text, "## Ablation (paper Table 2)")
    header = table2["component"]
    assert header[:6] == [f"{c} (ours)" for c in COLUMNS] and header[6:] == [f"{c} (paper)" for c in COLUMNS]
    assert table2["AAVS [29]"] == "50.0 51.0 30.0 31.0 10.0 12.0 83.2 91.3 67.3 77.6 48.5 53.2".split()
    assert table2["Full model"] == "56.0 57.0 36.0 37.0 16.0 18.0 85.4 93.3 72.3 84.6 50.1 54.5".split()
    assert table2["w. Pre-mask"][:6] == "51.0 52.0 31.0 32.0 11.0 13.0".split()
    table1 = table_rows(text, "## AAVS vs SSP (paper Table 1)")
    assert list(table1) == ["method", "AAVS [29]", "SSP"]
    assert table1["AAVS [29]"] == table2["AAVS [29]"] and table1["SSP"] == table2["Full model"]
    assert "Missing runs" not in text and "99.0" not in text
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
    for seed, s4 in ((0, 0.60), (1, 0.64)):  # fewer stage-1 seeds than stage-2 ones
        write(avs_cell(metrics, "full", seed), stage1_result(s4, 0.4))
    write(cell(metrics, "aavs", 3), result(0.5, 0.4, 0.08))  # a single seed, whichever it is
    write(avs_cell(metrics, "aavs", 5), stage1_result(0.5, 0.3))
    write(metrics / "ablation" / "full" / "notes.json", {"not": "a seed"})
    _, text = build_report(metrics, tmp_path / "reports")
    table2 = table_rows(text, "## Ablation (paper Table 2)")
    assert table2["Full model"][:6] == [
        "62.0 ± 2.8",
        "63.0 ± 2.8",
        "40.0 ± 0.0",
        "41.0 ± 0.0",
        "12.0 ± 2.0",
        "14.0 ± 2.0",
    ]
    assert table2["AAVS [29]"][:6] == "50.0 51.0 30.0 31.0 8.0 10.0".split()
    assert "seeds: aavs S4/MS3 1, aavs AVSS 1, full S4/MS3 2, full AVSS 3" in text
    assert table_rows(text, "## AAVS vs SSP (paper Table 1)")["SSP"] == table2["Full model"]


def test_missing_cells_show_dashes_and_name_the_run(tmp_path):
    metrics = tmp_path / "m"
    write(cell(metrics, "aavs"), result(0.5, 0.4, 0.1))
    write(avs_cell(metrics, "full"), stage1_result(0.7, 0.6))
    _, text = build_report(metrics, tmp_path / "r")
    table1 = table_rows(text, "## AAVS vs SSP (paper Table 1)")
    assert table1["AAVS [29]"][:6] == "– – – – 10.0 12.0".split()
    assert table1["SSP"][:6] == "70.0 71.0 60.0 61.0 – –".split()
    table1_text = text.split("## AAVS vs SSP (paper Table 1)")[1].split("## Ablation")[0]
    assert (
        f"- S4/MS3 (`{metrics}/ablation_avs/{{row}}/seed*.json`, DVC `ablation_avs@{{row}}-{{seed}}`; the rows "
        "of params `ablation.stage1_rows`): AAVS [29] (`aavs`)\n"
        f"- AVSS (`{metrics}/ablation/{{row}}/seed*.json`, DVC `ablation@{{row}}-{{seed}}`): SSP (`full`)"
    ) in table1_text
    assert table_rows(text, "## Ablation (paper Table 2)")["w. Pre-mask"][:6] == ["–"] * 6
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


def render(fig) -> np.ndarray:
    """The figure as the report writes it (PNG at PLOT_DPI), as an RGB array."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PLOT_DPI)
    return np.asarray(Image.open(buf).convert("RGB"))


def pixel_at(fig, ax, image: np.ndarray, x: float, y: float, dx: int = 0) -> np.ndarray:
    """The image's pixel at data point (x, y) of ``ax``, shifted ``dx`` pixels right."""
    px, py = ax.transData.transform((x, y)) * PLOT_DPI / fig.dpi
    return image[int(round(image.shape[0] - py)), int(round(px)) + dx]


def assert_same_image(path, image: np.ndarray) -> None:
    written = np.asarray(Image.open(path).convert("RGB"))
    assert written.shape == image.shape, f"{path}: {written.shape}, not the figure's {image.shape}"
    assert (written == image).all(), f"{path}: not the figure ({(written != image).any(-1).sum()} pixels differ)"


def test_ablation_plot_draws_the_numbers_it_was_given(tmp_path):
    """Bars read back from the figure's artists and from the PNG ``ssp report`` writes:
    one bar per row and column, as long as the number in the metrics files, at its row."""
    metrics = tmp_path / "metrics"
    rows = [r for r in TABLE2 if r != "text_att"]  # one row without any run: no bars
    expected = {}  # label -> (S4, MS3, AVSS) mIoU in %
    for i, row in enumerate(rows):
        s4, ms3, avss = 50 + 4 * i, 30 + 5 * i, 10 + 6 * i
        write(cell(metrics, row), result(0.99, 0.99, avss / 100))
        if row != "pre_mask":  # no stage-1 run: its S4 and MS3 bars have no length
            write(avs_cell(metrics, row), stage1_result(s4 / 100, ms3 / 100))
        expected[TABLE2[row].label] = (s4, ms3, avss) if row != "pre_mask" else (0, 0, avss)
    _, _, ours = ablation_table(metrics)
    fig = ablation_figure(ours)
    image = render(fig)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [TABLE2[r].label for r in rows]  # Table 2 order, top to bottom
    series = {c.get_label(): c for c in ax.containers}
    assert list(series) == ["S4 mIoU", "MS3 mIoU", "AVSS mIoU"]
    legend = ax.get_legend().get_window_extent().expanded(1.1, 1.3)
    checked = 0
    for k, bars in enumerate(series.values()):
        assert len(bars) == len(rows)
        colour = np.round(np.asarray(bars[0].get_facecolor()[:3]) * 255)
        assert (colour != 255).any(), "white bars on a white background"
        for tick, label, bar in zip(ax.get_yticks(), labels, bars):
            value = expected[label][k]
            assert bar.get_x() == 0 and bar.get_width() == pytest.approx(value)
            centre = bar.get_y() + bar.get_height() / 2
            assert abs(centre - tick) < 0.5  # the bar sits at its row's label
            if value == 0:
                continue
            # in the PNG: the bar's colour up to its end, not beyond it (points under the legend aside)
            x, y = ax.transData.transform((value, centre))
            if legend.contains(x - 4, y) or legend.contains(x + 4, y):
                continue
            assert (pixel_at(fig, ax, image, value, centre, dx=-3) == colour).all(), (label, k)
            assert (pixel_at(fig, ax, image, value, centre, dx=3) != colour).any(), (label, k)
            checked += 1
    assert checked >= 12
    # the PNG the report writes is this figure
    build_report(metrics, tmp_path / "reports")
    assert_same_image(tmp_path / "reports" / "ablation.png", image)


def test_sweep_plot_draws_the_numbers_it_was_given(tmp_path):
    metrics = tmp_path / "metrics"
    for lam, m in [(1, 0.12), (10, 0.16), (50, 0.11)]:
        write(metrics / "sweep" / f"lambda_{lam}.json", result(0.5, 0.4, m))
    write(cell(metrics, "full"), result(0.5, 0.4, 0.1))
    build_report(metrics, tmp_path / "reports")
    fig = sweep_figure([(1, 12.0, 14.0), (10, 16.0, 18.0), (50, 11.0, 13.0)])
    image = render(fig)
    (ax,) = fig.axes
    miou, fscore = ax.get_lines()
    assert miou.get_label() == "AVSS mIoU" and fscore.get_label() == "AVSS F-score"
    assert miou.get_xydata().tolist() == [[1, 12], [10, 16], [50, 11]]
    assert fscore.get_xydata().tolist() == [[1, 14], [10, 18], [50, 13]]
    for line in (miou, fscore):  # each marker in the PNG, in its line's colour
        colour = np.round(np.asarray(matplotlib_rgb(line.get_color())) * 255)
        for x, y in line.get_xydata():
            assert (np.abs(pixel_at(fig, ax, image, x, y).astype(int) - colour) <= 2).all(), (line.get_label(), x)
    assert_same_image(tmp_path / "reports" / "lambda_sweep.png", image)


def matplotlib_rgb(colour) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return to_rgb(colour)

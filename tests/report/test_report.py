import io
import json

import numpy as np
import pytest
from PIL import Image

from ssp.cli import main as cli
from ssp.errors import SSPError
from ssp.paper import COLUMNS, TABLE2
from ssp.report.report import (
    PLOT_DPI,
    ablation_figure,
    ablation_table,
    build_report,
    report_files,
    row_numbers,
    sweep_figure,
)


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
    for lam, ms3 in [(1, 0.12), (10, 0.16), (50, 0.11)]:
        # Fig. 5 sweeps on MS3: stage-1 files; their S4 figure must not reach the sweep table
        write(metrics / "sweep" / f"lambda_{lam}.json", stage1_result(0.99, ms3))
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
    sweep = text.split("## λ'_mask sweep (paper Fig. 5)", 1)[1]
    assert "| λ'_mask | MS3 mIoU | MS3 F |" in sweep and "| 10 | 16.0 | 17.0 |" in sweep
    assert f"tested on MS3 (`{metrics}/sweep/lambda_{{v}}.json`, DVC `sweep@{{v}}`)" in sweep
    assert sweep.index("| 1 |") < sweep.index("| 10 |") < sweep.index("| 50 |") and "99.0" not in sweep
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


def test_with_params_only_the_grid_counts_and_files_of_an_earlier_grid_are_named(tmp_path, capsys):
    """DVC leaves the file of a cell or λ' taken out of params: `ssp report --params` (the
    DVC stage) neither averages nor plots it, and names it."""
    metrics = tmp_path / "metrics"
    scenario = {"still_sounding": {"miou": 0.1, "fscore": 0.1, "miou_present": 0.5, "frames": 4}}
    write(cell(metrics, "full", 0), result(0.5, 0.4, 0.10, scenario))
    write(
        cell(metrics, "full", 1),
        result(0.5, 0.4, 0.30, {"still_sounding": {**scenario["still_sounding"], "miou_present": 0.9}}),
    )
    write(cell(metrics, "aavs", 0), result(0.5, 0.4, 0.08))
    write(avs_cell(metrics, "aavs", 0), stage1_result(0.5, 0.3))
    write(avs_cell(metrics, "full", 0), stage1_result(0.7, 0.6))  # full is no longer a stage-1 row
    for lam, ms3 in [(1, 0.12), (10, 0.16), (20, 0.77)]:
        write(metrics / "sweep" / f"lambda_{lam}.json", stage1_result(0.99, ms3))
    params = tmp_path / "params.yaml"
    params.write_text(
        "ablation:\n  rows: [aavs, full]\n  seeds: [0]\n  stage1_rows: [aavs]\nsweep:\n  lambda_post: [1, 10]\n"
    )

    assert cli(["report", "--metrics", str(metrics), "--out", str(tmp_path / "r"), "--params", str(params)]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    table2 = table_rows(text, "## Ablation (paper Table 2)")
    assert table2["Full model"][:6] == ["–", "–", "–", "–", "10.0", "12.0"]  # seed 0 alone, no S4/MS3
    assert table2["AAVS [29]"][:6] == "50.0 51.0 30.0 31.0 8.0 10.0".split()
    sweep = text.split("## λ'_mask sweep (paper Fig. 5)", 1)[1].split("\n## ", 1)[0]
    assert "| 1 | 12.0 |" in sweep and "| 10 | 16.0 |" in sweep and "| 20 |" not in sweep and "77.0" not in sweep
    assert "| 50.0 |" in text.split("## Per scenario (paper Table 2 rows, test)", 1)[1] and "90.0" not in text
    left_out = [line for line in text.splitlines() if line.startswith("Left out: 3 files")]
    assert len(left_out) == 1, text[:2000]
    for name in ("ablation/full/seed1.json", "ablation_avs/full/seed0.json", "sweep/lambda_20.json"):
        assert f"`{name}`" in left_out[0]
    summary = json.loads((tmp_path / "r" / "ablation_summary.json").read_text())
    assert summary["full"]["avss_miou"] == {"mean": 10.0, "std": None} and "s4_miou" not in summary["full"]

    _, every = build_report(metrics, tmp_path / "all")  # no grid: every file counts, none is named
    assert (
        table_rows(every, "## Ablation (paper Table 2)")["Full model"][4] == "20.0 ± 14.1" and "Left out" not in every
    )
    absent = ["report", "--metrics", str(metrics), "--out", str(tmp_path / "r"), "--params", str(tmp_path / "a.yaml")]
    assert cli(absent) != 0 and "a.yaml: params file not found" in capsys.readouterr().err


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
    assert f"no sweep points in `{metrics}/sweep`" in text
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
    for lam, ms3 in [(1, 0.12), (10, 0.16), (50, 0.11)]:
        write(metrics / "sweep" / f"lambda_{lam}.json", stage1_result(0.5, ms3))
    write(cell(metrics, "full"), result(0.5, 0.4, 0.1))
    build_report(metrics, tmp_path / "reports")
    fig = sweep_figure([(1, 12.0, 13.0), (10, 16.0, 17.0), (50, 11.0, 12.0)])
    image = render(fig)
    (ax,) = fig.axes
    miou, fscore = ax.get_lines()
    assert miou.get_label() == "MS3 mIoU" and fscore.get_label() == "MS3 F-score"
    assert miou.get_xydata().tolist() == [[1, 12], [10, 16], [50, 11]]
    assert fscore.get_xydata().tolist() == [[1, 13], [10, 17], [50, 12]]
    for line in (miou, fscore):  # each marker in the PNG, in its line's colour
        colour = np.round(np.asarray(matplotlib_rgb(line.get_color())) * 255)
        for x, y in line.get_xydata():
            assert (np.abs(pixel_at(fig, ax, image, x, y).astype(int) - colour) <= 2).all(), (line.get_label(), x)
    assert_same_image(tmp_path / "reports" / "lambda_sweep.png", image)


def test_sweep_files_without_ms3_figures_are_named_not_plotted(tmp_path):
    # a stage-2 (AVSS) sweep file, as the sweep wrote them before it moved to MS3
    metrics = tmp_path / "metrics"
    write(metrics / "sweep" / "lambda_5.json", {"stage": 2, "semantic": {"all": {"miou": 0.4, "fscore": 0.5}}})
    write(metrics / "sweep" / "lambda_10.json", stage1_result(0.5, 0.16))
    _, text = build_report(metrics, tmp_path / "reports")
    sweep = text.split("## λ'_mask sweep (paper Fig. 5)", 1)[1].split("\n## ", 1)[0]
    assert "| 5 | – | – |" in sweep and "| 10 | 16.0 | 17.0 |" in sweep
    assert "λ' = 5: the metrics file has no MS3 (v1m) figures" in sweep
    (line,) = sweep_figure([(10, 16.0, 17.0)]).axes[0].get_lines()[:1]
    assert line.get_xydata().tolist() == [[10, 16]]
    only_old = tmp_path / "old"
    write(only_old / "sweep" / "lambda_5.json", {"stage": 2, "semantic": {"all": {"miou": 0.4}}})
    _, text = build_report(only_old, tmp_path / "r2")
    assert "| 5 | – | – |" in text and "lambda_sweep.png" not in text
    # the DVC out is still written, as a note that is neither linked nor logged
    assert_note_image(tmp_path / "r2" / "lambda_sweep.png")
    assert report_files(tmp_path / "r2", text) == [tmp_path / "r2" / "report.md"]


def assert_note_image(path):
    """A written PNG of the short note figure (``note_figure``), not of a plot."""
    image = Image.open(path)
    assert image.size == (5 * PLOT_DPI, int(1.6 * PLOT_DPI))


def test_a_grid_without_sweep_or_rows_still_reports(tmp_path):
    """`sweep.lambda_post: []` (or no results yet): the report says so, and its two plots,
    DVC outputs, are written as notes that the report does not link."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    _, text = build_report(metrics, tmp_path / "reports")
    sweep = text.split("## λ'_mask sweep (paper Fig. 5)", 1)[1].split("\n## ", 1)[0]
    assert f"no sweep points in `{metrics}/sweep`: params `sweep.lambda_post` lists the λ' values" in sweep
    for name in ("lambda_sweep.png", "ablation.png"):
        assert_note_image(tmp_path / "reports" / name)
        assert name not in text
    assert report_files(tmp_path / "reports", text) == [tmp_path / "reports" / "report.md"]
    # results arrive: the same files become plots, linked
    write(cell(metrics, "full"), result(0.5, 0.4, 0.1))
    write(metrics / "sweep" / "lambda_10.json", stage1_result(0.5, 0.16))
    _, text = build_report(metrics, tmp_path / "reports")
    assert [p.name for p in report_files(tmp_path / "reports", text)] == [
        "report.md",
        "ablation.png",
        "lambda_sweep.png",
    ]
    assert Image.open(tmp_path / "reports" / "lambda_sweep.png").size == (5 * PLOT_DPI, int(3.2 * PLOT_DPI))


def matplotlib_rgb(colour) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return to_rgb(colour)


# ---------------------------------------------------------------------------------------
# A generated benchmark: own label space first, ceilings beside every per-scenario result
# ---------------------------------------------------------------------------------------
LABEL_SPACE = {"num_classes": 8, "indices": list(range(9)), "label": "bg + K=8 classes"}
ORACLE_NAMES = ("audio", "audio_motion", "audio_motion_text")


def generated(own: float, avss71: float, scenarios: dict | None = None) -> dict:
    """A stage-2 evaluate JSON of the generated benchmark: own-label-space numbers first."""
    return {
        "split": "test",
        "label_space": LABEL_SPACE,
        "binary": {"v2": {"miou": 0.5, "fscore": 0.5}},
        "semantic": {
            "all": {"miou_dataset": own, "fscore_dataset": own + 0.05, "miou": avss71, "fscore": avss71 + 0.01}
        },
        "per_scenario": scenarios or {},
    }


def stage1_generated(s4, ms3, scenarios: dict) -> dict:
    return {**stage1_result(s4, ms3), "split": "test", "per_scenario": scenarios}


def ceilings_file(path) -> dict:
    """Ceilings as `ssp ceilings` writes them: per scenario and oracle, and per subset."""
    numbers = {
        "same_class_distractor": ((0.5, 0.7, 0.9), {"v1s": (10, (0.4, 0.6, 1.0)), "v1m": (30, (0.8, 0.9, 1.0))}),
        "still_sounding": ((1.0, 1.0, 1.0), {"v1s": (10, (1.0, 1.0, 1.0)), "v2": (20, (1.0, 1.0, 1.0))}),
    }
    ceilings = {"available": True, "split": "test", "scenarios": {}}
    for scenario, (mious, by_subset) in numbers.items():
        # present-class = the listed value; over the label space a perfect model scores lower
        entry = {
            o: {"miou_present": m, "miou_dataset": 0.8 * m, "miou": m * 9 / 71} for o, m in zip(ORACLE_NAMES, mious)
        }
        entry["by_subset"] = {
            subset: {"frames": frames, **{o: {"binary_miou": b} for o, b in zip(ORACLE_NAMES, binaries)}}
            for subset, (frames, binaries) in by_subset.items()
        }
        ceilings["scenarios"][scenario] = entry
    # over the split: audio only 75 %, + motion 85 %, + text 100 %
    ceilings["overall"] = {o: {"miou_present": m} for o, m in zip(ORACLE_NAMES, (0.75, 0.85, 1.0))}
    write(path, ceilings)
    return ceilings


def test_generated_benchmark_leads_with_its_label_space_and_prints_ceilings(tmp_path):
    metrics, reports = tmp_path / "metrics", tmp_path / "reports"
    scenario_numbers = {
        "same_class_distractor": {
            "miou_dataset": 0.3,
            "fscore_dataset": 0.35,
            "miou": 0.038,
            "fscore": 0.04,
            "miou_present": 0.55,
        },
        "still_sounding": {
            "miou_dataset": 0.6,
            "fscore_dataset": 0.65,
            "miou": 0.076,
            "fscore": 0.08,
            "miou_present": 0.8,
        },
    }
    for seed, own in ((0, 0.40), (1, 0.44)):
        write(cell(metrics, "full", seed), generated(own, own * 9 / 71, scenario_numbers))
    write(cell(metrics, "aavs"), generated(0.2, 0.2 * 9 / 71, scenario_numbers))
    write(
        avs_cell(metrics, "aavs"),
        stage1_generated(0.5, 0.3, {"same_class_distractor": {"miou": 0.45}, "still_sounding": {"miou": 0.7}}),
    )
    main_scenarios = {
        "same_class_distractor": {**scenario_numbers["same_class_distractor"], "miou_present": 0.5, "frames": 30},
    }
    write(metrics / "stage2.json", generated(0.42, 0.42 * 9 / 71, main_scenarios))
    ceilings_file(reports / "ceilings.json")  # where the DVC stage writes it: OUT/ceilings.json

    _, text = build_report(metrics, reports)
    assert "mean over bg + K=8 classes (the dataset's own label space) first" in text
    table2 = table_rows(text, "## Ablation (paper Table 2)")
    head = table2["component"]
    assert head[4:8] == [
        "AVSS mIoU (bg + K=8 classes) (ours)",
        "AVSS F (bg + K=8 classes) (ours)",
        "AVSS mIoU (71 classes) (ours)",
        "AVSS F (71 classes) (ours)",
    ]
    assert head[8:] == [f"{c} (paper)" for c in COLUMNS]
    # own label space (mean ± std over the seeds), then the 71-class figure, then the paper's
    assert table2["Full model"][4:8] == ["42.0 ± 2.8", "47.0 ± 2.8", "5.3 ± 0.4", "6.3 ± 0.4"]
    # the same mean ± std per row, as the DVC metric the report stage declares
    summary = json.loads((reports / "ablation_summary.json").read_text())
    assert summary["full"]["avss_miou_dataset"] == {"mean": 42.0, "std": pytest.approx(2.828, abs=1e-3)}
    assert summary["full"]["seeds"] == {"AVSS": 2} and summary["aavs"]["seeds"] == {"S4/MS3": 1, "AVSS": 1}
    assert summary["aavs"]["s4_miou"] == {"mean": 50.0, "std": None} and "ms3_fscore" in summary["aavs"]
    assert table2["AAVS [29]"][:8] == "50.0 51.0 30.0 31.0 20.0 25.0 2.5 3.5".split()
    assert table_rows(text, "## AAVS vs SSP (paper Table 1)")["SSP"] == table2["Full model"]

    main = table_rows(text, "## Per scenario (main model)")
    assert main["scenario"] == [
        "frames",
        "mIoU (bg + K=8 classes)",
        "F (bg + K=8 classes)",
        "AVSS mIoU (71 classes)",
        "AVSS F (71 classes)",
        "mIoU (present classes)",
        "ceiling (present classes): audio only",
        "ceiling (present classes): audio + motion",
        "ceiling (present classes): audio + motion + text",
    ]
    assert main["same_class_distractor"] == "30 30.0 35.0 3.8 4.0 50.0 50.0 70.0 90.0".split()
    assert text.count("**Ceilings** (test split") == 1  # the oracles defined once, under the tables
    # ... with what the cues can add over a perfect audio-only model, over the split
    assert "audio-only ceiling is 75.0 (present classes): motion and text can add at most 25.0 points" in text
    assert "(motion alone 10.0)" in text

    stage2, stage1 = text.split("### AVSS cells", 1)[1].split("### S4/MS3 cells", 1)
    rows = table_rows(stage2, "AVSS mIoU over the classes present")
    assert rows["row"] == ["still_sounding", "same_class_distractor"]  # the benchmark's order
    assert rows["Full model"] == ["80.0 ± 0.0", "55.0 ± 0.0"]  # present-class mIoU
    assert rows["ceiling: audio + motion"] == ["100.0", "70.0"]  # stage-2 cells: over every subset
    assert "binary mIoU per frame, v1s + v1m" in stage1.splitlines()[0]
    # stage-1 cells (tested on v1s + v1m): frame-weighted over those subsets only,
    # still_sounding: v1s alone (v2 is not tested); same_class (10 x 0.4 + 30 x 0.8) / 40 = 70.0
    assert "| ceiling: audio only | 100.0 | 70.0 |" in stage1
    assert "| ceiling: audio + motion | 100.0 | 82.5 |" in stage1
    assert "| AAVS [29] | 70.0 | 45.0 |" in stage1


def test_ceilings_are_computed_from_data_when_there_is_no_file(tmp_path):
    from ssp.data.synthetic import SynthConfig, generate_dataset
    from ssp.params import DataParams
    from ssp.report.ceilings import compute_ceilings

    data = generate_dataset(SynthConfig.from_params(DataParams(seed=0, size="tiny")), tmp_path / "d", progress=False)
    metrics = tmp_path / "metrics"
    scenarios = {"same_class_distractor": {"miou_dataset": 0.3, "fscore_dataset": 0.3, "miou": 0.04, "fscore": 0.04}}
    write(metrics / "stage2.json", generated(0.4, 0.05, scenarios))
    _, without = build_report(metrics, tmp_path / "r1")
    assert "ceiling:" not in without and "Ceilings" not in without
    assert cli(["report", "--metrics", str(metrics), "--out", str(tmp_path / "r2"), "--data", str(data)]) == 0
    text = (tmp_path / "r2" / "report.md").read_text()
    expected = compute_ceilings(data, "test")["scenarios"]["same_class_distractor"]
    row = table_rows(text, "## Per scenario (main model)")["same_class_distractor"]
    assert row[-3:] == [f"{100 * expected[o]['miou_present']:.1f}" for o in ORACLE_NAMES]

"""``ssp report``: the paper's Tables 1 and 2, Fig. 5 on our data, and per-scenario results.

Reads the metrics files the pipeline's evaluation stages write (what ``dvc metrics show``
shows). A Table-2 row's six columns come from two DVC matrices, one file per seed:

- S4 / MS3 (binary mIoU and F of the v1s / v1m test subsets): the row's stage-1 model,
  ``metrics/ablation_avs/{row}/seed{seed}.json`` (matrix ``ablation_avs``, the rows of
  ``ablation.stage1_rows``);
- AVSS (semantic mIoU and F over all test subsets): the row's stage-2 model,
  ``metrics/ablation/{row}/seed{seed}.json`` (matrix ``ablation``).

A cell shows the mean over the seeds present, ± the sample standard deviation when
there is more than one; a cell without any file is "–" and the table's notes name the
missing run. Table 1 is AAVS vs SSP (Table 2's ``aavs`` and ``full`` rows,
:data:`ssp.paper.TABLE1`). Also read: ``metrics/sweep/lambda_{v}.json`` (Fig. 5 points)
and ``metrics/stage2.json`` (the main model, with its per-scenario table). Rows, labels
and the paper's numbers come from :mod:`ssp.paper`. Writes ``report.md`` and PNG plots
into ``--out`` and prints the tables. The sample grid of the ablation rows (``ssp
samples``, paper Fig. 8) is linked when it exists.

All numbers are in %, each with the convention ``ssp evaluate`` recorded. On the
generated benchmark the absolute numbers are not comparable with the paper's; the
differences between rows are what the ablation measures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

from ssp.errors import SSPError
from ssp.fileio import atomic_path, write_text
from ssp.paper import COLUMNS, STAGE_COLUMNS, TABLE1, TABLE2

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = Path("reports/samples/ablation_grid.png")  # where the `samples` stage writes it


def row_numbers(result: dict[str, Any]) -> tuple[float | None, ...]:
    """(S4 mIoU, S4 F, MS3 mIoU, MS3 F, AVSS mIoU, AVSS F) in % from an evaluate JSON."""
    binary, semantic = result.get("binary", {}), result.get("semantic", {}).get("all", {})

    def pct(section: dict[str, Any], key: str) -> float | None:
        value = section.get(key)
        return None if value is None else 100.0 * float(value)

    return (
        pct(binary.get("v1s", {}), "miou"),
        pct(binary.get("v1s", {}), "fscore"),
        pct(binary.get("v1m", {}), "miou"),
        pct(binary.get("v1m", {}), "fscore"),
        pct(semantic, "miou"),
        pct(semantic, "fscore"),
    )


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def _fmt_std(mean: float | None, std: float | None) -> str:
    return _fmt(mean) if mean is None or std is None else f"{mean:.1f} ± {std:.1f}"


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SSPError(f"{path}: cannot read metrics ({e})") from e


SEED_FILE = re.compile(r"seed(\d+)\.json")
# metrics subfolder (= DVC matrix) of each stage's cells: stage 1 -> S4/MS3, stage 2 -> AVSS
CELL_FOLDERS = {1: "ablation_avs", 2: "ablation"}
CELL_COLUMNS = {1: "S4/MS3", 2: "AVSS"}

# row -> stage -> seed -> that stage's columns (STAGE_COLUMNS order) from the seed's file
Cells = dict[str, dict[int, dict[int, tuple[float | None, ...]]]]


def seed_files(folder: Path) -> dict[int, Path]:
    """seed -> ``{folder}/seed{seed}.json``, in seed order (other files are ignored)."""
    found = {}
    for path in folder.glob("seed*.json") if folder.is_dir() else []:
        match = SEED_FILE.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def cell_numbers(metrics_dir: Path) -> Cells:
    """Every Table-2 row's cells present under ``metrics_dir``: stage 1's S4/MS3 numbers
    from ``ablation_avs/{row}/seed*.json``, stage 2's AVSS numbers from
    ``ablation/{row}/seed*.json``; rows and stages without any file are left out."""
    found: Cells = {}
    for row in TABLE2:
        for stage, folder in CELL_FOLDERS.items():
            files = seed_files(metrics_dir / folder / row)
            if files:
                found.setdefault(row, {})[stage] = {
                    seed: tuple(row_numbers(_read(path))[c] for c in STAGE_COLUMNS[stage])
                    for seed, path in files.items()
                }
    return found


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean of the values present and their sample standard deviation (None for < 2)."""
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None


def column_stats(row_cells: dict[int, dict[int, tuple]]) -> list[tuple[float | None, float | None]]:
    """(mean, std) of each of the six :data:`COLUMNS` over the seeds of its stage."""
    stats: list[tuple[float | None, float | None]] = [(None, None)] * len(COLUMNS)
    for stage, per_seed in row_cells.items():
        for j, column in enumerate(STAGE_COLUMNS[stage]):
            stats[column] = mean_std([numbers[j] for numbers in per_seed.values()])
    return stats


def results_table(title: str, rows: Sequence[tuple[str, str]], cells: Cells, metrics_dir: Path) -> str:
    """Markdown table of ``rows`` ((label, Table-2 row) pairs): ours (mean ± std over the
    seeds) then the paper's six numbers; notes on the seeds and on every missing run."""
    head = (
        f"| {title} | "
        + " | ".join(f"{c} (ours)" for c in COLUMNS)
        + " | "
        + " | ".join(f"{c} (paper)" for c in COLUMNS)
        + " |"
    )
    lines = [head, "|" + "---|" * (1 + 2 * len(COLUMNS))]
    missing: dict[int, list[str]] = {stage: [] for stage in CELL_FOLDERS}
    seeds = []
    for label, row in rows:
        mine = column_stats(cells.get(row, {}))
        lines.append(
            f"| {label} | "
            + " | ".join(_fmt_std(m, s) for m, s in mine)
            + " | "
            + " | ".join(_fmt(v) for v in TABLE2[row].numbers)
            + " |"
        )
        for stage, folder in CELL_FOLDERS.items():
            found = cells.get(row, {}).get(stage)
            if found is None:
                missing[stage].append(f"{label} (`{row}`)")
            else:
                seeds.append(f"{row} {CELL_COLUMNS[stage]} {len(found)}")
    if any(len(per_seed) > 1 for row_cells in cells.values() for per_seed in row_cells.values()):
        lines += ["", f"Ours: mean ± sample standard deviation over the seeds present (seeds: {', '.join(seeds)})."]
    if any(missing.values()):
        lines += ["", "Missing runs (–):"]
    for stage, labels in missing.items():
        if labels:
            folder = CELL_FOLDERS[stage]
            which = "; the rows of params `ablation.stage1_rows`" if stage == 1 else ""
            lines.append(
                f"- {CELL_COLUMNS[stage]} (`{metrics_dir / folder}/{{row}}/seed*.json`, DVC "
                f"`{folder}@{{row}}-{{seed}}`{which}): {', '.join(labels)}"
            )
    return "\n".join(lines)


def ablation_table(metrics_dir: Path) -> tuple[str, str, dict[str, tuple]]:
    """Tables 1 and 2 (markdown) and ``ours``: row -> the mean of each column."""
    cells = cell_numbers(metrics_dir)
    ours = {row: tuple(mean for mean, _ in column_stats(row_cells)) for row, row_cells in cells.items()}
    table1 = results_table("method", list(TABLE1.items()), cells, metrics_dir)
    table2 = results_table("component", [(r.label, name) for name, r in TABLE2.items()], cells, metrics_dir)
    return table1, table2, ours


def sweep_points(metrics_dir: Path) -> list[tuple[float, float | None, float | None]]:
    points = []
    for path in (metrics_dir / "sweep").glob("lambda_*.json"):
        value = float(path.stem[len("lambda_") :])
        numbers = row_numbers(_read(path))
        points.append((value, numbers[4], numbers[5]))
    return sorted(points)


def scenario_table(result: dict[str, Any]) -> str:
    scenarios = result.get("per_scenario") or {}
    if not scenarios:
        return "_(no per-scenario table: the dataset has no scenarios.csv)_"
    lines = ["| scenario | frames | AVSS mIoU | AVSS F | mIoU (present classes) |", "|---|---|---|---|---|"]
    for name, m in sorted(scenarios.items()):
        lines.append(
            f"| {name} | {m.get('frames', '')} | {_fmt(100 * m['miou'])} | "
            f"{_fmt(100 * m['fscore'])} | {_fmt(100 * m.get('miou_present', float('nan')))} |"
        )
    return "\n".join(lines)


def sweep_figure(points) -> Figure | None:
    """Fig. 5: AVSS mIoU and F-score against λ'_mask (None without points)."""
    if not points:
        return None
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    xs = [p[0] for p in points]
    ax.plot(xs, [p[1] for p in points], "o-", label="AVSS mIoU")
    ax.plot(xs, [p[2] for p in points], "s--", label="AVSS F-score")
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.set_xlabel("λ'_mask")
    ax.set_ylabel("%")
    ax.set_title("Full model vs λ'_mask (paper Fig. 5)")
    ax.legend()
    fig.tight_layout()
    return fig


PLOT_DPI = 120


def save_figure(fig: Figure | None, path: Path) -> Path | None:
    """Write ``fig`` as a PNG (120 dpi), atomically; None when there is no figure."""
    if fig is None:
        return None
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=PLOT_DPI)
    return path


def plot_sweep(points, out: Path) -> Path | None:
    return save_figure(sweep_figure(points), out / "lambda_sweep.png")


def ablation_figure(ours: dict[str, tuple]) -> Figure | None:
    """Horizontal bars of each row's S4, MS3 and AVSS mIoU (a missing cell draws no bar);
    None without any row."""
    if not ours:
        return None
    rows = [r for r in TABLE2 if r in ours]
    fig = Figure(figsize=(7, 0.5 + 0.55 * len(rows) + 1))
    ax = fig.subplots()
    height = 0.8 / 3
    for k, (column, name) in enumerate(((0, "S4"), (2, "MS3"), (4, "AVSS"))):
        ys = [i + (k - 1) * height for i in range(len(rows))]
        ax.barh(ys, [ours[r][column] or 0 for r in rows], height=height, label=f"{name} mIoU")
    ax.set_yticks(range(len(rows)), [TABLE2[r].label for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("mIoU (%)")
    ax.set_title("Ablation (paper Table 2 rows) on this dataset")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_ablation(ours: dict[str, tuple], out: Path) -> Path | None:
    return save_figure(ablation_figure(ours), out / "ablation.png")


def samples_section(samples: Path | None, out: Path) -> list[str]:
    """Markdown linking the ablation sample grid, relative to report.md (so the report
    folder can be moved or browsed together with the grid)."""
    parts = ["### Sample predictions (paper Fig. 8)", ""]
    if samples is None or not samples.is_file():
        return parts + ["_(no sample grid yet: dvc repro samples)_", ""]
    link = Path(os.path.relpath(samples.resolve(), out.resolve())).as_posix()
    return parts + [
        (
            "The same test clips under every row: frame, flow mask M_O, pre-mask M_Pre, "
            "ground truth, then each row's prediction; A1/A2 prompts under each column."
        ),
        "",
        f"![ablation samples]({link})",
        "",
    ]


def build_report(
    metrics_dir: str | Path = "metrics", out: str | Path = "reports", samples: str | Path | None = DEFAULT_SAMPLES
) -> tuple[Path, str]:
    metrics_dir, out = Path(metrics_dir), Path(out)
    samples = Path(samples) if samples is not None else None
    if not metrics_dir.is_dir():
        raise SSPError(f"{metrics_dir}: no metrics folder (run the pipeline first: dvc repro)")
    out.mkdir(parents=True, exist_ok=True)
    table1, table2, ours = ablation_table(metrics_dir)
    points = sweep_points(metrics_dir)
    main = _read(metrics_dir / "stage2.json") if (metrics_dir / "stage2.json").exists() else {}

    parts = [
        "# SSP report",
        "",
        (
            f"Metrics from `{metrics_dir}/` (test split; binary F in the official batch mode; "
            "AVSS over real frames, mean over all 71 classes). S4 / MS3: the row's stage-1 "
            f"model trained on v1s + v1m (`{metrics_dir}/{CELL_FOLDERS[1]}/`); AVSS: the row's "
            f"stage-2 model (`{metrics_dir}/{CELL_FOLDERS[2]}/`). Our numbers come from the "
            "dataset the pipeline ran on; the paper's from AVSBench."
        ),
        "",
        "## AAVS vs SSP (paper Table 1)",
        "",
        table1,
        "",
        "## Ablation (paper Table 2)",
        "",
        table2,
        "",
    ]
    if plot_ablation(ours, out):
        parts += ["![ablation](ablation.png)", ""]
    parts += samples_section(samples, out)
    parts += ["## λ'_mask sweep (paper Fig. 5)", ""]
    if points:
        parts += ["| λ'_mask | AVSS mIoU | AVSS F |", "|---|---|---|"]
        parts += [f"| {v:g} | {_fmt(m)} | {_fmt(f)} |" for v, m, f in points]
        plot_sweep(points, out)
        parts += ["", "![sweep](lambda_sweep.png)", ""]
    else:
        parts += ["_(no sweep metrics yet)_", ""]
    parts += ["## Per scenario (main model)", "", scenario_table(main), ""]
    text = "\n".join(parts)
    path = out / "report.md"
    write_text(path, text)
    return path, text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics",
        default="metrics",
        type=Path,
        help="metrics folder written by the evaluation stages (default: metrics)",
    )
    parser.add_argument(
        "--out", default="reports", type=Path, help="where report.md and the PNG plots go (default: reports)"
    )
    parser.add_argument(
        "--samples",
        default=DEFAULT_SAMPLES,
        type=Path,
        help=f"the ablation sample grid of `ssp samples`, linked when it exists (default: {DEFAULT_SAMPLES})",
    )


def main(args: argparse.Namespace) -> int:
    path, text = build_report(args.metrics, args.out, args.samples)
    print(text)
    print(f"\nreport: {path}")
    return 0

"""``ssp report``: the paper's Table 2 and Fig. 5 on our data, and per-scenario results.

Reads the metrics files the pipeline's evaluation stages write (what ``dvc metrics show``
shows): ``metrics/ablation/{row}/seed{seed}.json`` (Table 2 rows, one file per seed of
the DVC matrix; a row shows the mean over the seeds present, ± the sample standard
deviation when there is more than one), ``metrics/sweep/lambda_{v}.json`` (Fig. 5
points) and ``metrics/stage2.json`` (the main model, with its per-scenario table). Rows,
labels and the paper's numbers come from :mod:`ssp.paper`. Writes ``report.md`` and PNG
plots into ``--out`` and prints the tables. The sample grid of the ablation rows (``ssp
samples``, paper Fig. 8) is linked when it exists.

Our columns follow the paper's: S4 and MS3 are the binary (AVS) metrics of the v1s and
v1m subsets, AVSS the semantic metrics over all subsets, all in % and each with the
convention ``ssp evaluate`` recorded. On the generated benchmark the absolute numbers
are not comparable with the paper's; the differences between rows are what the
ablation measures.
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
from ssp.paper import COLUMNS, TABLE2

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


def seed_numbers(metrics_dir: Path) -> dict[str, list[tuple[float | None, ...]]]:
    """Table-2 row -> :func:`row_numbers` of each seed's metrics file
    (``{metrics_dir}/ablation/{row}/seed{seed}.json``, in seed order); rows without any
    file are left out."""
    found: dict[str, list[tuple[float | None, ...]]] = {}
    for row in TABLE2:
        folder = metrics_dir / "ablation" / row
        paths = [p for p in folder.glob("seed*.json") if SEED_FILE.fullmatch(p.name)] if folder.is_dir() else []
        paths.sort(key=lambda p: int(SEED_FILE.fullmatch(p.name).group(1)))
        if paths:
            found[row] = [row_numbers(_read(p)) for p in paths]
    return found


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean of the values present and their sample standard deviation (None for < 2)."""
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None


def ablation_table(metrics_dir: Path) -> tuple[str, dict[str, tuple]]:
    """The Table-2 markdown (ours: mean over seeds, ± sample std with several seeds; the
    paper's numbers) and ``ours``: row -> the mean of each column."""
    per_seed = seed_numbers(metrics_dir)
    stats = {row: [mean_std(column) for column in zip(*numbers)] for row, numbers in per_seed.items()}
    ours = {row: tuple(mean for mean, _ in columns) for row, columns in stats.items()}
    head = (
        "| component | "
        + " | ".join(f"{c} (ours)" for c in COLUMNS)
        + " | "
        + " | ".join(f"{c} (paper)" for c in COLUMNS)
        + " |"
    )
    lines = [head, "|" + "---|" * (1 + 2 * len(COLUMNS))]
    for row, paper_row in TABLE2.items():
        mine = stats.get(row) or [(None, None)] * len(COLUMNS)
        lines.append(
            f"| {paper_row.label} | "
            + " | ".join(_fmt_std(m, s) for m, s in mine)
            + " | "
            + " | ".join(_fmt(v) for v in paper_row.numbers)
            + " |"
        )
    if any(len(numbers) > 1 for numbers in per_seed.values()):
        seeds = ", ".join(f"{row} {len(numbers)}" for row, numbers in per_seed.items())
        lines += ["", f"Ours: mean ± sample standard deviation over the seeds present (seeds per row: {seeds})."]
    return "\n".join(lines), ours


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


def plot_sweep(points, out: Path) -> Path | None:
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
    path = out / "lambda_sweep.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    return path


def plot_ablation(ours: dict[str, tuple], out: Path) -> Path | None:
    if not ours:
        return None
    rows = [r for r in TABLE2 if r in ours]
    fig = Figure(figsize=(7, 3.4))
    ax = fig.subplots()
    ax.barh([TABLE2[r].label for r in rows], [ours[r][4] or 0 for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("AVSS mIoU (%)")
    ax.set_title("Ablation (paper Table 2 rows) on this dataset")
    fig.tight_layout()
    path = out / "ablation.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    return path


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
    table, ours = ablation_table(metrics_dir)
    points = sweep_points(metrics_dir)
    main = _read(metrics_dir / "stage2.json") if (metrics_dir / "stage2.json").exists() else {}

    parts = [
        "# SSP report",
        "",
        (
            f"Metrics from `{metrics_dir}/` (test split; binary F in the official batch mode; "
            "AVSS over real frames, mean over all 71 classes). Our numbers come from the "
            "dataset the pipeline ran on; the paper's from AVSBench."
        ),
        "",
        "## Ablation (paper Table 2)",
        "",
        table,
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

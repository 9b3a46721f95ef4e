"""Paper Tables 1-2 on the generated benchmark, mean ± std over seeds, from the DVC grid.

The grid itself is the pipeline's, two DVC matrices over rows x ``ablation.seeds`` whose
cells train a model and test it on the test split in the same process:

- ``ablation`` (rows ``ablation.rows``): one stage-2 model per cell -> the AVSS columns,
  ``metrics/ablation/{row}/seed{seed}.json``;
- ``ablation_avs`` (rows ``ablation.stage1_rows``): one stage-1 (binary) model per cell,
  trained on v1s + v1m -> the S4 / MS3 columns, ``metrics/ablation_avs/{row}/seed{seed}.json``.

This script only reads those files, with ``ssp report``'s reader
(:func:`ssp.report.report.cell_numbers`):

    dvc exp run -S 'ablation.seeds=[0,1,2]' ablation ablation_avs   # the cells that are missing
    .venv/bin/python bench/ablation.py                              # table -> stdout and bench/README.md

The stage-2 cells share the one stage-1 model of ``train1.seed`` (its masks are the
stepping stones of every row), so their std is over stage-2 seeds; the stage-1 cells are
trained per seed. The table gives mean ± sample std per column beside the paper's
numbers (``ssp.paper``), and the verdict of the issue-4 acceptance: the full model beats
AAVS in mIoU by more than twice the seed-to-seed std (AVSS; S4 and MS3 likewise).

``--premask-study`` re-evaluates the finished stage-2 pre-mask cells with every
test-time stand-in for M_GT in eq. 2 (stage1 | flow | all); that evaluates, it does not
train.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ssp.eval.evaluate import evaluate  # noqa: E402
from ssp.fileio import write_text  # noqa: E402
from ssp.paper import COLUMNS, STAGE_COLUMNS, TABLE2  # noqa: E402
from ssp.report.report import CELL_FOLDERS, Cells, cell_numbers, column_stats  # noqa: E402
from ssp.report.report import mean_std as report_mean_std  # noqa: E402

START, END = "<!-- ablation:start -->", "<!-- ablation:end -->"
MIOU_COLUMNS = {"S4": 0, "MS3": 2, "AVSS": 4}  # indices of ssp.paper.COLUMNS


def mean_std(values: list[float]) -> tuple[float, float]:
    """``ssp report``'s mean and sample std, with 0 for the std of a single seed."""
    mean, std = report_mean_std(values)
    return mean, std or 0.0


def read_cells(metrics_dir: Path, rows: list[str]) -> Cells:
    """``ssp report``'s cells (row -> stage -> seed -> numbers in %) of ``rows``."""
    return {row: cells for row, cells in cell_numbers(metrics_dir).items() if row in rows}


def table(cells: Cells) -> str:
    lines = [
        "| Row | " + " | ".join(f"{c} (ours, test)" for c in COLUMNS) + " | seeds S4/MS3, AVSS | "
        "paper " + " / ".join(COLUMNS) + " |",
        "|---|" + "---|" * (len(COLUMNS) + 2),
    ]
    for row, row_cells in cells.items():
        stats = column_stats(row_cells)
        ours = ["–" if m is None else f"{m:.2f} ± {s or 0.0:.2f}" for m, s in stats]
        seeds = ", ".join(str(len(row_cells.get(stage, {}))) for stage in CELL_FOLDERS)
        paper = " / ".join(f"{v}" for v in TABLE2[row].numbers)
        lines.append(f"| {TABLE2[row].label} (`{row}`) | " + " | ".join(ours) + f" | {seeds} | {paper} |")
    return "\n".join(lines)


def column_values(cells: Cells, row: str, column: int) -> list[float]:
    """Per-seed values (%) of one of the six columns of ``row``."""
    stage = next(stage for stage, columns in STAGE_COLUMNS.items() if column in columns)
    index = STAGE_COLUMNS[stage].index(column)
    per_seed = cells.get(row, {}).get(stage, {})
    return [numbers[index] for numbers in per_seed.values() if numbers[index] is not None]


def verdict(cells: Cells) -> str:
    lines = []
    for name, column in MIOU_COLUMNS.items():
        full, base = column_values(cells, "full", column), column_values(cells, "aavs", column)
        if min(len(full), len(base)) < 2:
            lines.append(f"{name}: Full − AAVS gap needs both rows with at least 2 seeds.")
            continue
        gap = statistics.fmean(full) - statistics.fmean(base)
        std = max(statistics.stdev(full), statistics.stdev(base))
        lines.append(
            f"{name}: Full − AAVS mIoU gap {gap:.2f} points; 2 × seed std (max of the two rows) "
            f"{2 * std:.2f} → acceptance {'PASS' if gap > 2 * std else 'FAIL'}."
        )
    return "\n".join(lines)


def write_readme_section(text: str, readme: Path) -> None:
    current = readme.read_text() if readme.exists() else "# Benchmarks\n"
    block = f"{START}\n{text}\n{END}"
    if START in current and END in current:
        head, rest = current.split(START, 1)
        current = head + block + rest.split(END, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + block + "\n"
    write_text(readme, current)


def premask_study(args: argparse.Namespace, rows: list[str]) -> str:
    """Test-time stand-in for M_GT in eq. 2: the trained pre-mask cells, re-evaluated."""
    sources = ("stage1", "flow", "all")
    found: dict[str, dict[str, list[float]]] = {row: {s: [] for s in sources} for row in rows}
    for row in rows:
        for best in sorted((args.runs / row).glob("seed*/checkpoints/best.safetensors")):
            for source in sources:
                ev = evaluate(
                    best,
                    args.data,
                    "test",
                    None,
                    stage1_masks=args.stage1_masks,
                    flow=args.flow,
                    prompts=args.prompts,
                    logmel=args.logmel,
                    premask_test_source=source,
                    progress=False,
                    log_to_run=False,
                )
                found[row][source].append(ev["semantic"]["v2"]["miou"] * 100)
    lines = ["| Row | " + " | ".join(f"M_GT stand-in = {s}" for s in sources) + " |", "|---|" + "---|" * len(sources)]
    for row, per_source in found.items():
        cells = [f"{mean_std(v)[0]:.2f} ± {mean_std(v)[1]:.2f} (n={len(v)})" if v else "-" for v in per_source.values()]
        lines.append(f"| {TABLE2[row].label} | " + " | ".join(cells) + " |")
    return "AVSS test mIoU (v2, %) of the pre-mask rows by test-time stand-in for M_GT:\n\n" + "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--metrics",
        type=Path,
        default=Path("metrics"),
        help="the pipeline's metrics folder: {metrics}/ablation/{row}/seed{seed}.json (AVSS) and "
        "{metrics}/ablation_avs/{row}/seed{seed}.json (S4/MS3) (default: metrics)",
    )
    parser.add_argument("--rows", default=None, help="comma-separated rows (default: all seven, paper order)")
    parser.add_argument(
        "--readme",
        default=str(ROOT / "bench" / "README.md"),
        help="README to put the table into (default bench/README.md); '' = none",
    )
    study = parser.add_argument_group("--premask-study (evaluates the finished cells again)")
    study.add_argument(
        "--premask-study",
        action="store_true",
        help="re-evaluate the pre-mask rows with every test-time stand-in for M_GT",
    )
    study.add_argument("--runs", type=Path, default=Path("runs/ablation"), help="the grid's run folders")
    study.add_argument("--data", type=Path, default=Path("data/synth"), help="dataset root")
    study.add_argument("--stage1-masks", type=Path, default=Path("data/stage1_masks"), help="stage-1 masks")
    study.add_argument("--flow", type=Path, default=Path("data/flow"), help="`ssp flow` output")
    study.add_argument("--prompts", type=Path, default=Path("data/prompts"), help="`ssp prompts` output")
    study.add_argument("--logmel", type=Path, default=Path("data/logmel"), help="`ssp logmel` output")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    rows = args.rows.split(",") if args.rows else list(TABLE2)
    unknown = [r for r in rows if r not in TABLE2]
    if unknown:
        parser.error(f"unknown rows {unknown}; rows: {', '.join(TABLE2)}")
    if args.premask_study:
        text = premask_study(args, [r for r in rows if TABLE2[r].switches["pre_mask"]])
    else:
        cells = read_cells(args.metrics, rows)
        if not cells:
            parser.error(f"no results under {args.metrics} (run the grid first: dvc repro ablation ablation_avs)")
        text = table(cells) + "\n\n" + verdict(cells)
    print(text)
    if args.readme and not args.premask_study:  # the study is printed, not kept
        write_readme_section(text, Path(args.readme))
    return 0


if __name__ == "__main__":
    sys.exit(main())

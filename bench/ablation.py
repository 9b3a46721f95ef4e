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
numbers (``ssp.paper``); on a dataset with its own label space (``ssp synth``) the AVSS
columns lead with the mIoU / F over background + K (over all test subsets every class is
present, so this is also the present-class mIoU), the 71-class figures beside them. Then
the verdicts: the full model
beats AAVS in mIoU by more than twice the seed-to-seed std (issue 4; S4, MS3, AVSS), and on
a generated dataset by at least 10 points of present-class mIoU (issue 16).

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
from ssp.report.ceilings import cue_headroom  # noqa: E402
from ssp.report.report import (  # noqa: E402
    CELL_FOLDERS,
    Cells,
    DatasetCells,
    _read,
    cell_numbers,
    cell_scenarios,
    column_stats,
    dataset_cell_numbers,
    seed_files,
)
from ssp.report.report import mean_std as report_mean_std  # noqa: E402

START, END = "<!-- ablation:start -->", "<!-- ablation:end -->"
MIOU_COLUMNS = {"S4": 0, "MS3": 2, "AVSS": 4}  # indices of ssp.paper.COLUMNS
PRESENT_TARGET = 10.0  # issue 16: full beats aavs by this many points of present-class mIoU
# issue 16: each Table-2 step against AAVS, in the scenarios it is built for
STEP_SCENARIOS = {
    "pre_mask": ("moving_sounding", "same_class_distractor"),
    "text_att": ("still_sounding", "silent_distractor"),
    "text_vta": ("still_sounding", "silent_distractor"),
}


def mean_std(values: list[float]) -> tuple[float, float]:
    """``ssp report``'s mean and sample std, with 0 for the std of a single seed."""
    mean, std = report_mean_std(values)
    return mean, std or 0.0


def read_cells(metrics_dir: Path, rows: list[str]) -> Cells:
    """``ssp report``'s cells (row -> stage -> seed -> numbers in %) of ``rows``."""
    return {row: cells for row, cells in cell_numbers(metrics_dir).items() if row in rows}


def present_cell_numbers(metrics_dir: Path, rows: list[str]) -> DatasetCells:
    """row -> seed -> (AVSS mIoU over bg + the classes present,) in % from the stage-2 cells
    whose files have it (a dataset with its own label space)."""
    found: DatasetCells = {}
    for row in rows:
        for seed, path in seed_files(metrics_dir / CELL_FOLDERS[2] / row).items():
            value = _read(path).get("semantic", {}).get("all", {}).get("miou_present")
            if value is not None:
                found.setdefault(row, {})[seed] = (100.0 * float(value),)
    return found


def scenario_cells(metrics_dir: Path, rows: list[str]) -> dict[str, dict[str, list[float]]]:
    """row -> scenario -> present-class mIoU (%) per seed of the stage-2 cells (``ssp
    report``'s per-scenario reader)."""
    per_row, _ = cell_scenarios(metrics_dir, 2)
    return {
        row: {
            scenario: [100.0 * n["miou_present"] for n in seeds if n.get("miou_present") is not None]
            for scenario, seeds in per_row[row].items()
        }
        for row in rows
        if row in per_row
    }


def scenario_table(per_row: dict[str, dict[str, list[float]]]) -> str:
    """Present-class mIoU per row and scenario, then each Table-2 step's verdict (issue 16:
    it moves in the paper's direction by more than 2 × the larger seed std of the two rows)."""
    scenarios = sorted({s for per_scenario in per_row.values() for s in per_scenario})
    lines = [
        "AVSS present-class mIoU (%) per scenario, mean ± sample std over seeds:",
        "",
        "| Row | " + " | ".join(scenarios) + " |",
        "|---|" + "---|" * len(scenarios),
    ]
    lines += [
        f"| `{row}` | " + " | ".join(_cell(cells.get(s, [])) for s in scenarios) + " |"
        for row, cells in per_row.items()
    ]
    lines.append("")
    base = per_row.get("aavs", {})
    for row, built_for in STEP_SCENARIOS.items():
        for scenario in built_for:
            test = step_test(per_row.get(row, {}).get(scenario, []), base.get(scenario, []))
            if test is not None:
                gap, spread = test
                lines.append(
                    f"- `{row}` − `aavs` on {scenario}: {gap:+.2f} points; 2 × seed std {spread:.2f} → "
                    f"{'PASS' if gap > spread else 'FAIL'}."
                )
    return "\n".join(lines)


def step_test(step: list[float], ref: list[float]) -> tuple[float, float] | None:
    """(mean of ``step`` − mean of ``ref``, 2 × the larger sample std of the two); None
    unless both have at least 2 seeds."""
    if min(len(step), len(ref)) < 2:
        return None
    gap = statistics.fmean(step) - statistics.fmean(ref)
    return gap, 2 * max(statistics.stdev(step), statistics.stdev(ref))


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f}"


def table(cells: Cells, own: tuple[DatasetCells, str] | None = None) -> str:
    """``own``: (bg + K cells, the label space's label) on a generated dataset: those AVSS
    columns first, the 71-class ones beside them."""
    dataset, label = own or ({}, "")
    own_columns = [f"AVSS mIoU ({label})", f"AVSS F ({label})"] if dataset else []
    avss = [f"{c} (71 classes)" for c in COLUMNS[4:]] if dataset else list(COLUMNS[4:])
    columns = [*COLUMNS[:4], *own_columns, *avss]
    lines = [
        "| Row | " + " | ".join(f"{c} (ours, test)" for c in columns) + " | seeds S4/MS3, AVSS | "
        "paper " + " / ".join(COLUMNS) + " |",
        "|---|" + "---|" * (len(columns) + 2),
    ]
    for row, row_cells in cells.items():
        stats = column_stats(row_cells)
        ours = ["–" if m is None else f"{m:.2f} ± {s or 0.0:.2f}" for m, s in stats]
        if dataset:
            mine = [_cell([v[j] for v in dataset.get(row, {}).values() if v[j] is not None]) for j in range(2)]
            ours = [*ours[:4], *mine, *ours[4:]]
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


def verdict(cells: Cells, present: DatasetCells | None = None) -> str:
    lines = []
    for name, column in MIOU_COLUMNS.items():
        test = step_test(column_values(cells, "full", column), column_values(cells, "aavs", column))
        if test is None:
            lines.append(f"{name}: Full − AAVS gap needs both rows with at least 2 seeds.")
            continue
        gap, spread = test
        lines.append(
            f"{name}: Full − AAVS mIoU gap {gap:.2f} points; 2 × seed std (max of the two rows) "
            f"{spread:.2f} → acceptance {'PASS' if gap > spread else 'FAIL'}."
        )
    full, base = ([v[0] for v in (present or {}).get(row, {}).values()] for row in ("full", "aavs"))
    if full and base:
        gap = statistics.fmean(full) - statistics.fmean(base)
        lines.append(
            f"AVSS present classes: Full − AAVS mIoU gap {gap:.2f} points; target ≥ {PRESENT_TARGET:.0f} "
            f"(issue 16) → {'PASS' if gap >= PRESENT_TARGET else 'FAIL'}."
        )
    return "\n".join(lines)


def headroom_text(ceilings: dict) -> str:
    """What motion and text can add over a perfect audio-only model (``ssp ceilings``), over
    the split and per scenario: the most any SSP mechanism can give `full` over an `aavs`
    that uses the audio perfectly."""
    headroom = cue_headroom(ceilings)
    total = headroom.pop("overall", None)
    if not headroom:
        return ""
    per_scenario = ", ".join(
        f"{name} {h['motion_text']:+.1f} (motion {h['motion']:+.1f})" for name, h in headroom.items()
    )
    over_split = f"{total['motion_text']:+.1f} over the split (motion alone {total['motion']:+.1f}); " if total else ""
    return (
        f"Headroom of the cues (`ssp ceilings`, present-class mIoU points of the audio + motion + text oracle "
        f"over the audio-only one): {over_split}per scenario {per_scenario}."
    )


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
    parser.add_argument(
        "--ceilings",
        type=Path,
        default=Path("reports/ceilings.json"),
        help="`ssp ceilings` output, for the cues' headroom under the verdicts (default "
        "reports/ceilings.json; skipped when missing)",
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
        present = present_cell_numbers(args.metrics, rows)
        text = table(cells, dataset_cell_numbers(args.metrics)) + "\n\n" + verdict(cells, present)
        headroom = headroom_text(_read(args.ceilings)) if args.ceilings.is_file() else ""
        if headroom:
            text += "\n" + headroom
        per_scenario = scenario_cells(args.metrics, rows)
        if per_scenario:
            text += "\n\n" + scenario_table(per_scenario)
    print(text)
    if args.readme and not args.premask_study:  # the study is printed, not kept
        write_readme_section(text, Path(args.readme))
    return 0


if __name__ == "__main__":
    sys.exit(main())

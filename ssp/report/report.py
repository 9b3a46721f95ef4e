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
:data:`ssp.paper.TABLE1`). Also read: ``metrics/sweep/lambda_{v}.json`` (Fig. 5's points:
stage-1 ``full`` models tested on MS3 = v1m, as the paper sweeps) and
``metrics/stage2.json`` (the main model, with its per-scenario table). With ``--params``
(the DVC stage passes params.yaml) only the cells and λ' points it names count
(:class:`Grid`): DVC leaves the files of a cell taken out of params in place, and the
report names them instead of averaging them in. Rows, labels
and the paper's numbers come from :mod:`ssp.paper`. Writes ``report.md`` and PNG plots
into ``--out`` and prints the tables. The sample grid of the ablation rows (``ssp
samples``, paper Fig. 8) is linked when it exists.

All numbers are in %, each with the convention ``ssp evaluate`` recorded. On the
generated benchmark the absolute numbers are not comparable with the paper's; the
differences between rows are what the ablation measures.

Own label space first: on a dataset with a label space of its own (the generated
benchmark: background + K classes, ``label_space`` in the metrics JSON), every AVSS figure
(Tables 1-2, the per-scenario tables) leads with the mIoU / F over those
K + 1 classes (``miou_dataset``, labelled "bg + K=8 classes"), the 71-class AVSBench
convention beside it. On AVSBench the tables are as before (one label space).

Ceilings (:mod:`ssp.report.ceilings`): what a perfect audio-only, audio + motion and
audio + motion + text model reaches per scenario, printed under every per-scenario table
on the same metric; read from ``{out}/ceilings.json`` (the DVC stage ``ceilings``) or
``--ceilings``, else computed from ``--data``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

from ssp.data.synthetic import SCENARIOS
from ssp.errors import DataError, SSPError
from ssp.fileio import atomic_path, write_json, write_text
from ssp.ops.tracking import EXPERIMENTS, ExistingRun, parent_run_from_env
from ssp.paper import COLUMNS, STAGE_COLUMNS, TABLE1, TABLE2
from ssp.params import EvaluateParams, Params, load_params
from ssp.report.ceilings import ORACLE_LABELS, ORACLES, compute_ceilings, cue_headroom

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


def dataset_numbers(result: dict[str, Any]) -> tuple[float | None, float | None]:
    """(AVSS mIoU, AVSS F) in % over the dataset's own label space (background + K) from
    an evaluate JSON; (None, None) when it has none (AVSBench, stage 1)."""
    semantic = result.get("semantic", {}).get("all", {})
    return tuple(None if semantic.get(k) is None else 100.0 * float(semantic[k]) for k in DATASET_KEYS)


def space_label(result: dict[str, Any]) -> str:
    """How the report names the own label space of ``result`` ("bg + K=8 classes")."""
    return (result.get("label_space") or {}).get("label") or "own label space"


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
# row -> seed -> (AVSS mIoU, AVSS F) over the own label space, from the stage-2 cells
DatasetCells = dict[str, dict[int, tuple[float | None, ...]]]
DATASET_KEYS = ("miou_dataset", "fscore_dataset")
AVSS_71 = ("AVSS mIoU (71 classes)", "AVSS F (71 classes)")
SUBSET_ORDER = ("v1s", "v1m", "v2")


def seed_files(folder: Path) -> dict[int, Path]:
    """seed -> ``{folder}/seed{seed}.json``, in seed order (other files are ignored)."""
    found = {}
    for path in folder.glob("seed*.json") if folder.is_dir() else []:
        match = SEED_FILE.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class Grid:
    """The cells and λ' points params name (``ssp report --params``). DVC leaves the outputs
    of a stage that params no longer expand to (a seed, row or λ' taken out), so a metrics
    folder can hold an earlier grid's files: with a grid they are left out of every number
    and named in the report. No grid (None): every file present counts."""

    rows: frozenset[str]  # `ablation.rows`: the stage-2 (AVSS) cells
    stage1_rows: frozenset[str]  # `ablation.stage1_rows`: the stage-1 (S4/MS3) cells
    seeds: frozenset[int]  # `ablation.seeds`
    lambdas: frozenset[float]  # `sweep.lambda_post`

    @classmethod
    def from_params(cls, params: Params) -> Grid:
        a = params.ablation
        lambdas = frozenset(float(v) for v in params.sweep.lambda_post)
        return cls(frozenset(a.rows), frozenset(a.stage1_rows), frozenset(a.seeds), lambdas)

    def has_cell(self, stage: int, row: str, seed: int) -> bool:
        return row in (self.stage1_rows if stage == 1 else self.rows) and seed in self.seeds


def cell_files(metrics_dir: Path, stage: int, row: str, grid: Grid | None = None) -> dict[int, Path]:
    """seed -> the metrics file of ``row``'s ``stage`` cell (in the grid, when given)."""
    files = seed_files(metrics_dir / CELL_FOLDERS[stage] / row)
    return {seed: path for seed, path in files.items() if grid is None or grid.has_cell(stage, row, seed)}


def sweep_files(metrics_dir: Path, grid: Grid | None = None) -> dict[float, Path]:
    """λ' -> ``{metrics_dir}/sweep/lambda_{λ'}.json`` (in the grid, when given), in λ' order."""
    found = {}
    for path in (metrics_dir / "sweep").glob("lambda_*.json"):
        try:
            value = float(path.stem[len("lambda_") :])
        except ValueError:
            continue  # not a sweep point's file
        if grid is None or value in grid.lambdas:
            found[value] = path
    return dict(sorted(found.items()))


def left_out_files(metrics_dir: Path, grid: Grid | None) -> list[Path]:
    """The cell and sweep files under ``metrics_dir`` that ``grid`` does not name."""
    if grid is None:
        return []
    left = [
        path
        for stage in CELL_FOLDERS
        for row in TABLE2
        for seed, path in cell_files(metrics_dir, stage, row).items()
        if not grid.has_cell(stage, row, seed)
    ]
    return left + [path for value, path in sweep_files(metrics_dir).items() if value not in grid.lambdas]


def cell_numbers(metrics_dir: Path, grid: Grid | None = None) -> Cells:
    """Every Table-2 row's cells present under ``metrics_dir``: stage 1's S4/MS3 numbers
    from ``ablation_avs/{row}/seed*.json``, stage 2's AVSS numbers from
    ``ablation/{row}/seed*.json``; rows and stages without any file are left out, and so
    are the cells ``grid`` does not name."""
    found: Cells = {}
    for row in TABLE2:
        for stage in CELL_FOLDERS:
            files = cell_files(metrics_dir, stage, row, grid)
            if files:
                found.setdefault(row, {})[stage] = {
                    seed: tuple(row_numbers(_read(path))[c] for c in STAGE_COLUMNS[stage])
                    for seed, path in files.items()
                }
    return found


def dataset_cell_numbers(metrics_dir: Path, grid: Grid | None = None) -> tuple[DatasetCells, str]:
    """The stage-2 cells' own-label-space AVSS numbers (rows whose files have them) and the
    label space's label (the first file's)."""
    found: DatasetCells = {}
    label = "own label space"
    for row in TABLE2:
        for seed, path in cell_files(metrics_dir, 2, row, grid).items():
            result = _read(path)
            numbers = dataset_numbers(result)
            if numbers[0] is not None:
                if not found:
                    label = space_label(result)
                found.setdefault(row, {})[seed] = numbers
    return found, label


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


def results_table(
    title: str,
    rows: Sequence[tuple[str, str]],
    cells: Cells,
    metrics_dir: Path,
    dataset: tuple[DatasetCells, str] | None = None,
) -> str:
    """Markdown table of ``rows`` ((label, Table-2 row) pairs): ours (mean ± std over the
    seeds) then the paper's six numbers; notes on the seeds and on every missing run.
    ``dataset`` (own-label-space cells and their label): the AVSS columns of ours lead
    with the mIoU / F over the dataset's label space, the 71-class ones beside them."""
    own_cells, own_label = dataset if dataset and dataset[0] else ({}, "")
    ours = [*COLUMNS[:4], f"AVSS mIoU ({own_label})", f"AVSS F ({own_label})", *AVSS_71] if own_cells else COLUMNS
    head = f"| {title} | " + " | ".join(f"{c} (ours)" for c in ours) + " | "
    head += " | ".join(f"{c} (paper)" for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (1 + len(ours) + len(COLUMNS))]
    missing: dict[int, list[str]] = {stage: [] for stage in CELL_FOLDERS}
    seeds = []
    for label, row in rows:
        mine = column_stats(cells.get(row, {}))
        if own_cells:
            per_seed = own_cells.get(row, {}).values()
            mine = [*mine[:4], *(mean_std([numbers[j] for numbers in per_seed]) for j in range(2)), *mine[4:]]
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


def ablation_table(metrics_dir: Path, grid: Grid | None = None) -> tuple[str, str, dict[str, tuple]]:
    """Tables 1 and 2 (markdown) and ``ours``: row -> the mean of each column."""
    cells = cell_numbers(metrics_dir, grid)
    dataset = dataset_cell_numbers(metrics_dir, grid)
    ours = {row: tuple(mean for mean, _ in column_stats(row_cells)) for row, row_cells in cells.items()}
    table1 = results_table("method", list(TABLE1.items()), cells, metrics_dir, dataset)
    rows = [(r.label, name) for name, r in TABLE2.items()]
    table2 = results_table("component", rows, cells, metrics_dir, dataset)
    return table1, table2, ours


def _slug(column: str) -> str:
    """Column label to metric key: "S4 mIoU" -> "s4_miou", "AVSS F" -> "avss_fscore"."""
    return column.lower().replace(" ", "_").replace("_f", "_fscore")


def ablation_summary(metrics_dir: Path, grid: Grid | None = None) -> dict[str, dict[str, Any]]:
    """Every Table-2 row with cells: per column (``s4_miou`` ... ``avss_fscore``, and on a
    dataset with its own label space ``avss_miou_dataset`` / ``avss_fscore_dataset``) the
    mean and sample std over the seeds (%) and the number of seeds. Written as the DVC metric
    ``reports/ablation_summary.json``, so `dvc metrics show` and the flow's parent runs carry
    mean ± std per row."""
    cells = cell_numbers(metrics_dir, grid)
    own, _ = dataset_cell_numbers(metrics_dir, grid)
    summary: dict[str, dict[str, Any]] = {}
    for row, row_cells in cells.items():
        entry: dict[str, Any] = {}
        for column, (mean, std) in zip(COLUMNS, column_stats(row_cells)):
            if mean is not None:
                entry[_slug(column)] = {"mean": round(mean, 3), "std": None if std is None else round(std, 3)}
        for j, key in enumerate(("avss_miou_dataset", "avss_fscore_dataset")):
            mean, std = mean_std([numbers[j] for numbers in own.get(row, {}).values()])
            if mean is not None:
                entry[key] = {"mean": round(mean, 3), "std": None if std is None else round(std, 3)}
        entry["seeds"] = {CELL_COLUMNS[stage]: len(per_seed) for stage, per_seed in row_cells.items()}
        summary[row] = entry
    return summary


def plotted_ours(ours: dict[str, tuple], metrics_dir: Path, grid: Grid | None = None) -> tuple[dict[str, tuple], str]:
    """``ours`` with the AVSS mIoU (column 4) over the own label space where the cells have
    it, and the AVSS bars' label ("AVSS" or "AVSS (bg + K=8 classes)")."""
    own_cells, label = dataset_cell_numbers(metrics_dir, grid)
    if not own_cells:
        return ours, "AVSS"
    plotted = dict(ours)
    for row, per_seed in own_cells.items():
        mean, _ = mean_std([numbers[0] for numbers in per_seed.values()])
        numbers = list(plotted.get(row, (None,) * len(COLUMNS)))
        numbers[4] = mean
        plotted[row] = tuple(numbers)
    return plotted, f"AVSS ({label})"


def sweep_points(metrics_dir: Path, grid: Grid | None = None) -> list[tuple[float, float | None, float | None]]:
    """(λ', MS3 mIoU, MS3 F) in % of each sweep file (of ``grid``'s λ' values, when given):
    paper Fig. 5 sweeps λ'_mask on MS3, so a point is its stage-1 model's binary mIoU / F on
    the v1m test subset (None where the file has no v1m figures)."""
    points = []
    for value, path in sweep_files(metrics_dir, grid).items():
        numbers = row_numbers(_read(path))
        points.append((value, numbers[2], numbers[3]))
    return points


def sweep_section(metrics_dir: Path, out: Path, grid: Grid | None = None) -> list[str]:
    """The λ' table and Fig. 5's plot (MS3, as the paper)."""
    points = sweep_points(metrics_dir, grid)
    if not points:
        plot_sweep([], out, note=f"no λ'_mask sweep: {metrics_dir}/sweep has no lambda_*.json")
        return [f"_(no sweep points in `{metrics_dir}/sweep`: params `sweep.lambda_post` lists the λ' values)_", ""]
    parts = [
        f"The full model's stage-1 (binary) model per λ'_mask, trained as Table 1's S4/MS3 models "
        f"(v1s + v1m) and tested on MS3 (`{metrics_dir}/sweep/lambda_{{v}}.json`, DVC `sweep@{{v}}`), "
        "as the paper sweeps on MS3; the point at `ablation.lambda_post` is Table 1's MS3 figure of SSP.",
        "",
        "| λ'_mask | MS3 mIoU | MS3 F |",
        "|---|---|---|",
    ]
    parts += [f"| {v:g} | {_fmt(m)} | {_fmt(f)} |" for v, m, f in points]
    missing = [f"{v:g}" for v, m, _ in points if m is None]
    if missing:
        parts += ["", f"_λ' = {', '.join(missing)}: the metrics file has no MS3 (v1m) figures (an older AVSS sweep?)_"]
    if not plot_sweep([p for p in points if p[1] is not None], out, note="no sweep point has MS3 (v1m) figures"):
        return [*parts, ""]
    return [*parts, "", "![sweep](lambda_sweep.png)", ""]


# ---------------------------------------------------------------------------------------
# Per scenario, with the ceilings
# ---------------------------------------------------------------------------------------
def load_ceilings(path: Path | None, data: Path | None, split: str) -> dict[str, Any] | None:
    """The ceilings JSON at ``path`` when it exists, else computed from ``data`` (None
    without either, or for a dataset without scene records)."""
    if path is not None and path.is_file():
        ceilings = _read(path)
    elif data is not None:
        ceilings = compute_ceilings(data, split)
    else:
        return None
    return ceilings if ceilings.get("available") else None


def ceiling_values(ceilings: dict[str, Any] | None, scenario: str, metric: str) -> list[float | None]:
    """Each oracle's ``metric`` (%) in ``scenario``; None where the ceilings lack it."""
    numbers = (ceilings or {}).get("scenarios", {}).get(scenario, {})
    return [None if numbers.get(o, {}).get(metric) is None else 100.0 * numbers[o][metric] for o in ORACLES]


def subset_ceiling_values(ceilings: dict[str, Any] | None, scenario: str, subsets: Sequence[str]) -> list:
    """Each oracle's binary per-frame mIoU (%) in ``scenario`` over ``subsets`` only (the
    frame-weighted mean of the per-subset means: the per-frame mean over their frames)."""
    by_subset = (ceilings or {}).get("scenarios", {}).get(scenario, {}).get("by_subset", {})
    parts = [by_subset[s] for s in subsets if s in by_subset and by_subset[s].get("frames")]
    frames = sum(p["frames"] for p in parts)
    if not frames:
        return [None] * len(ORACLES)
    return [100.0 * sum(p[o]["binary_miou"] * p["frames"] for p in parts) / frames for o in ORACLES]


def scenario_order(names: Iterable[str]) -> list[str]:
    """Scenario names in the benchmark's order (moving_sounding first), unknown ones last."""
    names = set(names)
    return [s for s in SCENARIOS if s in names] + sorted(names - set(SCENARIOS))


def ceilings_note(ceilings: dict[str, Any]) -> str:
    """What the ceiling columns and rows mean (printed once, under the per-scenario tables)."""
    split = ceilings.get("split", "?")
    return (
        f"**Ceilings** ({split} split; `ssp ceilings`, ssp/report/ceilings.py): what a perfect model with only "
        "these cues reaches, scored with the same metric as the numbers beside them. Audio only: knows which "
        "classes sound in each frame and segments every object of them (a silent same-class twin too); "
        "audio + motion: among a sounding class's objects keeps the moving ones when some move and some do "
        "not; audio + motion + text: keeps the objects the answers name as sounding (the ground truth). The "
        "per-scenario ceilings are on the present-class mIoU (stage 2) and the binary mIoU (stage 1), where a "
        "perfect model scores 100: a scenario's frames hold a few of the classes, so over the whole label space "
        "even the ground truth would score below 100." + _headroom_sentence(ceilings)
    )


def _headroom_sentence(ceilings: dict[str, Any]) -> str:
    """What motion and text can add over the whole split to a model that uses the audio
    perfectly: the most the SSP mechanisms can lift it (empty without ``overall``)."""
    overall = cue_headroom(ceilings).get("overall")
    if overall is None:
        return ""
    audio = 100 * ceilings["overall"]["audio"]["miou_present"]
    return (
        f" Over the whole split the audio-only ceiling is {audio:.1f} (present classes): motion and text can "
        f"add at most {overall['motion_text']:.1f} points to a model that uses the audio perfectly (motion "
        f"alone {overall['motion']:.1f})."
    )


def scenario_table(result: dict[str, Any], ceilings: dict[str, Any] | None = None) -> str:
    """The main model's per-scenario table: the own-label-space mIoU / F first when the
    file has them, then the 71-class ones and the present-class mIoU; with ``ceilings``,
    each oracle's ceiling on the present-class mIoU (a scenario's frames hold a few of the
    classes: over the whole label space even a perfect model would score below 100)."""
    scenarios = result.get("per_scenario") or {}
    if not scenarios:
        return "_(no per-scenario table: the dataset has no scenarios.csv)_"
    own = all("miou_dataset" in m for m in scenarios.values())
    label = space_label(result)
    columns = (
        ["miou_dataset", "fscore_dataset", "miou", "fscore", "miou_present"]
        if own
        else ["miou", "fscore", "miou_present"]
    )
    names = [f"mIoU ({label})", f"F ({label})", *AVSS_71] if own else ["AVSS mIoU", "AVSS F"]
    names.append("mIoU (present classes)")
    if ceilings:  # on the present-class mIoU, where a perfect model scores 100 in every scenario
        names += [f"ceiling (present classes): {ORACLE_LABELS[o]}" for o in ORACLES]
    lines = ["| scenario | frames | " + " | ".join(names) + " |", "|---|" + "---|" * (1 + len(names))]
    for name in scenario_order(scenarios):
        m = scenarios[name]
        values = [None if m.get(k) is None else 100 * m[k] for k in columns]
        if ceilings:
            values += ceiling_values(ceilings, name, "miou_present")
        lines.append(f"| {name} | {m.get('frames', '')} | " + " | ".join(_fmt(v) for v in values) + " |")
    return "\n".join(lines)


def cell_scenarios(
    metrics_dir: Path, stage: int, grid: Grid | None = None
) -> tuple[dict[str, dict[str, list[dict]]], list[str]]:
    """Every Table-2 row's per-scenario numbers of ``stage``'s cells (row -> scenario ->
    one dict per seed) and the subsets those cells were tested on."""
    found: dict[str, dict[str, list[dict]]] = {}
    subsets: set[str] = set()
    for row in TABLE2:
        for path in cell_files(metrics_dir, stage, row, grid).values():
            result = _read(path)
            for scenario, numbers in (result.get("per_scenario") or {}).items():
                found.setdefault(row, {}).setdefault(scenario, []).append(numbers)
            subsets |= set(result.get("binary", {}))
    return found, sorted(subsets, key=lambda s: SUBSET_ORDER.index(s) if s in SUBSET_ORDER else len(SUBSET_ORDER))


def rows_scenario_table(
    metrics_dir: Path, stage: int, ceilings: dict[str, Any] | None, label: str, grid: Grid | None = None
) -> list[str]:
    """Markdown: every Table-2 row's per-scenario result (mean ± std over the seeds) of
    ``stage``'s cells, then one line per oracle's ceiling on the same metric. Stage 2: AVSS
    mIoU over the classes present; stage 1: binary per-frame mIoU, ceilings over the
    subsets the cells were tested on."""
    found, subsets = cell_scenarios(metrics_dir, stage, grid)
    if not found:
        return []
    # stage 2: the present-class mIoU, on which a perfect model scores 100 in every scenario
    # (the few classes a scenario's frames hold would cap it over a whole label space)
    metric = "miou_present" if stage == 2 else "miou"
    scenarios = scenario_order(s for per_scenario in found.values() for s in per_scenario)
    if stage == 2:
        what = "AVSS mIoU over the classes present"
    else:
        what = f"binary mIoU per frame, {' + '.join(subsets)}"
    heading = f"### {CELL_COLUMNS[stage]} cells (`{metrics_dir / CELL_FOLDERS[stage]}/`): {what}"
    lines = [heading, "", "| row | " + " | ".join(scenarios) + " |", "|---|" + "---|" * len(scenarios)]
    for row, per_scenario in found.items():
        stats = [mean_std([100 * m[metric] for m in per_scenario.get(s, [])]) for s in scenarios]
        lines.append(f"| {TABLE2[row].label} | " + " | ".join(_fmt_std(m, sd) for m, sd in stats) + " |")
    if ceilings:
        for k, oracle in enumerate(ORACLES):
            if stage == 2:
                values = [ceiling_values(ceilings, s, metric)[k] for s in scenarios]
            else:
                values = [subset_ceiling_values(ceilings, s, subsets)[k] for s in scenarios]
            lines.append(f"| ceiling: {ORACLE_LABELS[oracle]} | " + " | ".join(_fmt(v) for v in values) + " |")
    return [*lines, ""]


SWEEP_TITLE = "Full model vs λ'_mask (paper Fig. 5)"
ABLATION_TITLE = "Ablation (paper Table 2 rows) on this dataset"


def sweep_figure(points, label: str = "MS3") -> Figure | None:
    """Fig. 5: mIoU and F-score against λ'_mask (None without points); ``label`` names
    the figures' dataset."""
    if not points:
        return None
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    xs = [p[0] for p in points]
    ax.plot(xs, [p[1] for p in points], "o-", label=f"{label} mIoU")
    ax.plot(xs, [p[2] for p in points], "s--", label=f"{label} F-score")
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.set_xlabel("λ'_mask")
    ax.set_ylabel("%")
    ax.set_title(SWEEP_TITLE)
    ax.legend()
    fig.tight_layout()
    return fig


PLOT_DPI = 120


def save_figure(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG (120 dpi), atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=PLOT_DPI)


def note_figure(title: str, note: str) -> Figure:
    """A figure that says why it has nothing to plot: the report's PNGs are DVC outputs,
    so they are written even then (and a stale plot never outlives its data)."""
    fig = Figure(figsize=(5, 1.6))
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.4, note, ha="center", va="center", wrap=True)
    fig.tight_layout()
    return fig


def plot_sweep(points, out: Path, label: str = "MS3", note: str = "no sweep points") -> bool:
    """Write ``lambda_sweep.png``: Fig. 5's curve, or ``note`` when there are no points.
    True when it plotted points."""
    fig = sweep_figure(points, label)
    save_figure(fig or note_figure(SWEEP_TITLE, note), out / "lambda_sweep.png")
    return fig is not None


def ablation_figure(ours: dict[str, tuple], avss_label: str = "AVSS") -> Figure | None:
    """Horizontal bars of each row's S4, MS3 and AVSS mIoU (a missing cell draws no bar);
    None without any row. ``avss_label`` names the AVSS bars' label space."""
    if not ours:
        return None
    rows = [r for r in TABLE2 if r in ours]
    fig = Figure(figsize=(7, 0.5 + 0.55 * len(rows) + 1))
    ax = fig.subplots()
    height = 0.8 / 3
    for k, (column, name) in enumerate(((0, "S4"), (2, "MS3"), (4, avss_label))):
        ys = [i + (k - 1) * height for i in range(len(rows))]
        ax.barh(ys, [ours[r][column] or 0 for r in rows], height=height, label=f"{name} mIoU")
    ax.set_yticks(range(len(rows)), [TABLE2[r].label for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("mIoU (%)")
    ax.set_title(ABLATION_TITLE)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_ablation(ours: dict[str, tuple], out: Path, avss_label: str = "AVSS") -> bool:
    """Write ``ablation.png``: the rows' bars, or a note when no row has a result yet.
    True when it plotted rows."""
    fig = ablation_figure(ours, avss_label)
    save_figure(fig or note_figure(ABLATION_TITLE, "no ablation results yet"), out / "ablation.png")
    return fig is not None


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


def intro(metrics_dir: Path, main: dict[str, Any], grid: Grid | None = None) -> str:
    """The report's first paragraph: where the numbers come from and their conventions."""
    own_cells, label = dataset_cell_numbers(metrics_dir, grid)
    if not own_cells and "miou_dataset" in main.get("semantic", {}).get("all", {}):
        label = space_label(main)
    avss = (
        f"AVSS over real frames, mean over {label} (the dataset's own label space) first, then over all 71 "
        "AVSBench classes (the paper's convention; a class the dataset never uses scores 0 there)"
        if own_cells or label != "own label space"
        else "AVSS over real frames, mean over all 71 classes"
    )
    return (
        f"Metrics from `{metrics_dir}/` (test split; binary F in the official batch mode; {avss}). S4 / MS3: "
        f"the row's stage-1 model trained on v1s + v1m (`{metrics_dir}/{CELL_FOLDERS[1]}/`); AVSS: the row's "
        f"stage-2 model (`{metrics_dir}/{CELL_FOLDERS[2]}/`). Our numbers come from the dataset the pipeline "
        "ran on; the paper's from AVSBench."
    )


def left_out_note(metrics_dir: Path, grid: Grid | None) -> list[str]:
    """Markdown naming the metrics files the grid leaves out (none: nothing)."""
    files = left_out_files(metrics_dir, grid)
    if not files:
        return []
    log.warning("left out %d metrics files that params do not name: %s", len(files), ", ".join(map(str, files)))
    names = ", ".join(f"`{p.relative_to(metrics_dir)}`" for p in files)
    return [
        f"Left out: {len(files)} files under `{metrics_dir}/` that params (`ablation.rows`, `ablation.seeds`, "
        f"`ablation.stage1_rows`, `sweep.lambda_post`) do not name, from an earlier grid (DVC leaves the "
        f"outputs of a cell taken out of params in place): {names}.",
        "",
    ]


def metrics_split(metrics_dir: Path, main: dict[str, Any], grid: Grid | None = None) -> str:
    """The split the metrics files were computed on (the main model's, else a cell's, else
    the ``evaluate`` default): the split the ceilings must be computed on."""
    if main.get("split"):
        return str(main["split"])
    for stage in CELL_FOLDERS:
        for row in TABLE2:
            for path in cell_files(metrics_dir, stage, row, grid).values():
                return str(_read(path).get("split") or EvaluateParams().split)
    return EvaluateParams().split


def scenario_sections(
    metrics_dir: Path, main: dict[str, Any], ceilings: dict[str, Any] | None, grid: Grid | None = None
) -> list[str]:
    """The per-scenario tables: the main model's, then every Table-2 row's (stage-2 and
    stage-1 cells), each with the ceilings on its metric."""
    parts = ["## Per scenario (main model)", "", scenario_table(main, ceilings), ""]
    _, label = dataset_cell_numbers(metrics_dir, grid)
    rows = [
        *rows_scenario_table(metrics_dir, 2, ceilings, label, grid),
        *rows_scenario_table(metrics_dir, 1, ceilings, label, grid),
    ]
    if rows:
        parts += ["## Per scenario (paper Table 2 rows, test)", "", *rows]
    if ceilings:
        parts += [ceilings_note(ceilings), ""]
    return parts


def build_report(
    metrics_dir: str | Path = "metrics",
    out: str | Path = "reports",
    samples: str | Path | None = DEFAULT_SAMPLES,
    ceilings: str | Path | None = None,
    data: str | Path | None = None,
    grid: Grid | None = None,
) -> tuple[Path, str]:
    """report.md in ``out`` (and its plots); returns its path and text. ``ceilings``: the
    ``ssp ceilings`` JSON (default ``{out}/ceilings.json``, where the DVC stage writes it);
    when it does not exist and ``data`` is given, the ceilings are computed from ``data``.
    ``grid``: only the cells and λ' points it names count (:class:`Grid`); the other
    files are named under the first paragraph."""
    metrics_dir, out = Path(metrics_dir), Path(out)
    samples = Path(samples) if samples is not None else None
    if not metrics_dir.is_dir():
        raise SSPError(f"{metrics_dir}: no metrics folder (run the pipeline first: dvc repro)")
    out.mkdir(parents=True, exist_ok=True)
    table1, table2, ours = ablation_table(metrics_dir, grid)
    main = _read(metrics_dir / "stage2.json") if (metrics_dir / "stage2.json").exists() else {}
    ceilings_path = Path(ceilings) if ceilings is not None else out / "ceilings.json"
    found_ceilings = load_ceilings(ceilings_path, Path(data) if data else None, metrics_split(metrics_dir, main, grid))

    parts = [
        "# SSP report",
        "",
        intro(metrics_dir, main, grid),
        "",
        *left_out_note(metrics_dir, grid),
        "## AAVS vs SSP (paper Table 1)",
        "",
        table1,
        "",
        "## Ablation (paper Table 2)",
        "",
        table2,
        "",
    ]
    plotted, avss_label = plotted_ours(ours, metrics_dir, grid)
    if plot_ablation(plotted, out, avss_label):
        parts += ["![ablation](ablation.png)", ""]
    parts += samples_section(samples, out)
    parts += ["## λ'_mask sweep (paper Fig. 5)", "", *sweep_section(metrics_dir, out, grid)]
    parts += scenario_sections(metrics_dir, main, found_ceilings, grid)
    text = "\n".join(parts)
    write_json(out / "ablation_summary.json", ablation_summary(metrics_dir, grid))
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
    parser.add_argument(
        "--ceilings",
        default=None,
        type=Path,
        help="per-scenario ceilings JSON of `ssp ceilings` (DVC stage `ceilings`), printed beside every "
        "per-scenario result (default: OUT/ceilings.json)",
    )
    parser.add_argument(
        "--data",
        default=None,
        type=Path,
        help="dataset root: compute the ceilings from its scene records when the ceilings JSON does not exist",
    )
    parser.add_argument(
        "--params",
        default=None,
        type=Path,
        metavar="FILE",
        help="report only the cells and λ' points this params file names (sections `ablation`: rows, seeds, "
        "stage1_rows; `sweep`: lambda_post), naming the other files found (an earlier grid's, which DVC leaves "
        "in place); the pipeline passes params.yaml (default: every file under --metrics)",
    )


# ---------------------------------------------------------------------------------------
# MLflow: the pipeline's parent runs hold the tables and plots
# ---------------------------------------------------------------------------------------
def markdown_table(text: str, heading: str) -> list[dict[str, str]]:
    """The rows of the first markdown table after ``heading`` in ``text`` (column -> cell)."""
    lines = text.splitlines()
    start = lines.index(heading)
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, body = rows[0], rows[2:]  # rows[1] is the |---| rule
    return [dict(zip(header, r)) for r in body]


def report_files(out: Path, text: str) -> list[Path]:
    """report.md and the plots it shows (a plot with nothing to draw is a note: not shown)."""
    return [out / "report.md", *(out / name for name in ("ablation.png", "lambda_sweep.png") if f"]({name})" in text)]


def log_to_pipeline_runs(out: Path, text: str) -> list[str]:
    """When the reproduce flow runs this (its parent runs are in the environment): log the
    two paper tables as MLflow tables (the run page's artifact view shows them as tables),
    the ablation and λ'_mask plots and report.md into every parent run. Returns their ids."""
    parents = [p for p in (parent_run_from_env(e) for e in EXPERIMENTS.values()) if p]
    if not parents:
        return []
    tables = {
        "table1.json": markdown_table(text, "## AAVS vs SSP (paper Table 1)"),
        "table2.json": markdown_table(text, "## Ablation (paper Table 2)"),
    }
    files = report_files(out, text)
    for run_id in parents:
        run = ExistingRun(run_id)
        for name, rows in tables.items():
            run.log_table(pd.DataFrame(rows), f"report/{name}")
        for path in files:
            run.log_artifact(path, "report")
    return parents


def main(args: argparse.Namespace) -> int:
    if args.params is not None and not args.params.is_file():
        raise DataError(args.params, "params file not found")  # load_params would use the defaults
    grid = Grid.from_params(load_params(args.params)) if args.params is not None else None
    path, text = build_report(args.metrics, args.out, args.samples, args.ceilings, args.data, grid)
    print(text)
    print(f"\nreport: {path}")
    for run_id in log_to_pipeline_runs(Path(args.out), text):
        print(f"logged to the pipeline's MLflow run {run_id}")
    return 0

"""``ssp samples``: the paper's Fig. 8 for the ablation rows, as a PNG and an MLflow artifact.

One grid (:func:`ssp.report.drawing.ablation_sample_grid`): a column per clip, the frame, the
flow mask M_O, the pre-mask M_Pre and the GT, then one row per ablation row (the order of
``ablation.rows`` in params.yaml), the A1/A2 prompts under each column. Every row shows
the same clips, picked deterministically (:func:`pick_clips`: one per scenario of the
generated benchmark first), so that re-runs and rows compare like with like.

The PNG goes to ``reports/samples/ablation_grid.png`` (``ssp report`` links it) and to
MLflow, experiment ``ssp-avss``, artifact ``samples/``: into the pipeline's parent run
when ``SSP_MLFLOW_PARENT_RUN_ID`` names one (the grid belongs to the pipeline run, as
the rows' runs are its children), else into a new run named ``samples``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from ssp.errors import SSPError
from ssp.paper import TABLE2

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("reports/samples/ablation_grid.png")
EXPERIMENT = "ssp-avss"  # the ablation rows are stage-2 (AVSS) runs
ARTIFACT_PATH = "samples"


def pick_clips(data: str | Path, count: int = 4, split: str = "test") -> list[str]:
    """``count`` uids of ``split``: the first clip (manifest order) of each scenario
    (``scenarios.csv`` of the generated benchmark, scenarios in name order), then further
    clips in manifest order until there are ``count``. Same data -> same clips."""
    from ssp.data.avsbench import load_records
    from ssp.eval.evaluate import read_scenarios

    if count < 1:
        raise SSPError(f"--clips must be at least 1 (got {count})")
    records = load_records(data, splits=[split])
    if not records:
        raise SSPError(f"{data}: no {split} videos to show")
    uids = [r.uid for r in records]
    scenarios = read_scenarios(Path(data))
    first_of: dict[str, str] = {}
    for uid in uids:
        if uid in scenarios:
            first_of.setdefault(scenarios[uid], uid)
    chosen = [first_of[s] for s in sorted(first_of)][:count]
    chosen += [u for u in uids if u not in chosen][: count - len(chosen)]
    return chosen


def row_label(row: str) -> str:
    """The paper's name of a Table 2 row (``ssp report`` uses the same), else the row id."""
    return TABLE2[row].label if row in TABLE2 else row


def ablation_rows(params_path: str | Path) -> list[str]:
    from ssp.ops.params import load_params

    rows = (load_params(Path(params_path)).get("ablation") or {}).get("rows") or []
    if not rows:
        raise SSPError(f"{params_path}: no ablation.rows (or pass --rows)")
    return [str(r) for r in rows]


class _ExistingRun:
    """The part of :class:`ssp.ops.tracking.RunLogger` that :func:`log_sample_grid` uses, on
    a run another process opened (the pipeline's parent run): add an artifact, never
    start or end the run (its owner does)."""

    def __init__(self, run_id: str):
        from ssp.ops.tracking import get_client

        self.run_id = run_id
        self._client = get_client()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        from ssp.ops.tracking import _retry

        _retry(lambda: self._client.log_artifact(self.run_id, str(path), artifact_path), "log_artifact")


def log_grid(path: str | Path) -> str | None:
    """Log the grid PNG to MLflow (see module doc); returns the run id it went to."""
    from ssp.ops.tracking import RunLogger, parent_run_from_env
    from ssp.report.drawing import log_sample_grid

    parent = parent_run_from_env(EXPERIMENT)
    if parent:
        log_sample_grid(_ExistingRun(parent), path, ARTIFACT_PATH)
        return parent
    # parent_run_id="": a top-level run (no parent in the environment anyway)
    with RunLogger(EXPERIMENT, "samples", tags={"ssp.kind": "samples"}, parent_run_id="") as run:
        log_sample_grid(run, path, ARTIFACT_PATH)
    return run.run_id


def make_samples(data: str | Path, runs: str | Path, rows: Sequence[str], out: str | Path = DEFAULT_OUT,
                 flow: str | Path | None = None, prompts: str | Path | None = None,
                 stage1_masks: str | Path | None = None, uids: Sequence[str] | None = None, clips: int = 4,
                 split: str = "test", frame_index: int = 0, panel_size: int = 128, device: str = "cpu",
                 track: bool = True) -> tuple[Path, str | None]:
    """Write the ablation grid of ``rows`` (run folders ``{runs}/{row}``) to ``out`` and
    log it to MLflow unless ``track`` is False. Returns (PNG path, MLflow run id or None)."""
    from ssp.report.drawing import ablation_sample_grid

    runs = Path(runs)
    if not rows:
        raise SSPError("no ablation rows to show")
    # all missing rows in one message, before any model is loaded
    missing = [str(runs / r / "checkpoints" / "best.safetensors") for r in rows
               if not (runs / r / "checkpoints" / "best.safetensors").is_file()]
    if missing:
        raise SSPError(f"no checkpoint for {len(missing)} ablation row(s): {', '.join(missing)} "
                       "(train them first: dvc repro ablation)")
    if len(set(rows)) != len(rows):
        raise SSPError(f"ablation rows repeat: {', '.join(rows)}")
    labels = [row_label(r) for r in rows]
    uids = list(uids) if uids else pick_clips(data, clips, split)
    log.info("samples: %d rows x %d clips (%s)", len(rows), len(uids), ", ".join(uids))
    path = ablation_sample_grid({label: runs / row for label, row in zip(labels, rows)}, data, flow, prompts,
                                stage1_masks, uids, out=out, frame_index=frame_index, device=device,
                                panel_size=panel_size)
    run_id = log_grid(path) if track else None
    return path, run_id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="dataset root")
    parser.add_argument("--runs", default=Path("runs/ablation"), type=Path,
                        help="folder of the rows' run folders, {runs}/{row}/checkpoints/best.safetensors "
                             "(default: runs/ablation)")
    parser.add_argument("--rows", nargs="+", default=None,
                        help="rows, top to bottom (default: ablation.rows of --params)")
    parser.add_argument("--params", default=Path("params.yaml"), type=Path,
                        help="params file whose ablation.rows are the rows (default: params.yaml)")
    parser.add_argument("--flow", type=Path, default=None, help="`ssp flow` output (M_O panels, pre-mask rows)")
    parser.add_argument("--prompts", type=Path, default=None, help="`ssp prompts` output (captions, text rows)")
    parser.add_argument("--stage1-masks", type=Path, default=None,
                        help="`ssp stage1-masks` output: stage 2's stepping stones (required for stage-2 rows)")
    parser.add_argument("--clips", type=int, default=4, help="number of clips (columns) (default: 4)")
    parser.add_argument("--uids", nargs="+", default=None, help="these clips instead of the automatic choice")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"),
                        help="split the clips come from (default: test)")
    parser.add_argument("--frame", type=int, default=0, help="frame index shown per clip (default: 0)")
    parser.add_argument("--panel-size", type=int, default=128, help="side of each panel in pixels (default: 128)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default: cpu; a few forward passes)")
    parser.add_argument("--out", default=DEFAULT_OUT, type=Path, help=f"the PNG (default: {DEFAULT_OUT})")
    parser.add_argument("--no-track", action="store_true", help="do not log the grid to MLflow")


def main(args: argparse.Namespace) -> int:
    rows = args.rows or ablation_rows(args.params)
    path, run_id = make_samples(args.data, args.runs, rows, args.out, flow=args.flow, prompts=args.prompts,
                                stage1_masks=args.stage1_masks, uids=args.uids, clips=args.clips,
                                split=args.split, frame_index=args.frame, panel_size=args.panel_size,
                                device=args.device, track=not args.no_track)
    log.info("samples: %s%s", path, f" (MLflow run {run_id}, artifact {ARTIFACT_PATH}/{path.name})" if run_id else "")
    return 0

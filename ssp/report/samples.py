"""``ssp samples``: the paper's Fig. 8 for the ablation rows, as a PNG and an MLflow artifact.

One grid (:func:`ablation_sample_grid`): a column per clip, the frame, the flow mask M_O,
the pre-mask M_Pre and the GT, then one row per ablation row (the order of
``ablation.rows`` in params.yaml), the A1/A2 prompts under each column. Each row shows the
model of the first seed of ``ablation.seeds`` (run folder ``{runs}/{row}/seed{seed}``, the
DVC matrix's layout). Every row shows the same clips, picked deterministically
(:func:`pick_clips`: one per scenario of the generated benchmark first), so that re-runs
and rows compare like with like. The models run through the engine's predict loop
(:func:`ssp.engine.predict.predict_batches`); the panels are drawn by
:mod:`ssp.report.drawing`.

The PNG goes to ``reports/samples/ablation_grid.png`` (``ssp report`` links it) and to
MLflow, experiment ``ssp-avss``, artifact ``samples/``: into the pipeline's parent run
when ``SSP_MLFLOW_PARENT_RUN_ID`` names one (the grid belongs to the pipeline run, as
the rows' runs are its children), else into a new run named ``samples``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ssp.data.avsbench import VideoRecord, class_names, load_records, read_frame, read_mask, read_scenarios
from ssp.engine.inputs import InputDirs, build_dataset, dataset_batches
from ssp.engine.predict import predict_batches
from ssp.errors import SSPError
from ssp.models.checkpoint import load_model
from ssp.models.premask import pre_mask
from ssp.ops.tracking import ExistingRun, RunLogger, parent_run_from_env
from ssp.paper import TABLE2
from ssp.params import Params, add_params_arguments, stage_params
from ssp.report.drawing import (
    blend,
    default_palette,
    fit_panel,
    legend,
    log_sample_grid,
    mask_panel,
    sample_grid,
    write_png,
)

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("reports/samples/ablation_grid.png")
EXPERIMENT = "ssp-avss"  # the ablation rows are stage-2 (AVSS) runs
ARTIFACT_PATH = "samples"


# ---------------------------------------------------------------------------------------
# Which clips, rows and runs
# ---------------------------------------------------------------------------------------
def pick_clips(data: str | Path, count: int = 4, split: str = "test") -> list[str]:
    """``count`` uids of ``split``: the first clip (manifest order) of each scenario
    (``scenarios.csv`` of the generated benchmark, scenarios in name order), then further
    clips in manifest order until there are ``count``. Same data -> same clips."""
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


def ablation_rows(params: Params, where: str | Path = "params") -> list[str]:
    rows = [str(r) for r in params.ablation.rows]
    if not rows:
        raise SSPError(f"{where}: no ablation.rows (or pass --rows)")
    return rows


def first_seed(params: Params, where: str | Path = "params") -> int:
    """The seed whose models the grid shows: the first of ``ablation.seeds``."""
    if not params.ablation.seeds:
        raise SSPError(f"{where}: no ablation.seeds (or pass --seed)")
    return int(params.ablation.seeds[0])


def run_dir(runs: str | Path, row: str, seed: int) -> Path:
    """The run folder of one ablation cell (the DVC matrix's ``runs/ablation/{row}/seed{seed}``)."""
    return Path(runs) / row / f"seed{seed}"


def checkpoint_of(run_dir_or_checkpoint: str | Path) -> Path:
    """A run folder's ``checkpoints/best.safetensors`` (or the checkpoint file itself)."""
    path = Path(run_dir_or_checkpoint)
    if path.is_dir():
        path = path / "checkpoints" / "best.safetensors"
    if not path.is_file():
        raise SSPError(f"{path}: no checkpoint (train the row first)")
    return path


# ---------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------
def prompts_caption(a1: str, a2: Sequence[str]) -> str:
    """A2 first: it is short and it is what a long A1 would push out of a cut caption."""
    return f"A2: {', '.join(a2) or '-'}\nA1: {a1.strip() or '-'}"


def _read_gray(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def clip_panels(
    records: Sequence[VideoRecord],
    flow_dir: str | Path | None,
    prompts_dir: str | Path | None,
    stage1_dir: str | Path | None,
    frame_index: int,
    size: tuple[int, int],
    palette: np.ndarray,
) -> tuple[dict[str, list[np.ndarray]], list[str], set[int]]:
    """The fixed rows (frame, M_O, M_Pre, GT overlay) of every clip, the column captions
    and the classes of the GT panels."""
    frames, flows, premasks, gts, captions = [], [], [], [], []
    shown: set[int] = set()  # classes in the GT panels, for the legend
    for record in records:
        i = min(frame_index, record.num_frames - 1)
        frame = fit_panel(read_frame(record.frame_paths[i], record.root), size)
        gt = read_mask(record, i, task="avss") if record.labelled[i] else np.zeros(frame.shape[:2], np.int64)
        gt = fit_panel(gt.astype(np.uint8), size).astype(np.int64)[..., 0]
        flow = np.zeros(size, np.float32)
        if flow_dir is not None and (Path(flow_dir) / record.rel_dir / "mask" / f"{i}.png").is_file():
            flow = (
                fit_panel(np.asarray(_read_gray(Path(flow_dir) / record.rel_dir / "mask" / f"{i}.png")), size)[..., 0]
                > 127
            )
        stand_in = gt > 0
        if stage1_dir is not None and (Path(stage1_dir) / record.rel_dir / f"{i}.png").is_file():
            stand_in = fit_panel(_read_gray(Path(stage1_dir) / record.rel_dir / f"{i}.png"), size)[..., 0] > 127
        premask = pre_mask(
            torch.from_numpy(np.asarray(flow, np.float32)), torch.from_numpy(stand_in.astype(np.float32))
        )
        frames.append(frame)
        flows.append(mask_panel(flow))
        premasks.append(mask_panel(premask.numpy()))
        gts.append(blend(frame, gt, palette))
        shown.update(int(c) for c in np.unique(gt) if c > 0)
        a1, a2 = "", []
        if prompts_dir is not None and (Path(prompts_dir) / record.rel_dir / "prompts.json").is_file():
            prompts = json.loads((Path(prompts_dir) / record.rel_dir / "prompts.json").read_text())
            a1, a2 = prompts.get("a1", ""), prompts.get("a2", [])
        captions.append(f"{record.uid}\n{prompts_caption(a1, a2)}")
    rows = {"frame": frames, "flow mask M_O": flows, "pre-mask M_Pre": premasks, "ground truth": gts}
    return rows, captions, shown


def prediction_panels(
    run: str | Path,
    records: Sequence[VideoRecord],
    frames: Sequence[np.ndarray],
    flow_dir: str | Path | None,
    prompts_dir: str | Path | None,
    stage1_dir: str | Path | None,
    frame_index: int,
    device: str,
    size: tuple[int, int],
    palette: np.ndarray,
    shown: set[int],
) -> list[np.ndarray]:
    """One row's model (run folder or checkpoint) on every clip: its prediction of frame
    ``frame_index`` blended into the frame panel; stage-2 classes shown go into ``shown``."""
    model, config, _ = load_model(checkpoint_of(run), device)
    dataset = build_dataset(
        records,
        config,
        InputDirs(flow=flow_dir, prompts=prompts_dir),
        stage1_dir=stage1_dir if config.stage == 2 else None,
        strict_masks=False,
        pad_short_audio=True,
        max_frames=frame_index + 1,
    )  # frames up to the shown one
    panels = []
    for v, (_, scores) in enumerate(predict_batches(model, dataset_batches(dataset, 1), device)):
        i = min(frame_index, records[v].num_frames - 1)
        scores = scores.cpu()
        pred = (scores[i] > 0).long() if config.stage == 1 else scores[i].argmax(0)
        pred = fit_panel(pred.numpy().astype(np.uint8), size).astype(np.int64)[..., 0]
        panels.append(blend(frames[v], pred, palette))
        if config.stage == 2:  # a stage-1 "1" means foreground, not class 1
            shown.update(int(c) for c in np.unique(pred) if c > 0)
    return panels


def ablation_sample_grid(
    run_dirs: Mapping[str, str | Path],
    data_root: str | Path,
    flow_dir: str | Path | None,
    prompts_dir: str | Path | None,
    stage1_dir: str | Path | None,
    uids: Sequence[str],
    out: str | Path | None = None,
    frame_index: int = 0,
    device: str = "cpu",
    panel_size: int = 128,
) -> Path:
    """Paper Fig. 8 for the ablation rows: for each clip of ``uids`` (frame ``frame_index``)
    the frame, the flow mask M_O, the pre-mask M_Pre (eq. 2 with stage 1's predicted mask
    standing in for M_GT, as at test time; with the GT when ``stage1_dir`` is None), the
    GT overlay, and every row's predicted overlay; A1/A2 under each column.

    ``run_dirs`` maps a row name to its run folder (``checkpoints/best.safetensors``) or a
    checkpoint file. Stage-2 models read stage 1's masks from ``stage1_dir``. Writes the
    PNG to ``out`` (default ``{data_root}/../sample_grid.png``) and returns its path.
    """
    data_root = Path(data_root)
    by_uid = {r.uid: r for r in load_records(data_root)}
    missing = [u for u in uids if u not in by_uid]
    if missing:
        raise SSPError(f"{data_root}: no video with uid {', '.join(missing)}")
    records = [by_uid[u] for u in uids]
    try:
        names: Sequence[str] | None = class_names(data_root)
    except SSPError:
        names = None
    palette = default_palette(256)
    size = (panel_size, panel_size)
    rows, captions, shown = clip_panels(records, flow_dir, prompts_dir, stage1_dir, frame_index, size, palette)
    for row_name, run in run_dirs.items():
        rows[row_name] = prediction_panels(
            run, records, rows["frame"], flow_dir, prompts_dir, stage1_dir, frame_index, device, size, palette, shown
        )
    # One legend for every class shown (GT and predictions), so the colours can be read off.
    grid = sample_grid(rows, captions, panel_size=panel_size, caption_lines=8)
    grid = np.concatenate([grid, legend(sorted(shown), palette, names, grid.shape[1])], axis=0)
    out = Path(out) if out is not None else data_root.parent / "sample_grid.png"
    return write_png(out, grid)


# ---------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------
def log_grid(path: str | Path) -> str | None:
    """Log the grid PNG to MLflow (see module doc); returns the run id it went to."""
    parent = parent_run_from_env(EXPERIMENT)
    if parent:
        log_sample_grid(ExistingRun(parent), path, ARTIFACT_PATH)
        return parent
    # parent_run_id="": a top-level run (no parent in the environment anyway)
    with RunLogger(EXPERIMENT, "samples", tags={"ssp.kind": "samples"}, parent_run_id="") as run:
        log_sample_grid(run, path, ARTIFACT_PATH)
    return run.run_id


def make_samples(
    data: str | Path,
    runs: str | Path,
    rows: Sequence[str],
    out: str | Path = DEFAULT_OUT,
    flow: str | Path | None = None,
    prompts: str | Path | None = None,
    stage1_masks: str | Path | None = None,
    uids: Sequence[str] | None = None,
    clips: int = 4,
    split: str = "test",
    frame_index: int = 0,
    panel_size: int = 128,
    device: str = "cpu",
    track: bool = True,
    seed: int = 0,
) -> tuple[Path, str | None]:
    """Write the ablation grid of ``rows`` (run folders ``{runs}/{row}/seed{seed}``) to
    ``out`` and log it to MLflow unless ``track`` is False. Returns (PNG path, MLflow run
    id or None)."""
    if not rows:
        raise SSPError("no ablation rows to show")
    # all missing rows in one message, before any model is loaded
    checkpoints = {row: run_dir(runs, row, seed) / "checkpoints" / "best.safetensors" for row in rows}
    missing = [str(path) for path in checkpoints.values() if not path.is_file()]
    if missing:
        raise SSPError(
            f"no checkpoint for {len(missing)} ablation row(s): {', '.join(missing)} "
            "(train them first: dvc repro ablation)"
        )
    if len(set(rows)) != len(rows):
        raise SSPError(f"ablation rows repeat: {', '.join(rows)}")
    uids = list(uids) if uids else pick_clips(data, clips, split)
    log.info("samples: %d rows x %d clips (%s), seed %d", len(rows), len(uids), ", ".join(uids), seed)
    path = ablation_sample_grid(
        {row_label(row): run_dir(runs, row, seed) for row in rows},
        data,
        flow,
        prompts,
        stage1_masks,
        uids,
        out=out,
        frame_index=frame_index,
        device=device,
        panel_size=panel_size,
    )
    run_id = log_grid(path) if track else None
    return path, run_id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="dataset root")
    parser.add_argument(
        "--runs",
        default=Path("runs/ablation"),
        type=Path,
        help="folder of the rows' run folders, {runs}/{row}/seed{seed}/checkpoints/best.safetensors "
        "(default: runs/ablation)",
    )
    parser.add_argument(
        "--rows", nargs="+", default=None, help="rows, top to bottom (default: ablation.rows of --params)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the seed whose models are shown (default: the first of ablation.seeds of --params)",
    )
    add_params_arguments(parser, "ablation.seeds=[1]")
    parser.add_argument("--flow", type=Path, default=None, help="`ssp flow` output (M_O panels, pre-mask rows)")
    parser.add_argument("--prompts", type=Path, default=None, help="`ssp prompts` output (captions, text rows)")
    parser.add_argument(
        "--stage1-masks",
        type=Path,
        default=None,
        help="`ssp stage1-masks` output: stage 2's stepping stones (required for stage-2 rows)",
    )
    parser.add_argument("--clips", type=int, default=4, help="number of clips (columns) (default: 4)")
    parser.add_argument("--uids", nargs="+", default=None, help="these clips instead of the automatic choice")
    parser.add_argument(
        "--split", default="test", choices=("train", "val", "test"), help="split the clips come from (default: test)"
    )
    parser.add_argument("--frame", type=int, default=0, help="frame index shown per clip (default: 0)")
    parser.add_argument("--panel-size", type=int, default=128, help="side of each panel in pixels (default: 128)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default: cpu; a few forward passes)")
    parser.add_argument("--out", default=DEFAULT_OUT, type=Path, help=f"the PNG (default: {DEFAULT_OUT})")
    parser.add_argument("--no-track", action="store_true", help="do not log the grid to MLflow")


def main(args: argparse.Namespace) -> int:
    params = stage_params(args)
    rows = args.rows or ablation_rows(params, args.params)
    seed = args.seed if args.seed is not None else first_seed(params, args.params)
    path, run_id = make_samples(
        args.data,
        args.runs,
        rows,
        args.out,
        flow=args.flow,
        prompts=args.prompts,
        stage1_masks=args.stage1_masks,
        uids=args.uids,
        clips=args.clips,
        split=args.split,
        frame_index=args.frame,
        panel_size=args.panel_size,
        device=args.device,
        track=not args.no_track,
        seed=seed,
    )
    log.info("samples: %s%s", path, f" (MLflow run {run_id}, artifact {ARTIFACT_PATH}/{path.name})" if run_id else "")
    return 0

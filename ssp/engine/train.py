"""``ssp train``: two-stage training of SSP (stage 1 = binary AVS, stage 2 = AVSS).

Read top to bottom like torchvision's reference scripts:

1. params (:mod:`ssp.params`): sections ``model`` and ``train1``/``train2``; the SSP
   switches from ``--row`` (a row of paper Table 2, :mod:`ssp.paper`), else the ``ssp``
   section for stage 2 and the ``aavs`` row for stage 1 (:func:`model_switches`);
2. data (:mod:`ssp.engine.inputs`): train/val records (stage 1: binary masks of every
   subset; stage 2: class masks), a resumable, seeded (Distributed)Sampler;
3. model, loss, AdamW (lr 1e-3, wd 0.05), StepLR (x0.1 at ``lr_step_epoch``) (:func:`setup`);
   AAVS's phase switch at ``phase2_epoch`` (:func:`start_phase2`: reload the best
   checkpoint, re-initialise and unfreeze the Swin adapters, a new AdamW at ``phase2_lr``);
4. the loop (:func:`train_one_epoch`): bf16 autocast on CUDA only, optional gradient
   clipping, losses kept on the device and read every ``log_every`` steps (no per-step
   sync), a resumable checkpoint every ``step_checkpoint_every`` steps; at every epoch end
   (:func:`end_epoch`) validation with the AVSBench metrics (:func:`evaluate`), the best
   checkpoint kept, an epoch checkpoint;
5. outputs (:func:`finish`): ``{run_dir}/checkpoints/`` (:mod:`ssp.engine.checkpoints`),
   ``history.csv`` (one row per epoch) and ``metrics.json`` for DVC, an MLflow run
   (:mod:`ssp.ops.tracking`) with params, per-epoch metrics, final metrics, the best
   checkpoint and overlay PNGs.

Exact resume: the data order of epoch ``e`` is a permutation seeded by ``(seed, e)``,
items carry no randomness, the loaders draw their workers' seeds from their own generators
(never from the global RNG, which a persistent worker pool would otherwise touch once per
process), and every RNG the step uses (torch/CUDA for the loss's point sampling, numpy,
python) is saved with the optimizer, scheduler and the position in the epoch, so
``--resume`` after a kill (at an epoch end or at a step checkpoint) ends with the same
weights, optimizer, scheduler and RNG state as a run that was never interrupted (on CPU,
with the same thread count). ``--resume auto`` (dvc.yaml) continues only the same run
(:func:`run_signature`) and otherwise starts fresh; ``keep_last`` bounds the checkpoints
kept (:meth:`ssp.engine.checkpoints.CheckpointDir.prune`); ``--adopt`` takes over this very
run, finished in another folder, instead of training it again (:func:`adopt_finished_run`).

DDP (:mod:`ssp.engine.distributed`): launched by ``torchrun`` (env ``WORLD_SIZE`` > 1) it
uses gloo on CPU / nccl on CUDA, shards data with the sampler, all-reduces the metric
meters and the epoch losses, and only rank 0 logs and writes.

Stage 2's stepping stone: the GT binary mask in training (the model reads the batch's
masks in train mode), stage 1's predicted mask at validation: from ``--stage1-masks``
(written by ``ssp stage1-masks``) or computed in-process from ``--stage1-checkpoint``
(:mod:`ssp.engine.predict`).

Testing the best checkpoint in the same process (``--test-out``) is
:mod:`ssp.eval.train_test`: the engine does not import the evaluation commands.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from ssp import paper
from ssp.data.palette import index_to_colour
from ssp.engine.checkpoints import CheckpointDir, Position, TrainingState, read_training_state
from ssp.engine.distributed import Dist, barrier, broadcast_from_main, mean_over_ranks, setup_distributed
from ssp.engine.inputs import InputDirs, Loaders, build_loaders, build_stage_datasets, to_device
from ssp.engine.predict import predict_batches
from ssp.errors import SSPError
from ssp.fileio import atomic_path, file_md5, write_json, write_text
from ssp.metrics import BinaryMeter, SemanticMeter, dataset_label_space
from ssp.models import SSPConfig, SSPModel
from ssp.models.adapters import apply_recipe, reinit_swin_adapters
from ssp.models.checkpoint import (
    check_same_pretrained,
    load_model,
    load_weights_into,
    read_weights,
    without_weight_specs,
)
from ssp.models.criterion import SSPCriterion
from ssp.ops.tracking import EXPERIMENTS, RunLogger, data_hash, node_system_metrics
from ssp.params import ModelParams, Params, TrainParams, add_params_arguments, stage_params

log = logging.getLogger(__name__)

# Test/diagnostic aid: raise after this many optimizer steps, as if the process were
# killed there (nothing after that step is written). Used by the resume tests.
INTERRUPT_ENV = "SSP_TRAIN_INTERRUPT_AFTER_STEPS"
LOSS_NAMES = ("loss", "loss_ce", "loss_mask", "loss_dice", "loss_post", "loss_class")
# --resume: off (a fresh run; a former run's checkpoints are removed), on (continue from the
# newest checkpoint; refuses another model config), auto (continue when the checkpoint is
# this very run's -- same model config, training params, videos and resume keys -- else
# start fresh): what dvc.yaml's training stages pass, so a re-run continues an interrupted
# stage and a changed one starts over.
RESUME_MODES = ("off", "on", "auto")
# train params that do not change what a run computes, left out of the run signature
NOT_IN_SIGNATURE = (
    "num_workers",
    "log_every",
    "device",
    "threads",
    "val_batch_size",
    "overlays",
    "cache_in_memory",
    "step_checkpoint_every",
    "keep_last",
)
# the own-label-space numbers lead (a dataset with its own label space only; see ssp.metrics)
VAL_METRICS = (
    "miou_dataset",
    "fscore_dataset",
    "miou",
    "fscore",
    "miou_no_bg",
    "fscore_no_bg",
    "miou_per_frame",
    "fscore_per_frame",
)


# ---------------------------------------------------------------------------------------
# Params -> model config, optimizer
# ---------------------------------------------------------------------------------------
def model_switches(params: Params, stage: int, row: str | None = None) -> dict[str, Any]:
    """The SSP switches (pre_mask, text, post_mask, lambda_post) of a stage's model: no row,
    the ``ssp`` section for stage 2 (the main model) and the ``aavs`` row for stage 1 (the
    AAVS binary model, the stepping-stone producer); a Table-2 ``row``'s switches in either
    stage (stage 1: the S4/MS3 cells ``ablation_avs``, stage 2: the AVSS cells
    ``ablation``), with ``ablation.lambda_post`` when the row has the post-mask (the other
    rows do not read λ', so its change leaves them alone)."""
    if row is None and stage == 2:
        return dataclasses.asdict(params.ssp)
    switches = dict(paper.row(row or "aavs").switches)
    if switches["post_mask"]:
        switches["lambda_post"] = params.ablation.lambda_post
    return switches


# per-stage model params: (ModelParams field, the SSPConfig field it sets in that stage's model)
STAGE_PARAMS = (
    ("stage1_class_aux", "class_aux", 1),
    ("stage2_class_aux", "class_aux", 2),
    ("stage1_class_match_gain", "class_match_gain", 1),
    ("stage1_mask_stride", "mask_stride", 1),
    ("stage2_mask_stride", "mask_stride", 2),
    ("stage2_class_readout", "class_readout", 2),
)


def build_model_config(model: ModelParams, stage: int, switches: Mapping[str, Any]) -> SSPConfig:
    """SSPConfig from the ``model`` section: ``size`` picks the preset (tiny | paper), every
    other field that is set (not None, not "") overrides the preset; then ``switches``."""
    section = {k: v for k, v in dataclasses.asdict(model).items() if v is not None and v != ""}
    for param, name, of_stage in STAGE_PARAMS:
        value = section.pop(param, None)
        if stage == of_stage and value is not None:
            section[name] = value
    size = section.pop("size", "tiny")
    if size not in ("tiny", "paper"):
        raise SSPError(f"params model.size must be tiny or paper, got {size!r}")
    preset = SSPConfig.tiny if size == "tiny" else SSPConfig.paper
    return preset(stage, **{**section, **switches})


def build_optimizer(parameters: list, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel over all tensors; on CPU 5x faster than the default
    per-tensor loop for the tiny model) where torch has a fused kernel for the device."""
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in parameters)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, tp: TrainParams, start_epoch: int = 0):
    """StepLR: LR x ``lr_gamma`` once ``lr_step_epoch`` epochs are done (counted from the run's
    start). The one made at the phase switch (``start_epoch``) steps only at an ``lr_step_epoch``
    after the switch; one at or before it is superseded by ``phase2_lr``."""
    step = tp.lr_step_epoch - start_epoch if tp.lr_step_epoch and tp.lr_step_epoch > start_epoch else 10**9
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=tp.lr_gamma)


# ---------------------------------------------------------------------------------------
# A run: its fixed parts and its progress
# ---------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    best_checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)


class TrainingInterrupted(RuntimeError):
    """Raised by the interrupt hook (tests): the run stops as if it had been killed."""


@dataclass
class Trainer:
    """What stays fixed during a run."""

    stage: int
    row: str | None
    config: SSPConfig
    tp: TrainParams
    dist: Dist
    device: torch.device
    model: SSPModel
    criterion: SSPCriterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    trainable: list[nn.Parameter]
    loaders: Loaders
    stage1_model: SSPModel | None  # stage 2 without --stage1-masks: validation's stepping stones
    checkpoints: CheckpointDir
    run_dir: Path
    autocast: Callable[[], AbstractContextManager]
    show_progress: bool = True
    step_hook: Callable[[int], None] | None = None
    interrupt_after: int | None = None
    model_for_training: nn.Module | None = None  # the model, or its DDP wrapper
    signature: dict[str, Any] = field(default_factory=dict)  # :func:`run_signature`


@dataclass
class Progress:
    """Where a run stands; a checkpoint saves it (with weights, optimizer and RNG)."""

    position: Position
    history: list[dict[str, Any]]
    best: dict[str, Any]
    running: Tensor  # loss parts summed over the epoch so far, on the device
    running_steps: int = 0
    phase: int = 1  # AAVS's training phase (2 after the switch at phase2_epoch)

    def extra(self, trainer: Trainer, running_steps: int) -> dict[str, Any]:
        return {
            "history": self.history,
            "best": self.best,
            "running_steps": running_steps,
            "config": trainer.config.to_dict(),
            "run": trainer.signature,
            "phase": self.phase,
        }


def setup(
    stage: int,
    data: str | Path,
    run_dir: Path,
    params: Params,
    row: str | None,
    dirs: InputDirs,
    stage1_masks: str | Path | None,
    stage1_checkpoint: str | Path | None,
    progress: bool,
) -> Trainer:
    """Params -> determinism, devices, seeds, data, model, loss, optimizer (in this order:
    the seeds come before anything that draws from an RNG)."""
    if stage not in (1, 2):
        raise SSPError(f"--stage must be 1 or 2, got {stage}")
    tp = params.stage(stage)
    config = build_model_config(params.model, stage, model_switches(params, stage, row))
    if tp.threads:
        torch.set_num_threads(tp.threads)
    if tp.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    dist_info, device = setup_distributed(tp.device)
    random.seed(tp.seed)
    np.random.seed(tp.seed)
    torch.manual_seed(tp.seed)  # same initial weights on every rank

    train_set, val_set = build_stage_datasets(data, stage, config, tp, dirs, stage1_masks, stage1_checkpoint)
    on_cuda = device.type == "cuda"
    loaders = build_loaders(train_set, val_set, tp, dist_info, on_cuda, progress)

    model = SSPModel(config).to(device)
    config = model.config  # with the architecture of a Mask2Former config.json, when given one
    criterion = SSPCriterion(config).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]  # AAVS's recipe: phase 1's parameters
    optimizer = build_optimizer(trainable, tp.lr, tp.weight_decay)
    scheduler = build_scheduler(optimizer, tp)
    stage1_model = None
    if stage == 2 and stage1_masks is None:
        stage1_model, _, _ = load_model(stage1_checkpoint, device)
        if stage1_model.config.stage != 1:
            raise SSPError(f"{stage1_checkpoint}: --stage1-checkpoint must be a stage-1 checkpoint")
    return Trainer(
        stage,
        row,
        config,
        tp,
        dist_info,
        device,
        model,
        criterion,
        optimizer,
        scheduler,
        trainable,
        loaders,
        stage1_model,
        CheckpointDir(run_dir, tp.keep_last),
        run_dir,
        show_progress=progress,
        autocast=lambda: torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda),
    )


def resume_key_digest(path: str | Path) -> str:
    """md5 of a file, or of a folder's files (relative path, size, md5 each, in order;
    ``__pycache__`` left out: compiling code changes no code)."""
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    if not path.is_dir():
        raise SSPError(f"--resume-key {path}: no such file or folder (the stage that writes it runs first)")
    digest = hashlib.md5()
    for file in sorted(f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file.stat().st_size}\0{file_md5(file)}\n".encode())
    return digest.hexdigest()


def run_signature(trainer: Trainer, resume_keys: Sequence[str | Path] = ()) -> dict[str, Any]:
    """What makes a checkpoint this run's, besides the model config: stage, row, the train
    params that change the result (not :data:`NOT_IN_SIGNATURE`), the train/val videos
    (split, folder, frames, labelled frames; a digest) and the digest of every
    ``resume_keys`` file or folder (dvc.yaml passes each training stage's deps: its input
    fingerprint and code, so new data, stage-1 masks or code start over, as DVC re-runs it
    for them; an unchanged stage re-runs only when it did not finish)."""
    videos = hashlib.md5()
    for name, loader in (("train", trainer.loaders.train), ("val", trainer.loaders.val)):
        for r in loader.dataset.records:  # whole videos: max_frames is a train param of its own
            videos.update(f"{name}\0{r.split}\0{r.rel_dir}\0{r.num_frames}\0{r.labelled}\n".encode())
    keys = {str(key): resume_key_digest(key) for key in resume_keys}
    train_params = {k: v for k, v in dataclasses.asdict(trainer.tp).items() if k not in NOT_IN_SIGNATURE}
    return {
        "stage": trainer.stage,
        "row": trainer.row,
        "train": train_params,
        "videos": videos.hexdigest(),
        "keys": keys,
    }


def signature_differences(saved: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """Why a checkpoint's run signature is not this run's (empty: it is)."""
    if saved is None:
        return ["the checkpoint records no run signature (written before ssp recorded one)"]
    reasons = [f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in ("stage", "row") if saved.get(k) != now[k]]
    before = saved.get("train", {})
    reasons += [
        f"train.{k} {before.get(k)!r} -> {v!r}" for k, v in now["train"].items() if k in before and before[k] != v
    ]
    reasons += [f"train.{k} is new" for k in now["train"] if k not in before]
    if saved.get("videos") != now["videos"]:
        reasons.append("the train/val videos differ")
    for key in sorted(set(saved.get("keys", {})) | set(now["keys"])):
        if saved.get("keys", {}).get(key) != now["keys"].get(key):
            reasons.append(f"resume key {key} changed" if key in now["keys"] else f"resume key {key} not given now")
    return reasons


def fresh_start(trainer: Trainer, why: str) -> None:
    """Start over: a former run's checkpoints go (rank 0, once every rank has read them), so
    that no stale ``best`` or epoch file mixes with this run's."""
    barrier(trainer.dist)
    removed = trainer.checkpoints.clear() if trainer.dist.is_main else []
    barrier(trainer.dist)
    log.info("starting fresh: %s%s", why, f" (removed {len(removed)} files of the former run)" if removed else "")


def checkpoint_mismatch(
    trainer: Trainer,
    weights_path: Path,
    info: dict[str, Any] | None,
    state_path: Path,
    state: TrainingState,
    any_row: bool = False,
) -> tuple[list[SSPError], list[str]]:
    """Why a checkpoint is not this run's: (refusals: another model config or other
    pretrained files; differences: :func:`signature_differences`). Both empty: it is.
    ``info``: the weights file's info (None: read from ``weights_path`` only when the state
    alone finds no difference, so that a candidate of ``--adopt`` that is another run costs
    no weights read). ``any_row``: a run of another ``--row`` with the same model config is
    this run too (a row only names the SSP switches, which the config holds: the main
    stage-2 model and the ablation row with its switches are one run)."""
    refusals: list[SSPError] = []
    saved_config = state.extra.get("config")
    saved_run = state.extra.get("run")
    if any_row and saved_config is None:
        refusals.append(SSPError(f"{state_path}: records no model config to compare the row's switches with"))
    elif any_row and saved_run is not None:
        saved_run = {**saved_run, "row": trainer.signature["row"]}
    if saved_config is not None and without_weight_specs(saved_config) != without_weight_specs(
        trainer.config.to_dict()
    ):
        refusals.append(
            SSPError(f"{state_path}: was trained with another model config; use a new --out or the same params")
        )
    differences = signature_differences(saved_run, trainer.signature)
    if info is None:
        if refusals or differences:
            return refusals, differences
        _, _, info = read_weights(weights_path)
    try:
        # the same pretrained files, however their specs are written (`ssp weights --pin`
        # turns org/name into org/name@<the commit it resolved to>)
        check_same_pretrained(weights_path, info.get("pretrained", {}), trainer.model.pretrained_weights())
    except SSPError as err:
        refusals.append(err)
    return refusals, differences


def run_folders(candidates: Sequence[str | Path]) -> list[Path]:
    """``--adopt`` folders: each a run folder (it has ``checkpoints/``) or a folder of
    run folders (its subfolders that have one, in name order)."""
    found = []
    for folder in map(Path, candidates):
        if (folder / "checkpoints").is_dir():
            found.append(folder)
        elif folder.is_dir():
            found += sorted(d for d in folder.iterdir() if (d / "checkpoints").is_dir())
    return found


def finished_here(trainer: Trainer, folder: Path) -> bool:
    """Whether ``folder`` holds this very run, finished: its newest checkpoint is at the
    end of the last epoch, and ``--resume auto`` would continue it (same model config,
    pretrained files and :func:`run_signature`, whatever ``--row`` named the switches)."""
    last = CheckpointDir(folder).last()
    if last is None or not last[1].is_file():
        return False
    weights_path, state_path = last
    state = read_training_state(state_path)
    if (state.position.epoch, state.position.batches_done) != (trainer.tp.epochs, 0):
        return False
    refusals, differences = checkpoint_mismatch(trainer, weights_path, None, state_path, state, any_row=True)
    if refusals or differences:
        log.debug("--adopt: %s is another run's: %s", folder, "; ".join([*map(str, refusals), *differences]))
    return not refusals and not differences


def adopt_finished_run(trainer: Trainer, candidates: Sequence[str | Path]) -> Path | None:
    """``--adopt``: when this run's folder does not hold it finished already, copy the
    checkpoints of the first candidate that does (:func:`finished_here`) into it, so that
    the run resumes with nothing left to train. On CPU with the same thread count these are
    the weights the training would give, bit for bit (a run is deterministic given its
    signature); elsewhere an equally valid draw of the same run. Returns that candidate, or
    None (the run trains)."""
    source = None
    if trainer.dist.is_main and not finished_here(trainer, trainer.run_dir):
        here = trainer.run_dir.resolve()
        source = next(
            (str(f) for f in run_folders(candidates) if f.resolve() != here and finished_here(trainer, f)), None
        )
    source = broadcast_from_main(source, trainer.dist)
    if source is None:
        return None
    if trainer.dist.is_main:
        trainer.checkpoints.copy_from(CheckpointDir(source))
    barrier(trainer.dist)
    log.info("--adopt: %s is this very run, finished; its checkpoints are copied, nothing to train", source)
    return Path(source)


def resume_progress(
    trainer: Trainer, resume: str, any_row: bool = False
) -> tuple[Progress, TrainingState | None, str | None]:
    """A fresh :class:`Progress`, or (``resume`` on/auto, :data:`RESUME_MODES`) the newest
    checkpoint's: its weights loaded into the model; the returned state's optimizer and RNG
    are restored later, right before the loop; and the weights file it resumed from.
    ``on`` refuses a checkpoint of another model config or pretrained files and warns
    about other differences; ``auto`` starts fresh on any, logging which and why.
    ``any_row``: another ``--row`` with the same model config is no difference (``--adopt``)."""
    best = {"metric": -math.inf, "epoch": 0, "val": {}}
    running = torch.zeros(len(LOSS_NAMES), dtype=torch.float64, device=trainer.device)
    progress = Progress(Position(epoch=0, batches_done=0, global_step=0), [], best, running)
    if resume == "off":
        fresh_start(trainer, "no --resume")
        return progress, None, None
    last = trainer.checkpoints.last()
    if last is None:
        fresh_start(trainer, f"--resume {resume}: no checkpoint in {trainer.checkpoints.root}")
        return progress, None, None
    weights_path, state_path = last
    state = read_training_state(state_path)
    weights, _, info = read_weights(weights_path)
    refusals, differences = checkpoint_mismatch(trainer, weights_path, info, state_path, state, any_row)
    if resume == "auto" and (refusals or differences):
        fresh_start(
            trainer, f"--resume auto: {state_path} is another run's: {'; '.join([*map(str, refusals), *differences])}"
        )
        return progress, None, None
    if refusals:
        raise refusals[0]
    if differences:
        log.warning("--resume: %s differs from this run: %s", state_path, "; ".join(differences))
    load_weights_into(trainer.model, weights_path, weights)
    progress.position = state.position
    progress.history = state.extra.get("history", [])
    progress.best = state.extra.get("best", best)
    progress.running_steps = int(state.extra.get("running_steps", 0))
    progress.phase = int(state.extra.get("phase", 1))
    if "running" in state.extra_tensors:
        progress.running = state.extra_tensors["running"].to(trainer.device)
    log.info(
        "--resume %s: resuming from %s (epoch %d, %d batches done)%s",
        resume,
        weights_path,
        progress.position.epoch + 1,
        progress.position.batches_done,
        ": model config, train params, videos and resume keys match" if not differences else "",
    )
    return progress, state, str(weights_path)


def for_training(model: nn.Module, dist_info: Dist, device: torch.device) -> nn.Module:
    """The model itself, or under torchrun its DistributedDataParallel wrapper."""
    if not dist_info.enabled:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
    )


def start_phase2(trainer: Trainer, progress: Progress, reload_best: bool = True) -> None:
    """AAVS's phase switch (its train.py, at epoch ``epochs // 2`` for S4/MS3, ``// 3`` for
    AVSS): reload the best checkpoint, re-initialise the Swin adapters (AAVS rebuilds its model,
    so they restart from Hugging Face's N(0, 0.02); drawn from a generator seeded with
    ``seed``, so the run's own RNG streams are untouched), train them too (the recipe's phase 2,
    :func:`ssp.models.adapters.apply_recipe`), and a new AdamW at ``phase2_lr`` with its own
    StepLR. ``reload_best=False``: a run resumed after the switch (its checkpoint has the
    weights; the optimizer state is restored next)."""
    t, tp = trainer, trainer.tp
    if reload_best:
        barrier(t.dist)  # rank 0 wrote best.safetensors
        if t.checkpoints.best.is_file():
            load_weights_into(t.model, t.checkpoints.best)
        else:
            log.warning("phase 2: no best checkpoint yet (no validation so far): continuing from the current weights")
        reinit_swin_adapters(t.model, torch.Generator().manual_seed(tp.seed))
    apply_recipe(t.model, t.config, phase=2)
    t.trainable = [p for p in t.model.parameters() if p.requires_grad]
    t.optimizer = build_optimizer(t.trainable, tp.phase2_lr, tp.weight_decay)
    t.scheduler = build_scheduler(t.optimizer, tp, start_epoch=tp.phase2_epoch or 0)
    t.model_for_training = None  # a DDP wrapper registers the trainable parameters when made
    t.model_for_training = for_training(t.model, t.dist, t.device)
    progress.phase = 2
    if reload_best:
        log.info(
            "stage %d: phase 2 from epoch %d: best epoch %s reloaded, %d trainable tensors, lr %g",
            t.stage,
            progress.position.epoch + 1,
            progress.best.get("epoch"),
            len(t.trainable),
            tp.phase2_lr,
        )


# ---------------------------------------------------------------------------------------
# One epoch, validation, the end of an epoch
# ---------------------------------------------------------------------------------------
def train_one_epoch(trainer: Trainer, progress: Progress, epoch: int, tracker: RunLogger) -> dict[str, Any]:
    """Train ``epoch`` (from ``progress.position`` when it is the epoch a resumed run
    stopped in); returns its history row so far: epoch, lr, seconds, mean train losses."""
    t, tp, model = trainer, trainer.tp, trainer.model_for_training
    model.train()
    resuming = epoch == progress.position.epoch
    t.loaders.sampler.set_position(epoch, progress.position.batches_done * tp.batch_size if resuming else 0)
    batches_done = progress.position.batches_done if resuming else 0
    if batches_done == 0:
        progress.running.zero_()
        progress.running_steps = 0
    epoch_start, epoch_lr = time.time(), t.optimizer.param_groups[0]["lr"]
    bar = tqdm(
        t.loaders.train,
        desc=f"stage {t.stage} epoch {epoch + 1}/{tp.epochs}",
        unit="step",
        disable=not (t.show_progress and t.dist.is_main),
        leave=False,
    )
    for batch in bar:
        batch = to_device(batch, t.device)
        with t.autocast():
            output = model(batch)
            losses = t.criterion(output, batch)
        t.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if tp.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(t.trainable, tp.grad_clip)
        t.optimizer.step()

        progress.running += torch.stack([losses[k].detach().double() for k in LOSS_NAMES])
        progress.running_steps += 1
        batches_done += 1
        progress.position = position = Position(epoch, batches_done, progress.position.global_step + 1)
        if position.global_step % tp.log_every == 0:
            mean = (progress.running / progress.running_steps).tolist()  # the one sync every log_every steps
            bar.set_postfix(loss=f"{mean[0]:.3f}")
            tracker.log_metrics({f"train/{k}": v for k, v in zip(LOSS_NAMES, mean)}, step=position.global_step)
        if tp.step_checkpoint_every and position.global_step % tp.step_checkpoint_every == 0 and t.dist.is_main:
            t.checkpoints.save(
                "step",
                t.model,
                t.optimizer,
                t.scheduler,
                position,
                info={"epoch": epoch, "kind": "step"},
                extra=progress.extra(t, progress.running_steps),
                extra_tensors={"running": progress.running},
            )
        if t.step_hook is not None:
            t.step_hook(position.global_step)
        if t.interrupt_after is not None and position.global_step >= t.interrupt_after:
            raise TrainingInterrupted(f"interrupted after step {position.global_step} ({INTERRUPT_ENV})")
    bar.close()
    t.scheduler.step()
    epoch_losses = mean_over_ranks(progress.running, progress.running_steps, t.dist)
    row: dict[str, Any] = {"epoch": epoch + 1, "lr": epoch_lr, "seconds": round(time.time() - epoch_start, 2)}
    if tp.phase2_epoch is not None:
        row["phase"] = progress.phase
    row.update({f"train_{k}": v for k, v in zip(LOSS_NAMES, epoch_losses)})
    return row


def evaluate(
    model: SSPModel,
    loader,
    config: SSPConfig,
    device: torch.device,
    stage1_model: SSPModel | None = None,
    autocast: Callable[[], AbstractContextManager] | None = None,
) -> dict[str, float]:
    """Validation: stage 1 binary mIoU / F (BinaryMeter), stage 2 AVSS mIoU / F
    (SemanticMeter; on a dataset with its own label space also over background + its K
    classes, ``miou_dataset``), all-reduced over the ranks. The model never sees the GT
    masks; only labelled frames are scored."""
    if config.stage == 1:
        meter = BinaryMeter()
    else:
        label_space = dataset_label_space(loader.dataset.records[0].root)  # the val set's dataset root
        meter = SemanticMeter(config.num_classes, label_space=label_space)
    offsets = loader.dataset_frame_offsets
    for batch, scores in predict_batches(model, loader, device, stage1_model, autocast):
        labelled = batch["labelled"].bool()
        if config.stage == 1:
            ids = (
                torch.tensor([offsets[batch["uid"][v]] for v in batch["video_index"].tolist()])
                + batch["frame_index"].cpu()
            )
            index = labelled.nonzero(as_tuple=True)[0]
            meter.update(scores[index], (batch["masks"][index] > 0).long(), frame_ids=ids[index.cpu()])
        else:
            meter.update(scores, batch["masks"], frame_valid=labelled)
    meter.sync()
    result = meter.compute()
    return {k: float(result[k]) for k in VAL_METRICS if k in result}


def end_epoch(trainer: Trainer, progress: Progress, epoch: int, row: dict[str, Any], tracker: RunLogger) -> None:
    """Validate (every ``val_every`` epochs and after the last), keep the best checkpoint,
    append ``row`` to the history, write the epoch checkpoint and history.csv."""
    t, tp = trainer, trainer.tp
    if (epoch + 1) % tp.val_every == 0 or epoch + 1 == tp.epochs:
        val = evaluate(t.model, t.loaders.val, t.config, t.device, t.stage1_model, t.autocast)
        row.update({f"val_{k}": v for k, v in val.items()})
        if val["miou"] > progress.best["metric"]:
            progress.best = {"metric": val["miou"], "epoch": epoch + 1, "val": val}
            if t.dist.is_main:
                t.checkpoints.save_best(t.model, {"epoch": epoch + 1, "val": val})
    progress.history.append(row)
    progress.position = Position(epoch + 1, 0, progress.position.global_step)
    if t.dist.is_main:
        t.checkpoints.save(
            "epoch",
            t.model,
            t.optimizer,
            t.scheduler,
            progress.position,
            info={"epoch": epoch + 1, "kind": "epoch"},
            extra=progress.extra(t, 0),
        )
        write_history(t.run_dir / "history.csv", progress.history)
        tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
    log.info(
        "stage %d epoch %d/%d: %s",
        t.stage,
        epoch + 1,
        tp.epochs,
        ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)),
    )


# ---------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------
def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buf.getvalue())


def write_overlays(
    model: SSPModel,
    loader,
    config: SSPConfig,
    device: torch.device,
    out_dir: Path,
    count: int,
    stage1_model: SSPModel | None = None,
) -> list[Path]:
    """frame | GT | prediction PNGs of the first ``count`` labelled validation frames."""
    paths: list[Path] = []
    for batch, scores in predict_batches(model, loader, device, stage1_model):
        pred = (scores > 0).long() if config.stage == 1 else scores.argmax(1)
        for i in batch["labelled"].nonzero(as_tuple=True)[0].tolist():
            frame = (batch["frames"][i].permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
            gt = index_to_colour(batch["masks"][i].cpu().numpy().astype(np.int64))
            pr = index_to_colour(pred[i].cpu().numpy().astype(np.int64))
            uid = batch["uid"][int(batch["video_index"][i])]
            path = out_dir / f"{uid}_{int(batch['frame_index'][i])}.png"
            with atomic_path(path) as tmp:
                Image.fromarray(np.concatenate([frame, gt, pr], axis=1)).save(tmp, format="PNG")
            paths.append(path)
            if len(paths) >= count:
                return paths
    return paths


def finish(trainer: Trainer, progress: Progress, tracker: RunLogger) -> dict[str, Any]:
    """metrics.json (rank 0), the best metrics, checkpoint and overlays into MLflow."""
    t, best = trainer, progress.best
    metrics = {
        "stage": t.stage,
        "row": t.row,
        "epochs": t.tp.epochs,
        "global_steps": progress.position.global_step,
        "best_epoch": best["epoch"],
        "best": best["val"],
        "final": {k[len("val_") :]: v for k, v in progress.history[-1].items() if k.startswith("val_")},
        "metric_for_best": "val miou",
    }
    if tracker.run_id:  # None on non-zero DDP ranks (disabled logger); they write no metrics.json
        # read by `ssp register` and `ssp evaluate` (test metrics go into this run)
        metrics["mlflow_run_id"] = tracker.run_id
    if not t.dist.is_main:
        return metrics
    write_json(t.run_dir / "metrics.json", metrics)
    tracker.log_metrics({f"best/{k}": v for k, v in best["val"].items()})
    tracker.log_metrics({"best/epoch": best["epoch"]})
    if t.checkpoints.best.is_file():
        tracker.log_artifact(t.checkpoints.best, "checkpoints")
        if t.tp.overlays > 0:
            best_model, _, _ = load_model(t.checkpoints.best, t.device)
            overlays = write_overlays(
                best_model, t.loaders.val, t.config, t.device, t.run_dir / "overlays", t.tp.overlays, t.stage1_model
            )
            tracker.log_artifacts(overlays, "overlays")
    tracker.log_artifact(t.run_dir / "history.csv")
    tracker.log_artifact(t.run_dir / "metrics.json")
    return metrics


# what each preprocessing output says about the weights that made it (flow_summary.json of
# `ssp flow`, prompts_summary.json of `ssp prompts`)
INPUT_SUMMARIES = {"flow": "flow_summary.json", "prompts": "prompts_summary.json"}


def pretrained_record(trainer: Trainer, inputs: InputDirs) -> dict[str, dict]:
    """Every pretrained part behind a run: the model's own (:meth:`SSPModel.pretrained_weights`)
    and those of the preprocessing outputs it reads (Perceiver IO flow, the MLLM)."""
    record = dict(trainer.model.pretrained_weights())
    for field_name, summary in INPUT_SUMMARIES.items():
        folder = getattr(inputs, field_name)
        path = Path(folder) / summary if folder else None
        if path is not None and path.is_file():
            weights = json.loads(path.read_text()).get("weights")
            if isinstance(weights, dict) and weights.get("what"):
                record[weights["what"]] = weights
    return dict(sorted(record.items()))


def run_record(
    trainer: Trainer, data: str | Path, resumed_from: str | None, pretrained: dict[str, dict], profile: str = ""
) -> tuple[dict, dict]:
    """(MLflow params, MLflow tags) of a run. Row, seed, λ', profile, dataset fingerprint
    and DVC experiment are plain params, so that the UI's "Group by" and the saved views
    of ssp.ops.mlflow_views compare runs on them without set-up."""
    t = trainer
    params = {
        "stage": t.stage,
        "row": t.row or "",
        "seed": t.tp.seed,
        "lambda_post": t.config.lambda_post if t.config.post_mask else "",
        "profile": profile,
        "data_fingerprint": data_hash(data),
        "dvc_experiment": os.environ.get("DVC_EXP_NAME", ""),  # set by `dvc exp run`
        "data": str(data),
        "train": dataclasses.asdict(t.tp),
        "model": t.config.to_dict(),
        "world_size": t.dist.world_size,
        "resumed_from": resumed_from or "",
        # which pretrained weights (id, pinned commit) the model started from; the sha256 of
        # every file is in the pretrained_weights.json artifact and the checkpoint metadata
        "pretrained": {
            what.removeprefix("model."): {"spec": r["spec"], "revision": r.get("revision") or "", "source": r["source"]}
            for what, r in pretrained.items()
        },
    }
    tags = {
        "ssp.stage": str(t.stage),
        "ssp.row": t.row or "custom",
        "ssp.lambda_post": str(t.config.lambda_post),
        "ssp.size": t.config.size,
        "ssp.run_dir": str(t.run_dir.resolve()),
    }  # how `ssp register` finds the run
    return params, tags


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------
def train(
    stage: int,
    data: str | Path,
    run_dir: str | Path,
    params: Params | None = None,
    row: str | None = None,
    *,
    flow: str | Path | None = None,
    prompts: str | Path | None = None,
    logmel: str | Path | None = None,
    stage1_masks: str | Path | None = None,
    stage1_checkpoint: str | Path | None = None,
    resume: bool | str = False,
    resume_keys: Sequence[str | Path] = (),
    adopt: Sequence[str | Path] = (),
    interrupt_after_steps: int | None = None,
    run_name: str | None = None,
    progress: bool = True,
    step_hook: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train one stage with ``params`` (:func:`ssp.params.load_params`; None: the
    defaults). Returns the final metrics (also in ``{run_dir}/metrics.json``).
    ``step_hook(global_step)`` is called at the end of every step (bench/train.py times
    the real loop with it). ``resume``: one of :data:`RESUME_MODES` (True = "on", False =
    "off"); ``resume_keys``: files whose content is part of the run's signature; ``adopt``:
    run folders whose finished identical run is taken over instead of training
    (:func:`adopt_finished_run`)."""
    run_dir = Path(run_dir)
    resume = {True: "on", False: "off", None: "off"}.get(resume, resume)
    if resume not in RESUME_MODES:
        raise SSPError(f"--resume must be one of {', '.join(RESUME_MODES)}, got {resume!r}")
    t = setup(
        stage,
        data,
        run_dir,
        params or Params(),
        row,
        InputDirs(flow, prompts, logmel),
        stage1_masks,
        stage1_checkpoint,
        progress,
    )
    t.signature = run_signature(t, resume_keys)
    adopted = adopt_finished_run(t, adopt) if adopt else None
    # with --adopt a run of another row with the same switches is this run (checkpoint_mismatch)
    at, state, resumed_from = resume_progress(t, "auto" if adopted else resume, any_row=bool(adopt))
    t.model_for_training = for_training(t.model, t.dist, t.device)
    if at.phase == 2:  # resumed after the switch: phase 2's parameters and optimizer, then its state
        start_phase2(t, at, reload_best=False)
    t.step_hook = step_hook
    t.interrupt_after = interrupt_after_steps
    if t.interrupt_after is None and os.environ.get(INTERRUPT_ENV):
        t.interrupt_after = int(os.environ[INTERRUPT_ENV])
    pretrained = pretrained_record(t, InputDirs(flow, prompts, logmel))
    mlflow_params, tags = run_record(t, data, resumed_from, pretrained, (params or Params()).profile)
    if adopted is not None:
        tags["ssp.adopted_from"] = str(adopted.resolve())
    name = run_name or f"stage{stage}-{row or t.config.size}-seed{t.tp.seed}"
    if state is not None:
        state.restore(t.optimizer, t.scheduler)  # RNG last: nothing may draw between here and the loop

    with RunLogger(EXPERIMENTS[stage], name, params=mlflow_params, tags=tags, enabled=t.dist.is_main) as tracker:
        # system metrics per node: rank 0's logger samples node 0; the local rank 0 of each
        # other node samples its own machine into the same run (a no-op on the other ranks)
        run_id = broadcast_from_main(tracker.run_id, t.dist)
        with node_system_metrics(None if t.dist.is_main else run_id):
            if t.dist.is_main:
                write_json(run_dir / "pretrained_weights.json", pretrained)
                tracker.log_artifact(run_dir / "pretrained_weights.json")
                if adopted is not None:  # the adopted run's epochs, as this run would have logged them
                    write_history(run_dir / "history.csv", at.history)
                    for row_in in at.history:
                        tracker.log_metrics({k: v for k, v in row_in.items() if k != "epoch"}, step=row_in["epoch"])
            for epoch in range(at.position.epoch, t.tp.epochs):
                if at.phase == 1 and t.tp.phase2_epoch is not None and epoch >= t.tp.phase2_epoch:
                    start_phase2(t, at)
                row_out = train_one_epoch(t, at, epoch, tracker)
                end_epoch(t, at, epoch, row_out, tracker)
            metrics = finish(t, at, tracker)
    barrier(t.dist)
    return TrainResult(run_dir, metrics, t.checkpoints.best, at.history)


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stage",
        type=int,
        choices=(1, 2),
        required=True,
        help="1 = binary AVS (all subsets), 2 = AVSS with stage 1's stepping stones",
    )
    parser.add_argument("--data", required=True, type=Path, help="dataset root (AVSBench layout or `ssp synth`)")
    parser.add_argument(
        "--out", required=True, type=Path, help="run folder: checkpoints/, history.csv, metrics.json, overlays/"
    )
    add_params_arguments(
        parser,
        "train2.epochs=3 --set ssp.text=vta",
        moved={"--test-split": "evaluate.split", "--fscore-batch-videos": "evaluate.fscore_batch_videos"},
    )  # sections model, ssp, train1/train2
    parser.add_argument("--profile", default=None, help="params profile, e.g. paper (default: the file's `profile`)")
    parser.add_argument(
        "--row",
        default=None,
        help=f"a row of paper Table 2 ({', '.join(paper.ROWS)}): its pre_mask/text/post_mask "
        "switches (default: stage 2 the ssp section, stage 1 the aavs row)",
    )
    parser.add_argument("--flow", type=Path, default=None, help="`ssp flow` output (needed by pre_mask/post_mask)")
    parser.add_argument("--prompts", type=Path, default=None, help="`ssp prompts` output (needed by text att/vta)")
    parser.add_argument(
        "--logmel",
        type=Path,
        default=None,
        help="`ssp logmel` output (default: log-mel computed from the wav on the fly, slower)",
    )
    parser.add_argument(
        "--stage1-masks",
        type=Path,
        default=None,
        help="stage 2: `ssp stage1-masks` output, the stepping stones used at validation",
    )
    parser.add_argument(
        "--stage1-checkpoint",
        type=Path,
        default=None,
        help="stage 2: a stage-1 checkpoint to compute the validation stepping stones "
        "in-process (when --stage1-masks is not given)",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="on",
        default="off",
        choices=RESUME_MODES,
        help="continue from {out}/checkpoints/last.json (mid-epoch if a step checkpoint is newer). "
        "--resume (= on): refuses another model config, warns about other differences; "
        "--resume auto: continues only this very run (same model config, train params, videos, "
        "--resume-key files), else starts fresh, saying why (dvc.yaml's training stages)",
    )
    # paths that may be given several times, and several after one flag
    paths = {"action": "extend", "nargs": "+", "default": [], "type": Path}
    parser.add_argument(
        "--resume-key",
        **paths,
        metavar="PATH",
        help="files or folders whose content must be unchanged for --resume auto to continue "
        "(dvc.yaml passes each training stage's deps: its input fingerprint and code)",
    )
    parser.add_argument(
        "--adopt",
        **paths,
        metavar="DIR",
        help="run folders (or folders of run folders) to take a finished identical run from instead of "
        "training: same model config, pretrained files, train params, videos and --resume-key contents "
        "(what --resume auto checks); its checkpoints are copied into --out and its epochs logged. "
        "A run of another --row with the same switches counts. Without one, the run trains (dvc.yaml: "
        "the full row's AVSS cell is the main stage-2 model; the sweep point at ablation.lambda_post is "
        "the full row's S4/MS3 cell)",
    )
    parser.add_argument("--seed", type=int, default=None, help="override trainN.seed")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: trainN.device = auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--run-name", default=None, help="MLflow run name (default: stage{N}-{row or model size}-seed{seed})"
    )


def params_from_args(args: argparse.Namespace) -> Params:
    """--params / --profile / --set, with --seed and --device as trainN overrides."""
    extra = []
    if args.seed is not None:
        extra.append(f"train{args.stage}.seed={args.seed}")
    if args.device is not None:
        extra.append(f"train{args.stage}.device={args.device}")
    return stage_params(args, args.profile, extra)


def train_from_args(args: argparse.Namespace, params: Params) -> TrainResult:
    result = train(
        args.stage,
        args.data,
        args.out,
        params,
        row=args.row,
        flow=args.flow,
        prompts=args.prompts,
        logmel=args.logmel,
        stage1_masks=args.stage1_masks,
        stage1_checkpoint=args.stage1_checkpoint,
        resume=args.resume,
        resume_keys=args.resume_key,
        adopt=args.adopt,
        progress=not args.no_progress,
        run_name=args.run_name,
    )
    best = result.metrics["best"]
    log.info(
        "stage %d done: best epoch %s, val mIoU %.4f, F %.4f -> %s",
        args.stage,
        result.metrics["best_epoch"],
        best.get("miou", float("nan")),
        best.get("fscore", float("nan")),
        args.out / "metrics.json",
    )
    return result

"""``ssp train``: two-stage training of SSP (stage 1 = binary AVS, stage 2 = AVSS).

Read top to bottom like torchvision's reference scripts:

1. params: ``params.yaml`` sections ``model`` and ``train1``/``train2`` (+ ``--set``
   overrides, + ``--row`` = a row of paper Table 2), defaults below when absent;
2. data: train/val records (stage 1: binary masks of every subset; stage 2: class masks),
   :class:`~ssp.data.datasets.AVSDataset` + a resumable, seeded (Distributed)Sampler;
3. model, loss, AdamW (lr 1e-3, wd 0.05), StepLR (x0.1 at the paper's epoch);
4. the loop: bf16 autocast on CUDA only, optional gradient clipping, losses kept on the
   device and read every ``log_every`` steps (no per-step sync), a resumable checkpoint
   every ``step_checkpoint_every`` steps and at every epoch end, validation with the
   AVSBench metrics, the best checkpoint kept;
5. outputs: ``{run_dir}/checkpoints/`` (:mod:`ssp.models.checkpoint`), ``history.csv`` (one
   row per epoch) and ``metrics.json`` for DVC, an MLflow run (:mod:`ssp.ops.tracking`) with
   params, per-epoch metrics, final metrics, the best checkpoint and overlay PNGs.

Exact resume: the data order of epoch ``e`` is a permutation seeded by ``(seed, e)``,
items carry no randomness, and every RNG the step uses (torch/CUDA for the loss's point
sampling, numpy, python) is saved with the optimizer and the position in the epoch, so
``--resume`` after a kill (even mid-epoch) ends with the same weights as a run that was
never interrupted (on CPU, with the same thread count).

DDP: launched by ``torchrun`` (env ``WORLD_SIZE`` > 1) it uses gloo on CPU / nccl on CUDA,
shards data with the sampler, all-reduces the metric meters, and only rank 0 logs and
writes.

Stage 2's stepping stone: the GT binary mask in training (the model reads the batch's
masks in train mode), stage 1's predicted mask at validation: from ``--stage1-masks``
(written by ``ssp stage1-masks``) or computed in-process from ``--stage1-checkpoint``.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

from ssp.errors import SSPError

log = logging.getLogger(__name__)

# Test/diagnostic aid: raise after this many optimizer steps, as if the process were
# killed there (nothing after that step is written). Used by the resume tests.
INTERRUPT_ENV = "SSP_TRAIN_INTERRUPT_AFTER_STEPS"


# ---------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------
@dataclass
class TrainParams:
    """One ``train1``/``train2`` section of params.yaml (demo defaults)."""

    epochs: int = 4
    batch_size: int = 2  # videos per step (per process under DDP)
    lr: float = 1e-3
    weight_decay: float = 0.05
    lr_step_epoch: int | None = 3  # LR x lr_gamma once this many epochs are done (paper: 15 S4/MS3, 20 AVSS)
    lr_gamma: float = 0.1
    grad_clip: float = 0.0  # max grad norm; 0 = off
    num_workers: int = 1
    seed: int = 0
    step_checkpoint_every: int = 0  # resumable mid-epoch checkpoint every N steps; 0 = off
    log_every: int = 10  # steps between loss read-outs (each is a device sync)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    subsets: list[str] | None = None  # None: stage 1 all subsets, stage 2 all semantic subsets
    max_frames: int | None = None  # keep the first N frames of each video (None = all)
    labelled_only: bool = True  # drop unlabelled frames from training batches (no loss on them)
    val_every: int = 1  # validate every N epochs (and always after the last)
    val_batch_size: int = 4
    threads: int | None = None  # torch intra-op threads (None = torch's default)
    deterministic: bool = True  # torch.use_deterministic_algorithms (warn only where impossible)
    overlays: int = 4  # prediction overlay PNGs logged for the best checkpoint
    cache_in_memory: bool = False  # decode the train set once into RAM (small data); then no loader workers

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "TrainParams":
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SSPError(f"params train section: unknown keys {unknown} (known: {sorted(known)})")
        params = cls(**data)
        if params.epochs < 1 or params.batch_size < 1:
            raise SSPError("params train section: epochs and batch_size must be >= 1")
        return params


# Keys of the params ``model`` section that are not SSPConfig fields.
MODEL_SECTION_EXTRA = ("size",)


def build_model_config(model_params: dict[str, Any] | None, stage: int, row: str | None = None):
    """SSPConfig from the ``model`` section: ``size`` picks the preset (tiny | paper), every
    other key overrides a config field; ``row`` applies a Table-2 row's switches last."""
    from ssp import paper
    from ssp.models import SSPConfig

    section = {k: v for k, v in dict(model_params or {}).items() if v is not None and v != ""}
    size = section.pop("size", "tiny")
    known = {f.name for f in fields(SSPConfig)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise SSPError(f"params model section: unknown keys {unknown}")
    if size not in ("tiny", "paper"):
        raise SSPError(f"params model.size must be tiny or paper, got {size!r}")
    preset = SSPConfig.tiny if size == "tiny" else SSPConfig.paper
    if row is not None:
        section.update(paper.row(row).switches)
    return preset(stage, **section)


# ---------------------------------------------------------------------------------------
# Distributed setup
# ---------------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_name: str) -> tuple[Dist, "torch.device"]:
    """torchrun env vars -> process group (gloo on CPU, nccl on CUDA) and this rank's device."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise SSPError(f"--device {device_name}: CUDA is not available here")
    if device_name == "cuda" and info.enabled:
        device_name = f"cuda:{info.local_rank}"
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------
def make_resumable_sampler(dataset, dist_info: Dist, seed: int, shuffle: bool):
    """A DistributedSampler (also for one process) that can start mid-epoch."""
    from torch.utils.data import DistributedSampler

    class ResumableSampler(DistributedSampler):
        """Epoch order = DistributedSampler's (seeded by seed + epoch); ``start`` skips the
        batches an interrupted run had already done."""

        start = 0

        def set_position(self, epoch: int, start: int) -> None:
            self.set_epoch(epoch)
            self.start = start

        def __iter__(self) -> Iterator[int]:
            return iter(list(super().__iter__())[self.start:])

        def __len__(self) -> int:
            return self.num_samples - self.start

    return ResumableSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                            shuffle=shuffle, seed=seed, drop_last=False)


def collate_labelled(items):
    """collate_frames, then keep only labelled frames (unlabelled ones carry no loss)."""
    import torch

    from ssp.data.datasets import collate_frames

    batch = collate_frames(items)
    keep = batch["labelled"]
    if bool(keep.all()):
        return batch
    index = keep.nonzero(as_tuple=True)[0]
    for key, value in list(batch.items()):
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and len(value) == len(keep) and key != "num_frames":
            batch[key] = value.index_select(0, index)
        elif key in ("prompt_a1", "prompt_a2"):
            batch[key] = [value[i] for i in index.tolist()]
    return batch


class InMemoryDataset:
    """Every item of a dataset, decoded once (``cache_in_memory``)."""

    def __init__(self, dataset, progress: bool = False):
        from tqdm.auto import tqdm

        self.records = dataset.records
        self.items = [dataset[i] for i in tqdm(range(len(dataset)), desc="caching train set", unit="video",
                                                disable=not progress, leave=False)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def _seed_worker(worker_id: int) -> None:
    # items hold no randomness; seed anyway so that any future augmentation is reproducible
    import random

    import numpy as np
    import torch

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_dataset(records, config, data_dirs: dict[str, Any], stage1_dir=None, max_frames=None):
    from ssp.data.datasets import AVSDataset

    needs_flow = config.pre_mask or config.post_mask
    if needs_flow and not data_dirs.get("flow"):
        raise SSPError("pre_mask/post_mask need the optical-flow masks: pass --flow DIR (from `ssp flow`)")
    if config.text != "none" and not data_dirs.get("prompts"):
        raise SSPError(f"text={config.text!r} needs the MLLM prompts: pass --prompts DIR (from `ssp prompts`)")
    return AVSDataset(
        records, task="avs" if config.stage == 1 else "avss", image_size=config.image_size,
        logmel_dir=data_dirs.get("logmel"), flow_dir=data_dirs.get("flow") if needs_flow else None,
        prompts_dir=data_dirs.get("prompts") if config.text != "none" else None,
        stage1_dir=stage1_dir, max_frames=max_frames,
    )


def load_split_records(data: str | Path, stage: int, split: str, subsets: list[str] | None):
    from ssp.data.avsbench import detect_layout, load_records

    if stage == 2 and detect_layout(data) == "object":
        raise SSPError(f"{data}: stage 2 (AVSS) needs the AVSBench-semantic layout (class masks)")
    records = load_records(data, subsets=subsets, splits=[split])
    if not records:
        raise SSPError(f"{data}: no {split} videos{' in ' + ','.join(subsets) if subsets else ''}")
    return records


def to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    import torch

    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """What the model may see outside training: everything but the GT masks."""
    return {k: v for k, v in batch.items() if k != "masks"}


# ---------------------------------------------------------------------------------------
# Stage-1 masks for stage 2 at eval time
# ---------------------------------------------------------------------------------------
def quantized_probability(logits):
    """Foreground probability as ``ssp stage1-masks`` stores it (uint8 / 255), so that an
    in-process stage-1 model gives exactly what the PNGs would."""
    return (logits.float().sigmoid() * 255).round() / 255


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------
def validate(model, loader, config, device, dist_info: Dist, stage1_model=None, autocast=None) -> dict[str, float]:
    """Stage 1: binary mIoU / F (BinaryMeter); stage 2: AVSS mIoU / F (SemanticMeter).
    The model never sees the GT masks; only labelled frames are scored."""
    import contextlib

    import torch

    from ssp.metrics import BinaryMeter, SemanticMeter

    model.eval()
    meter = BinaryMeter() if config.stage == 1 else SemanticMeter(config.num_classes)
    offsets = loader.dataset_frame_offsets
    with torch.no_grad():
        for batch in loader:
            batch = to_device(batch, device)
            if config.stage == 2 and "stage1_mask" not in batch:
                batch["stage1_mask"] = quantized_probability(stage1_model.predict(model_inputs(batch)))
            with autocast() if autocast else contextlib.nullcontext():
                scores = model.predict(model_inputs(batch)).float()
            labelled = batch["labelled"].bool()
            if config.stage == 1:
                ids = torch.tensor([offsets[batch["uid"][v]] for v in batch["video_index"].tolist()]) \
                    + batch["frame_index"].cpu()
                index = labelled.nonzero(as_tuple=True)[0]
                meter.update(scores[index], (batch["masks"][index] > 0).long(), frame_ids=ids[index.cpu()])
            else:
                meter.update(scores, batch["masks"], frame_valid=labelled)
    meter.sync()
    result = meter.compute()
    return {k: float(result[k]) for k in ("miou", "fscore", "miou_no_bg", "fscore_no_bg",
                                           "miou_per_frame", "fscore_per_frame") if k in result}


def frame_offsets(dataset) -> dict[str, int]:
    offsets, total = {}, 0
    for i, record in enumerate(dataset.records):
        offsets[record.uid] = total
        total += dataset.num_frames(i)
    return offsets


# ---------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------
def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    from ssp.fileio import write_text

    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buf.getvalue())


def write_overlays(model, loader, config, device, out_dir: Path, count: int, stage1_model=None) -> list[Path]:
    """frame | GT | prediction PNGs of the first ``count`` labelled validation frames."""
    import numpy as np
    import torch
    from PIL import Image

    from ssp.data.palette import index_to_colour
    from ssp.fileio import atomic_path

    paths: list[Path] = []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            batch = to_device(batch, device)
            if config.stage == 2 and "stage1_mask" not in batch:
                batch["stage1_mask"] = quantized_probability(stage1_model.predict(model_inputs(batch)))
            scores = model.predict(model_inputs(batch)).float()
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


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    best_checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)


def build_optimizer(parameters: list, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel over all tensors; on CPU 5x faster than the default
    per-tensor loop for the tiny model) where torch has a fused kernel for the device."""
    import torch

    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in parameters)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=fused or None)


def train(
    stage: int,
    data: str | Path,
    run_dir: str | Path,
    params: dict[str, Any] | None = None,
    row: str | None = None,
    flow: str | Path | None = None,
    prompts: str | Path | None = None,
    logmel: str | Path | None = None,
    stage1_masks: str | Path | None = None,
    stage1_checkpoint: str | Path | None = None,
    resume: bool = False,
    interrupt_after_steps: int | None = None,
    run_name: str | None = None,
    progress: bool = True,
    step_hook: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train one stage; ``params`` is the loaded params dict (sections ``model``,
    ``train1``/``train2``). Returns the final metrics (also in ``{run_dir}/metrics.json``).
    ``step_hook(global_step)`` is called at the end of every step (bench/train.py times
    the real loop with it)."""
    import random

    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from ssp.models.checkpoint import CheckpointDir, Position, load_model, load_weights_into, read_training_state
    from ssp.fileio import write_json
    from ssp.models.criterion import SSPCriterion
    from ssp.models import SSPModel
    from ssp.ops.tracking import EXPERIMENTS, RunLogger

    if stage not in (1, 2):
        raise SSPError(f"--stage must be 1 or 2, got {stage}")
    params = dict(params or {})
    tp = TrainParams.from_dict(params.get(f"train{stage}"))
    config = build_model_config(params.get("model"), stage, row)
    run_dir = Path(run_dir)
    data_dirs = {"flow": flow, "prompts": prompts, "logmel": logmel}

    # -- determinism and devices -------------------------------------------------------------
    if tp.threads:
        torch.set_num_threads(tp.threads)
    if tp.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    dist_info, device = setup_distributed(tp.device)
    random.seed(tp.seed)
    np.random.seed(tp.seed)
    torch.manual_seed(tp.seed)  # same initial weights on every rank

    # -- data --------------------------------------------------------------------------------
    subsets = tp.subsets
    train_records = load_split_records(data, stage, "train", subsets)
    val_records = load_split_records(data, stage, "val", subsets)
    if stage == 2 and stage1_masks is None and stage1_checkpoint is None:
        raise SSPError("stage 2 validates on stage 1's predicted masks: pass --stage1-masks DIR "
                       "(from `ssp stage1-masks`) or --stage1-checkpoint CKPT")
    # Stage 1's masks of the train split are read only when the pre-mask trains on them.
    train_stage1 = stage == 2 and config.pre_mask and config.premask_train_source == "stage1"
    if train_stage1 and stage1_masks is None:
        raise SSPError("premask_train_source='stage1' trains on stage 1's masks of the train split: "
                       "pass --stage1-masks DIR (from `ssp stage1-masks`, train split included)")
    train_set = build_dataset(train_records, config, data_dirs, stage1_dir=stage1_masks if train_stage1 else None,
                              max_frames=tp.max_frames)
    val_set = build_dataset(val_records, config, data_dirs,
                            stage1_dir=stage1_masks if stage == 2 else None, max_frames=tp.max_frames)
    if tp.cache_in_memory:
        # Items are deterministic, so decoding them once is exact; the step then only collates.
        train_set = InMemoryDataset(train_set, progress=progress and dist_info.is_main)
    sampler = make_resumable_sampler(train_set, dist_info, tp.seed, shuffle=True)
    on_cuda = device.type == "cuda"
    loader_kwargs: dict[str, Any] = dict(num_workers=tp.num_workers, pin_memory=on_cuda,
                                         worker_init_fn=_seed_worker if tp.num_workers else None,
                                         persistent_workers=tp.num_workers > 0)
    if tp.num_workers:
        loader_kwargs["prefetch_factor"] = 4
    from ssp.data.datasets import collate_frames

    train_loader = DataLoader(train_set, batch_size=tp.batch_size, sampler=sampler,
                              collate_fn=collate_labelled if tp.labelled_only else collate_frames,
                              generator=torch.Generator().manual_seed(tp.seed),
                              **(dict(num_workers=0) if tp.cache_in_memory else loader_kwargs))
    val_indices = list(range(dist_info.rank, len(val_set), dist_info.world_size))  # no padding duplicates
    val_loader = DataLoader(val_set, batch_size=tp.val_batch_size, sampler=val_indices,
                            collate_fn=collate_frames, **loader_kwargs)
    val_loader.dataset_frame_offsets = frame_offsets(val_set)

    # -- model, loss, optimizer ----------------------------------------------------------------
    model = SSPModel(config).to(device)
    criterion = SSPCriterion(config).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, tp.lr, tp.weight_decay)
    step_size = tp.lr_step_epoch if tp.lr_step_epoch else 10**9
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=tp.lr_gamma)
    stage1_model = None
    if stage == 2 and stage1_masks is None:
        stage1_model, _, _ = load_model(stage1_checkpoint, device)
        if stage1_model.config.stage != 1:
            raise SSPError(f"{stage1_checkpoint}: --stage1-checkpoint must be a stage-1 checkpoint")

    # -- resume -----------------------------------------------------------------------------------
    checkpoints = CheckpointDir(run_dir)
    position = Position(epoch=0, batches_done=0, global_step=0)
    history: list[dict[str, Any]] = []
    best = {"metric": -math.inf, "epoch": 0, "val": {}}
    running = torch.zeros(5, dtype=torch.float64, device=device)  # loss parts summed over the epoch
    running_steps = 0
    resumed_from = None
    state = None
    if resume:
        last = checkpoints.last()
        if last is None:
            log.info("--resume: no checkpoint in %s, starting from scratch", checkpoints.root)
        else:
            weights_path, state_path = last
            state = read_training_state(state_path)
            saved_config = state.extra.get("config")
            if saved_config is not None and saved_config != config.to_dict():
                raise SSPError(f"{state_path}: was trained with another model config; "
                               "use a new --out or the same params")
            load_weights_into(model, weights_path)
            position = state.position
            history = state.extra.get("history", [])
            best = state.extra.get("best", best)
            running_steps = int(state.extra.get("running_steps", 0))
            if "running" in state.extra_tensors:
                running = state.extra_tensors["running"].to(device)
            resumed_from = str(weights_path)
            log.info("resuming from %s (epoch %d, %d batches done)", weights_path, position.epoch + 1,
                     position.batches_done)

    if dist_info.enabled:
        model_for_training = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if on_cuda else None, find_unused_parameters=True)
    else:
        model_for_training = model

    autocast: Callable = lambda: torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda)  # noqa: E731
    interrupt_after = interrupt_after_steps
    if interrupt_after is None and os.environ.get(INTERRUPT_ENV):
        interrupt_after = int(os.environ[INTERRUPT_ENV])

    run_params = {"stage": stage, "row": row or "", "data": str(data), "train": asdict(tp),
                  "model": config.to_dict(), "world_size": dist_info.world_size, "resumed_from": resumed_from or ""}
    tags = {"ssp.stage": str(stage), "ssp.row": row or "custom", "ssp.lambda_post": str(config.lambda_post),
            "ssp.size": config.size, "ssp.run_dir": str(run_dir.resolve())}  # how `ssp register` finds the run
    name = run_name or f"stage{stage}-{row or config.size}-seed{tp.seed}"
    loss_names = ("loss", "loss_ce", "loss_mask", "loss_dice", "loss_post")
    if state is not None:
        state.restore(optimizer, scheduler)  # RNG last: nothing may draw between here and the loop

    with RunLogger(EXPERIMENTS[stage], name, params=run_params, tags=tags, enabled=dist_info.is_main) as tracker:
        for epoch in range(position.epoch, tp.epochs):
            model_for_training.train()
            sampler.set_position(epoch, position.batches_done * tp.batch_size if epoch == position.epoch else 0)
            batches_done = position.batches_done if epoch == position.epoch else 0
            if batches_done == 0:
                running.zero_()
                running_steps = 0
            epoch_start, epoch_lr = time.time(), optimizer.param_groups[0]["lr"]
            bar = tqdm(train_loader, desc=f"stage {stage} epoch {epoch + 1}/{tp.epochs}", unit="step",
                       disable=not (progress and dist_info.is_main), leave=False)
            for batch in bar:
                batch = to_device(batch, device)
                with autocast():
                    output = model_for_training(batch)
                    losses = criterion(output, batch)
                optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                if tp.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(trainable, tp.grad_clip)
                optimizer.step()

                running += torch.stack([losses[k].detach().double() for k in loss_names])
                running_steps += 1
                batches_done += 1
                position = Position(epoch, batches_done, position.global_step + 1)
                if position.global_step % tp.log_every == 0:
                    mean = (running / running_steps).tolist()  # the one sync every log_every steps
                    bar.set_postfix(loss=f"{mean[0]:.3f}")
                    tracker.log_metrics({f"train/{k}": v for k, v in zip(loss_names, mean)},
                                        step=position.global_step)
                if tp.step_checkpoint_every and position.global_step % tp.step_checkpoint_every == 0 \
                        and dist_info.is_main:
                    checkpoints.save("step", model, optimizer, scheduler, position,
                                     info={"epoch": epoch, "kind": "step"},
                                     extra={"history": history, "best": best, "running_steps": running_steps,
                                            "config": config.to_dict()},
                                     extra_tensors={"running": running})
                if step_hook is not None:
                    step_hook(position.global_step)
                if interrupt_after is not None and position.global_step >= interrupt_after:
                    raise TrainingInterrupted(f"interrupted after step {position.global_step} "
                                              f"({INTERRUPT_ENV})")
            bar.close()
            scheduler.step()

            # -- end of epoch: validation, history, checkpoints --------------------------------
            epoch_losses = (running / max(running_steps, 1)).tolist()
            if dist_info.enabled:
                import torch.distributed as dist

                reduced = running.clone()
                dist.all_reduce(reduced)
                steps = torch.tensor([running_steps], dtype=torch.float64, device=device)
                dist.all_reduce(steps)
                epoch_losses = (reduced / steps.clamp(min=1)).tolist()
            row_out: dict[str, Any] = {"epoch": epoch + 1, "lr": epoch_lr,
                                       "seconds": round(time.time() - epoch_start, 2)}
            row_out.update({f"train_{k}": v for k, v in zip(loss_names, epoch_losses)})
            if (epoch + 1) % tp.val_every == 0 or epoch + 1 == tp.epochs:
                val = validate(model, val_loader, config, device, dist_info, stage1_model, autocast)
                row_out.update({f"val_{k}": v for k, v in val.items()})
                if val["miou"] > best["metric"]:
                    best = {"metric": val["miou"], "epoch": epoch + 1, "val": val}
                    if dist_info.is_main:
                        checkpoints.save_best(model, {"epoch": epoch + 1, "val": val})
            history.append(row_out)
            position = Position(epoch + 1, 0, position.global_step)
            if dist_info.is_main:
                checkpoints.save("epoch", model, optimizer, scheduler, position,
                                 info={"epoch": epoch + 1, "kind": "epoch"},
                                 extra={"history": history, "best": best, "running_steps": 0,
                                        "config": config.to_dict()})
                write_history(run_dir / "history.csv", history)
                tracker.log_metrics({k: v for k, v in row_out.items() if k != "epoch"}, step=epoch + 1)
            log.info("stage %d epoch %d/%d: %s", stage, epoch + 1, tp.epochs,
                     ", ".join(f"{k}={v:.4g}" for k, v in row_out.items() if isinstance(v, float)))

        # -- final outputs -----------------------------------------------------------------------
        metrics = {"stage": stage, "row": row, "epochs": tp.epochs, "global_steps": position.global_step,
                   "best_epoch": best["epoch"], "best": best["val"],
                   "final": {k[len("val_"):]: v for k, v in history[-1].items() if k.startswith("val_")},
                   "metric_for_best": "val miou"}
        if tracker.run_id:  # None on non-zero DDP ranks (disabled logger); they write no metrics.json
            # read by `ssp register` and `ssp evaluate` (test metrics go into this run)
            metrics["mlflow_run_id"] = tracker.run_id
        if dist_info.is_main:
            write_json(run_dir / "metrics.json", metrics)
            tracker.log_metrics({f"best/{k}": v for k, v in best["val"].items()})
            tracker.log_metrics({"best/epoch": best["epoch"]})
            if checkpoints.best.is_file():
                tracker.log_artifact(checkpoints.best, "checkpoints")
                if tp.overlays > 0:
                    best_model, _, _ = load_model(checkpoints.best, device)
                    overlays = write_overlays(best_model, val_loader, config, device, run_dir / "overlays",
                                              tp.overlays, stage1_model)
                    tracker.log_artifacts(overlays, "overlays")
            tracker.log_artifact(run_dir / "history.csv")
            tracker.log_artifact(run_dir / "metrics.json")
    if dist_info.enabled:
        import torch.distributed as dist

        dist.barrier()
    return TrainResult(run_dir, metrics, checkpoints.best, history)


class TrainingInterrupted(RuntimeError):
    """Raised by the interrupt hook (tests): the run stops as if it had been killed."""


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True,
                        help="1 = binary AVS (all subsets), 2 = AVSS with stage 1's stepping stones")
    parser.add_argument("--data", required=True, type=Path, help="dataset root (AVSBench layout or `ssp synth`)")
    parser.add_argument("--out", required=True, type=Path,
                        help="run folder: checkpoints/, history.csv, metrics.json, overlays/")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="params file; sections model and train1/train2 (default: params.yaml; "
                             "built-in demo defaults when the file or a key is missing)")
    parser.add_argument("--profile", default=None, help="params profile, e.g. paper (default: the file's `profile`)")
    parser.add_argument("--row", default=None,
                        help="a row of paper Table 2 (aavs, pre_mask, pre_mask_post_mask, text_att, text_vta, "
                             "pre_mask_vta, full): sets the pre_mask/text/post_mask switches")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a param, e.g. --set train2.epochs=3 --set model.text=vta (repeatable)")
    parser.add_argument("--flow", type=Path, default=None, help="`ssp flow` output (needed by pre_mask/post_mask)")
    parser.add_argument("--prompts", type=Path, default=None, help="`ssp prompts` output (needed by text att/vta)")
    parser.add_argument("--logmel", type=Path, default=None,
                        help="`ssp logmel` output (default: log-mel computed from the wav on the fly, slower)")
    parser.add_argument("--stage1-masks", type=Path, default=None,
                        help="stage 2: `ssp stage1-masks` output, the stepping stones used at validation")
    parser.add_argument("--stage1-checkpoint", type=Path, default=None,
                        help="stage 2: a stage-1 checkpoint to compute the validation stepping stones "
                             "in-process (when --stage1-masks is not given)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from {out}/checkpoints/last.json (mid-epoch if a step checkpoint is newer)")
    parser.add_argument("--seed", type=int, default=None, help="override trainN.seed")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: trainN.device = auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--run-name", default=None,
                        help="MLflow run name (default: stage{N}-{row or model size}-seed{seed})")
    parser.add_argument("--test-out", type=Path, default=None,
                        help="after training, evaluate the best checkpoint on --test-split in this process "
                             "and write the metrics JSON here (what `ssp evaluate --out` writes; saves a "
                             "second process start per ablation cell)")
    parser.add_argument("--test-split", default="test", help="split for --test-out (default: test)")
    parser.add_argument("--fscore-batch-videos", type=int, default=4,
                        help="--test-out: official batch-mode F-score, videos per batch (default 4)")


def main(args: argparse.Namespace) -> int:
    from ssp.ops.params import load_params

    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"train{args.stage}.seed={args.seed}")
    if args.device is not None:
        overrides.append(f"train{args.stage}.device={args.device}")
    if args.test_out is not None and args.stage == 2 and args.stage1_masks is None:  # before hours of training
        raise SSPError("--test-out for stage 2 needs --stage1-masks (the test split's stepping stones)")
    params = load_params(args.params, profile=args.profile, overrides=overrides)
    result = train(
        args.stage, args.data, args.out, params, row=args.row, flow=args.flow, prompts=args.prompts,
        logmel=args.logmel, stage1_masks=args.stage1_masks, stage1_checkpoint=args.stage1_checkpoint,
        resume=args.resume, progress=not args.no_progress, run_name=args.run_name,
    )
    best = result.metrics["best"]
    log.info("stage %d done: best epoch %s, val mIoU %.4f, F %.4f -> %s", args.stage, result.metrics["best_epoch"],
             best.get("miou", float("nan")), best.get("fscore", float("nan")), args.out / "metrics.json")
    if args.test_out is not None and int(os.environ.get("RANK", "0")) == 0:
        from ssp.eval.evaluate import evaluate, log_summary

        tested = evaluate(result.best_checkpoint, args.data, args.test_split, args.test_out,
                          stage1_masks=args.stage1_masks, flow=args.flow, prompts=args.prompts,
                          logmel=args.logmel, fscore_batch_videos=args.fscore_batch_videos,
                          progress=not args.no_progress)
        log_summary(tested)
    return 0

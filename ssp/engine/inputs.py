"""What a stage feeds its model: records -> datasets -> batches.

- :func:`load_split_records`, :func:`build_dataset`: the videos of a split as an
  :class:`~ssp.data.datasets.AVSDataset` reading the preprocessing outputs the model's
  switches need (:class:`InputDirs`; stage 2 also reads stage 1's masks);
- :func:`build_stage_datasets` + :func:`build_loaders`: training's train/val sets and
  loaders: a resumable, seeded (Distributed)Sampler (:class:`ResumableSampler`) over the
  train set, optionally decoded once into RAM (:class:`InMemoryDataset`), and unpadded
  per-rank shards of the val set;
- :func:`dataset_batches`: collated slices of a dataset in order (evaluation, stage-1
  masks, samples), the loader-free counterpart of the val loader;
- :func:`to_device`, :func:`model_inputs` (everything but the GT masks),
  :func:`frame_offsets` (global frame ids for the binary meter);
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from ssp.data.avsbench import VideoRecord, detect_layout, load_records
from ssp.data.datasets import AVSDataset, collate_frames
from ssp.engine.distributed import Dist
from ssp.errors import SSPError
from ssp.models.config import SSPConfig
from ssp.params import TrainParams


@dataclass(frozen=True)
class InputDirs:
    """Where the preprocessing stages wrote what a model may read (None: not given)."""

    flow: str | Path | None = None  # `ssp flow`: M_O, needed by pre_mask / post_mask
    prompts: str | Path | None = None  # `ssp prompts`: A1/A2, needed by text att / vta
    logmel: str | Path | None = None  # `ssp logmel`; None: log-mel from the wav, in-process


# ---------------------------------------------------------------------------------------
# Records and datasets
# ---------------------------------------------------------------------------------------
def load_split_records(data: str | Path, stage: int, split: str, subsets: list[str] | None) -> list[VideoRecord]:
    if stage == 2 and detect_layout(data) == "object":
        raise SSPError(f"{data}: stage 2 (AVSS) needs the AVSBench-semantic layout (class masks)")
    records = load_records(data, subsets=subsets, splits=[split])
    if not records:
        raise SSPError(f"{data}: no {split} videos{' in ' + ','.join(subsets) if subsets else ''}")
    return records


def build_dataset(
    records: Sequence[VideoRecord],
    config: SSPConfig,
    dirs: InputDirs,
    stage1_dir: str | Path | None = None,
    max_frames: int | None = None,
    **options: Any,
) -> AVSDataset:
    """The dataset ``config``'s model reads: flow masks only for pre_mask/post_mask, prompts
    only for text; ``options`` go to :class:`AVSDataset` (e.g. ``strict_masks``)."""
    needs_flow = config.pre_mask or config.post_mask
    if needs_flow and not dirs.flow:
        raise SSPError("pre_mask/post_mask need the optical-flow masks: pass --flow DIR (from `ssp flow`)")
    if config.text != "none" and not dirs.prompts:
        raise SSPError(f"text={config.text!r} needs the MLLM prompts: pass --prompts DIR (from `ssp prompts`)")
    return AVSDataset(
        records,
        task="avs" if config.stage == 1 else "avss",
        image_size=config.image_size,
        logmel_dir=dirs.logmel,
        flow_dir=dirs.flow if needs_flow else None,
        prompts_dir=dirs.prompts if config.text != "none" else None,
        stage1_dir=stage1_dir,
        max_frames=max_frames,
        **options,
    )


def build_stage_datasets(
    data: str | Path,
    stage: int,
    config: SSPConfig,
    tp: TrainParams,
    dirs: InputDirs,
    stage1_masks: str | Path | None,
    stage1_checkpoint: str | Path | None,
) -> tuple[AVSDataset, AVSDataset]:
    """Train and val sets of a training stage. Stage 2 validates on stage 1's predicted
    masks (``stage1_masks``, or computed from ``stage1_checkpoint``); its train split
    reads them only when the pre-mask or the stone trains on them (``premask_train_source`` /
    ``stepping_stone_train`` = ``'stage1'``)."""
    train_records = load_split_records(data, stage, "train", tp.subsets)
    val_records = load_split_records(data, stage, "val", tp.subsets)
    if stage == 2 and stage1_masks is None and stage1_checkpoint is None:
        raise SSPError(
            "stage 2 validates on stage 1's predicted masks: pass --stage1-masks DIR "
            "(from `ssp stage1-masks`) or --stage1-checkpoint CKPT"
        )
    premask_stage1 = config.pre_mask and config.premask_train_source == "stage1"
    train_stage1 = stage == 2 and (premask_stage1 or config.stepping_stone_train == "stage1")
    if train_stage1 and stage1_masks is None:
        which = "premask_train_source='stage1'" if premask_stage1 else "stepping_stone_train='stage1'"
        raise SSPError(
            f"{which} trains on stage 1's masks of the train split: "
            "pass --stage1-masks DIR (from `ssp stage1-masks`, train split included)"
        )
    # stage 1's class-level loss reads the class masks of the train split (the loss only)
    class_masks = stage == 1 and config.class_aux > 0
    train_set = build_dataset(
        train_records,
        config,
        dirs,
        stage1_dir=stage1_masks if train_stage1 else None,
        max_frames=tp.max_frames,
        class_masks=class_masks,
    )
    val_set = build_dataset(
        val_records, config, dirs, stage1_dir=stage1_masks if stage == 2 else None, max_frames=tp.max_frames
    )
    return train_set, val_set


def frame_offsets(dataset: AVSDataset) -> dict[str, int]:
    """uid -> index of the video's first frame when the dataset's frames are numbered in order."""
    offsets, total = {}, 0
    for i, record in enumerate(dataset.records):
        offsets[record.uid] = total
        total += dataset.num_frames(i)
    return offsets


class InMemoryDataset:
    """Every item of a dataset, decoded once (``cache_in_memory``)."""

    def __init__(self, dataset: AVSDataset, progress: bool = False):
        self.records = dataset.records
        self.items = [
            dataset[i]
            for i in tqdm(
                range(len(dataset)), desc="caching train set", unit="video", disable=not progress, leave=False
            )
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


# ---------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------
def collate_labelled(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """collate_frames, then keep only labelled frames (unlabelled ones carry no loss)."""
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


def dataset_batches(
    dataset: Any, batch_size: int, collate: Callable[[list], dict[str, Any]] = collate_frames
) -> Iterator[dict[str, Any]]:
    """``dataset`` in order, ``batch_size`` videos per collated batch (no loader, no workers)."""
    for start in range(0, len(dataset), batch_size):
        yield collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """What the model may see outside training: everything but the GT masks."""
    return {k: v for k, v in batch.items() if k not in ("masks", "class_masks")}


# ---------------------------------------------------------------------------------------
# Training loaders
# ---------------------------------------------------------------------------------------
class ResumableSampler(DistributedSampler):
    """A DistributedSampler (also for one process) that can start mid-epoch: epoch order =
    DistributedSampler's (seeded by seed + epoch); ``start`` skips the samples an
    interrupted run had already done."""

    start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


def make_resumable_sampler(dataset: Any, dist_info: Dist, seed: int, shuffle: bool) -> ResumableSampler:
    return ResumableSampler(
        dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=shuffle, seed=seed, drop_last=False
    )


def _seed_worker(worker_id: int) -> None:
    # items hold no randomness; seed anyway so that any future augmentation is reproducible
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@dataclass
class Loaders:
    train: DataLoader
    sampler: ResumableSampler  # the train loader's; ``set_position`` before each epoch
    val: DataLoader  # ``val.dataset_frame_offsets``: :func:`frame_offsets` of the val set


def build_loaders(
    train_set: Any, val_set: AVSDataset, tp: TrainParams, dist_info: Dist, on_cuda: bool, progress: bool
) -> Loaders:
    """The train loader (shuffled by a :class:`ResumableSampler` seeded with ``tp.seed``;
    ``tp.cache_in_memory``: decoded once, no workers) and this rank's val loader (every
    ``world_size``-th video, no padding duplicates)."""
    if tp.cache_in_memory:
        # Items are deterministic, so decoding them once is exact; the step then only collates.
        train_set = InMemoryDataset(train_set, progress=progress and dist_info.is_main)
    sampler = make_resumable_sampler(train_set, dist_info, tp.seed, shuffle=True)
    loader_kwargs: dict[str, Any] = {
        "num_workers": tp.num_workers,
        "pin_memory": on_cuda,
        "worker_init_fn": _seed_worker if tp.num_workers else None,
        "persistent_workers": tp.num_workers > 0,
    }
    if tp.num_workers:
        loader_kwargs["prefetch_factor"] = 4
    train_loader = DataLoader(
        train_set,
        batch_size=tp.batch_size,
        sampler=sampler,
        collate_fn=collate_labelled if tp.labelled_only else collate_frames,
        generator=torch.Generator().manual_seed(tp.seed),
        **({"num_workers": 0} if tp.cache_in_memory else loader_kwargs),
    )
    val_indices = list(range(dist_info.rank, len(val_set), dist_info.world_size))
    # Its own generator: a DataLoader draws its workers' base seed from `generator` when an
    # iterator is made, from the global torch RNG without one. With persistent workers that
    # happens at the first validation of a process only, so a resumed run drew once more
    # than an uninterrupted one and every later step's RNG (the loss's point sampling) moved.
    val_loader = DataLoader(
        val_set,
        batch_size=tp.val_batch_size,
        sampler=val_indices,
        collate_fn=collate_frames,
        generator=torch.Generator().manual_seed(tp.seed),
        **loader_kwargs,
    )
    val_loader.dataset_frame_offsets = frame_offsets(val_set)
    return Loaders(train_loader, sampler, val_loader)

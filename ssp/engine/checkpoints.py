"""Resumable training checkpoints: the model weights (:mod:`ssp.models.checkpoint`) plus
the training state, safetensors + JSON, no pickle anywhere.

Layout of ``{run_dir}/checkpoints/``::

    epoch_{k}.safetensors        model weights after epoch k (1-based), config in metadata
    epoch_{k}.state.safetensors  optimizer tensors + RNG tensors; JSON metadata holds the
                                 optimizer param groups, scheduler, python/numpy RNG, the
                                 data position (epoch, batches done), the history, the
                                 run's signature (what ``--resume auto`` compares) and
                                 AAVS's training phase (``extra["phase"]``: after the
                                 switch the optimizer covers the Swin adapters too, so a
                                 resumed run rebuilds phase 2's before restoring it)
    step_{n}.safetensors (+ .state)  a mid-epoch checkpoint after global step n (every N steps)
    best.safetensors             weights of the best epoch by the validation metric
    last.json                    pointer to the newest complete checkpoint: written last,
                                 so a run killed while saving resumes from the previous one

Every file is written through :func:`ssp.fileio.atomic_path`, and no file is ever
rewritten while ``last.json`` may name it (step checkpoints carry their step in the name).
Retention (:meth:`CheckpointDir.prune`, after each pointer update): the pointer's pair, the
``keep_last`` newest epoch checkpoints and ``best`` stay, everything else goes. Deleting
only files the pointer does not name keeps the folder resumable however a deletion is
cut short; a later prune removes what is left over.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ssp.errors import DataError
from ssp.fileio import atomic_path, write_json
from ssp.models.checkpoint import load_tensors, save_tensors, save_weights

LAST_POINTER = "last.json"
# checkpoint files by kind: (kind, number, is the state file; the number-less "step" is an
# older version's overwritten step checkpoint); atomic_path's temporaries (".{name}.*.tmp...")
# of a write that was killed match TEMPORARY
CHECKPOINT_FILE = re.compile(r"(epoch|step)(?:_(\d+))?(\.state)?\.safetensors")
TEMPORARY = re.compile(r"\.(epoch|step|best)_?\d*(\.state)?\.safetensors\..*")


# ---------------------------------------------------------------------------------------
# Training state: optimizer, scheduler, RNG, data position
# ---------------------------------------------------------------------------------------
def rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)], "python": [version, list(internal), gauss_next]}
    return tensors, meta


def set_rng_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [
        tensors[k]
        for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    ]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy.keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state_dict split into tensors (per param, per field) and JSON."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, fields in sd["state"].items():
        for name, value in fields.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state_dict(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


@dataclass
class Position:
    """Where training stands: ``epoch`` (0-based) and batches of it already done."""

    epoch: int
    batches_done: int
    global_step: int


def save_training_state(
    path: str | Path,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    position: Position,
    extra: dict[str, Any],
    extra_tensors: dict[str, Tensor] | None = None,
) -> None:
    opt_tensors, opt_meta = _optimizer_state(optimizer)
    rng_tensors, rng_meta = rng_state()
    metadata = {
        "optimizer": opt_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_meta,
        "position": vars(position),
        "extra": extra,
    }
    save_tensors(Path(path), {**opt_tensors, **rng_tensors, **(extra_tensors or {})}, metadata)


@dataclass
class TrainingState:
    position: Position
    extra: dict[str, Any]
    extra_tensors: dict[str, Tensor]
    _tensors: dict[str, Tensor]
    _meta: dict[str, Any]

    def restore(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """Load optimizer, scheduler and every RNG (call right before the loop resumes)."""
        optimizer.load_state_dict(_optimizer_state_dict(self._tensors, self._meta["optimizer"]))
        if scheduler is not None and self._meta.get("scheduler") is not None:
            scheduler.load_state_dict(self._meta["scheduler"])
        set_rng_state(self._tensors, self._meta["rng"])


def read_training_state(path: str | Path) -> TrainingState:
    tensors, meta = load_tensors(path)
    try:
        position = Position(**meta["position"])
        extra_tensors = {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}
        return TrainingState(position, meta.get("extra", {}), extra_tensors, tensors, meta)
    except (KeyError, TypeError) as err:
        raise DataError(path, f"training state is incomplete ({err})") from None


# ---------------------------------------------------------------------------------------
# The checkpoint folder
# ---------------------------------------------------------------------------------------
class CheckpointDir:
    """``{run_dir}/checkpoints``: epoch/step checkpoints, best, and the ``last`` pointer.
    ``keep_last``: how many epoch checkpoints :meth:`prune` keeps (None: all)."""

    def __init__(self, run_dir: str | Path, keep_last: int | None = None):
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    def epoch_paths(self, epoch: int) -> tuple[Path, Path]:
        return self.root / f"epoch_{epoch}.safetensors", self.root / f"epoch_{epoch}.state.safetensors"

    def step_paths(self, global_step: int) -> tuple[Path, Path]:
        return self.root / f"step_{global_step}.safetensors", self.root / f"step_{global_step}.state.safetensors"

    @property
    def best(self) -> Path:
        return self.root / "best.safetensors"

    def save(
        self,
        kind: str,
        model: nn.Module,
        optimizer,
        scheduler,
        position: Position,
        info: dict[str, Any],
        extra: dict[str, Any],
        extra_tensors: dict[str, Tensor] | None = None,
    ) -> Path:
        """Write a complete checkpoint (``kind`` = "epoch" or "step"), point ``last`` at it,
        then :meth:`prune` the older ones."""
        weights, state = self.epoch_paths(position.epoch) if kind == "epoch" else self.step_paths(position.global_step)
        save_weights(weights, model, info)
        save_training_state(
            state, optimizer, scheduler, position, extra, {f"extra.{k}": v for k, v in (extra_tensors or {}).items()}
        )
        write_json(
            self.root / LAST_POINTER, {"weights": weights.name, "state": state.name, "kind": kind, **vars(position)}
        )
        self.prune()
        return weights

    def save_best(self, model: nn.Module, info: dict[str, Any]) -> None:
        save_weights(self.best, model, info)

    def _pointer(self) -> dict[str, Any] | None:
        pointer = self.root / LAST_POINTER
        if not pointer.is_file():
            return None
        try:
            data = json.loads(pointer.read_text())
            return {"weights": str(data["weights"]), "state": str(data["state"]), "epoch": int(data["epoch"])}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise DataError(pointer, f"checkpoint pointer is unreadable ({err})") from None

    def last(self) -> tuple[Path, Path] | None:
        """(weights, state) of the newest complete checkpoint, or None."""
        data = self._pointer()
        return None if data is None else (self.root / data["weights"], self.root / data["state"])

    def checkpoint_files(self) -> list[Path]:
        """Every epoch/step checkpoint file in the folder (both halves of each pair)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if CHECKPOINT_FILE.fullmatch(p.name))

    def prune(self) -> list[Path]:
        """Delete every checkpoint file but the pointer's pair and the ``keep_last`` newest
        epoch checkpoints up to the pointer's epoch (files past it are a lost write's), and
        temporaries of killed writes. Only files the pointer does not name are touched, one
        ``unlink`` each, so a kill at any moment leaves a resumable folder. Returns them."""
        data = self._pointer()
        if data is None:
            return []
        keep = {data["weights"], data["state"]}
        epochs = sorted(
            {
                int(m.group(2))
                for p in self.checkpoint_files()
                if (m := CHECKPOINT_FILE.fullmatch(p.name))
                and m.group(1) == "epoch"
                and m.group(2) is not None
                and int(m.group(2)) <= data["epoch"]
            }
        )
        kept_epochs = epochs if self.keep_last is None else epochs[-self.keep_last :]
        for epoch in kept_epochs:
            keep.update(p.name for p in self.epoch_paths(epoch))
        doomed = [p for p in self.checkpoint_files() if p.name not in keep]
        doomed += [p for p in self.root.iterdir() if TEMPORARY.fullmatch(p.name)]
        for path in doomed:
            path.unlink(missing_ok=True)
        return doomed

    def copy_from(self, other: CheckpointDir) -> None:
        """Replace this folder's checkpoints by ``other``'s newest pair and best (an adopted
        run, ``ssp train --adopt``): this folder is cleared, the files are copied, and the
        pointer comes last, so a kill at any moment leaves nothing or the whole copy."""
        last = other.last()
        if last is None:
            raise DataError(other.root, "has no checkpoint to copy")
        self.clear()
        for source in (*last, other.best):
            if source.is_file():
                with atomic_path(self.root / source.name) as tmp:
                    shutil.copyfile(source, tmp)
        with atomic_path(self.root / LAST_POINTER) as tmp:
            shutil.copyfile(other.root / LAST_POINTER, tmp)

    def clear(self) -> list[Path]:
        """Remove a former run's checkpoints before a fresh start: the pointer first (a kill
        after it leaves a folder with nothing to resume, never a stale pair), then the rest."""
        pointer = self.root / LAST_POINTER
        removed = [pointer] if pointer.is_file() else []
        pointer.unlink(missing_ok=True)
        doomed = [*self.checkpoint_files(), *([self.best] if self.best.is_file() else [])]
        for path in doomed:
            path.unlink(missing_ok=True)
        return removed + doomed

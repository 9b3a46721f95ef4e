"""Training checkpoints: safetensors + JSON, no pickle anywhere.

Layout of ``{run_dir}/checkpoints/``::

    epoch_{k}.safetensors        model weights after epoch k (1-based), config in metadata
    epoch_{k}.state.safetensors  optimizer tensors + RNG tensors; JSON metadata holds the
                                 optimizer param groups, scheduler, python/numpy RNG, the
                                 data position (epoch, batches done) and the history
    step.safetensors (+ .state)  the latest mid-epoch checkpoint (every N steps), overwritten
    best.safetensors             weights of the best epoch by the validation metric
    last.json                    pointer to the newest complete checkpoint: written last,
                                 so a run killed while saving resumes from the previous one

Every file is written through :func:`ssp.fileio.atomic_path`. A weights file carries the
model config (``SSPConfig.to_dict()``) in its metadata, so ``evaluate``/``predict``
rebuild the model from the file alone (:func:`load_model`).

Frozen text-model weights (``text_trainable=False``) are not stored: they never change
and are rebuilt from the text model directory the config names (the MiniLM embeddings
alone would add ~47 MB per checkpoint). Loading then reads every other key strictly.

Reading uses safetensors only, so a checkpoint cannot execute code; a truncated file, a
pickle, or weights that do not fit the config raise an :class:`~ssp.errors.DataError`
naming the file.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ssp.errors import DataError
from ssp.fileio import atomic_path, write_json
from ssp.models.config import SSPConfig
from ssp.models.ssp import SSPModel

FORMAT = "ssp-checkpoint"
VERSION = 1
FROZEN_TEXT_PREFIX = "text_module.text_encoder."
LAST_POINTER = "last.json"


# ---------------------------------------------------------------------------------------
# Low level: safetensors with JSON metadata
# ---------------------------------------------------------------------------------------
def _save(path: Path, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {"format": FORMAT, "version": str(VERSION), **{k: json.dumps(v) for k, v in metadata.items()}}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _load(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and decoded metadata of one of our files; DataError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = f.metadata() or {}
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except Exception as err:  # truncated file, a pickle, any other format
        raise DataError(path, f"not a readable safetensors checkpoint ({type(err).__name__}: {err}); "
                              "checkpoints are never read as pickle") from None
    if raw.get("format") != FORMAT:
        raise DataError(path, f"not an SSP checkpoint (metadata format={raw.get('format')!r})")
    try:
        metadata = {k: json.loads(v) for k, v in raw.items() if k not in ("format", "version")}
    except json.JSONDecodeError as err:
        raise DataError(path, f"checkpoint metadata is not valid JSON ({err})") from None
    return tensors, metadata


# ---------------------------------------------------------------------------------------
# Model weights
# ---------------------------------------------------------------------------------------
def model_state(model: nn.Module) -> dict[str, Tensor]:
    """The weights worth storing: everything but a frozen text model."""
    model = getattr(model, "module", model)  # DDP
    keep_text = bool(getattr(model.config, "text_trainable", False))
    return {k: v for k, v in model.state_dict().items() if keep_text or not k.startswith(FROZEN_TEXT_PREFIX)}


def save_weights(path: str | Path, model: nn.Module, info: dict[str, Any] | None = None) -> None:
    """Weights + config (+ ``info``: epoch, metrics, ...) in one safetensors file."""
    model = getattr(model, "module", model)
    _save(Path(path), model_state(model), {"config": model.config.to_dict(), "info": info or {}})


def read_weights(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """(state dict, config dict, info) of a weights file."""
    tensors, metadata = _load(path)
    if "config" not in metadata:
        raise DataError(path, "checkpoint has no model config in its metadata")
    return tensors, metadata["config"], metadata.get("info", {})


def load_weights_into(model: nn.Module, path: str | Path, state: dict[str, Tensor] | None = None) -> None:
    """Load a weights file strictly (frozen text weights excepted); DataError on mismatch."""
    model = getattr(model, "module", model)
    if state is None:
        state, _, _ = read_weights(path)
    own = model_state(model)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3]]
        raise DataError(path, "weights do not fit this model: "
                              f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                              f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}, "
                              f"wrong shape {shapes}")
    model.load_state_dict(state, strict=False)


def load_model(path: str | Path, device: str | torch.device = "cpu", **config_overrides: Any):
    """Rebuild the model a weights file was trained as; returns ``(model, config, info)``.

    Weight-file paths in the stored config (pretrained backbone/VGGish/Mask2Former) are
    dropped: the checkpoint's own weights replace them anyway and the files may not exist
    where the checkpoint is used. ``config_overrides`` change eval-time knobs such as
    ``premask_test_source``.
    """
    state, config_dict, info = read_weights(path)
    config_dict = {**config_dict, "vggish_weights": None, "backbone_weights": None,
                   "mask2former_weights": None, **config_overrides}
    try:
        config = SSPConfig.from_dict(config_dict)
    except Exception as err:
        raise DataError(path, f"checkpoint config does not build a model ({err})") from None
    model = SSPModel(config)
    load_weights_into(model, path, state)
    return model.to(device).eval(), config, info


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
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss_next]}
    return tensors, meta


def set_rng_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")),
                                       key=lambda k: int(k.rsplit(".", 1)[1]))]
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


def save_training_state(path: str | Path, optimizer: torch.optim.Optimizer, scheduler: Any,
                        position: Position, extra: dict[str, Any],
                        extra_tensors: dict[str, Tensor] | None = None) -> None:
    opt_tensors, opt_meta = _optimizer_state(optimizer)
    rng_tensors, rng_meta = rng_state()
    metadata = {
        "optimizer": opt_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_meta,
        "position": vars(position),
        "extra": extra,
    }
    _save(Path(path), {**opt_tensors, **rng_tensors, **(extra_tensors or {})}, metadata)


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
    tensors, meta = _load(path)
    try:
        position = Position(**meta["position"])
        extra_tensors = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
        return TrainingState(position, meta.get("extra", {}), extra_tensors, tensors, meta)
    except (KeyError, TypeError) as err:
        raise DataError(path, f"training state is incomplete ({err})") from None


# ---------------------------------------------------------------------------------------
# The checkpoint folder
# ---------------------------------------------------------------------------------------
class CheckpointDir:
    """``{run_dir}/checkpoints``: epoch/step checkpoints, best, and the ``last`` pointer."""

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir) / "checkpoints"

    def epoch_paths(self, epoch: int) -> tuple[Path, Path]:
        return self.root / f"epoch_{epoch}.safetensors", self.root / f"epoch_{epoch}.state.safetensors"

    def step_paths(self) -> tuple[Path, Path]:
        return self.root / "step.safetensors", self.root / "step.state.safetensors"

    @property
    def best(self) -> Path:
        return self.root / "best.safetensors"

    def save(self, kind: str, model: nn.Module, optimizer, scheduler, position: Position,
             info: dict[str, Any], extra: dict[str, Any], extra_tensors: dict[str, Tensor] | None = None) -> Path:
        """Write a complete checkpoint (``kind`` = "epoch" or "step"), then point ``last`` at it."""
        weights, state = self.epoch_paths(position.epoch) if kind == "epoch" else self.step_paths()
        save_weights(weights, model, info)
        save_training_state(state, optimizer, scheduler, position, extra,
                            {f"extra.{k}": v for k, v in (extra_tensors or {}).items()})
        write_json(self.root / LAST_POINTER, {"weights": weights.name, "state": state.name,
                                              "kind": kind, **vars(position)})
        return weights

    def save_best(self, model: nn.Module, info: dict[str, Any]) -> None:
        save_weights(self.best, model, info)

    def last(self) -> tuple[Path, Path] | None:
        """(weights, state) of the newest complete checkpoint, or None."""
        pointer = self.root / LAST_POINTER
        if not pointer.is_file():
            return None
        try:
            data = json.loads(pointer.read_text())
            return self.root / data["weights"], self.root / data["state"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(pointer, f"checkpoint pointer is unreadable ({err})") from None

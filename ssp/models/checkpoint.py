"""Model checkpoints: weights + config in safetensors with JSON metadata, no pickle anywhere.

A weights file carries the model config (``SSPConfig.to_dict()``) in its metadata, so
``evaluate``/``predict`` rebuild the model from the file alone (:func:`load_model`). The
training state beside it (optimizer, scheduler, RNG, data position) and the layout of a
run's ``checkpoints/`` folder are the training loop's: :mod:`ssp.engine.checkpoints`.

Frozen pretrained encoders are not stored (:func:`frozen_prefixes`): the text model
(``text_trainable=False``; the MiniLM embeddings alone would add ~47 MB per checkpoint),
CLIP, and a frozen pretrained VGGish (288 MB). They never change and are rebuilt from the
weights spec the config names. Loading then reads every other key strictly.

Reading uses safetensors only, so a checkpoint cannot execute code; a truncated file, a
pickle, or weights that do not fit the config raise an :class:`~ssp.errors.DataError`
naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ssp.errors import DataError
from ssp.fileio import atomic_path
from ssp.models.config import SSPConfig

FORMAT = "ssp-checkpoint"
VERSION = 1
FROZEN_TEXT_PREFIX = "text_module.text_encoder."
FROZEN_AUDIO_PREFIX = "audio_encoder."


# ---------------------------------------------------------------------------------------
# Low level: safetensors with JSON metadata
# ---------------------------------------------------------------------------------------
def save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> None:
    """Tensors + JSON-serialisable metadata as one safetensors file, atomically."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {"format": FORMAT, "version": str(VERSION), **{k: json.dumps(v) for k, v in metadata.items()}}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
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
        raise DataError(
            path,
            f"not a readable safetensors checkpoint ({type(err).__name__}: {err}); "
            "checkpoints are never read as pickle",
        ) from None
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
def frozen_prefixes(config: dict[str, Any]) -> tuple[str, ...]:
    """State-dict prefixes of frozen pretrained encoders that checkpoints do not store: they
    never change and are rebuilt from their weights spec (``text_model``, ``vggish_weights``).
    A pretrained VGGish is 72 M floats (288 MB) in every epoch's file otherwise."""
    prefixes = []
    if not config.get("text_trainable", False):
        prefixes.append(FROZEN_TEXT_PREFIX)
    if _frozen_vggish(config):
        prefixes.append(FROZEN_AUDIO_PREFIX)
    return tuple(prefixes)


def _frozen_vggish(config: dict[str, Any]) -> bool:
    """A pretrained VGGish that does not train (``config``: ``SSPConfig.to_dict()``, as stored)."""
    return (
        config.get("audio_encoder") == "vggish"
        and bool(config.get("vggish_weights"))
        and bool(config.get("freeze_audio_encoder", True))
    )


def model_state(model: nn.Module) -> dict[str, Tensor]:
    """The weights worth storing: everything but frozen pretrained encoders (frozen_prefixes)."""
    model = getattr(model, "module", model)  # DDP
    skip = frozen_prefixes(model.config.to_dict())
    return {k: v for k, v in model.state_dict().items() if not (skip and k.startswith(skip))}


def save_weights(path: str | Path, model: nn.Module, info: dict[str, Any] | None = None) -> None:
    """Weights + config (+ ``info``: epoch, metrics, ...) in one safetensors file. ``info``
    also records the pretrained weights the model was built from (``info["pretrained"]``:
    spec, hub id, revision, sha256 per file; :meth:`SSPModel.pretrained_weights`)."""
    model = getattr(model, "module", model)
    info = dict(info or {})
    if hasattr(model, "pretrained_weights"):
        info.setdefault("pretrained", model.pretrained_weights())
    save_tensors(Path(path), model_state(model), {"config": model.config.to_dict(), "info": info})


def read_weights(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """(state dict, config dict, info) of a weights file."""
    tensors, metadata = load_tensors(path)
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
        raise DataError(
            path,
            "weights do not fit this model: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}, "
            f"wrong shape {shapes}",
        )
    model.load_state_dict(state, strict=False)


def load_model(path: str | Path, device: str | torch.device = "cpu", **config_overrides: Any):
    """Rebuild the model a weights file was trained as; returns ``(model, config, info)``.

    Weight-file paths in the stored config (pretrained backbone/VGGish/Mask2Former) are
    dropped: the checkpoint's own weights replace them anyway and the files may not exist
    where the checkpoint is used (what they were stays in ``info["pretrained"]``). Frozen
    encoders that are not stored (the text model, CLIP, a frozen pretrained VGGish) are read
    again from their spec (the hub cache, or a download). ``config_overrides`` change eval-time knobs such as
    ``premask_test_source``.
    """
    state, config_dict, info = read_weights(path)
    # a frozen pretrained VGGish is rebuilt from its spec, like the text model -- unless the file
    # stores it (written before checkpoints left it out)
    stored_vggish = not _frozen_vggish(config_dict) or any(k.startswith(FROZEN_AUDIO_PREFIX) for k in state)
    config_dict = {
        **config_dict,
        "vggish_weights": None if stored_vggish else config_dict["vggish_weights"],
        "backbone_weights": None,
        "mask2former_weights": None,
        "allow_random_init": True,  # the checkpoint's own weights replace the pretrained ones
        **config_overrides,
    }
    try:
        config = SSPConfig.from_dict(config_dict)
    except Exception as err:
        raise DataError(path, f"checkpoint config does not build a model ({err})") from None
    # building a model needs torch + transformers + timm (~3 s); reading or writing weights
    # (`ssp register`, the training loop) does not
    from ssp.models.ssp import SSPModel  # noqa: PLC0415

    model = SSPModel(config)
    check_same_pretrained(path, info.get("pretrained", {}), model.pretrained_weights())
    # the training-time record of what the file's own weights replaced, kept if saved again
    model.resolved_weights = {**info.get("pretrained", {}), **model.pretrained_weights()}
    load_weights_into(model, path, state)
    return model.to(device).eval(), config, info


# SSPConfig fields that name pretrained weights: their spelling may change (a pinned
# commit, another cache path) while the files stay the same, which check_same_pretrained checks
WEIGHT_SPEC_FIELDS = ("mask2former_weights", "vggish_weights", "backbone_weights", "text_model", "clip_model")


def without_weight_specs(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in WEIGHT_SPEC_FIELDS}


def check_same_pretrained(path: str | Path, trained: dict[str, dict], rebuilt: dict[str, dict]) -> None:
    """Pretrained parts resolved now must be the files a checkpoint was trained with (same
    sha256): a floating hub spec, a replaced local folder or another machine's copy would
    otherwise change the evaluated (or resumed) model without a word."""
    for what, record in rebuilt.items():
        before = trained.get(what)
        if before and before.get("files") and before["files"] != record.get("files"):
            changed = sorted(
                n
                for n in set(before["files"]) | set(record["files"])
                if before["files"].get(n) != record["files"].get(n)
            )
            raise DataError(
                path,
                f"{what}: trained with {before.get('repo_id') or before['spec']}@{before.get('revision') or '-'}, "
                f"but {record['spec']} now resolves to other files ({', '.join(changed[:3])} differ); "
                f"pin {what} to the training revision (the checkpoint's info['pretrained'] has it)",
            )

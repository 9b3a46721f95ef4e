"""Loading local pretrained weights into an :class:`~ssp.models.ssp.SSPModel`.

Files are read with safetensors or ``torch.load(weights_only=True)``: loading never
executes code from a file. A file that does not fit gets a :class:`~ssp.errors.DataError`
naming it and the first offending keys.

``paths`` keys (all optional, None = keep the random init):

- ``"mask2former_weights"``: a Hugging Face ``Mask2FormerForUniversalSegmentation`` (or
  ``Mask2FormerModel``, or AAVS) state dict. Keys ``model.pixel_level_module.*`` and
  ``model.transformer_module.*`` map onto the same names here, ``class_predictor.*``
  onto the class head. Entries whose shape differs only because of the task (class head,
  number of queries) are skipped, as AAVS does with ``ignore_mismatched_sizes``; any
  other mismatch, or a backbone/decoder parameter the file lacks, is an error.
- ``"vggish_weights"``: torchvggish's VGGish state dict, loaded strictly into
  ``model.audio_encoder`` (``SSPModel`` already does this at build time through
  ``ssp.models.vggish.VGGish.from_torchvggish``; this entry is for swapping weights later).
- ``"backbone_weights"``: timm backbones load through timm at build time (see
  :mod:`ssp.models.backbones`); it is not handled here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from ssp.errors import DataError

# Parameters whose shape legitimately depends on the task (number of classes/queries).
TASK_SPECIFIC_PREFIXES = (
    "class_predictor.",
    "transformer_module.queries_embedder.",
    "transformer_module.queries_features.",
)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A flat name -> tensor dict from a .safetensors file or a weights-only torch file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "weights file not found")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, pickle with code, wrong format
        raise DataError(path, f"cannot read weights ({type(err).__name__}: {err})") from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DataError(path, "not a state dict of tensors")
    return state


def load_pretrained(model: nn.Module, paths: dict[str, str | Path | None]) -> dict[str, list[str]]:
    """Load the given local weight files; returns {file kind: keys skipped} for logging."""
    report: dict[str, list[str]] = {}
    if paths.get("mask2former_weights"):
        report["mask2former_weights"] = _load_mask2former(model, Path(paths["mask2former_weights"]))
    if paths.get("vggish_weights"):
        path = Path(paths["vggish_weights"])
        _load_strict(model.audio_encoder, read_state_dict(path), path, "VGGish")
        report["vggish_weights"] = []
    return report


def _load_strict(module: nn.Module, state: dict[str, Tensor], path: Path, what: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise DataError(
            path,
            f"does not fit the {what} module: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {wrong[:5]}",
        )
    module.load_state_dict(state)


def _load_mask2former(model: nn.Module, path: Path) -> list[str]:
    state = read_state_dict(path)
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("criterion."):
            continue  # the loss's buffers
        renamed[key[len("model.") :] if key.startswith("model.") else key] = value

    own = model.state_dict()
    mask2former_keys = [
        k for k in own if k.startswith(("pixel_level_module.", "transformer_module.", "class_predictor."))
    ]
    # SSP/AAVS additions that a plain Mask2Former checkpoint does not have.
    optional = (
        "transformer_module.silence_embed.",
        "transformer_module.uncertain_embed.",
        "transformer_module.audio_embed.",
    )
    missing = [k for k in mask2former_keys if k not in renamed and not k.startswith(optional)]
    if missing:
        raise DataError(
            path,
            f"is not a Mask2Former checkpoint for this model: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}",
        )

    to_load, skipped = {}, []
    for key, value in renamed.items():
        if key not in own:
            skipped.append(key)
            continue
        if own[key].shape != value.shape:
            if key.startswith(TASK_SPECIFIC_PREFIXES):
                skipped.append(key)
                continue
            raise DataError(
                path, f"{key}: shape {tuple(value.shape)} in the file, {tuple(own[key].shape)} in the model"
            )
        to_load[key] = value
    model.load_state_dict(to_load, strict=False)
    return skipped

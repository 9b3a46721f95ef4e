"""Pretrained Mask2Former / AAVS weights into an :class:`~ssp.models.ssp.SSPModel`.

``model.mask2former_weights`` is a weights spec (:func:`ssp.hub.resolve_weights`):
a hub id ``org/name@revision`` (AAVS's start point is
``facebook/mask2former-swin-base-ade-semantic``), a local ``save_pretrained`` folder
(``config.json`` + ``model.safetensors``), or a state-dict file (.safetensors, or a torch
file read with ``weights_only=True``: loading never executes code from a file). What was
read is recorded on the model (``model.resolved_weights["model.mask2former_weights"]``,
the :class:`~ssp.hub.ResolvedWeights` as a dict), which the checkpoint metadata and
the MLflow run carry.

Architecture: when the spec is a folder with a Mask2Former ``config.json``, the
architecture fields of :class:`~ssp.models.config.SSPConfig` are read from it
(:func:`architecture_from_mask2former_config`: Swin embed_dim/depths/heads/window,
hidden_dim, pixel-decoder layers and feedforward, decoder layers and feedforward, heads)
and override the preset's (:func:`with_pretrained_architecture`, first thing in
``SSPModel.__init__``). A state-dict file has no config: the preset's architecture must fit.

Key map (file -> model), in this order; every key of the file must land on a model key:

- AAVS (GeWu-Lab/Stepping-Stones ``avs*/avs_model.py:AdaptiveAVS``, saved by
  ``train.py`` as ``torch.save(model.state_dict())``, recognised by ``model.model.*``):
  ``model.model.<k>`` -> ``<k>`` (then the Hugging Face renames), ``model.class_predictor.*``
  -> ``class_predictor.*``, ``audio_proj.{0,2}.*`` -> ``audio_projection.{0,2}.*``,
  ``model.criterion.*`` dropped. Its adapters (``swin_adapt_1``/``swin_adapt_3`` in the Swin,
  ``avs_adapt`` in the pixel decoder's and the decoder's self-attention) and stepping-stone
  embeddings (``transformer_module.{audio,silence,uncertain}_embed``) keep their names.
- Hugging Face ``Mask2FormerForUniversalSegmentation`` (any transformers version's
  ``save_pretrained``, which writes the original names) or ``Mask2FormerModel``:
  ``model.<k>`` -> ``<k>``, ``criterion.*`` dropped; the Swin renamed to the current
  transformers layout (:data:`SWIN_RENAMES`): ``pixel_level_module.encoder.{embeddings,encoder}.``
  -> ``pixel_level_module.encoder.swin.{embeddings,encoder}.``, and in each block
  ``attention.self.{query,key,value}`` -> ``attention.{q,k,v}_proj``,
  ``attention.self.relative_position_bias_table`` ->
  ``attention.relative_position_bias.relative_position_bias_table``, ``attention.output.dense``
  -> ``attention.o_proj``, ``intermediate.dense`` -> ``mlp.fc1``, ``output.dense`` -> ``mlp.fc2``
  (AAVS: ``attention.output.swin_adapt_1`` -> ``attention.swin_adapt_1``,
  ``output.swin_adapt_3`` -> ``mlp.swin_adapt_3``); ``relative_position_index`` buffers
  (recomputed) dropped. Keys already in the current layout pass unchanged.

Entries whose shape differs only because of the task (class head, number of queries) are
skipped, as AAVS does with ``ignore_mismatched_sizes``. Any other mismatch, a key the model
does not have, or a Mask2Former parameter the file lacks (other than AAVS's additions: the
adapters and stepping-stone embeddings) is a :class:`~ssp.errors.DataError` naming the file.

VGGish loads when the audio encoder is built (``ssp.models.vggish.VGGish.from_torchvggish``,
through :mod:`ssp.hub` too), timm backbones through timm at build time
(:mod:`ssp.models.backbones`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from ssp.errors import DataError
from ssp.hub import ResolvedWeights, resolve_weights
from ssp.models.config import HF_SWIN_BACKBONE, MASK2FORMER_PARTS, SSP_PARTS_IN_MASK2FORMER, SSPConfig

log = logging.getLogger(__name__)

WHAT = "model.mask2former_weights"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")

# Parameters whose shape legitimately depends on the task (number of classes/queries).
TASK_SPECIFIC_PREFIXES = (
    "class_predictor.",
    "transformer_module.queries_embedder.",
    "transformer_module.queries_features.",
)
# Model parameters a plain Mask2Former file does not have: AAVS's/SSP's additions, the class
# head of a Mask2FormerModel file, and the final norm of the current SwinModel, which the
# backbone never uses and files from transformers 4.x do not hold.
OPTIONAL_FRAGMENTS = (
    "pixel_level_module.encoder.swin.layernorm.",
    "transformer_module.silence_embed.",
    "transformer_module.uncertain_embed.",
    "transformer_module.audio_embed.",
    ".swin_adapt_",
    ".avs_adapt.",
    "class_predictor.",
    *SSP_PARTS_IN_MASK2FORMER,
)

_SWIN_BLOCK = re.compile(r"^(pixel_level_module\.encoder\.swin\.encoder\.layers\.\d+\.blocks\.\d+\.)(.+)$")
# (old, new) prefixes of a name inside a Swin block; first match wins; new None = dropped
SWIN_RENAMES: tuple[tuple[str, str | None], ...] = (
    ("attention.self.query.", "attention.q_proj."),
    ("attention.self.key.", "attention.k_proj."),
    ("attention.self.value.", "attention.v_proj."),
    ("attention.self.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table"),
    ("attention.self.relative_position_index", None),
    ("attention.output.dense.", "attention.o_proj."),
    ("attention.output.swin_adapt_1.", "attention.swin_adapt_1."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("output.swin_adapt_3.", "mlp.swin_adapt_3."),
)
# SwinConfig fields beyond the four every config carries, with transformers' defaults: copied
# into SSPConfig.hf_swin only when a checkpoint's config differs
_SWIN_EXTRA_DEFAULTS: dict[str, Any] = {
    "mlp_ratio": 4.0,
    "patch_size": 4,
    "qkv_bias": True,
    "layer_norm_eps": 1e-5,
    "hidden_act": "gelu",
    "use_absolute_embeddings": False,
}


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------
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


def resolve_mask2former(spec: str | Path) -> ResolvedWeights:
    """The spec resolved (hub repositories: config and weights files only, ssp.hub.HUB_FILES)."""
    return resolve_weights(str(spec), WHAT)


def weights_file(resolved: ResolvedWeights) -> Path:
    """The state-dict file of a resolved spec: the file itself, a folder's
    ``model.safetensors``, or a folder's only weights file."""
    return resolved.weights_file(WEIGHT_SUFFIXES, prefer=("model.safetensors",))


# ---------------------------------------------------------------------------------------
# Architecture from a Mask2Former config.json
# ---------------------------------------------------------------------------------------
def architecture_from_mask2former_config(path: str | Path) -> dict[str, Any]:
    """SSPConfig architecture fields from a Mask2Former ``config.json`` (or its folder)."""
    from transformers import Mask2FormerConfig  # noqa: PLC0415  (only when a config is read)

    path = Path(path)
    folder = path.parent if path.is_file() else path
    try:
        m2f = Mask2FormerConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # not JSON, another model type
        raise DataError(folder / "config.json", f"not a Mask2Former config ({type(err).__name__}: {err})") from None
    swin = m2f.backbone_config
    if getattr(swin, "model_type", None) != "swin":
        raise DataError(
            folder / "config.json", f"backbone {getattr(swin, 'model_type', None)!r}: only Swin is supported"
        )
    if m2f.pre_norm:
        raise DataError(folder / "config.json", "pre_norm decoders are not supported (Mask2Former's own are post-norm)")
    if not m2f.feature_size == m2f.mask_feature_size == m2f.hidden_dim:
        raise DataError(folder / "config.json", "feature_size, mask_feature_size and hidden_dim must be equal")
    hf_swin: dict[str, Any] = {
        "embed_dim": swin.embed_dim,
        "depths": list(swin.depths),
        "num_heads": list(swin.num_heads),
        "window_size": swin.window_size,
    }
    hf_swin.update({k: getattr(swin, k) for k, v in _SWIN_EXTRA_DEFAULTS.items() if getattr(swin, k, v) != v})
    return {
        "backbone": HF_SWIN_BACKBONE,
        "backbone_kwargs": {},
        "hf_swin": hf_swin,
        "hidden_dim": m2f.hidden_dim,
        "num_attention_heads": m2f.num_attention_heads,
        "encoder_layers": m2f.encoder_layers,
        "encoder_feedforward_dim": m2f.encoder_feedforward_dim,
        "decoder_layers": m2f.decoder_layers,
        "dim_feedforward": m2f.dim_feedforward,
    }


def with_pretrained_architecture(config: SSPConfig) -> SSPConfig:
    """``config`` with the architecture of its ``mask2former_weights`` when those come with a
    Mask2Former ``config.json`` (a hub repository or a save_pretrained folder); unchanged otherwise."""
    if not config.mask2former_weights:
        return config
    resolved = resolve_mask2former(config.mask2former_weights)
    if not (resolved.path.is_dir() and (resolved.path / "config.json").is_file()):
        return config
    architecture = architecture_from_mask2former_config(resolved.path)
    changed = {k: v for k, v in architecture.items() if getattr(config, k) != v}
    if not changed:
        return config
    log.info("%s: architecture from %s: %s", WHAT, resolved.path / "config.json", changed)
    return dataclasses.replace(config, **architecture)


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------
def load_pretrained(model: nn.Module, paths: dict[str, str | Path | None]) -> dict[str, list[str]]:
    """Load the given weights; returns {kind: keys skipped (task-specific shapes)}."""
    report: dict[str, list[str]] = {}
    if paths.get("mask2former_weights"):
        resolved = resolve_mask2former(paths["mask2former_weights"])
        report["mask2former_weights"] = _load_mask2former(model, weights_file(resolved))
        records = getattr(model, "resolved_weights", None)
        if isinstance(records, dict):
            records[resolved.what] = resolved.to_dict()
    return report


def model_key(key: str, aavs: bool) -> str | None:
    """A file's key as the model names it (module doc, key map); None = not a weight to load."""
    if aavs:
        if key.startswith("audio_proj."):
            return "audio_projection." + key[len("audio_proj.") :]
        key = key.removeprefix("model.")
    key = key.removeprefix("model.")
    if key.startswith("criterion."):
        return None  # the loss's class weights
    for old in ("embeddings.", "encoder."):
        if key.startswith("pixel_level_module.encoder." + old):
            key = "pixel_level_module.encoder.swin." + key[len("pixel_level_module.encoder.") :]
    block = _SWIN_BLOCK.match(key)
    if block is not None:
        prefix, rest = block.groups()
        for old, new in SWIN_RENAMES:
            if rest.startswith(old):
                return None if new is None else prefix + new + rest[len(old) :]
    return key


def is_aavs(state: dict[str, Tensor]) -> bool:
    return any(k.startswith("model.model.") for k in state)


def _load_mask2former(model: nn.Module, path: Path) -> list[str]:
    state = read_state_dict(path)
    aavs = is_aavs(state)
    renamed = {}
    for key, value in state.items():
        name = model_key(key, aavs)
        if name is not None:
            renamed[name] = value

    own = model.state_dict()
    unknown = sorted(k for k in renamed if k not in own)
    if unknown:
        adapters = any(".swin_adapt_" in k or ".avs_adapt." in k for k in unknown)
        hint = " (the file has AAVS's adapters: set model.swin_adapters / model.decoder_adapters)" if adapters else ""
        raise DataError(
            path,
            f"has keys this model does not: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}{hint}",
        )
    missing = [k for k in own if k.startswith(MASK2FORMER_PARTS) and k not in renamed and not _optional(k)]
    if missing:
        raise DataError(
            path,
            f"is not a Mask2Former{'/AAVS' if aavs else ''} checkpoint for this model: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}",
        )

    to_load, skipped = {}, []
    for key, value in renamed.items():
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


def _optional(key: str) -> bool:
    return any(fragment in key or key.startswith(fragment) for fragment in OPTIONAL_FRAGMENTS)

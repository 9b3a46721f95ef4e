"""AAVS's training recipe on the model: bottleneck adapters, and what trains in which phase.

AAVS (GeWu-Lab/Stepping-Stones) starts from the pretrained Mask2Former, freezes it, and
trains only a few parts on top (``train.py:set_params``); at a set epoch it reloads its best
checkpoint and also trains the adapters inside the Swin (``train.py:get_fineture_model``).
Here that is three config knobs and two functions (docs/design.md, AAVS recipe):

- :func:`add_adapters` (called in ``SSPModel.__init__``, before pretrained weights load):
  ``swin_adapters`` puts a residual bottleneck ``x + W2 ReLU(W1 x)`` (width
  ``dim // adapter_reduction``) on the output of every Swin block's attention projection
  (``attention.swin_adapt_1``) and MLP (``mlp.swin_adapt_3``), zero-initialised, i.e. the
  identity, as AAVS zeroes them for phase 1 (a frozen pretrained Swin starts unchanged).
  ``decoder_adapters`` puts one on the output of every deformable self-attention of the
  pixel decoder and every self-attention of the masked-attention decoder (``avs_adapt``):
  ``"replace"`` is AAVS's form, the attention output *replaced* by ``W2 ReLU(W1 a)``
  initialised as transformers 4.35's ``from_pretrained`` initialised AAVS's missing
  modules (pixel decoder: N(0, 0.02); decoder: Xavier-uniform; biases 0), so the pretrained
  model does not start unchanged; ``"residual"`` is ``a + W2 ReLU(W1 a)`` with ``W2 = 0``,
  which does. The names are AAVS's, so its checkpoints map one to one
  (:mod:`ssp.models.weights`).
- :func:`apply_recipe` sets ``requires_grad``: with ``freeze_pretrained`` the Mask2Former
  parts (backbone, pixel decoder, transformer module, class head) are frozen except the
  name fragments of ``trainable_pretrained`` (None = AAVS's list for the stage,
  :data:`AAVS_TRAINABLE`); the Swin adapters train from phase 2 only. Parts outside
  Mask2Former (audio encoder and projection, text module, post-mask head) are left as the
  model built them. :func:`start_phase2` is AAVS's switch on the model: the Swin adapters
  re-initialised (AAVS rebuilds the model, so they get ``from_pretrained``'s N(0, 0.02)),
  then phase-2 trainability.

The adapters are forward hooks on the upstream modules (the module's output goes through
its adapter child), so the pretrained parameter names stay exactly Hugging Face's.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ssp.errors import SSPError
from ssp.models.config import HF_SWIN_BACKBONE, MASK2FORMER_PARTS, SSP_PARTS_IN_MASK2FORMER, SSPConfig

# AAVS's train.py:set_params lists (avs/ = S4/MS3 = our stage 1, avss/ = AVSS = stage 2),
# minus "audio_proj" (our audio_projection is outside the Mask2Former parts and always trains).
AAVS_TRAINABLE: dict[int, tuple[str, ...]] = {
    1: ("queries_embedder", "queries_features", "avs_adapt", "class_predictor"),
    2: ("queries_embedder", "avs_adapt", "class_predictor", "audio_embed", "silence_embed", "uncertain_embed"),
}
SWIN_ADAPTER = "swin_adapt"  # name fragment of every Swin adapter parameter
DECODER_ADAPTER = "avs_adapt"
INIT_STD = 0.02  # Mask2FormerConfig.init_std: HF's init of AAVS's new Linear layers


class BottleneckAdapter(nn.Sequential):
    """Linear(dim, dim // reduction) - ReLU - Linear(dim // reduction, dim) (AAVS's ``nn.Sequential``:
    parameters ``0.*`` and ``2.*``)."""

    def __init__(self, dim: int, reduction: int):
        hidden = max(1, dim // reduction)
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))


def _adapt_output(module: nn.Module, args, output, name: str, residual: bool):
    """Forward hook: the module's (first) output through its adapter child ``name``."""
    adapter = getattr(module, name)
    first = output[0] if isinstance(output, tuple) else output
    adapted = first + adapter(first) if residual else adapter(first)
    return (adapted, *output[1:]) if isinstance(output, tuple) else adapted


def _attach(module: nn.Module, name: str, adapter: BottleneckAdapter, residual: bool) -> None:
    module.add_module(name, adapter)
    module.register_forward_hook(functools.partial(_adapt_output, name=name, residual=residual))


def add_adapters(model: nn.Module, config: SSPConfig) -> None:
    """Insert the adapters ``config`` asks for into ``model`` (an SSPModel being built)."""
    if config.swin_adapters:
        _add_swin_adapters(model.pixel_level_module.encoder, config)
    if config.decoder_adapters != "none":
        _add_decoder_adapters(model, config)


def _add_swin_adapters(backbone: nn.Module, config: SSPConfig) -> None:
    from transformers.models.swin.modeling_swin import SwinAttention, SwinMLP  # noqa: PLC0415

    if config.backbone != HF_SWIN_BACKBONE:
        raise SSPError(f"swin_adapters needs backbone={HF_SWIN_BACKBONE!r}, got {config.backbone!r}")
    for module in list(backbone.modules()):
        if isinstance(module, SwinAttention):
            adapter = BottleneckAdapter(module.o_proj.out_features, config.adapter_reduction)
            _attach(module, "swin_adapt_1", adapter, residual=True)
        elif isinstance(module, SwinMLP):
            adapter = BottleneckAdapter(module.fc2.out_features, config.adapter_reduction)
            _attach(module, "swin_adapt_3", adapter, residual=True)
    zero_swin_adapters(backbone)


def _add_decoder_adapters(model: nn.Module, config: SSPConfig) -> None:
    from transformers.models.mask2former.modeling_mask2former import (  # noqa: PLC0415
        Mask2FormerAttention,
        Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    )

    residual = config.decoder_adapters == "residual"
    sites = [
        (m, "normal")
        for m in model.pixel_level_module.decoder.modules()
        if isinstance(m, Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention)
    ]
    sites += [(m, "xavier") for m in model.transformer_module.modules() if isinstance(m, Mask2FormerAttention)]
    for module, init in sites:
        dim = module.output_proj.out_features if init == "normal" else module.out_proj.out_features
        adapter = BottleneckAdapter(dim, config.adapter_reduction)
        with torch.no_grad():
            for linear in (adapter[0], adapter[2]):
                if init == "normal":
                    nn.init.normal_(linear.weight, std=INIT_STD)
                else:
                    nn.init.xavier_uniform_(linear.weight)
                nn.init.zeros_(linear.bias)
            if residual:
                nn.init.zeros_(adapter[2].weight)
        _attach(module, DECODER_ADAPTER, adapter, residual=residual)


def swin_adapter_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if SWIN_ADAPTER in n]


@torch.no_grad()
def zero_swin_adapters(module: nn.Module) -> None:
    """AAVS's phase 1: every Swin adapter parameter zero (the adapter is the identity)."""
    for _, param in swin_adapter_parameters(module):
        param.zero_()


@torch.no_grad()
def reinit_swin_adapters(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """AAVS's phase 2 start: weights N(0, 0.02), biases 0 (drawn on the CPU from ``generator``)."""
    for _, param in swin_adapter_parameters(model):
        if param.dim() > 1:
            values = torch.empty(param.shape, dtype=torch.float32).normal_(0.0, INIT_STD, generator=generator)
            param.copy_(values)
        else:
            param.zero_()


def trainable_fragments(config: SSPConfig) -> tuple[str, ...]:
    """Name fragments of the Mask2Former parameters that train when ``freeze_pretrained``."""
    if config.trainable_pretrained is not None:
        return tuple(config.trainable_pretrained)
    return AAVS_TRAINABLE[config.stage]


def apply_recipe(model: nn.Module, config: SSPConfig, phase: int = 1) -> None:
    """``requires_grad`` of the Mask2Former parts for ``phase`` (1 or 2); see the module doc."""
    if phase not in (1, 2):
        raise SSPError(f"recipe phase must be 1 or 2, got {phase}")
    keep = trainable_fragments(config)
    for name, param in model.named_parameters():
        if SWIN_ADAPTER in name:
            param.requires_grad_(phase == 2)
        elif name.startswith(SSP_PARTS_IN_MASK2FORMER):
            param.requires_grad_(True)
        elif name.startswith(MASK2FORMER_PARTS):
            param.requires_grad_(not config.freeze_pretrained or any(k in name for k in keep))


def start_phase2(model: nn.Module, config: SSPConfig, generator: torch.Generator | None = None) -> None:
    """AAVS's switch on the model (the best weights already loaded): Swin adapters
    re-initialised, then phase-2 trainability."""
    reinit_swin_adapters(model, generator)
    apply_recipe(model, config, phase=2)

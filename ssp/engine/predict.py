"""The one predict-over-batches loop: stage-1 mask -> model inputs -> scores.

Every place that runs a model without training it goes through :func:`predict_batches`
(training validation and overlays, ``ssp evaluate``, ``ssp stage1-masks``, the Fig. 8
sample grid, ``ssp predict``):

- batches come from a DataLoader or :func:`ssp.engine.inputs.dataset_batches`, or are
  built by the caller (``ssp predict``);
- a stage-2 model's stepping stone (``batch["stage1_mask"]``), when the batch does not
  carry stage 1's masks, comes from an in-process stage-1 model (:func:`stepping_stone`:
  quantized as ``ssp stage1-masks`` stores it, so both give the same numbers);
- the model never sees the GT masks (:func:`~ssp.engine.inputs.model_inputs`); it runs in
  eval mode under ``torch.no_grad()``, optionally inside ``autocast()`` (training's
  validation: bf16 on CUDA only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn

from ssp.engine.inputs import model_inputs, to_device


def quantized_probability(logits: Tensor) -> Tensor:
    """Foreground probability as ``ssp stage1-masks`` stores it (uint8 / 255), so that an
    in-process stage-1 model gives exactly what the PNGs would."""
    return (logits.float().sigmoid() * 255).round() / 255


def stepping_stone(stage1_model: nn.Module, batch: dict[str, Any]) -> Tensor:
    """Stage 1's quantized foreground probability of every frame of ``batch`` (N×S×S at the
    stage-1 model's input size)."""
    with torch.no_grad():
        return quantized_probability(stage1_model.predict(model_inputs(batch)))


def predict_batches(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    device: torch.device | str | None = None,
    stage1_model: nn.Module | None = None,
    autocast: Callable[[], AbstractContextManager] | None = None,
) -> Iterator[tuple[dict[str, Any], Tensor]]:
    """Yield ``(batch, scores)`` per batch: ``batch`` moved to ``device`` (None: used as
    given) with ``stage1_mask`` filled in by ``stage1_model`` when it is missing and a
    stage-1 model is given; ``scores`` = ``model.predict`` in float32 (stage 1: N×S×S
    logits, stage 2: N×C×S×S class scores). Gradients are off only around the forward
    passes, so a consumer that stops early leaves no global state behind."""
    model.eval()
    if stage1_model is not None:
        stage1_model.eval()
    for batch in batches:
        if device is not None:
            batch = to_device(batch, device)
        if stage1_model is not None and "stage1_mask" not in batch:
            batch["stage1_mask"] = stepping_stone(stage1_model, batch)
        with torch.no_grad(), autocast() if autocast else contextlib.nullcontext():
            scores = model.predict(model_inputs(batch)).float()
        yield batch, scores

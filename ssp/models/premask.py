"""The two optical-flow prompts of SSP: the pre-mask (paper eq. 2) and the post-mask target.

Both combine the binary optical-flow mask M_O with a binary "GT" mask M_GT:

- ``pre_mask`` (eq. 2): M_Pre = 1 on M_O ∩ M_GT, 0.5 on the rest of M_O ∪ M_GT, 0
  elsewhere. It is multiplied into the frames before the backbone.
- ``post_mask_target``: M_Post = M_O ∩ M_GT, the label of the post-mask loss L'_mask.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pre_mask(flow_mask: Tensor, gt_mask: Tensor) -> Tensor:
    """M_Pre of eq. 2 from two binary maps of the same shape (any numeric dtype)."""
    flow = flow_mask > 0.5
    gt = gt_mask > 0.5
    both = flow & gt
    either = flow | gt
    return both.float() + 0.5 * (either & ~both).float()


def post_mask_target(flow_mask: Tensor, gt_mask: Tensor) -> Tensor:
    """M_Post = M_O ∩ M_GT as a float {0, 1} map."""
    return ((flow_mask > 0.5) & (gt_mask > 0.5)).float()


def apply_pre_mask(frames: Tensor, premask: Tensor) -> Tensor:
    """Multiply an N×H×W pre-mask into N×3×H×W frames (values in [0, 1], not normalised)."""
    if premask.shape[-2:] != frames.shape[-2:]:
        premask = torch.nn.functional.interpolate(premask[:, None], size=frames.shape[-2:], mode="nearest")[:, 0]
    return frames * premask[:, None].to(frames.dtype)

"""Shared pieces of the model tests: a tiny config and a synthetic batch (the fixtures,
e.g. ``tiny_text_model``, are in conftest.py)."""

from __future__ import annotations

import torch

from ssp.models import SSPConfig

SIZE = 64
WORDS = "a man is playing the piano guitar dog barks in front of microphone car engine , . singing".split()


def tiny_config(stage: int, text_model: str | None = None, **switches) -> SSPConfig:
    return SSPConfig.tiny(stage=stage, text_model=text_model, text_layers=None, **switches)


def make_batch(stage: int, n: int = 2, seed: int = 0, size: int = SIZE) -> dict:
    """Frames with a bright box (the sounding object), a second small object in frame 0,
    and a flow mask overlapping the box.

    Frame 1's box (rows 0-48, cols 16-64 at 64 px) is placed so that the stage-2 stepping
    stone, bilinearly sampled on the 2×2 grid of the first masked-attention layer, is
    1.0 / 0.5 / 0.5 / 0.25: the first layer attends to both "audio" and "uncertain" keys,
    so both learned embeddings get a gradient there (a softmax over keys that share one
    added embedding would not)."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(n, 3, size, size, generator=g) * 0.3
    masks = torch.zeros(n, size, size, dtype=torch.long)
    flow = torch.zeros(n, size, size, dtype=torch.long)
    s = size // 64
    boxes = [(8, 36, 6, 54), (0, 48, 16, 64)]
    for i in range(n):
        top, bottom, left, right = (s * v for v in boxes[i % 2])
        frames[i, :, top:bottom, left:right] += 0.6
        masks[i, top:bottom, left:right] = 1 if stage == 1 else 3 + i % 2
        flow[i, top + 8 * s : bottom + 8 * s, left : right - 8 * s] = 1
    masks[0, 44 * s : 56 * s, 8 * s : 24 * s] = 1 if stage == 1 else 7
    return {
        "frames": frames.clamp(0, 1),
        "logmel": torch.randn(n, 96, 64, generator=g),
        "masks": masks,
        "labelled": torch.ones(n, dtype=torch.bool),
        "flow_mask": flow,
        "stage1_mask": (masks > 0).float() * 0.9,
        "prompt_a1": ["a man is playing the piano in front of a microphone"] * n,
        "prompt_a2": [["piano", "man"]] * n,
        "video_index": torch.zeros(n, dtype=torch.long),
        "frame_index": torch.arange(n),
    }

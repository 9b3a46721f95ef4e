"""The learned flow estimators of ``ssp flow``: torchvision's RAFT and Hugging Face's
Perceiver IO (``PerceiverForOpticalFlow``), each from a local path that
:func:`ssp.preprocess.flow.resolve_flow_weights` resolved (a file, a folder, or a hub
snapshot in the Hugging Face cache).

Kept apart from :mod:`ssp.preprocess.flow` because they need torch, torchvision and
transformers, which take seconds to import: the default DIS method (OpenCV) and every
spawned worker of a DIS run never import this module. :func:`ssp.preprocess.flow.build_estimator`
imports it on first use of ``method="raft"`` or ``"perceiver"``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torchvision.models.optical_flow import raft_large, raft_small
from transformers import PerceiverConfig, PerceiverForOpticalFlow

from ssp.errors import DataError, SSPError


def _torch_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _require_weights(method: str, weights: str | None) -> Path:
    if not weights:
        raise SSPError(f"flow method {method!r} needs weights (params: flow.weights)")
    path = Path(weights)
    if not path.exists():
        raise DataError(path, f"{method} weights not found")
    return path


_STATE_DICT_SUFFIXES = (".safetensors", ".pth", ".pt")


def raft_weights_file(path: Path, variant: str) -> Path:
    """The RAFT state dict at ``path``: the file itself, or the one weights file in a
    folder (a hub snapshot); with several, the one whose name has the variant
    (``small`` / ``large``), safetensors first."""
    if path.is_file():
        return path
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _STATE_DICT_SUFFIXES)
    if len(files) > 1 and variant in ("small", "large"):
        files = [p for p in files if variant in p.name.lower()] or files
    if len(files) > 1:
        safetensors = [p for p in files if p.suffix == ".safetensors"]
        files = safetensors if len(safetensors) == 1 else files
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise DataError(
            path,
            f"expected one RAFT state dict ({', '.join(_STATE_DICT_SUFFIXES)}) here, found {found}"
            + ("; set flow.variant to small or large to choose" if files else ""),
        )
    return files[0]


class RAFTFlow:
    """torchvision RAFT (small or large) with weights from a local file (or a folder
    holding one, see :func:`raft_weights_file`)."""

    # RAFT's correlation pyramid needs feature maps of at least 16×16, i.e. 128×128 input.
    MIN_SIZE = 128

    def __init__(self, weights: str | None, variant: str, num_flow_updates: int, device: str | None, batch_size: int):
        builders = {"small": raft_small, "large": raft_large}
        if variant not in ("auto", *builders):
            raise SSPError(f"unknown RAFT variant {variant!r}; choose small, large or auto")
        path = raft_weights_file(_require_weights("raft", weights), variant)
        state_dict = _load_state_dict(path)
        candidates = list(builders) if variant == "auto" else [variant]
        errors = []
        for candidate in candidates:
            model = builders[candidate](weights=None, progress=False)
            try:
                model.load_state_dict(state_dict, strict=True)
            except RuntimeError as err:
                errors.append(f"{candidate}: {str(err).splitlines()[0]}")
                continue
            break
        else:
            raise DataError(path, "not a torchvision RAFT state dict (" + "; ".join(errors) + ")")
        self.variant = candidate
        self.device = _torch_device(device)
        self.model = model.eval().to(self.device)
        self.num_flow_updates = num_flow_updates
        self.batch_size = max(1, batch_size)

    def __call__(self, frames_a: Sequence[np.ndarray], frames_b: Sequence[np.ndarray]) -> list[np.ndarray]:
        height, width = frames_a[0].shape[:2]
        # Pad (edge-replicate) to a multiple of 8, and at least MIN_SIZE; crop after.
        pad_h = max(-(-height // 8) * 8, self.MIN_SIZE) - height
        pad_w = max(-(-width // 8) * 8, self.MIN_SIZE) - width
        flows = []
        for start in range(0, len(frames_a), self.batch_size):
            batch = [_to_unit_range(frames, start, self.batch_size, pad_h, pad_w) for frames in (frames_a, frames_b)]
            with torch.inference_mode():
                predictions = self.model(batch[0].to(self.device), batch[1].to(self.device), self.num_flow_updates)
            flow = predictions[-1][:, :, :height, :width]  # last refinement is the estimate
            flows.extend(f.permute(1, 2, 0).float().cpu().numpy() for f in flow)
        return flows


def _to_unit_range(frames: Sequence[np.ndarray], start: int, count: int, pad_h: int, pad_w: int):
    """RGB uint8 frames → float tensor B×3×H×W in [-1, 1] (RAFT's normalisation), padded."""
    x = torch.from_numpy(np.stack(frames[start : start + count])).permute(0, 3, 1, 2).float()
    x = x / 127.5 - 1.0
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x


def _load_state_dict(path: Path) -> dict:
    """A state dict from .safetensors or a torch file, never executing pickled code."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decoding failure is a bad weights file
        raise DataError(path, f"cannot read weights: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict):
        raise DataError(path, f"expected a state dict, found {type(state).__name__}")
    return state


class PerceiverFlow:
    """Hugging Face PerceiverForOpticalFlow from a local (or hub snapshot) folder, run on
    overlapping tiles.

    Input preparation follows Perceiver IO's optical-flow setup: frames scaled to
    [-1, 1]; for every pixel the 3×3 neighbourhood of both frames (zero padded at the
    border, TensorFlow "SAME" style) is stacked channel-wise, neighbourhood-major
    (dy, dx, then RGB) = 27 values, giving ``inputs`` of shape (B, 2, 27, h, w) with
    (h, w) the model's ``config.train_size``. Tiles overlap by at least ``min_overlap``
    pixels and are blended with weights that fall off linearly towards each tile's border.
    """

    def __init__(self, weights: str | None, flow_scale: float, min_overlap: int, device: str | None, batch_size: int):
        path = _require_weights("perceiver", weights)
        if not (path / "config.json").is_file():
            raise DataError(
                path, "no config.json: expected a folder written by PerceiverForOpticalFlow.save_pretrained"
            )
        try:
            config = PerceiverConfig.from_pretrained(str(path), local_files_only=True)
            model, info = PerceiverForOpticalFlow.from_pretrained(
                str(path), config=config, local_files_only=True, output_loading_info=True
            )
        except (OSError, ValueError, TypeError) as err:
            raise DataError(path, f"cannot load a Perceiver optical-flow model: {err}") from err
        bad = sorted(info.get("missing_keys", [])) + sorted(info.get("mismatched_keys", []))
        if bad:
            raise DataError(
                path, f"weights do not fit PerceiverForOpticalFlow ({len(bad)} missing or mismatched, e.g. {bad[0]})"
            )
        self.tile = tuple(int(s) for s in config.train_size)
        if min_overlap >= min(self.tile):
            raise SSPError(f"min_overlap {min_overlap} must be smaller than the tile size {self.tile}")
        self.min_overlap = min_overlap
        self.flow_scale = flow_scale
        self.batch_size = max(1, batch_size)
        self.device = _torch_device(device)
        self.model = model.eval().to(self.device)

    def tile_origins(self, height: int, width: int) -> list[tuple[int, int]]:
        """Top-left corners of the tiles covering a (padded) height×width frame."""

        def starts(size: int, tile: int) -> list[int]:
            step = tile - self.min_overlap
            origins = list(range(0, max(size - tile, 0) + 1, step))
            if origins[-1] + tile < size:
                origins.append(size - tile)  # last tile flush with the border
            return origins

        return list(itertools.product(starts(height, self.tile[0]), starts(width, self.tile[1])))

    def __call__(self, frames_a: Sequence[np.ndarray], frames_b: Sequence[np.ndarray]) -> list[np.ndarray]:
        height, width = frames_a[0].shape[:2]
        tile_h, tile_w = self.tile
        # Frames smaller than a tile are padded (edge-replicate) up to it; cropped after.
        full_h, full_w = max(height, tile_h), max(width, tile_w)
        origins = self.tile_origins(full_h, full_w)
        blend = torch.from_numpy(_tile_blend_weights(tile_h, tile_w))

        flows = []
        for a, b in zip(frames_a, frames_b):
            patches = _neighbourhood_features(np.stack([a, b]), full_h, full_w)  # 2×27×H×W
            tiles = torch.stack([patches[:, :, y : y + tile_h, x : x + tile_w] for y, x in origins])
            total = torch.zeros(full_h, full_w, 2)
            weight = torch.zeros(full_h, full_w, 1)
            with torch.inference_mode():
                for start in range(0, len(origins), self.batch_size):
                    chunk = tiles[start : start + self.batch_size].to(self.device)
                    predicted = self.model(inputs=chunk).logits.float().cpu() * self.flow_scale
                    for (y, x), flow in zip(origins[start : start + self.batch_size], predicted):
                        total[y : y + tile_h, x : x + tile_w] += flow * blend[..., None]
                        weight[y : y + tile_h, x : x + tile_w] += blend[..., None]
            flows.append((total / weight)[:height, :width].numpy().astype(np.float32))
        return flows


def _tile_blend_weights(tile_h: int, tile_w: int) -> np.ndarray:
    """1 at a tile's border pixel, growing by 1 per pixel towards the centre."""
    ys = np.minimum(np.arange(tile_h) + 1, tile_h - np.arange(tile_h))
    xs = np.minimum(np.arange(tile_w) + 1, tile_w - np.arange(tile_w))
    return np.minimum(ys[:, None], xs[None, :]).astype(np.float32)


def _neighbourhood_features(frames: np.ndarray, full_h: int, full_w: int):
    """(2, H, W, 3) uint8 → (2, 27, full_h, full_w) float: 3×3 neighbourhoods in [-1, 1]."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # 2×3×H×W
    height, width = x.shape[-2:]
    if (full_h, full_w) != (height, width):
        x = F.pad(x, (0, full_w - width, 0, full_h - height), mode="replicate")
    x = F.pad(x, (1, 1, 1, 1))  # zeros around the border, like TF's "SAME" patches
    # unfold → (2, 3 * 9, H*W) ordered channel-major; reorder to neighbourhood-major.
    cols = F.unfold(x, kernel_size=3).view(2, 3, 9, full_h, full_w)
    return cols.permute(0, 2, 1, 3, 4).reshape(2, 27, full_h, full_w)


def set_threads(threads: int) -> None:
    """torch intra-op threads of this process (a worker's share of the cores)."""
    torch.set_num_threads(threads)

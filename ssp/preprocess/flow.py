"""Optical flow stage: per-frame motion magnitude maps and binary flow masks M_O.

SSP (paper §3.1, eq. 1) turns the optical flow between consecutive frames into one
motion map per frame and binarises it into the flow mask M_O that the pre-mask (eq. 2)
and the post-mask loss use. This module has three layers, each usable on its own:

1. :func:`estimate_flow` — dense flow between two RGB frames, float32 H×W×2 (dx, dy in
   pixels, from frame a to frame b: the content at (x, y) in a is at (x+dx, y+dy) in b).
   Methods:

   - ``"dis"`` (default): OpenCV's DIS optical flow on grayscale; ``preset`` is
     ``ultrafast`` | ``fast`` | ``medium`` (default). Fast on CPU, no weights.
   - ``"raft"``: torchvision's RAFT (``raft_small`` or ``raft_large``) with a local
     weights file (a torchvision state dict, ``.pth`` / ``.pt`` / ``.safetensors``);
     never downloads. CUDA when available.
   - ``"perceiver"``: Hugging Face ``PerceiverForOpticalFlow`` (the paper's choice) from a
     local ``save_pretrained`` folder; the model sees fixed-size tiles (its training size,
     368×496 for the released model), so frames are tiled with overlap and blended.

2. :func:`per_frame_magnitudes` — eq. (1): from the T-1 pair flows O^1..O^{T-1} of a
   T-frame video to T per-frame maps. First frame: |O^1|; frame t in the middle: the mean
   of the two adjacent pairs, (|O^{t-1}| + |O^t|) / 2; last frame: |O^{T-1}|.
   **The mean is taken over magnitudes, not vectors**: the paper converts the flows to
   grayscale images first and averages those; averaging vectors would also cancel an
   object that moves back and forth, which is exactly the kind of motion (a bow, a
   drumstick) that marks a sound source. As in the paper, all flows are forward flows,
   so the incoming pair's half of a middle frame's map lies on the previous frame's
   grid: a fast object leaves a trail of one step behind it in M_O.

3. :func:`flow_mask` — magnitude map → binary M_O by a threshold rule:
   ``fixed`` (moving iff magnitude > ``value`` px), ``fraction_of_max`` (> ``value`` ×
   the frame's maximum magnitude) or ``otsu`` (> Otsu's threshold of the frame's
   magnitudes; ``value`` unused). Whatever the rule, a pixel slower than
   ``min_magnitude`` px (default 1) is never moving, so that a still frame gives an
   empty mask instead of Otsu splitting estimator noise in two. Optional clean-up: a morphological
   opening with a ``cleanup``×``cleanup`` square (0 = off, the default) removes specks.

The ``ssp flow`` stage runs the three over every video of a dataset and writes, per
frame i (outputs mirror the dataset layout)::

    {out}/{rel_dir}/mask/{i}.png        binary M_O, uint8 0 / 255, at the frame's size
    {out}/{rel_dir}/magnitude/{i}.png   eq. (1) magnitude, uint16 in 1/100 px
                                        (value 250 = 2.5 px; saturates at 655.35 px)
    {out}/{rel_dir}/_done_flow.json     up-to-date stamp (method, params, mask coverage)
    {out}/flow_summary.json             videos processed / skipped, mean mask coverage

A video with a single frame has no pair: its magnitude map is zero and its mask empty.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from ssp.errors import DataError, SSPError
from ssp.fileio import write_json

logger = logging.getLogger(__name__)

METHODS = ("dis", "raft", "perceiver")
DIS_PRESETS = ("ultrafast", "fast", "medium")
THRESHOLD_RULES = ("fixed", "fraction_of_max", "otsu")
MAGNITUDE_SCALE = 100.0  # magnitude PNGs store 1/100 px in uint16
STAGE = "flow"
SUMMARY_NAME = "flow_summary.json"


# ---------------------------------------------------------------------------------------
# 1. Flow estimators
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DISOptions:
    preset: str = "medium"  # ultrafast | fast | medium (OpenCV's DIS presets)


@dataclass(frozen=True)
class RAFTOptions:
    weights: str | None = None  # local torchvision RAFT state dict (.pth/.pt/.safetensors)
    variant: str = "auto"  # small | large | auto (picked from the weights' layer shapes)
    num_flow_updates: int = 12  # GRU refinement iterations (torchvision's default)
    device: str | None = None  # None: cuda when available, else cpu
    batch_size: int = 4  # frame pairs per forward pass


@dataclass(frozen=True)
class PerceiverOptions:
    weights: str | None = None  # local folder written by PerceiverForOpticalFlow.save_pretrained
    # The released model predicts flow / 20 (AutoFlow's scaling, kept by DeepMind's
    # release; see deepmind-research issue #266): multiply back to get pixels.
    flow_scale: float = 20.0
    min_overlap: int = 20  # pixels shared by neighbouring tiles (blended)
    device: str | None = None
    batch_size: int = 4  # tiles per forward pass


_OPTIONS = {"dis": DISOptions, "raft": RAFTOptions, "perceiver": PerceiverOptions}


def _check_frames(frame_a: np.ndarray, frame_b: np.ndarray) -> None:
    for name, frame in (("frame_a", frame_a), ("frame_b", frame_b)):
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ValueError(f"{name} must be an RGB uint8 H×W×3 array, got {desc}")
    if frame_a.shape != frame_b.shape:
        raise ValueError(f"frames differ in size: {frame_a.shape} vs {frame_b.shape}")


def _torch_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


class DISFlow:
    """OpenCV DIS (dense inverse search) on grayscale frames."""

    def __init__(self, options: DISOptions):
        if options.preset not in DIS_PRESETS:
            raise SSPError(f"unknown DIS preset {options.preset!r}; choose one of {', '.join(DIS_PRESETS)}")
        self.preset_id = getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{options.preset.upper()}")

    def __call__(self, frames_a: Sequence[np.ndarray], frames_b: Sequence[np.ndarray]) -> list[np.ndarray]:
        # A fresh DIS object per pair: creating one costs microseconds and keeps the
        # estimator free of state shared between threads.
        flows = []
        for a, b in zip(frames_a, frames_b):
            dis = cv2.DISOpticalFlow_create(self.preset_id)
            gray_a = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
            gray_b = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
            flows.append(dis.calc(gray_a, gray_b, None).astype(np.float32, copy=False))
        return flows


def _require_weights(method: str, weights: str | None) -> Path:
    if not weights:
        raise SSPError(f"flow method {method!r} needs local weights: pass weights=PATH (--weights); nothing is downloaded")
    path = Path(weights)
    if not path.exists():
        raise DataError(path, f"{method} weights not found")
    return path


class RAFTFlow:
    """torchvision RAFT (small or large) with weights from a local file."""

    # RAFT's correlation pyramid needs feature maps of at least 16×16, i.e. 128×128 input.
    MIN_SIZE = 128

    def __init__(self, options: RAFTOptions):
        import torch
        from torchvision.models.optical_flow import raft_large, raft_small

        path = _require_weights("raft", options.weights)
        state_dict = _load_state_dict(path)
        builders = {"small": raft_small, "large": raft_large}
        if options.variant not in ("auto", *builders):
            raise SSPError(f"unknown RAFT variant {options.variant!r}; choose small, large or auto")
        candidates = list(builders) if options.variant == "auto" else [options.variant]
        errors = []
        for variant in candidates:
            model = builders[variant](weights=None, progress=False)
            try:
                model.load_state_dict(state_dict, strict=True)
            except RuntimeError as err:
                errors.append(f"{variant}: {str(err).splitlines()[0]}")
                continue
            break
        else:
            raise DataError(path, "not a torchvision RAFT state dict (" + "; ".join(errors) + ")")
        self.variant = variant
        self.device = _torch_device(options.device)
        self.model = model.eval().to(self.device)
        self.num_flow_updates = options.num_flow_updates
        self.batch_size = max(1, options.batch_size)
        self._torch = torch

    def __call__(self, frames_a: Sequence[np.ndarray], frames_b: Sequence[np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
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
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.stack(frames[start : start + count])).permute(0, 3, 1, 2).float()
    x = x / 127.5 - 1.0
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x


def _load_state_dict(path: Path) -> dict:
    """A state dict from .safetensors or a torch file, never executing pickled code."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decoding failure is a bad weights file
        raise DataError(path, f"cannot read weights: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict):
        raise DataError(path, f"expected a state dict, found {type(state).__name__}")
    return state


class PerceiverFlow:
    """Hugging Face PerceiverForOpticalFlow from a local folder, run on overlapping tiles.

    Input preparation follows Perceiver IO's optical-flow setup: frames scaled to
    [-1, 1]; for every pixel the 3×3 neighbourhood of both frames (zero padded at the
    border, TensorFlow "SAME" style) is stacked channel-wise, neighbourhood-major
    (dy, dx, then RGB) = 27 values, giving ``inputs`` of shape (B, 2, 27, h, w) with
    (h, w) the model's ``config.train_size``. Tiles overlap by at least ``min_overlap``
    pixels and are blended with weights that fall off linearly towards each tile's border.
    """

    def __init__(self, options: PerceiverOptions):
        from transformers import PerceiverConfig, PerceiverForOpticalFlow

        path = _require_weights("perceiver", options.weights)
        if not (path / "config.json").is_file():
            raise DataError(path, "no config.json: expected a folder written by PerceiverForOpticalFlow.save_pretrained")
        try:
            config = PerceiverConfig.from_pretrained(str(path), local_files_only=True)
            model, info = PerceiverForOpticalFlow.from_pretrained(
                str(path), config=config, local_files_only=True, output_loading_info=True
            )
        except (OSError, ValueError, TypeError) as err:
            raise DataError(path, f"cannot load a Perceiver optical-flow model: {err}") from err
        bad = sorted(info.get("missing_keys", [])) + sorted(info.get("mismatched_keys", []))
        if bad:
            raise DataError(path, f"weights do not fit PerceiverForOpticalFlow ({len(bad)} missing or mismatched, e.g. {bad[0]})")
        self.tile = tuple(int(s) for s in config.train_size)
        if options.min_overlap >= min(self.tile):
            raise SSPError(f"min_overlap {options.min_overlap} must be smaller than the tile size {self.tile}")
        self.min_overlap = options.min_overlap
        self.flow_scale = options.flow_scale
        self.batch_size = max(1, options.batch_size)
        self.device = _torch_device(options.device)
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
        import torch

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
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # 2×3×H×W
    height, width = x.shape[-2:]
    if (full_h, full_w) != (height, width):
        x = F.pad(x, (0, full_w - width, 0, full_h - height), mode="replicate")
    x = F.pad(x, (1, 1, 1, 1))  # zeros around the border, like TF's "SAME" patches
    # unfold → (2, 3 * 9, H*W) ordered channel-major; reorder to neighbourhood-major.
    cols = F.unfold(x, kernel_size=3).view(2, 3, 9, full_h, full_w)
    return cols.permute(0, 2, 1, 3, 4).reshape(2, 27, full_h, full_w)


@functools.lru_cache(maxsize=4)
def _cached_estimator(method: str, options: Any) -> Callable:
    if method == "dis":
        return DISFlow(options)
    if method == "raft":
        return RAFTFlow(options)
    return PerceiverFlow(options)


def build_estimator(method: str = "dis", **opts: Any) -> Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], list[np.ndarray]]:
    """An estimator ``(frames_a, frames_b) -> flows`` for a list of frame pairs.

    Models are loaded once per process and reused (cached by method and options).
    """
    if method not in METHODS:
        raise SSPError(f"unknown flow method {method!r}; choose one of {', '.join(METHODS)}")
    option_type = _OPTIONS[method]
    known = {f.name for f in fields(option_type)}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise SSPError(f"flow method {method!r} has no option {', '.join(unknown)}; options: {', '.join(sorted(known))}")
    if opts.get("weights") is not None:
        opts["weights"] = str(Path(opts["weights"]).resolve())
    return _cached_estimator(method, option_type(**opts))


def estimate_flow(frame_a: np.ndarray, frame_b: np.ndarray, method: str = "dis", **opts: Any) -> np.ndarray:
    """Dense optical flow from ``frame_a`` to ``frame_b``.

    Args:
        frame_a, frame_b: RGB uint8 arrays of the same H×W×3 shape.
        method: ``"dis"`` (default), ``"raft"`` or ``"perceiver"``.
        **opts: the method's options — dis: ``preset``; raft: ``weights``, ``variant``,
            ``num_flow_updates``, ``device``, ``batch_size``; perceiver: ``weights``,
            ``flow_scale``, ``min_overlap``, ``device``, ``batch_size``.

    Returns:
        float32 H×W×2 array: (dx, dy) in pixels; the content at (x, y) in ``frame_a`` is
        at (x + dx, y + dy) in ``frame_b``.
    """
    _check_frames(frame_a, frame_b)
    return build_estimator(method, **opts)([frame_a], [frame_b])[0]


# ---------------------------------------------------------------------------------------
# 2. Eq. (1): pair flows → per-frame magnitude maps
# ---------------------------------------------------------------------------------------


def flow_magnitude(flow: np.ndarray) -> np.ndarray:
    """Euclidean length of each flow vector, float32 H×W."""
    return np.sqrt(np.square(flow[..., 0], dtype=np.float32) + np.square(flow[..., 1], dtype=np.float32))


def per_frame_magnitudes(pair_flows: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Eq. (1) of the paper on magnitudes: T-1 pair flows → T per-frame maps.

    ``pair_flows[k]`` is the flow from frame k to frame k+1 (O^{k+1} in the paper).
    Frame 0 gets |O^1|; a middle frame t gets (|O^t| + |O^{t+1}|) / 2, the mean of its
    incoming and outgoing pairs; the last frame gets |O^{T-1}|. No pair → no map (a
    one-frame video has no motion to measure; the stage writes a zero map for it).
    """
    magnitudes = [flow_magnitude(f) for f in pair_flows]
    if not magnitudes:
        return []
    maps = [magnitudes[0]]
    maps += [(before + after) / 2.0 for before, after in zip(magnitudes[:-1], magnitudes[1:])]
    maps.append(magnitudes[-1])
    return maps


# ---------------------------------------------------------------------------------------
# 3. Magnitude → binary mask M_O
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdRule:
    rule: str = "otsu"  # fixed | fraction_of_max | otsu
    value: float | None = None  # fixed: pixels; fraction_of_max: fraction in (0, 1]; otsu: unused
    min_magnitude: float = 1.0  # pixels slower than this are never "moving" (any rule)
    cleanup: int = 0  # side of the square used for a morphological opening; 0 = off

    def __post_init__(self) -> None:
        if self.rule not in THRESHOLD_RULES:
            raise SSPError(f"unknown threshold rule {self.rule!r}; choose one of {', '.join(THRESHOLD_RULES)}")
        if self.rule == "fixed" and (self.value is None or self.value < 0):
            raise SSPError("threshold rule 'fixed' needs value >= 0 (pixels)")
        if self.rule == "fraction_of_max" and (self.value is None or not 0 < self.value <= 1):
            raise SSPError("threshold rule 'fraction_of_max' needs 0 < value <= 1")
        if self.cleanup < 0:
            raise SSPError("cleanup must be >= 0 (0 = off)")


def magnitude_threshold(magnitude: np.ndarray, rule: ThresholdRule) -> float:
    """The threshold (pixels) the rule puts on this frame's magnitudes (before the floor)."""
    if rule.rule == "fixed":
        return float(rule.value)
    if rule.rule == "fraction_of_max":
        return float(rule.value) * float(magnitude.max(initial=0.0))
    from skimage.filters import threshold_otsu

    if magnitude.size == 0 or float(magnitude.max()) - float(magnitude.min()) < 1e-6:
        return float(magnitude.max(initial=0.0))  # constant map: nothing stands out
    return float(threshold_otsu(magnitude))


def flow_mask(magnitude: np.ndarray, rule: ThresholdRule) -> np.ndarray:
    """Binary M_O (bool H×W): magnitude > the rule's threshold and >= ``min_magnitude``."""
    threshold = magnitude_threshold(magnitude, rule)
    mask = (magnitude > threshold) & (magnitude >= rule.min_magnitude)
    if rule.cleanup > 0:
        kernel = np.ones((rule.cleanup, rule.cleanup), np.uint8)
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel).astype(bool)
    return mask


# ---------------------------------------------------------------------------------------
# 4. The `ssp flow` stage
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowStageConfig:
    method: str = "dis"
    preset: str = "medium"  # DIS only
    weights: str | None = None  # RAFT / Perceiver only
    size: int | None = None  # flow computed on frames resized to size×size; None = native
    rule: str = "otsu"
    value: float | None = None
    min_magnitude: float = 1.0
    cleanup: int = 0
    device: str | None = None  # RAFT / Perceiver; None = cuda when available
    threads: int | None = None  # OpenCV / torch threads of the process running a video

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SSPError(f"unknown flow method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.size is not None and self.size < 8:
            raise SSPError(f"--size must be at least 8 pixels, got {self.size}")
        self.threshold_rule()  # validates rule / value / cleanup early

    def estimator_options(self) -> dict[str, Any]:
        if self.method == "dis":
            return {"preset": self.preset}
        return {"weights": self.weights, "device": self.device}

    def threshold_rule(self) -> ThresholdRule:
        return ThresholdRule(self.rule, self.value, self.min_magnitude, self.cleanup)

    def output_params(self) -> dict[str, Any]:
        """What the outputs depend on (goes into the up-to-date fingerprint and the stamp).
        Device and thread counts change speed, not results, so they are left out."""
        params: dict[str, Any] = {"method": self.method, "size": self.size, **asdict(self.threshold_rule())}
        if self.rule == "otsu":
            params["value"] = None  # unused by Otsu: changing it must not redo every video
        if self.method == "dis":
            params["preset"] = self.preset
        else:
            params["weights"] = str(Path(self.weights).resolve()) if self.weights else None
        return params

    def weight_files(self) -> list[Path]:
        """Weight files whose size / mtime enter the fingerprint (retrained weights → redo)."""
        if self.method == "dis" or not self.weights or not Path(self.weights).exists():
            return []
        path = Path(self.weights)
        return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]


def video_magnitudes(frames: Sequence[np.ndarray], config: FlowStageConfig) -> list[np.ndarray]:
    """Per-frame eq. (1) magnitude maps (pixels of the frame's own size) of one video."""
    height, width = frames[0].shape[:2]
    if len(frames) < 2:
        return [np.zeros((height, width), np.float32) for _ in frames]
    resized = config.size is not None and (height, width) != (config.size, config.size)
    inputs = list(frames)
    if resized:
        shrink = config.size * config.size < height * width
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        inputs = [cv2.resize(f, (config.size, config.size), interpolation=interpolation) for f in frames]
    estimator = build_estimator(config.method, **config.estimator_options())
    flows = estimator(inputs[:-1], inputs[1:])
    if resized:
        # Back to the frame's grid; vectors rescaled to the frame's pixels per axis.
        flow_h, flow_w = inputs[0].shape[:2]
        scale = np.array([width / flow_w, height / flow_h], np.float32)
        flows = [cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) * scale for f in flows]
    return per_frame_magnitudes(flows)


def _read_video_frames(record: Any) -> list[np.ndarray]:
    """All frames of a video, RGB uint8, checked before anything is written."""
    from ssp.data.avsbench import read_frame

    if not record.frame_paths:
        raise DataError(record.root / record.rel_dir, "video has no frames")
    frames = [read_frame(path) for path in record.frame_paths]  # DataError naming a bad file
    for path, frame in zip(record.frame_paths[1:], frames[1:]):
        if frame.shape != frames[0].shape:
            raise DataError(path, f"frame size {frame.shape[1]}×{frame.shape[0]} differs from the video's first frame "
                            f"({frames[0].shape[1]}×{frames[0].shape[0]})")
    return frames


def _encode_png(array: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise SSPError(f"PNG encoding failed for an array of {array.dtype} {array.shape}")
    return buffer.tobytes()


def process_video(record: Any, out: str, config: FlowStageConfig) -> dict[str, Any]:
    """Flow masks and magnitude maps of one video; skipped when up to date.

    Returns ``{"uid", "processed", "coverage"}`` with ``coverage`` the per-frame fraction
    of mask pixels. A corrupt or missing frame raises a :class:`DataError` naming it
    before any output of the video is written.
    """
    from ssp.preprocess.common import VideoOutputs, fingerprint, is_up_to_date, stage_output_dir, stamp_path

    if config.threads:
        cv2.setNumThreads(config.threads)
        if config.method != "dis":
            import torch

            torch.set_num_threads(config.threads)

    out_dir = stage_output_dir(out, record)
    params = config.output_params()
    for path in record.frame_paths:
        if not Path(path).is_file():
            raise DataError(path, "frame file missing")
    fp = fingerprint([*record.frame_paths, *config.weight_files()], params)
    if is_up_to_date(out_dir, STAGE, fp):
        stamp = json.loads(stamp_path(out_dir, STAGE).read_text())
        return {"uid": record.uid, "processed": False, "coverage": stamp.get("coverage", [])}
    # Outputs of an earlier run (other params or inputs) are stale from here on, even if
    # this attempt fails: drop their stamp so that nothing takes them for current.
    stamp_path(out_dir, STAGE).unlink(missing_ok=True)

    frames = _read_video_frames(record)
    magnitudes = video_magnitudes(frames, config)
    rule = config.threshold_rule()
    masks = [flow_mask(m, rule) for m in magnitudes]
    coverage = [round(float(m.mean()), 6) for m in masks]

    with VideoOutputs(out_dir, STAGE, fp, info={"params": params, "coverage": coverage}) as outputs:
        for i, (magnitude, mask) in enumerate(zip(magnitudes, masks)):
            centi_px = np.clip(np.rint(magnitude * MAGNITUDE_SCALE), 0, np.iinfo(np.uint16).max).astype(np.uint16)
            for rel, image in ((f"mask/{i}.png", mask.astype(np.uint8) * 255), (f"magnitude/{i}.png", centi_px)):
                with outputs.path(rel) as tmp:
                    tmp.write_bytes(_encode_png(image))
    return {"uid": record.uid, "processed": True, "coverage": coverage}


def read_magnitude(path: str | Path) -> np.ndarray:
    """A magnitude PNG written by this stage → float32 magnitudes in pixels."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != np.uint16:
        raise DataError(path, "not a 16-bit magnitude PNG written by `ssp flow`")
    return image.astype(np.float32) / MAGNITUDE_SCALE


def run_flow_stage(data_root: str | Path, out: str | Path, config: FlowStageConfig, workers: int = 1) -> dict[str, Any]:
    """Run the stage over every video of ``data_root``; returns (and writes) the summary."""
    from ssp.data.avsbench import load_records
    from ssp.preprocess.common import run_per_video

    out = Path(out)
    records = load_records(data_root)
    if not records:
        raise SSPError(f"{data_root}: no videos found")
    summary_path = out / SUMMARY_NAME
    summary_path.unlink(missing_ok=True)  # a failed run must not leave an old summary looking current
    workers = max(1, min(workers, len(records)))
    if workers > 1 and config.threads is None:
        # Share the cores between worker processes instead of each grabbing all of them.
        config = FlowStageConfig(**{**asdict(config), "threads": max(1, (os.cpu_count() or 1) // workers)})
    results = run_per_video(
        records, functools.partial(process_video, out=str(out), config=config), workers=workers, desc="flow"
    )
    coverage = [c for r in results for c in r["coverage"]]
    summary = {
        "stage": STAGE,
        "data_root": str(data_root),
        "params": config.output_params(),
        "videos": len(results),
        "processed": sum(r["processed"] for r in results),
        "skipped": sum(not r["processed"] for r in results),
        "frames": len(coverage),
        "mean_mask_coverage": round(float(np.mean(coverage)), 6) if coverage else 0.0,
    }
    write_json(summary_path, summary)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ssp.preprocess.common import default_workers

    parser.add_argument("data_root", metavar="DATA_ROOT", help="dataset root (AVSBench-semantic or -object layout)")
    parser.add_argument("--out", required=True, help="output folder; mirrors the dataset's per-video folders")
    parser.add_argument("--method", choices=METHODS, default="dis",
                        help="flow estimator: dis (OpenCV, CPU, default), raft (torchvision) or perceiver "
                        "(transformers PerceiverForOpticalFlow, the paper's); raft/perceiver need --weights")
    parser.add_argument("--preset", choices=DIS_PRESETS, default="medium", help="DIS preset (default: medium)")
    parser.add_argument("--weights", default=None,
                        help="local weights: RAFT state-dict file (.pth/.pt/.safetensors) or Perceiver "
                        "save_pretrained folder; never downloaded")
    parser.add_argument("--rule", choices=THRESHOLD_RULES, default="otsu",
                        help="magnitude threshold for the mask: fixed (VALUE pixels), fraction_of_max "
                        "(VALUE x the frame's max), otsu (per frame; VALUE unused). Default: otsu")
    parser.add_argument("--value", type=float, default=None, help="the rule's value (see --rule)")
    parser.add_argument("--min-magnitude", type=float, default=1.0,
                        help="pixels moving less than this many pixels are never in the mask, whatever the "
                        "rule (keeps still frames empty). Default: 1.0 (measured in bench/README.md)")
    parser.add_argument("--cleanup", type=int, default=0,
                        help="side of the square of a morphological opening applied to each mask "
                        "(removes specks); 0 = off (default)")
    parser.add_argument("--size", type=int, default=None,
                        help="compute flow on frames resized to SIZExSIZE (faster on large frames); outputs "
                        "stay at each frame's size. Default: the frame's own size")
    parser.add_argument("--device", default=None, help="torch device for raft/perceiver (default: cuda if available)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="videos processed in parallel (processes). Default: CPU cores - 1")


def main(args: argparse.Namespace) -> int:
    config = FlowStageConfig(
        method=args.method, preset=args.preset, weights=args.weights, size=args.size, rule=args.rule,
        value=args.value, min_magnitude=args.min_magnitude, cleanup=args.cleanup, device=args.device,
    )
    if config.method != "dis":
        build_estimator(config.method, **config.estimator_options())  # bad weights: fail before any video
    summary = run_flow_stage(args.data_root, args.out, config, workers=args.workers)
    logger.info(
        "flow: %d videos (%d processed, %d up to date), mean mask coverage %.3f -> %s",
        summary["videos"], summary["processed"], summary["skipped"], summary["mean_mask_coverage"],
        Path(args.out) / SUMMARY_NAME,
    )
    return 0

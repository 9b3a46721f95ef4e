"""Optical flow stage: per-frame motion magnitude maps and binary flow masks M_O.

SSP (paper §3.1, eq. 1) turns the optical flow between consecutive frames into one
motion map per frame and binarises it into the flow mask M_O that the pre-mask (eq. 2)
and the post-mask loss use. This module has three layers, each usable on its own:

1. :func:`estimate_flow` — dense flow between two RGB frames, float32 H×W×2 (dx, dy in
   pixels, from frame a to frame b: the content at (x, y) in a is at (x+dx, y+dy) in b).
   Methods:

   - ``"dis"``: OpenCV's DIS optical flow on grayscale; ``preset`` is ``ultrafast`` |
     ``fast`` | ``medium``. Fast on CPU, no weights.
   - ``"raft"``: torchvision's RAFT (``raft_small`` or ``raft_large``) from a torchvision
     state dict (``.pth`` / ``.pt`` / ``.safetensors``): a local file, or a hub repository
     ``org/name@revision`` holding one such file (or one per variant, named with
     ``small`` / ``large``). CUDA when available.
   - ``"perceiver"``: Hugging Face ``PerceiverForOpticalFlow`` (the paper's choice): a local
     ``save_pretrained`` folder or a hub repository, e.g.
     ``deepmind/optical-flow-perceiver@<commit>`` (only its ``config.json`` and
     ``*.safetensors`` are fetched: pickled ``.bin`` files are never loaded); the model sees
     fixed-size tiles (its training size, 368×496 for the released model), so frames are
     tiled with overlap and blended.

   Weights are resolved by :func:`ssp.hub.resolve_weights` (hub ids: the Hugging
   Face cache, offline with ``HF_HUB_OFFLINE=1``); the resolved record (repository,
   commit, sha256 per file) goes into every video's stamp (a new revision or retrained
   weights redo the videos) and into ``flow_summary.json``.

   RAFT and Perceiver IO live in :mod:`ssp.preprocess.flow_networks` (torch, imported
   only when one of them is used).

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
   ``min_magnitude`` px is never moving, so that a still frame gives an empty mask
   instead of Otsu splitting estimator noise in two. Optional clean-up: a morphological
   opening with a ``cleanup``×``cleanup`` square (0 = off) removes specks.
   :func:`flow_masks` runs 1-3 on one video's frames.

Every knob (method, preset, weights, variant, size, device, rule, value, min_magnitude,
cleanup) is a field of the ``flow`` params section, :class:`ssp.params.FlowParams`, where
its default and meaning are documented once. The ``ssp flow`` stage reads that section (``--params``,
``--set flow.KEY=VALUE``), runs the three over every video of a dataset and writes, per
frame i (outputs mirror the dataset layout)::

    {out}/{rel_dir}/mask/{i}.png        binary M_O, uint8 0 / 255, at the frame's size
    {out}/{rel_dir}/magnitude/{i}.png   eq. (1) magnitude, uint16 in 1/100 px
                                        (value 250 = 2.5 px; saturates at 655.35 px)
    {out}/{rel_dir}/_done_flow.json     up-to-date stamp (method, params, weights, mask coverage)
    {out}/flow_summary.json             params, resolved weights, videos, frames, mean mask
                                        coverage: a function of the outputs only (no run
                                        counts, no local paths), so that a re-run that
                                        changes nothing leaves the folder's content as it was

A video with a single frame has no pair: its magnitude map is zero and its mask empty.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from skimage.filters import threshold_otsu

from ssp.data.avsbench import VideoRecord, load_records, read_frame
from ssp.errors import DataError, SSPError
from ssp.fileio import write_json
from ssp.hub import ResolvedWeights, resolve_weights
from ssp.params import FlowParams, add_params_arguments, stage_params
from ssp.preprocess.common import (
    VideoOutputs,
    default_workers,
    inputs_digest,
    is_up_to_date,
    run_per_video,
    stage_output_dir,
    stamp_path,
)

logger = logging.getLogger(__name__)

METHODS = ("dis", "raft", "perceiver")
DIS_PRESETS = ("ultrafast", "fast", "medium")
THRESHOLD_RULES = ("fixed", "fraction_of_max", "otsu")
RAFT_VARIANTS = ("auto", "small", "large")
MAGNITUDE_SCALE = 100.0  # magnitude PNGs store 1/100 px in uint16
STAGE = "flow"
SUMMARY_NAME = "flow_summary.json"
RUN_COUNTS = ("processed", "skipped")  # returned and logged, not written: they differ between runs


# ---------------------------------------------------------------------------------------
# 1. Flow estimators
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DISOptions:
    preset: str  # ultrafast | fast | medium (OpenCV's DIS presets)


@dataclass(frozen=True)
class RAFTOptions:
    weights: str | None = None  # resolved local path: a RAFT state dict, or a folder holding one; required
    variant: str = "auto"  # small | large | auto (picked from the weights' layer shapes)
    num_flow_updates: int = 12  # GRU refinement iterations (torchvision's default)
    device: str | None = None  # None: cuda when available, else cpu
    batch_size: int = 4  # frame pairs per forward pass


@dataclass(frozen=True)
class PerceiverOptions:
    weights: str | None = None  # resolved local folder written by PerceiverForOpticalFlow.save_pretrained; required
    # The released model predicts flow / 20 (AutoFlow's scaling, kept by DeepMind's
    # release; see deepmind-research issue #266): multiply back to get pixels.
    flow_scale: float = 20.0
    min_overlap: int = 20  # pixels shared by neighbouring tiles (blended)
    device: str | None = None
    batch_size: int = 4  # tiles per forward pass


_OPTIONS = {"dis": DISOptions, "raft": RAFTOptions, "perceiver": PerceiverOptions}
# (frames_a, frames_b) -> one H×W×2 flow per pair
Estimator = Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], list[np.ndarray]]


def _check_frames(frame_a: np.ndarray, frame_b: np.ndarray) -> None:
    for name, frame in (("frame_a", frame_a), ("frame_b", frame_b)):
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ValueError(f"{name} must be an RGB uint8 H×W×3 array, got {desc}")
    if frame_a.shape != frame_b.shape:
        raise ValueError(f"frames differ in size: {frame_a.shape} vs {frame_b.shape}")


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


def _flow_networks() -> ModuleType:
    """RAFT and Perceiver IO (:mod:`ssp.preprocess.flow_networks`)."""
    from ssp.preprocess import flow_networks  # noqa: PLC0415  (optional backend: RAFT/Perceiver IO need torch, torchvision and transformers, seconds to import; DIS and its workers never do)

    return flow_networks


@functools.lru_cache(maxsize=4)
def _cached_estimator(method: str, options: Any) -> Estimator:
    if method == "dis":
        return DISFlow(options)
    if method == "raft":
        return _flow_networks().RAFTFlow(**asdict(options))
    return _flow_networks().PerceiverFlow(**asdict(options))


def resolve_flow_weights(method: str, spec: str | Path | None) -> ResolvedWeights:
    """The weights of ``raft`` / ``perceiver`` (params ``flow.weights``): a local path or
    ``org/name@revision``, resolved by :func:`ssp.hub.resolve_weights`."""
    if not spec or not str(spec).strip():
        raise SSPError(
            f"flow method {method!r} needs weights: set flow.weights to a local path or a hub id "
            "org/name@revision (e.g. --set flow.weights=deepmind/optical-flow-perceiver@<commit>)"
        )
    resolved = resolve_weights(str(spec), "flow.weights")  # files: ssp.hub.HUB_FILES
    if (
        method == "perceiver"
        and resolved.source == "hub"
        and not any(n.endswith(".safetensors") for n in resolved.files)
    ):
        raise DataError(
            resolved.path,
            f"flow.weights = {spec}: no *.safetensors at this revision (pickled .bin weights are not "
            "loaded); pin a revision that has model.safetensors",
        )
    return resolved


def build_estimator(method: str, **opts: Any) -> Estimator:
    """An estimator ``(frames_a, frames_b) -> flows`` for a list of frame pairs.

    ``weights`` (raft, perceiver): a weights spec (local path or ``org/name@revision``) or
    an already :class:`~ssp.hub.ResolvedWeights`. Models are loaded once per process
    and reused (cached by method and options).
    """
    if method not in METHODS:
        raise SSPError(f"unknown flow method {method!r}; choose one of {', '.join(METHODS)}")
    option_type = _OPTIONS[method]
    known = {f.name for f in fields(option_type)}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise SSPError(
            f"flow method {method!r} has no option {', '.join(unknown)}; options: {', '.join(sorted(known))}"
        )
    if method != "dis":
        weights = opts.get("weights")
        resolved = weights if isinstance(weights, ResolvedWeights) else resolve_flow_weights(method, weights)
        opts["weights"] = str(resolved.path)
    return _cached_estimator(method, option_type(**opts))


def estimate_flow(frame_a: np.ndarray, frame_b: np.ndarray, method: str, **opts: Any) -> np.ndarray:
    """Dense optical flow from ``frame_a`` to ``frame_b``.

    Args:
        frame_a, frame_b: RGB uint8 arrays of the same H×W×3 shape.
        method: ``"dis"``, ``"raft"`` or ``"perceiver"``.
        **opts: the method's options — dis: ``preset``; raft: ``weights`` (a spec, see
            :func:`build_estimator`), ``variant``,
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
# 3. Magnitude → binary mask M_O (the rule, value, min_magnitude and cleanup of FlowParams)
# ---------------------------------------------------------------------------------------


def check_threshold_rule(flow: FlowParams) -> None:
    """A :class:`~ssp.errors.SSPError` when the params' rule cannot threshold a map."""
    if flow.rule not in THRESHOLD_RULES:
        raise SSPError(f"unknown threshold rule {flow.rule!r}; choose one of {', '.join(THRESHOLD_RULES)}")
    if flow.rule == "fixed" and (flow.value is None or flow.value < 0):
        raise SSPError("threshold rule 'fixed' needs value >= 0 (pixels)")
    if flow.rule == "fraction_of_max" and (flow.value is None or not 0 < flow.value <= 1):
        raise SSPError("threshold rule 'fraction_of_max' needs 0 < value <= 1")
    if flow.cleanup < 0:
        raise SSPError("cleanup must be >= 0 (0 = off)")


def magnitude_threshold(magnitude: np.ndarray, flow: FlowParams) -> float:
    """The threshold (pixels) the rule puts on this frame's magnitudes (before the floor)."""
    if flow.rule == "fixed":
        return float(flow.value)
    if flow.rule == "fraction_of_max":
        return float(flow.value) * float(magnitude.max(initial=0.0))
    if magnitude.size == 0 or float(magnitude.max()) - float(magnitude.min()) < 1e-6:
        return float(magnitude.max(initial=0.0))  # constant map: nothing stands out
    return float(threshold_otsu(magnitude))


def flow_mask(magnitude: np.ndarray, flow: FlowParams) -> np.ndarray:
    """Binary M_O (bool H×W): magnitude > the rule's threshold and >= ``min_magnitude``."""
    threshold = magnitude_threshold(magnitude, flow)
    mask = (magnitude > threshold) & (magnitude >= flow.min_magnitude)
    if flow.cleanup > 0:
        kernel = np.ones((flow.cleanup, flow.cleanup), np.uint8)
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel).astype(bool)
    return mask


# ---------------------------------------------------------------------------------------
# 4. One video, and the `ssp flow` stage
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowStageConfig:
    """The ``flow`` params section, its resolved weights, and the process's thread count
    (not a param: a worker's share of the cores, set by the stage)."""

    flow: FlowParams = field(default_factory=FlowParams)
    threads: int | None = None  # OpenCV / torch threads of the process running a video
    # raft / perceiver: flow.weights resolved (filled in on construction: a missing or bad
    # spec fails here, before any video)
    weights: ResolvedWeights | None = None

    def __post_init__(self) -> None:
        flow = self.flow
        if flow.method not in METHODS:
            raise SSPError(f"unknown flow method {flow.method!r}; choose one of {', '.join(METHODS)}")
        if flow.size is not None and flow.size < 8:
            raise SSPError(f"flow.size must be at least 8 pixels (or null: native), got {flow.size}")
        if flow.method == "raft" and flow.variant not in RAFT_VARIANTS:
            raise SSPError(f"unknown RAFT variant {flow.variant!r}; choose one of {', '.join(RAFT_VARIANTS)}")
        check_threshold_rule(flow)  # early, before any video
        if flow.method != "dis" and self.weights is None:
            object.__setattr__(self, "weights", resolve_flow_weights(flow.method, flow.weights))

    @property
    def size(self) -> int | None:
        return self.flow.size

    @property
    def device(self) -> str | None:
        return None if self.flow.device in ("", "auto") else self.flow.device  # None: cuda when available

    def estimator_options(self) -> dict[str, Any]:
        if self.flow.method == "dis":
            return {"preset": self.flow.preset}
        options: dict[str, Any] = {"weights": self.weights, "device": self.device}
        if self.flow.method == "raft":
            options["variant"] = self.flow.variant
        return options

    def weights_identity(self) -> dict[str, Any] | None:
        """What identifies the weights (repository, commit, sha256 per file), not where
        they lie: a moved cache or dataset keeps the outputs up to date."""
        if self.weights is None:
            return None
        record = self.weights.to_dict()
        return {key: record.get(key) for key in ("source", "repo_id", "revision", "files")}

    def output_params(self) -> dict[str, Any]:
        """What the outputs depend on (goes into the up-to-date digest and the stamp).
        Device and thread counts change speed, not results, so they are left out."""
        flow = self.flow
        params: dict[str, Any] = {
            "method": flow.method,
            "size": flow.size,
            "rule": flow.rule,
            # unused by Otsu: changing it must not redo every video
            "value": None if flow.rule == "otsu" else flow.value,
            "min_magnitude": flow.min_magnitude,
            "cleanup": flow.cleanup,
        }
        if flow.method == "dis":
            params["preset"] = flow.preset
        else:
            params["weights"] = self.weights_identity()
        if flow.method == "raft":
            params["variant"] = flow.variant
        return params


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
    estimator = build_estimator(config.flow.method, **config.estimator_options())
    flows = estimator(inputs[:-1], inputs[1:])
    if resized:
        # Back to the frame's grid; vectors rescaled to the frame's pixels per axis.
        flow_h, flow_w = inputs[0].shape[:2]
        scale = np.array([width / flow_w, height / flow_h], np.float32)
        flows = [cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) * scale for f in flows]
    return per_frame_magnitudes(flows)


def flow_masks(frames: Sequence[np.ndarray], flow: FlowParams) -> list[np.ndarray]:
    """Binary M_O (bool, each frame's H×W) of one video's RGB uint8 frames, in order, as
    ``ssp flow`` computes them with the ``flow`` params section."""
    config = FlowStageConfig(flow)
    return [flow_mask(m, flow) for m in video_magnitudes(frames, config)]


def _read_video_frames(record: VideoRecord) -> list[np.ndarray]:
    """All frames of a video, RGB uint8, checked before anything is written."""
    if not record.frame_paths:
        raise DataError(record.root / record.rel_dir, "video has no frames")
    frames = [read_frame(path) for path in record.frame_paths]  # DataError naming a bad file
    for path, frame in zip(record.frame_paths[1:], frames[1:]):
        if frame.shape != frames[0].shape:
            raise DataError(
                path,
                f"frame size {frame.shape[1]}×{frame.shape[0]} differs from the video's first frame "
                f"({frames[0].shape[1]}×{frames[0].shape[0]})",
            )
    return frames


def _encode_png(array: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise SSPError(f"PNG encoding failed for an array of {array.dtype} {array.shape}")
    return buffer.tobytes()


def process_video(record: VideoRecord, out: str, config: FlowStageConfig) -> dict[str, Any]:
    """Flow masks and magnitude maps of one video; skipped when up to date.

    Returns ``{"uid", "processed", "coverage"}`` with ``coverage`` the per-frame fraction
    of mask pixels. A corrupt or missing frame raises a :class:`DataError` naming it
    before any output of the video is written.
    """
    if config.threads:
        cv2.setNumThreads(config.threads)
        if config.flow.method != "dis":
            _flow_networks().set_threads(config.threads)

    out_dir = stage_output_dir(out, record)
    params = config.output_params()
    for path in record.frame_paths:
        if not Path(path).is_file():
            raise DataError(path, "frame file missing")
    digest = inputs_digest(record.frame_paths, params)
    if is_up_to_date(out_dir, STAGE, digest):
        stamp = json.loads(stamp_path(out_dir, STAGE).read_text())
        return {"uid": record.uid, "processed": False, "coverage": stamp.get("coverage", [])}
    # Outputs of an earlier run (other params or inputs) are stale from here on, even if
    # this attempt fails: drop their stamp so that nothing takes them for current.
    stamp_path(out_dir, STAGE).unlink(missing_ok=True)

    frames = _read_video_frames(record)
    magnitudes = video_magnitudes(frames, config)
    masks = [flow_mask(m, config.flow) for m in magnitudes]
    coverage = [round(float(m.mean()), 6) for m in masks]

    with VideoOutputs(out_dir, STAGE, digest, info={"params": params, "coverage": coverage}) as outputs:
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
    """Run the stage over every video of ``data_root``; returns the summary with this run's
    counts (``processed``, ``skipped``) and writes it without them (see the module doc)."""
    out = Path(out)
    records = load_records(data_root)
    if not records:
        raise SSPError(f"{data_root}: no videos found")
    summary_path = out / SUMMARY_NAME
    summary_path.unlink(missing_ok=True)  # a failed run must not leave an old summary looking current
    workers = max(1, min(workers, len(records)))
    if workers > 1 and config.threads is None:
        # Share the cores between worker processes instead of each grabbing all of them.
        config = replace(config, threads=max(1, (os.cpu_count() or 1) // workers))
    results = run_per_video(
        records, functools.partial(process_video, out=str(out), config=config), workers=workers, desc="flow"
    )
    coverage = [c for r in results for c in r["coverage"]]
    summary = {
        "stage": STAGE,
        "data_root": str(data_root),
        "params": config.output_params(),
        "weights": weights_record(config.weights),
        "videos": len(results),
        "processed": sum(r["processed"] for r in results),
        "skipped": sum(not r["processed"] for r in results),
        "frames": len(coverage),
        "mean_mask_coverage": round(float(np.mean(coverage)), 6) if coverage else 0.0,
    }
    write_json(summary_path, {k: v for k, v in summary.items() if k not in RUN_COUNTS})
    return summary


def weights_record(weights: ResolvedWeights | None) -> dict[str, Any] | None:
    """The resolved weights as recorded in a stage's outputs: ``to_dict()`` without the local
    path (machine-dependent; the repository, commit and sha256 per file identify them)."""
    if weights is None:
        return None
    return {k: v for k, v in weights.to_dict().items() if k != "path"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_root", metavar="DATA_ROOT", help="dataset root (AVSBench-semantic or -object layout)")
    parser.add_argument("--out", required=True, help="output folder; mirrors the dataset's per-video folders")
    add_params_arguments(
        parser,
        "flow.min_magnitude=0.5",
        moved={
            "--method": "flow.method",
            "--preset": "flow.preset",
            "--weights": "flow.weights",
            "--size": "flow.size",
            "--device": "flow.device",
            "--rule": "flow.rule",
            "--value": "flow.value",
            "--min-magnitude": "flow.min_magnitude",
            "--cleanup": "flow.cleanup",
        },
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="videos processed in parallel (processes). Default: CPU cores - 1",
    )
    parser.epilog = (
        "Reads the flow section of the params file: method (dis | raft | perceiver), preset, "
        "weights (local path or hub id org/name@revision), variant, size, device, rule (fixed | "
        "fraction_of_max | otsu), value, min_magnitude, cleanup; see ssp/params.py (FlowParams)."
    )


def main(args: argparse.Namespace) -> int:
    config = FlowStageConfig(stage_params(args).flow)  # resolves the weights: a bad spec fails here
    if config.flow.method != "dis":
        build_estimator(config.flow.method, **config.estimator_options())  # bad weights: fail before any video
    summary = run_flow_stage(args.data_root, args.out, config, workers=args.workers)
    logger.info(
        "flow: %d videos (%d processed, %d up to date), mean mask coverage %.3f -> %s",
        summary["videos"],
        summary["processed"],
        summary["skipped"],
        summary["mean_mask_coverage"],
        Path(args.out) / SUMMARY_NAME,
    )
    return 0

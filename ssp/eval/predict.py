"""``ssp predict VIDEO --out DIR``: segment a user's video with a trained SSP model.

The pipeline is the training pipeline's, on one clip:

1. frames at ``--fps`` (default 1 per second) and the audio as 16 kHz mono
   (:func:`ssp.preprocess.frames.extract_video`, into a temporary folder);
2. VGGish log-mel, one 96×64 patch per second (:mod:`ssp.data.audio`);
3. optical-flow masks M_O with the ``flow`` section of params.yaml, as the flow stage;
4. MLLM prompts A1/A2 with the ``prompts`` section's backend (``--prompts-backend``
   overrides it; ``scene`` answers exist only for the generated benchmark, so it
   becomes ``none`` here);
5. stage 1 -> stepping-stone masks, stage 2 -> per-class scores, at the model's input
   size, then bilinearly resized back to the frame size and turned into class indices.

The model comes from ``--checkpoint`` (+ ``--stage1-checkpoint``), from ``--model
models:/NAME@ALIAS`` (MLflow registry), or by default from the local store's champion
``models:/ssp-avss@champion`` (the champion of the dataset and profile registered last;
``models:/ssp-avss@champion-{profile}-{fingerprint[:8]}`` names one key's, see
:mod:`ssp.ops.registry`). The stepping-stone model of a registered stage-2 model is, unless
given: the stage-1 model stored with its version, else the stage-1 champion of the same
key (same dataset fingerprint and profile), else (versions registered before champions
had keys) ``models:/ssp-avs@champion``. Given a stage-1 model only, the output is binary
(``background`` / ``sounding object``).

Outputs in DIR::

    masks/{i}.png        class index per pixel (8-bit gray, 0 = background), frame size
    overlays/{i}.png     the frame with the classes in colour and a legend of their names
    overlay.mp4          the overlays (legend: every class of the clip) at --fps, with the
                         clip's audio (AAC), N frames, N / fps seconds
    predictions.json     per frame: classes present with pixel share and mean confidence;
                         the model ids and the prompts A1/A2 used

Confidence of a pixel is its winning class's share of the pixel's class scores (stage
2's scores are Mask2Former's semantic scores, Σ_q p_q(c)·σ(m_q), not probabilities;
their share is) or, for a stage-1 model, the foreground / background probability.

Everything is built in a temporary folder beside DIR and renamed onto DIR at the end:
an unreadable, empty, non-video or silent input (without ``--silent-audio-ok``), or any
later failure, leaves no partial output; a previous DIR is replaced only on success.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ssp.data.audio import logmel_from_wav
from ssp.data.avsbench import LABEL2IDX_JSON, VideoRecord, load_label2idx, read_frame
from ssp.engine.predict import predict_batches, stepping_stone
from ssp.errors import DataError, SSPError
from ssp.models.checkpoint import load_model
from ssp.ops.registry import ChampionKey, bundled_stage1, champion_uri, resolve_model
from ssp.params import Params, PromptsParams, add_params_arguments, stage_params
from ssp.preprocess.flow import flow_masks
from ssp.preprocess.frames import extract_video
from ssp.preprocess.prompts.questions import Questions, parse_nouns
from ssp.preprocess.prompts.stage import add_backend_options, build_backend
from ssp.report.drawing import class_name, overlay

log = logging.getLogger(__name__)

BINARY_NAMES = ["background", "sounding object"]
PROMPT_BACKENDS = ("params", "none", "hf", "openai", "scene")


# Execution options of the hf / openai backends for a user video (not params; the
# ``prompts`` section holds backend, model, question_variant, frames_per_video).
@dataclass
class LoadedModel:
    """A model ready to run and where it came from (recorded in predictions.json)."""

    model: Any
    config: Any
    source: dict[str, Any]
    class_names: list[str] | None = None
    key: ChampionKey | None = None  # registered models: the champion key it was registered under
    stage1_path: Path | None = None  # registered stage-2 models: the stage-1 model stored with it


@dataclass
class Prediction:
    out: Path
    num_frames: int
    frame_size: tuple[int, int]
    per_frame: list[dict[str, Any]] = field(default_factory=list)
    prompts: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------
def _load(path: Path, device: str, source: dict[str, Any], names: list[str] | None = None) -> LoadedModel:
    model, config, info = load_model(path, device)
    names = names or info.get("class_names")
    if not names and isinstance(info.get("label2idx"), dict):
        names = [n for n, _ in sorted(info["label2idx"].items(), key=lambda kv: kv[1])]
    return LoadedModel(model, config, {**source, "checkpoint": str(path), "stage": config.stage}, names)


def _from_registry(uri: str, device: str) -> LoadedModel:
    path, manifest = resolve_model(uri)
    source = {
        "uri": uri,
        **manifest["registered"],
        "val_metric": manifest.get("val_metric"),
        "metric": manifest.get("metric"),
        "data_fingerprint": manifest.get("data_fingerprint", manifest.get("data_hash")),
        "profile": manifest.get("profile"),
    }
    loaded = _load(path, device, source, manifest.get("class_names"))
    loaded.key = ChampionKey.of_manifest(manifest)
    loaded.stage1_path = bundled_stage1(path, manifest)
    return loaded


def _stage1_model(main: LoadedModel, stage1_checkpoint, stage1_model_uri, device: str) -> LoadedModel:
    """The stepping-stone model of ``main`` (see the module doc for the order)."""
    if stage1_checkpoint is not None:
        return _load(Path(stage1_checkpoint), device, {"kind": "checkpoint"})
    if stage1_model_uri is not None:
        return _from_registry(stage1_model_uri, device)
    if main.stage1_path is not None:
        return _load(main.stage1_path, device, {"kind": "stored with", "uri": main.source.get("uri")})
    return _from_registry(champion_uri(1, main.key), device)  # key None: the plain champion


def load_models(
    checkpoint: str | Path | None,
    stage1_checkpoint: str | Path | None,
    model_uri: str | None,
    stage1_model_uri: str | None,
    device: str,
) -> tuple[LoadedModel | None, LoadedModel]:
    """(stage-1 model or None when the main model is stage 1 itself, main model)."""
    if checkpoint is not None and model_uri is not None:
        raise SSPError("give either --checkpoint or --model, not both")
    if checkpoint is not None:
        main = _load(Path(checkpoint), device, {"kind": "checkpoint"})
    else:
        main = _from_registry(model_uri or champion_uri(2), device)
    if main.config.stage == 1:
        return None, main
    first = _stage1_model(main, stage1_checkpoint, stage1_model_uri, device)
    if first.config.stage != 1:
        where = first.source.get("uri") or first.source["checkpoint"]
        raise SSPError(f"{where}: the stepping-stone model must be a stage-1 model, got stage {first.config.stage}")
    return first, main


# ---------------------------------------------------------------------------------------
# Inputs of the model
# ---------------------------------------------------------------------------------------
def read_frames(paths: Sequence[Path]) -> list[np.ndarray]:
    return [read_frame(p) for p in paths]


def ask_prompts(
    prompts_params: PromptsParams,
    clip_dir: Path,
    frame_paths: list[Path],
    audio_path: Path,
    uid: str,
    device: str,
    options: argparse.Namespace | None = None,
) -> dict[str, Any]:
    """A1/A2 for the clip from ``prompts_params.backend`` (``none``: empty prompts;
    ``scene`` answers only for the generated benchmark, so it is ``none`` here);
    ``options``: the backend options of :func:`ssp.preprocess.prompts.stage.add_backend_options`."""
    questions = Questions.from_variant(prompts_params.question_variant)
    if prompts_params.backend == "scene":
        log.info("prompts backend 'scene' answers only for the generated benchmark; using 'none' for a user video")
        prompts_params = dataclasses.replace(prompts_params, backend="none")
    if prompts_params.backend == "none":
        return {"backend": "none", "model": "", "a1": "", "a2": [], "a2_raw": ""}
    backend = build_backend(
        prompts_params, argparse.Namespace(**{**vars(options or argparse.Namespace()), "device": device})
    )
    record = VideoRecord(
        uid=uid,
        subset="user",
        split="test",
        category="",
        root=clip_dir.parent,
        rel_dir=clip_dir.name,
        frame_paths=list(frame_paths),
        audio_path=audio_path,
        mask_paths=[None] * len(frame_paths),
        labelled=[False] * len(frame_paths),
    )
    try:
        a1 = backend.answer_q1(record, questions)
        a2_raw = backend.answer_q2(record, questions, a1)
    finally:
        if hasattr(backend, "close"):
            backend.close()
    return {
        "backend": prompts_params.backend,
        "model": backend.model,
        "a1": a1.strip(),
        "a2": parse_nouns(a2_raw),
        "a2_raw": a2_raw.strip(),
    }


def model_batch(
    frames: list[np.ndarray],
    logmel: np.ndarray,
    masks_o: list[np.ndarray],
    prompts: dict[str, Any],
    image_size: int,
    device,
) -> dict[str, Any]:
    """The batch format of :func:`ssp.data.datasets.collate_frames` for one clip."""

    def resize(array: np.ndarray, resample) -> np.ndarray:
        if array.shape[:2] == (image_size, image_size):
            return array
        return np.asarray(Image.fromarray(array).resize((image_size, image_size), resample=resample))

    n = len(frames)
    pixels = np.stack([resize(f, Image.Resampling.BILINEAR) for f in frames])
    flow = np.stack([resize(m.astype(np.uint8) * 255, Image.Resampling.NEAREST) > 127 for m in masks_o])
    return {
        "frames": torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))).float().div_(255).to(device),
        "logmel": torch.from_numpy(np.ascontiguousarray(logmel, dtype=np.float32)).to(device),
        "flow_mask": torch.from_numpy(flow.astype(np.float32)).to(device),
        "prompt_a1": [prompts["a1"]] * n,
        "prompt_a2": [list(prompts["a2"])] * n,
        "video_index": torch.zeros(n, dtype=torch.long),
        "frame_index": torch.arange(n),
        "num_frames": torch.tensor([n]),
        "uid": ["clip"],
    }


def logmel_per_frame(audio_path: Path, num_frames: int, fps: float) -> np.ndarray:
    """One log-mel patch per frame: the patch of the second the frame lies in."""
    seconds = max(1, int(np.ceil(num_frames / fps - 1e-9)))
    patches = logmel_from_wav(audio_path, seconds, pad=True)
    index = np.minimum((np.arange(num_frames) / fps).astype(int), seconds - 1)
    return patches[index]


# ---------------------------------------------------------------------------------------
# Running the models
# ---------------------------------------------------------------------------------------
def run_models(
    stage1: LoadedModel | None, main: LoadedModel, frames, logmel, masks_o, prompts, device, batch_frames: int = 16
):
    """Per frame ``(class index map, confidence map)`` at the frame size; the models see
    ``batch_frames`` frames at a time (frames are independent at inference), so a long
    video does not need all its frames in one forward pass."""
    results = []
    for start in range(0, len(frames), batch_frames):
        chunk = slice(start, start + batch_frames)
        results += _run_chunk(stage1, main, frames[chunk], logmel[chunk], masks_o[chunk], prompts, device)
    return results


def _stepping_stones(stage1: LoadedModel, frames, logmel, masks_o, prompts, size: int, device) -> torch.Tensor:
    """Stage 1's quantized masks of the frames (stage 1's own input size), resized to the
    main model's ``size`` when the two differ."""
    batch = model_batch(frames, logmel, masks_o, prompts, stage1.config.image_size, device)
    stone = stepping_stone(stage1.model, batch)
    if stone.shape[-1] != size:
        stone = F.interpolate(stone[:, None], size=(size,) * 2, mode="bilinear", align_corners=False)[:, 0]
    return stone


def _run_chunk(stage1, main, frames, logmel, masks_o, prompts, device):
    height, width = frames[0].shape[:2]
    size = main.config.image_size
    stone = _stepping_stones(stage1, frames, logmel, masks_o, prompts, size, device) if stage1 else None
    batch = model_batch(frames, logmel, masks_o, prompts, size, device)
    if stone is not None:
        batch["stage1_mask"] = stone
    [(_, scores)] = predict_batches(main.model, [batch])  # the batch is on the device already
    results = []
    for i in range(len(frames)):  # one frame at a time: C×H×W at full size can be large
        if main.config.stage == 1:
            probability = F.interpolate(
                scores[i][None, None], size=(height, width), mode="bilinear", align_corners=False
            )[0, 0].sigmoid()
            classes = (probability > 0.5).long()
            confidence = torch.where(classes > 0, probability, 1 - probability)
        else:
            full = F.interpolate(scores[i][None], size=(height, width), mode="bilinear", align_corners=False)[0]
            full = full.clamp(min=0)
            top, classes = full.max(0)
            confidence = top / full.sum(0).clamp(min=torch.finfo(full.dtype).tiny)
        results.append((classes.to("cpu", torch.uint8).numpy(), confidence.cpu().numpy()))
    return results


def frame_summary(classes: np.ndarray, confidence: np.ndarray, names: Sequence[str]) -> list[dict[str, Any]]:
    """Classes present in one frame: index, name, pixel share and mean confidence."""
    total = classes.size
    out = []
    for index in np.unique(classes):
        where = classes == index
        out.append(
            {
                "index": int(index),
                "name": class_name(names, int(index)),
                "pixel_share": round(float(where.sum()) / total, 6),
                "mean_confidence": round(float(confidence[where].mean()), 6),
            }
        )
    return sorted(out, key=lambda c: -c["pixel_share"])


# ---------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------
def write_overlay_video(path: Path, images: list[np.ndarray], fps: float, audio_path: Path | None) -> None:
    """H.264 (yuv420p) video of ``images`` at ``fps`` + the wav as AAC, into an mp4.
    Frame i has pts i (time base 1/fps), so N frames last N / fps seconds."""
    height = max(im.shape[0] for im in images)
    width = max(im.shape[1] for im in images)
    height, width = height + height % 2, width + width % 2  # yuv420p needs even sides
    rate = Fraction(fps).limit_denominator(1000)
    with av.open(str(path), mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.time_base = 1 / rate
        video.options = {"crf": "20"}
        audio = None
        if audio_path is not None:
            samples, sample_rate = sf.read(str(audio_path), dtype="float32", always_2d=True)
            audio = container.add_stream("aac", rate=sample_rate)
            audio.layout = "mono"
        for i, image in enumerate(images):
            canvas = np.full((height, width, 3), 255, np.uint8)
            canvas[: image.shape[0], : image.shape[1]] = image
            frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
            frame.pts = i
            frame.time_base = video.time_base
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            mono = np.ascontiguousarray(samples.mean(axis=1)[None, :], dtype=np.float32)
            chunk = 1024
            for start in range(0, mono.shape[1], chunk):
                frame = av.AudioFrame.from_ndarray(mono[:, start : start + chunk], format="fltp", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = start
                frame.time_base = Fraction(1, sample_rate)
                container.mux(audio.encode(frame))
            container.mux(audio.encode(None))


def _encode_png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise SSPError(f"PNG encoding failed for an array of shape {array.shape}")
    return buf.tobytes()


def _replace_dir(built: Path, out: Path) -> None:
    """Move the finished ``built`` folder onto ``out`` (an old ``out`` is removed after)."""
    old = None
    if out.exists():
        if not out.is_dir():
            raise SSPError(f"{out}: exists and is not a folder")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(built, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_outputs(
    built: Path,
    frames: list[np.ndarray],
    results,
    names: list[str],
    frame_times_s: Sequence[float],
    fps: float,
    audio_path: Path | None,
) -> tuple[list, list[int]]:
    """masks/, overlays/ and overlay.mp4 into ``built``; returns (per-frame summaries,
    classes of the whole video)."""
    video_classes = sorted({int(c) for classes, _ in results for c in np.unique(classes) if c != 0})
    per_frame, video_images = [], []
    for i, (frame, (classes, confidence)) in enumerate(zip(frames, results)):
        (built / "masks").mkdir(exist_ok=True)
        (built / "overlays").mkdir(exist_ok=True)
        (built / "masks" / f"{i}.png").write_bytes(_encode_png(classes))
        with open(built / "overlays" / f"{i}.png", "wb") as f:
            Image.fromarray(overlay(frame, classes, names=names)).save(f, format="PNG")
        video_images.append(overlay(frame, classes, names=names, classes=video_classes))
        per_frame.append(
            {
                "index": i,
                "time_s": frame_times_s[i] if i < len(frame_times_s) else None,
                "classes": frame_summary(classes, confidence, names),
            }
        )
    write_overlay_video(built / "overlay.mp4", video_images, fps, audio_path)
    return per_frame, video_classes


def _prompts_params(params: Params, prompts_backend: str | None) -> PromptsParams:
    """The ``prompts`` section, its backend replaced by ``--prompts-backend`` unless that is
    ``params`` (or None)."""
    if prompts_backend in (None, "params"):
        return params.prompts
    return dataclasses.replace(params.prompts, backend=prompts_backend)


def prediction_summary(video, clip, frames, fps, device, stage1, main, names, prompts, per_frame, video_classes):
    """predictions.json: the clip, the models and prompts used, the classes per frame."""
    height, width = frames[0].shape[:2]
    models = {"stage2" if main.config.stage == 2 else "stage1": main.source}
    if stage1 is not None:
        models["stage1"] = stage1.source
    return {
        "video": str(video),
        "frames": len(frames),
        "fps": fps,
        "frame_size": [height, width],
        "duration_s": clip.duration_s,
        "silent_audio": clip.silent_audio,
        "device": str(device),
        "models": models,
        "class_names": names,
        "prompts": {k: prompts[k] for k in ("backend", "model", "a1", "a2")},
        "classes_in_video": [{"index": c, "name": names[c] if c < len(names) else f"class {c}"} for c in video_classes],
        "per_frame": per_frame,
    }


def predict_video(
    video: str | Path,
    out: str | Path,
    checkpoint: str | Path | None = None,
    stage1_checkpoint: str | Path | None = None,
    model_uri: str | None = None,
    stage1_model_uri: str | None = None,
    params: Params | None = None,
    prompts_backend: str | None = None,
    class_names: Sequence[str] | None = None,
    device: str = "auto",
    fps: float = 1.0,
    seconds: int | None = None,
    silent_audio_ok: bool = False,
    progress: bool = True,
    backend_options: argparse.Namespace | None = None,
) -> Prediction:
    """Run the whole pipeline on one video and write DIR (see the module doc); ``params``:
    its ``flow`` and ``prompts`` sections (None: the defaults); ``backend_options``: how to
    run or reach the MLLM (``ssp prompts``' backend options)."""
    video, out = Path(video), Path(out)
    params = params or Params()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not video.exists():
        raise DataError(video, "video file is missing")
    out.parent.mkdir(parents=True, exist_ok=True)
    steps = ["frames + audio", "log-mel", "optical flow", "prompts", "models", "segmentation", "outputs"]
    bar = tqdm(total=len(steps), desc="predict", unit="step", disable=not progress)

    def step(i: int) -> None:
        if i:
            bar.update()
        bar.set_description(f"predict: {steps[i]}")

    work = Path(tempfile.mkdtemp(prefix=".ssp-predict-"))
    built = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(built, 0o777 & ~umask)  # mkdtemp makes it private; DIR should be a normal folder
    try:
        step(0)
        clip = extract_video(video, work / "clip", seconds=seconds, fps=fps, silent_audio_ok=silent_audio_ok)
        frames = read_frames(clip.frame_paths)
        step(1)
        logmel = logmel_per_frame(clip.audio_path, len(frames), fps)
        step(2)
        masks_o = flow_masks(frames, params.flow)
        step(3)
        prompts = ask_prompts(
            _prompts_params(params, prompts_backend),
            work / "clip",
            clip.frame_paths,
            clip.audio_path,
            video.stem,
            device,
            backend_options,
        )
        step(4)
        stage1, main = load_models(checkpoint, stage1_checkpoint, model_uri, stage1_model_uri, device)
        names = list(class_names or main.class_names or (BINARY_NAMES if main.config.stage == 1 else []))
        step(5)
        results = run_models(stage1, main, frames, logmel, masks_o, prompts, device)
        step(6)
        height, width = frames[0].shape[:2]
        per_frame, video_classes = write_outputs(
            built, frames, results, names, clip.frame_times_s, fps, clip.audio_path
        )
        summary = prediction_summary(
            video, clip, frames, fps, device, stage1, main, names, prompts, per_frame, video_classes
        )
        models = summary["models"]
        (built / "predictions.json").write_text(json.dumps(summary, indent=2) + "\n")
        _replace_dir(built, out)
        bar.update()
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    return Prediction(out, len(frames), (height, width), per_frame, summary["prompts"], models)


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path, help="the video to segment (mp4, mkv, webm, gif, ... with audio)")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder: masks/, overlays/, overlay.mp4, predictions.json "
        "(replaced as a whole on success; untouched on failure)",
    )
    model = parser.add_argument_group(
        "model (default: the local registry's champion models:/ssp-avss@champion, with the stage-1 model "
        "stored with it, else the stage-1 champion of its dataset and profile)"
    )
    model.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="stage-2 checkpoint (.safetensors); a stage-1 checkpoint gives binary masks",
    )
    model.add_argument(
        "--stage1-checkpoint",
        type=Path,
        default=None,
        help="stage-1 checkpoint for the stepping stones (default: the stage-1 model registered with the "
        "stage-2 model, else models:/ssp-avs@champion-{profile}-{fingerprint[:8]} of its key)",
    )
    model.add_argument(
        "--model",
        default=None,
        metavar="URI",
        help="registered model, e.g. models:/ssp-avss@champion, models:/ssp-avss@champion-demo-1a2b3c4d "
        "(one dataset and profile's champion) or models:/ssp-avss/3",
    )
    model.add_argument(
        "--stage1-model",
        default=None,
        metavar="URI",
        help="registered stage-1 model (default: as --stage1-checkpoint's)",
    )
    add_params_arguments(parser, "flow.rule=fixed")
    parser.add_argument(
        "--prompts-backend",
        choices=PROMPT_BACKENDS,
        default="params",
        help="who writes A1/A2: none (empty prompts), hf (local model), openai (endpoint); "
        "default: params.yaml's prompts.backend ('scene' there means none for a user video)",
    )
    parser.add_argument(
        "--class-names",
        type=Path,
        default=None,
        help="label2idx.json (or a dataset folder holding it) naming the classes, when the "
        "model does not carry its class names (default: the registry's, else 'class K')",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--fps", type=float, default=1.0, help="frames per second segmented (default: 1, as AVSBench)")
    parser.add_argument(
        "--seconds", type=int, default=None, help="segment only the first N seconds (default: the whole video)"
    )
    parser.add_argument(
        "--silent-audio-ok",
        action="store_true",
        help="accept a video with no audio track (the model then hears silence)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_backend_options(parser, device=False)  # the MLLM's: --trust-remote-code, --base-url, ...


def _class_names_from(path: Path) -> list[str]:
    if path.is_file() and path.name != LABEL2IDX_JSON:
        raise DataError(path, f"expected {LABEL2IDX_JSON} or a dataset folder holding it")
    mapping = load_label2idx(path if path.is_dir() else path.parent)
    by_index = {v: k for k, v in mapping.items()}
    return [by_index.get(i, f"class {i}") for i in range(max(by_index, default=-1) + 1)]


def main(args: argparse.Namespace) -> int:
    params = stage_params(args)  # sections flow and prompts
    names = _class_names_from(args.class_names) if args.class_names is not None else None
    start = time.time()
    result = predict_video(
        args.video,
        args.out,
        checkpoint=args.checkpoint,
        stage1_checkpoint=args.stage1_checkpoint,
        model_uri=args.model,
        stage1_model_uri=args.stage1_model,
        params=params,
        prompts_backend=args.prompts_backend,
        class_names=names,
        device=args.device,
        fps=args.fps,
        seconds=args.seconds,
        silent_audio_ok=args.silent_audio_ok,
        progress=not args.no_progress,
        backend_options=args,
    )
    present = sorted({c["name"] for f in result.per_frame for c in f["classes"] if c["index"] != 0})
    log.info(
        "predict: %d frames in %.1f s; classes: %s -> %s",
        result.num_frames,
        time.time() - start,
        ", ".join(present) or "background only",
        result.out,
    )
    return 0

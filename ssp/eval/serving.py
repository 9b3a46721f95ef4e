"""Serving a registered model: ``mlflow models serve -m models:/ssp-avss@champion``.

Every version ``ssp register`` writes is an MLflow pyfunc model whose ``loader_module`` is
this module (:func:`_load_pyfunc`): MLflow calls it with the version's data folder
(``model.safetensors``, ``ssp_model.json`` and, for stage 2, ``stage1.safetensors``). The
model is loaded with ``ssp predict``'s loader (:func:`ssp.eval.predict.load_models`, i.e.
:func:`ssp.models.checkpoint.load_model`) and every request runs ``ssp predict``'s steps
(:func:`~ssp.eval.predict.logmel_per_frame`, :func:`ssp.preprocess.flow.flow_masks`,
:func:`~ssp.eval.predict.run_models`, which goes through the one predict loop
:func:`ssp.engine.predict.predict_batches`): no second inference path.

**Request** (JSON, MLflow's scoring protocol): ``{"inputs": CLIP}``, ``{"inputs": [CLIP,
...]}`` or ``{"dataframe_records": [CLIP, ...]}``, a CLIP being either

- ``{"video": base64 of a video file with audio}`` (mp4, webm, mkv, ...; decoded with
  PyAV as ``ssp predict`` does: ``fps`` frames per second of the whole video, or of its
  first ``seconds`` seconds; at most ``MAX_FRAMES`` frames), or
- ``{"frames": [base64 JPEG/PNG, ...], "audio": base64 WAV}``: the frames, ``fps`` per
  second of the audio (any rate, resampled to 16 kHz; a short one is padded);

plus optional ``"fps"`` (default 1, AVSBench's), ``"prompts": {"a1": "...", "a2":
["dog", ...]}`` (default: empty prompts) and ``"silent_audio_ok": true`` (a video without
an audio track then hears silence).

**Response**: ``{"predictions": [RESULT, ...]}``, one per clip: ``frames``,
``frame_size`` [H, W], ``fps``, ``classes_in_clip`` [{index, name}], ``per_frame``
[{index, ``mask_png``: base64 PNG (8-bit, H×W, class index per pixel, 0 = background),
``classes``: [{index, name, pixel_share, mean_confidence}]}], ``model`` (stage, key,
metric) and ``inputs`` (what the model was given besides the media).

**What a stage-2 model needs besides frames and audio**: optical-flow masks M_O are
computed here with the flow params registered with the model, but always with OpenCV DIS
(a model trained with Perceiver IO or RAFT flow gets DIS masks: their weights are not
part of the version; ``inputs.flow`` says so); the stepping stones come from the stage-1
model stored with the version; the MLLM prompts A1/A2 are not computed (no MLLM in the
server): the client may send them, else they are empty, as ``ssp predict
--prompts-backend none``. A stage-2 version registered without a stage-1 model refuses
to load.

**Bad requests** (a missing or unknown field, media that do not decode, frames of
different sizes, too many frames, ...) raise ``MlflowException(INVALID_PARAMETER_VALUE)``:
the scoring server answers HTTP 400 with the reason in ``message`` and keeps serving.
Any other failure is a 500 (``INTERNAL_ERROR``) with its message.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import math
import re
import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

from ssp.errors import DataError, SSPError
from ssp.eval.predict import BINARY_NAMES, frame_summary, load_models, logmel_per_frame, read_frames, run_models
from ssp.ops.registry import MANIFEST_FILE, STAGE1_FILE, WEIGHTS_FILE
from ssp.params import FlowParams, Params
from ssp.preprocess.flow import flow_masks
from ssp.preprocess.frames import extract_video
from ssp.report.drawing import class_name

log = logging.getLogger(__name__)

FIELDS = {"video", "frames", "audio", "fps", "seconds", "prompts", "silent_audio_ok"}
MAX_FRAMES = 64  # per clip: bounds the server's memory and a request's time
MAX_CLIPS = 8  # per request
MIN_SIDE, MAX_SIDE = 16, 2048  # frame sides in pixels
MAX_FPS = 30.0


class BadRequest(ValueError):
    """A request the server cannot answer; its message says why (HTTP 400)."""


def _bad(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)


# ---------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """MLflow's parser turns JSON values into numpy arrays (``inputs``) or DataFrame cells;
    back to plain Python, with a DataFrame's missing cell (NaN) as None."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def clips_of(model_input: Any) -> list[dict[str, Any]]:
    """The clips of a request: one dict, a list of dicts, or a DataFrame (one row each)."""
    if isinstance(model_input, pd.DataFrame):
        records = model_input.to_dict(orient="records")
    elif isinstance(model_input, Mapping):
        records = [model_input]
    elif isinstance(model_input, (list, tuple)):
        records = list(model_input)
    else:
        raise BadRequest(f"expected a clip object (or a list of them) under 'inputs', got {type(model_input).__name__}")
    if not records:
        raise BadRequest("no clip in the request")
    if len(records) > MAX_CLIPS:
        raise BadRequest(f"{len(records)} clips in one request; at most {MAX_CLIPS}")
    clips = []
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise BadRequest(f"clip {i}: expected an object with 'video' or 'frames' + 'audio'")
        clip = {str(k): _plain(v) for k, v in record.items()}
        clips.append({k: v for k, v in clip.items() if v is not None})
    return clips


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{what}: expected a non-empty base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what}: not valid base64") from None


def _number(clip: Mapping[str, Any], key: str, default: float | None, low: float, high: float) -> float | None:
    value = clip.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
        raise BadRequest(f"'{key}' must be a number in ({low:g}, {high:g}], got {value!r}")
    return float(value)


def _prompts(clip: Mapping[str, Any]) -> dict[str, Any]:
    given = clip.get("prompts")
    if given is None:
        return {"a1": "", "a2": [], "source": "none (empty prompts)"}
    if not isinstance(given, Mapping):
        raise BadRequest("'prompts' must be an object {'a1': text, 'a2': [nouns]}")
    a1, a2 = given.get("a1", ""), given.get("a2", [])
    if not isinstance(a1, str) or not isinstance(a2, list) or not all(isinstance(n, str) for n in a2):
        raise BadRequest("'prompts': 'a1' must be a string and 'a2' a list of strings")
    return {"a1": a1.strip(), "a2": [n.strip() for n in a2 if n.strip()], "source": "request"}


@dataclasses.dataclass
class DecodedClip:
    frames: list[np.ndarray]
    audio_path: Path
    fps: float
    silent_audio: bool = False


def decode_clip(clip: Mapping[str, Any], work: Path) -> DecodedClip:
    """Frames (RGB uint8) and the audio file of a clip, checked; :class:`BadRequest` (or a
    ``DataError`` naming the field's file in ``work``) for anything unusable."""
    unknown = sorted(set(clip) - FIELDS)
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; a clip has {sorted(FIELDS)}")
    fps = _number(clip, "fps", 1.0, 0.0, MAX_FPS)
    if "video" in clip:
        if "frames" in clip or "audio" in clip:
            raise BadRequest("give either 'video' or 'frames' + 'audio', not both")
        seconds = _number(clip, "seconds", None, 0.0, max(1, int(MAX_FRAMES / fps)))
        path = work / "video"
        path.write_bytes(_b64(clip["video"], "'video'"))
        silent_ok = bool(clip.get("silent_audio_ok", False))
        extracted = extract_video(
            path,
            work / "clip",
            fps=fps,
            seconds=None if seconds is None else max(1, int(seconds)),  # None: the whole video
            silent_audio_ok=silent_ok,
        )
        if len(extracted.frame_paths) > MAX_FRAMES:
            raise BadRequest(
                f"'video' gives {len(extracted.frame_paths)} frames at fps {fps:g}; at most {MAX_FRAMES} "
                "(send 'seconds' or a lower 'fps')"
            )
        frames = read_frames(extracted.frame_paths)
        decoded = DecodedClip(frames, extracted.audio_path, fps, extracted.silent_audio)
    elif "frames" in clip and "audio" in clip:
        images = clip["frames"]
        if not isinstance(images, list) or not images:
            raise BadRequest("'frames' must be a non-empty list of base64 JPEG/PNG images")
        if len(images) > MAX_FRAMES:
            raise BadRequest(f"{len(images)} frames; at most {MAX_FRAMES} per clip")
        (work / "frames").mkdir()
        paths = []
        for i, image in enumerate(images):
            paths.append(work / "frames" / str(i))
            paths[-1].write_bytes(_b64(image, f"'frames'[{i}]"))
        frames = read_frames(paths)  # DataError naming frames/{i} for one that does not decode
        decoded = DecodedClip(frames, work / "audio", fps)
        decoded.audio_path.write_bytes(_b64(clip["audio"], "'audio'"))
    else:
        missing = (
            "'audio'" if "frames" in clip else "'frames'" if "audio" in clip else "'video' (or 'frames' + 'audio')"
        )
        raise BadRequest(f"missing field {missing}")
    _check_sizes(decoded.frames)
    return decoded


def _check_sizes(frames: list[np.ndarray]) -> None:
    height, width = frames[0].shape[:2]
    if not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE):
        raise BadRequest(f"frames are {height}x{width} pixels; each side must be in [{MIN_SIDE}, {MAX_SIDE}]")
    for i, frame in enumerate(frames[1:], start=1):
        if frame.shape[:2] != (height, width):
            raise BadRequest(
                f"frames differ in size: frame 0 is {height}x{width}, frame {i} is {frame.shape[0]}x{frame.shape[1]}"
            )


# ---------------------------------------------------------------------------------------
# The served model
# ---------------------------------------------------------------------------------------
def serving_flow_params(manifest: Mapping[str, Any]) -> tuple[FlowParams, dict[str, Any]]:
    """The flow params registered with the model, with DIS as the method (the only one
    that needs no weights), and what the response says about them."""
    recorded = (manifest.get("params") or {}).get("flow") or {}
    try:
        flow = Params.from_dict({"flow": recorded}, source=MANIFEST_FILE).flow
    except (DataError, SSPError) as e:  # params of another code version: the defaults
        log.warning("flow params of the model unreadable (%s); using the defaults", e)
        flow = FlowParams()
    trained_with = flow.method
    flow = dataclasses.replace(flow, method="dis", weights="")
    note = {"method": "dis", "rule": flow.rule, "value": flow.value, "min_magnitude": flow.min_magnitude}
    if trained_with != "dis":
        note["trained_with"] = trained_with  # the model saw other masks in training
    return flow, note


class ServedModel:
    """What :func:`_load_pyfunc` returns: ``predict(model_input, params=None)`` -> one
    result per clip (see the module doc). Requests run one at a time (a lock): the
    scoring server answers each in a thread, and one model in memory serves them all."""

    def __init__(self, folder: str | Path, device: str = "auto"):
        folder = Path(folder)
        try:
            self.manifest = json.loads((folder / MANIFEST_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SSPError(f"{folder / MANIFEST_FILE}: not an SSP model's data folder ({e})") from None
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        stage1_path = folder / STAGE1_FILE
        if int(self.manifest["stage"]) == 2 and not stage1_path.is_file():
            raise SSPError(
                f"{folder}: a stage-2 model registered without its stage-1 (stepping-stone) model; "
                "register it again with `ssp register --stage 2 --stage1 CHECKPOINT_OR_URI`"
            )
        self.stage1, self.main = load_models(
            folder / WEIGHTS_FILE, stage1_path if int(self.manifest["stage"]) == 2 else None, None, None, self.device
        )
        stage = self.main.config.stage
        self.names = list(self.manifest.get("class_names") or self.main.class_names or [])
        if stage == 1:
            self.names = self.names or list(BINARY_NAMES)
        self.flow, self.flow_note = serving_flow_params(self.manifest)
        self.lock = threading.Lock()
        self.description = {
            "stage": stage,
            "task": self.manifest.get("task"),
            "profile": self.manifest.get("profile"),
            "data_fingerprint": self.manifest.get("data_fingerprint"),
            "champion_alias": self.manifest.get("champion_alias"),
            "metric": self.manifest.get("metric"),
            "val_metric": self.manifest.get("val_metric"),
        }
        stage1 = self.manifest.get("stage1") or {}
        if stage1:
            self.description["stage1"] = {k: stage1[k] for k in ("uri", "version", "sha256") if k in stage1}

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """One result per clip; ``params`` (MLflow's request params) are not used: a clip's
        options travel with it."""
        try:
            clips = clips_of(model_input)
            results = []
            for i, clip in enumerate(clips):
                try:
                    results.append(self.predict_clip(clip))
                except BadRequest as e:
                    raise BadRequest(f"clip {i}: {e}" if len(clips) > 1 else str(e)) from None
            return results
        except BadRequest as e:
            raise _bad(str(e)) from None
        except MlflowException:
            raise
        except Exception as e:
            log.exception("serving failed")
            raise MlflowException(f"internal error: {type(e).__name__}: {e}", error_code=INTERNAL_ERROR) from None

    def predict_clip(self, clip: Mapping[str, Any]) -> dict[str, Any]:
        prompts = _prompts(clip)
        work = Path(tempfile.mkdtemp(prefix="ssp-serve-"))
        try:
            decoded = decode_clip(clip, work)
            logmel = logmel_per_frame(decoded.audio_path, len(decoded.frames), decoded.fps)
        except (DataError, SSPError) as e:  # the client's media
            raise BadRequest(_short(_field_names(str(e), work))) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        masks_o = flow_masks(decoded.frames, self.flow)
        with self.lock:
            results = run_models(self.stage1, self.main, decoded.frames, logmel, masks_o, prompts, self.device)
        return self.response(decoded, prompts, results)

    def response(self, decoded: DecodedClip, prompts: dict[str, Any], results) -> dict[str, Any]:
        height, width = decoded.frames[0].shape[:2]
        present = sorted({int(c) for classes, _ in results for c in np.unique(classes) if c != 0})
        per_frame = []
        for i, (classes, confidence) in enumerate(results):
            ok, png = cv2.imencode(".png", classes)
            if not ok:
                raise SSPError(f"PNG encoding of the mask of frame {i} failed")
            per_frame.append(
                {
                    "index": i,
                    "mask_png": base64.b64encode(png.tobytes()).decode("ascii"),
                    "classes": frame_summary(classes, confidence, self.names),
                }
            )
        inputs = {"flow": self.flow_note, "prompts": prompts, "silent_audio": decoded.silent_audio}
        if self.stage1 is not None:
            inputs["stage1"] = "the stage-1 model stored with this version"
        return {
            "frames": len(decoded.frames),
            "frame_size": [height, width],
            "fps": decoded.fps,
            "classes_in_clip": [{"index": c, "name": class_name(self.names, c)} for c in present],
            "per_frame": per_frame,
            "model": self.description,
            "inputs": inputs,
        }


def _field_names(message: str, work: Path) -> str:
    """A decoding error names the request's field (``'frames'[2]``), not the temporary file."""
    message = re.sub(rf"{re.escape(str(work))}/frames/(\d+)", r"'frames'[\1]", message)
    for name in ("video", "audio"):
        message = message.replace(f"{work}/{name}", f"'{name}'")
    return message.replace(f"{work}/", "")


def _short(message: str) -> str:
    return message if len(message) <= 500 else message[:497] + "..."


def _load_pyfunc(data_path: str) -> ServedModel:
    """MLflow's entry point (``loader_module``): the version's data folder -> the model."""
    return ServedModel(data_path)

"""Torch datasets over :class:`~ssp.data.avsbench.VideoRecord` lists.

One item = one video: its frames, ground-truth masks, audio log-mel and, when a stage
asks for them, the outputs of earlier stages (optical-flow masks, stage-1 masks, MLLM
prompts), all read from ``{stage_dir}/{record.rel_dir}/...``. A batch is then FLATTENED
to frames by :func:`collate_frames` (the model works on frames; videos have 5 or 10),
with ``video_index`` / ``frame_index`` to go back to videos.

Conventions:
- frames: bilinear resize to ``image_size x image_size``, float32 in [0, 1], NOT
  normalised (the model normalises; SSP's pre-mask multiplies the raw frames first);
- masks: nearest-neighbour resize, so only values that were in the mask come out;
  binary for ``task="avs"``, class indices for ``task="avss"``; 0 where unlabelled
  (``labelled`` says which frames count). Unlike the official AVSS loader we do not pad
  5-frame videos to 10: metrics score real frames only;
- a missing extras file is a :class:`~ssp.errors.DataError` naming it, so a stage that
  forgot a preprocessing step fails loudly instead of training on zeros.

Items hold no open files and no randomness: deterministic and safe with any
``num_workers``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ssp.data.audio import logmel_from_wav
from ssp.data.avsbench import MASK_TASKS, VideoRecord, open_image, read_frame, read_json, read_mask
from ssp.errors import DataError, SSPError

LOGMEL_SHAPE = (96, 64)  # VGGish example: 96 frames of 10 ms x 64 mel bands, one per second


def _resize(array: np.ndarray, size: int, resample: int) -> np.ndarray:
    if array.shape[0] == size and array.shape[1] == size:
        return array
    return np.asarray(Image.fromarray(array).resize((size, size), resample=resample))


def _read_gray(path: Path, what: str, hint: str) -> np.ndarray:
    """8-bit grayscale PNG of a preprocessing stage (H x W uint8); ``hint`` says how to
    make a missing one."""
    return np.asarray(open_image(path, None, what, missing_hint=hint).convert("L"))


class AVSDataset(Dataset):
    """Videos of AVSBench records as tensors.

    Args:
        records: the videos (see :func:`ssp.data.avsbench.load_records`).
        task: ``"avs"`` (binary masks) or ``"avss"`` (class-index masks).
        image_size: side of the square frames and masks the model sees.
        logmel_dir: where ``ssp logmel`` wrote ``{rel_dir}/logmel.npy``; None computes the
            log-mel from the video's wav in-process (slower, same numbers).
        flow_dir: where ``ssp flow`` wrote ``{rel_dir}/mask/{i}.png`` (0/255) -> ``flow_mask``.
        prompts_dir: where ``ssp prompts`` wrote ``{rel_dir}/prompts.json`` (keys a1, a2)
            -> ``prompt_a1`` (str), ``prompt_a2`` (list of str).
        stage1_dir: where ``ssp stage1-masks`` wrote ``{rel_dir}/{i}.png`` (probability x 255)
            -> ``stage1_mask``.
        max_frames: keep only the first ``max_frames`` frames of each video.
        strict_masks: unknown mask colours are errors (True) or background (False, like
            the official loader).
        pad_short_audio: when computing the log-mel in-process, pad audio shorter than the
            video with silence instead of raising a DataError.
        class_masks: also return the class-index masks as ``class_masks`` (semantic layout;
            stage 1's class-level auxiliary loss, ``class_aux``), whatever ``task``.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        task: str = "avs",
        image_size: int = 224,
        logmel_dir: str | Path | None = None,
        flow_dir: str | Path | None = None,
        prompts_dir: str | Path | None = None,
        stage1_dir: str | Path | None = None,
        max_frames: int | None = None,
        strict_masks: bool = True,
        pad_short_audio: bool = False,
        class_masks: bool = False,
    ):
        if task not in MASK_TASKS:
            raise SSPError(f"unknown task {task!r}; choose from {', '.join(MASK_TASKS)}")
        if task == "avss":
            object_layout = [r.uid for r in records if r.layout == "object"]
            if object_layout:
                raise SSPError(
                    f"task 'avss' needs class masks, but {len(object_layout)} video(s) come from the "
                    f"AVSBench-object layout (binary masks only), e.g. {object_layout[0]}"
                )
        if class_masks:
            object_layout = [r.uid for r in records if r.layout == "object"]
            if object_layout:
                raise SSPError(
                    f"class masks (class_aux) need the AVSBench-semantic layout, but {len(object_layout)} "
                    f"video(s) come from the AVSBench-object layout (binary masks only), e.g. {object_layout[0]}"
                )
        if image_size < 1:
            raise SSPError(f"image_size must be positive, got {image_size}")
        if max_frames is not None and max_frames < 1:
            raise SSPError(f"max_frames must be positive, got {max_frames}")
        self.records = list(records)
        self.task = task
        self.image_size = int(image_size)
        self.logmel_dir = Path(logmel_dir) if logmel_dir else None
        self.flow_dir = Path(flow_dir) if flow_dir else None
        self.prompts_dir = Path(prompts_dir) if prompts_dir else None
        self.stage1_dir = Path(stage1_dir) if stage1_dir else None
        self.max_frames = max_frames
        self.strict_masks = strict_masks
        self.pad_short_audio = pad_short_audio
        self.class_masks = class_masks

    def __len__(self) -> int:
        return len(self.records)

    def num_frames(self, index: int) -> int:
        n = self.records[index].num_frames
        return min(n, self.max_frames) if self.max_frames else n

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        num_frames = self.num_frames(index)
        size = self.image_size

        frames = np.stack(
            [
                _resize(read_frame(record.frame_paths[i], record.root), size, Image.Resampling.BILINEAR)
                for i in range(num_frames)
            ]
        )
        masks = np.zeros((num_frames, size, size), dtype=np.int64)
        classes = np.zeros_like(masks) if self.class_masks else None
        labelled = np.array(record.labelled[:num_frames], dtype=bool)
        for i in np.flatnonzero(labelled):
            if classes is not None:  # one read: the binary mask is the class mask's foreground
                classes[i] = _resize(
                    read_mask(record, int(i), task="avss", strict=self.strict_masks), size, Image.Resampling.NEAREST
                )
                masks[i] = classes[i] if self.task == "avss" else classes[i] > 0
                continue
            mask = read_mask(record, int(i), task=self.task, strict=self.strict_masks)
            masks[i] = _resize(mask, size, Image.Resampling.NEAREST)

        item: dict[str, Any] = {
            "uid": record.uid,
            "subset": record.subset,
            "rel_dir": record.rel_dir,
            # T x H x W x 3 uint8 -> T x 3 x S x S float in [0, 1] (transpose while still uint8: cheaper)
            "frames": torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).float().div_(255.0),
            "masks": torch.from_numpy(masks),
            "labelled": torch.from_numpy(labelled),
            "logmel": torch.from_numpy(self._logmel(record, num_frames)),
        }
        if classes is not None:
            item["class_masks"] = torch.from_numpy(classes)
        if self.flow_dir is not None:
            item["flow_mask"] = torch.from_numpy(self._flow_mask(record, num_frames))
        if self.stage1_dir is not None:
            item["stage1_mask"] = torch.from_numpy(self._stage1_mask(record, num_frames))
        if self.prompts_dir is not None:
            item["prompt_a1"], item["prompt_a2"] = self._prompts(record)
        return item

    # -- extras -------------------------------------------------------------------
    def _logmel(self, record: VideoRecord, num_frames: int) -> np.ndarray:
        if self.logmel_dir is None:
            logmel = np.asarray(
                logmel_from_wav(record.audio_path, record.num_frames, pad=self.pad_short_audio), dtype=np.float32
            )
            source: str | Path = record.audio_path
        else:
            source = self.logmel_dir / record.rel_dir / "logmel.npy"
            try:
                logmel = np.load(source, allow_pickle=False)
            except FileNotFoundError:
                raise DataError(source, "log-mel features are missing (run `ssp logmel` first)") from None
            except (ValueError, OSError) as e:
                raise DataError(source, f"cannot read log-mel features ({e})") from None
        # accept T x 96 x 64 and the official T x 1 x 96 x 64
        if logmel.ndim < 2 or logmel.shape[-2:] != LOGMEL_SHAPE:
            raise DataError(source, f"log-mel must be T x 96 x 64, got shape {tuple(logmel.shape)}")
        logmel = logmel.reshape(-1, *LOGMEL_SHAPE)
        if logmel.shape[0] < num_frames:
            raise DataError(source, f"log-mel covers {logmel.shape[0]} s but the video has {num_frames} frames")
        return np.ascontiguousarray(logmel[:num_frames], dtype=np.float32)

    def _flow_mask(self, record: VideoRecord, num_frames: int) -> np.ndarray:
        out = np.zeros((num_frames, self.image_size, self.image_size), dtype=np.float32)
        for i in range(num_frames):
            gray = _read_gray(
                self.flow_dir / record.rel_dir / "mask" / f"{i}.png", "optical-flow mask", "run `ssp flow` first"
            )
            out[i] = _resize(gray, self.image_size, Image.Resampling.NEAREST) > 127
        return out

    def _stage1_mask(self, record: VideoRecord, num_frames: int) -> np.ndarray:
        out = np.zeros((num_frames, self.image_size, self.image_size), dtype=np.float32)
        for i in range(num_frames):
            gray = _read_gray(
                self.stage1_dir / record.rel_dir / f"{i}.png", "stage-1 mask", "run `ssp stage1-masks` first"
            )
            out[i] = _resize(gray, self.image_size, Image.Resampling.BILINEAR).astype(np.float32) / 255.0
        return out

    def _prompts(self, record: VideoRecord) -> tuple[str, list[str]]:
        path = self.prompts_dir / record.rel_dir / "prompts.json"
        answers = read_json(path, "MLLM prompts are missing (run `ssp prompts` first)")
        a1 = answers.get("a1") if isinstance(answers, dict) else None
        a2 = answers.get("a2") if isinstance(answers, dict) else None
        if not isinstance(a1, str) or not isinstance(a2, list) or not all(isinstance(x, str) for x in a2):
            raise DataError(path, 'expected {"a1": "<description>", "a2": ["<noun>", ...]}')
        return a1, list(a2)


def collate_frames(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Flatten a list of video items into one batch of N = sum of their frame counts.

    Tensors are concatenated along frames: ``frames`` N x 3 x S x S, ``masks`` N x S x S,
    ``labelled`` N, ``logmel`` N x 96 x 64, ``class_masks`` / ``flow_mask`` / ``stage1_mask`` N x S x S when
    the items have them. ``video_index`` (N, long) is the position of each frame's video
    in the batch, ``frame_index`` (N, long) its index inside the video. Text prompts are
    repeated per frame (``prompt_a1``: N strings, ``prompt_a2``: N lists); ``uid``,
    ``subset``, ``rel_dir`` stay per video, ``num_frames`` is a per-video long tensor.
    """
    if not items:
        raise ValueError("collate_frames needs at least one item")
    counts = [int(item["frames"].shape[0]) for item in items]
    batch: dict[str, Any] = {
        "uid": [item["uid"] for item in items],
        "subset": [item["subset"] for item in items],
        "rel_dir": [item["rel_dir"] for item in items],
        "num_frames": torch.tensor(counts, dtype=torch.long),
        "video_index": torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts)),
        "frame_index": torch.cat([torch.arange(n) for n in counts]),
    }
    for key in ("frames", "masks", "class_masks", "labelled", "logmel", "flow_mask", "stage1_mask"):
        present = [key in item for item in items]
        if any(present) and not all(present):
            raise ValueError(f"some items have {key!r} and others do not")
        if all(present):
            batch[key] = torch.cat([item[key] for item in items])
    if "prompt_a1" in items[0]:
        batch["prompt_a1"] = [item["prompt_a1"] for item, n in zip(items, counts) for _ in range(n)]
        batch["prompt_a2"] = [list(item["prompt_a2"]) for item, n in zip(items, counts) for _ in range(n)]
    return batch

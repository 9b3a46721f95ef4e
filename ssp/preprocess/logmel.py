"""The ``ssp logmel`` stage: VGGish log-mel patches (T x 96 x 64, float32; computed by
:mod:`ssp.data.audio`) for every video of a dataset, written to
``{out}/{rel_dir}/logmel.npy``."""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ssp.data.audio import VGGISH_LOGMEL, logmel_from_wav
from ssp.data.avsbench import VideoRecord, load_records
from ssp.errors import DataError, SSPError
from ssp.preprocess.common import VideoOutputs, inputs_digest, is_up_to_date, run_per_video, stage_output_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogMelStageParams:
    pad_short_audio: bool = False
    version: int = 1  # bump when the features change, so stamps from older code are redone


def logmel_one_video(record: VideoRecord, out: str | Path, params: LogMelStageParams) -> bool:
    """Write ``{out}/{rel_dir}/logmel.npy`` for one video; False if it was up to date."""
    out_dir = stage_output_dir(out, record)
    audio_path = Path(record.audio_path)
    if not audio_path.is_file():
        raise DataError(audio_path, "audio file is missing")
    stage_params = {**asdict(params), "num_seconds": record.num_frames, **asdict(VGGISH_LOGMEL)}
    digest = inputs_digest([audio_path], stage_params)
    if is_up_to_date(out_dir, "logmel", digest):
        return False
    features = logmel_from_wav(audio_path, record.num_frames, pad=params.pad_short_audio)
    with VideoOutputs(out_dir, "logmel", digest, info={"shape": list(features.shape)}) as outputs:
        with outputs.path("logmel.npy") as tmp:
            np.save(tmp, features)
    return True


def compute_logmel(
    records: list[VideoRecord], out: str | Path, params: LogMelStageParams = LogMelStageParams(), workers: int = 1
) -> list[bool]:
    """Run the logmel stage over ``records``; returns per video whether it was (re)computed."""
    return run_per_video(records, partial(logmel_one_video, out=out, params=params), workers=workers, desc="logmel")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_root", type=Path, help="dataset root (AVSBench-semantic or -object layout)")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder; writes {out}/{video folder}/logmel.npy (T x 96 x 64 float32)",
    )
    parser.add_argument(
        "--pad-short-audio",
        action="store_true",
        help="pad audio shorter than the video's frame count with silence (default: such a video is an error)",
    )
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes (default: 1)")


def main(args: argparse.Namespace) -> int:
    records = load_records(args.data_root)
    if not records:
        raise SSPError(f"{args.data_root}: no videos found")
    done = compute_logmel(records, args.out, LogMelStageParams(pad_short_audio=args.pad_short_audio), args.workers)
    logger.info("logmel: %d videos computed, %d up to date, in %s", sum(done), len(done) - sum(done), args.out)
    return 0

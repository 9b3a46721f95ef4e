"""``ssp frames``: raw videos -> one frame per second + the audio track as 16 kHz mono wav.

For each video ``{dir}/{stem}.{mp4,mkv,webm,gif,...}`` it writes::

    {out}/{stem}/frames/{i}.jpg     i = 0 .. N-1, one per second (per 1/fps s)
    {out}/{stem}/audio.wav          16 kHz mono PCM16, exactly N seconds
    {out}/{stem}/_done_frames.json  stamp, written last (see ssp.preprocess.common)

Which instant of each second: frame ``i`` is the frame *on screen* at
``t_i = (i + instant) / fps`` seconds (the last frame whose timestamp is <= t_i), with
``instant = 15/16`` by default. That is what AVSBench did: its preprocessing
(``preprocess_scripts/preprocess_s4.py`` in OpenNLPLab/AVSBench) samples 16 frames
per second, at frame indices ``int(l * fps + k / 16 * fps)``, and keeps ``k = 15``,
i.e. the frame shown at ``l + 15/16`` s, near the end of each second. Pass
``--instant 0.5`` for mid-second frames, ``--instant 0`` for the first frame of each second.

N (the number of frames) is ``--seconds`` times fps when given (the first ``--seconds``
of a longer video are taken; a shorter video is an error), else every complete second
(1/fps interval) of the video.

Frames are decoded sequentially with OpenCV (exact timestamps; seeking is not reliable
across containers). Audio is decoded with PyAV (FFmpeg bundled in the pip wheel; no
system ffmpeg), downmixed and resampled to 16 kHz mono by ``av.AudioResampler``,
aligned to the video's start (leading gap -> silence), and cut to N seconds; audio up
to 0.1 s short of N seconds (codec padding, rounding) is padded with silence, anything
shorter is an error. A video with no audio track is an error unless
``--silent-audio-ok``: then audio.wav is N seconds of digital silence (zeros) and the
stamp records ``"silent_audio": true``.

Any bad video (missing, empty, corrupt, no audio, too short) fails with a message naming
it and leaves no output folder for it; the other videos are still processed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import soundfile as sf

from ssp.errors import DataError, SSPError
from ssp.preprocess.common import VideoOutputs, inputs_digest, is_up_to_date, run_per_video, stamp_path

logger = logging.getLogger(__name__)

STAGE = "frames"
AUDIO_SAMPLE_RATE = 16_000
AVSBENCH_INSTANT = 15 / 16
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".gif", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")
# Audio may end this much before the last frame's second (AAC padding, rounding): padded with zeros.
AUDIO_SHORT_TOLERANCE_S = 0.1


@dataclass(frozen=True)
class FramesParams:
    fps: float = 1.0  # frames per second written
    seconds: int | None = None  # expected length; None = every complete second
    instant: float = AVSBENCH_INSTANT  # where in each 1/fps interval the frame is taken (0..1)
    silent_audio_ok: bool = False  # no audio track -> silent wav instead of an error
    jpeg_quality: int = 95
    version: int = 1  # bump when outputs change, so old stamps are redone

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise SSPError(f"--fps must be > 0 (got {self.fps})")
        if self.seconds is not None and self.seconds < 1:
            raise SSPError(f"--seconds must be >= 1 (got {self.seconds})")
        if not 0.0 <= self.instant < 1.0:
            raise SSPError(f"--instant must be in [0, 1) (got {self.instant})")


@dataclass
class ExtractedVideo:
    source: Path
    out_dir: Path
    frame_paths: list[Path]
    audio_path: Path
    duration_s: float  # seconds covered by frames and audio = N / fps
    video_fps: float  # the source's frame rate
    silent_audio: bool = False  # True: the video had no audio track; audio.wav is zeros
    skipped: bool = False  # True: outputs were already up to date
    frame_times_s: list[float] = field(default_factory=list)  # timestamp of each chosen frame


# --------------------------------------------------------------------------- decoding


def _decode_frames(
    path: Path, fps: float, instant: float, seconds: int | None, jpeg_quality: int
) -> tuple[list[bytes], list[float], float]:
    """Decode sequentially; return (chosen frames as JPEG bytes, their timestamps, source fps).

    Frames are encoded as soon as they are chosen, so memory holds JPEGs, not images."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(path, "cannot open as a video (corrupt, truncated or unsupported format)")
    try:
        source_fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        frame_duration = 1.0 / source_fps if source_fps > 0 else 0.0
        wanted = None if seconds is None else int(round(seconds * fps))
        chosen: list[bytes] = []
        chosen_times: list[float] = []
        encoded_previous: tuple[float, bytes] | None = None

        def choose(t: float, image: np.ndarray) -> None:
            nonlocal encoded_previous
            if encoded_previous is None or encoded_previous[0] != t:  # encode each frame once
                ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
                if not ok:
                    raise DataError(path, f"cannot encode the frame at {t:.3f} s as JPEG")
                encoded_previous = (t, buf.tobytes())
            chosen.append(encoded_previous[1])
            chosen_times.append(round(t, 6))

        previous: tuple[float, np.ndarray] | None = None
        index, last_time = 0, -math.inf
        while True:
            ok, image = cap.read()
            if not ok:
                break
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if not t > last_time:  # no usable timestamp (some GIFs): assume a constant rate
                t = index / source_fps if source_fps > 0 else last_time + 1.0 / 25
            last_time, index = t, index + 1
            # The frame on screen at a target time is the last one with timestamp <= target.
            while (
                previous is not None
                and (wanted is None or len(chosen) < wanted)
                and t > _target(len(chosen), fps, instant) + 1e-6
            ):
                choose(*previous)
            previous = (t, image)
            if wanted is not None and len(chosen) >= wanted and t + frame_duration >= wanted / fps - 1e-6:
                break  # every frame chosen and the video is known to be long enough
        if index == 0:
            raise DataError(path, "video has no decodable frames (corrupt or unsupported codec)")
        end = last_time + frame_duration  # the last frame stays on screen for one frame period
        if wanted is None:
            wanted = int(math.floor(end * fps + 1e-6))
            if wanted == 0:
                raise DataError(path, f"video is {end:.2f} s long, shorter than one frame interval ({1 / fps:g} s)")
        elif end < wanted / fps - 0.5 * frame_duration - 1e-6:
            raise DataError(path, f"video is {end:.2f} s long, expected {wanted / fps:g} s ({wanted} frames)")
        # Targets after the last decoded frame (inside its display time) get that frame.
        while len(chosen) < wanted and previous is not None:
            choose(*previous)
        return chosen, chosen_times, source_fps
    finally:
        cap.release()


def _target(i: int, fps: float, instant: float) -> float:
    return (i + instant) / fps


def _decode_audio(path: Path, duration_s: float, silent_ok: bool) -> tuple[np.ndarray, bool]:
    """(int16 mono samples at 16 kHz covering exactly duration_s, is_silent_substitute)."""
    num_samples = int(round(duration_s * AUDIO_SAMPLE_RATE))
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                if silent_ok:
                    logger.warning("%s: no audio track; writing %.2f s of silence", path, duration_s)
                    return np.zeros(num_samples, np.int16), True
                raise DataError(path, "video has no audio track (use --silent-audio-ok to write silence instead)")
            stream = container.streams.audio[0]
            video_start = 0.0
            if container.streams.video and container.streams.video[0].start_time is not None:
                vs = container.streams.video[0]
                video_start = float(vs.start_time * vs.time_base)
            resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_SAMPLE_RATE)
            chunks: list[np.ndarray] = []
            audio_start = None
            for audio_frame in container.decode(stream):
                if audio_start is None and audio_frame.time is not None:
                    audio_start = float(audio_frame.time)
                for out in resampler.resample(audio_frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except DataError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        raise DataError(path, f"cannot decode the audio track ({e})") from None

    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    if samples.size == 0:
        raise DataError(path, "audio track has no samples")
    # Align to the video's clock: audio that starts late gets leading silence, audio
    # that starts early is cut.
    offset = int(round(((audio_start or 0.0) - video_start) * AUDIO_SAMPLE_RATE))
    if offset > 0:
        samples = np.concatenate([np.zeros(offset, np.int16), samples])
    elif offset < 0:
        samples = samples[-offset:]
    short = num_samples - samples.size
    if short > AUDIO_SHORT_TOLERANCE_S * AUDIO_SAMPLE_RATE:
        raise DataError(
            path, f"audio track is {samples.size / AUDIO_SAMPLE_RATE:.2f} s long, the frames need {duration_s:g} s"
        )
    if short > 0:
        samples = np.concatenate([samples, np.zeros(short, np.int16)])
    return samples[:num_samples], False


# --------------------------------------------------------------------------- one video


def extract_video(path: str | Path, out_dir: str | Path, **options: Any) -> ExtractedVideo:
    """Extract one video's frames and audio into ``out_dir`` (``frames/{i}.jpg``,
    ``audio.wav``); does nothing if they are already up to date. ``options``: fields of
    :class:`FramesParams` (fps, seconds, instant, silent_audio_ok, jpeg_quality); see the
    module doc."""
    return _extract(Path(path), Path(out_dir), FramesParams(**options))


def _extract(path: Path, out_dir: Path, params: FramesParams) -> ExtractedVideo:
    if not path.is_file():
        raise DataError(path, "video file is missing")
    # --silent-audio-ok only matters for videos without audio: not part of the fingerprint,
    # so toggling it does not redo the others; a silent substitute made with it is redone
    # (and fails) when it is no longer allowed.
    fp = inputs_digest([path], {k: v for k, v in asdict(params).items() if k != "silent_audio_ok"})
    if is_up_to_date(out_dir, STAGE, fp):
        done = _from_stamp(path, out_dir)
        if params.silent_audio_ok or not done.silent_audio:
            return done

    with VideoOutputs(out_dir, STAGE, fp) as outputs:  # on any error: no output left for this video
        if path.stat().st_size == 0:
            raise DataError(path, "video file is empty (0 bytes)")
        encoded, times, source_fps = _decode_frames(
            path, params.fps, params.instant, params.seconds, params.jpeg_quality
        )
        duration = len(encoded) / params.fps
        audio, silent = _decode_audio(path, duration, params.silent_audio_ok)
        _remove_stale_frames(out_dir, len(encoded))
        outputs.info = {
            "source": str(path),
            "num_frames": len(encoded),
            "duration_s": duration,
            "video_fps": source_fps,
            "silent_audio": silent,
            "frame_times_s": times,
        }
        for i, data in enumerate(encoded):
            with outputs.path(f"frames/{i}.jpg") as tmp:
                tmp.write_bytes(data)
        with outputs.path("audio.wav") as tmp:
            sf.write(str(tmp), audio, AUDIO_SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return _result(path, out_dir, outputs.info, skipped=False)


def _remove_stale_frames(out_dir: Path, num_frames: int) -> None:
    """A re-run with fewer frames (other --seconds / --fps) must not leave old frames."""
    for old in (out_dir / "frames").glob("*.jpg"):
        if not old.stem.isdigit() or int(old.stem) >= num_frames:
            old.unlink(missing_ok=True)


def _from_stamp(path: Path, out_dir: Path) -> ExtractedVideo:
    info = json.loads(stamp_path(out_dir, STAGE).read_text())
    return _result(path, out_dir, info, skipped=True)


def _result(path: Path, out_dir: Path, info: dict, skipped: bool) -> ExtractedVideo:
    return ExtractedVideo(
        source=path,
        out_dir=out_dir,
        frame_paths=[out_dir / "frames" / f"{i}.jpg" for i in range(info["num_frames"])],
        audio_path=out_dir / "audio.wav",
        duration_s=info["duration_s"],
        video_fps=info["video_fps"],
        silent_audio=info["silent_audio"],
        skipped=skipped,
        frame_times_s=list(info["frame_times_s"]),
    )


# --------------------------------------------------------------------------- stage


def find_videos(inputs: list[str | Path]) -> list[Path]:
    """Video files among ``inputs`` (files as given; folders searched recursively for
    known video extensions), sorted, duplicates removed."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        elif item.is_file():
            found.append(item)
        else:
            raise SSPError(f"{item}: no such file or folder")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    by_stem: dict[str, list[Path]] = {}
    for p in unique:
        by_stem.setdefault(p.stem, []).append(p)
    clashes = {s: ps for s, ps in by_stem.items() if len(ps) > 1}
    if clashes:
        detail = "; ".join(f"{s}: {', '.join(map(str, ps))}" for s, ps in sorted(clashes.items()))
        raise SSPError(f"videos with the same name would share an output folder: {detail}")
    return unique


def _extract_into(path: Path, out: Path, params: FramesParams) -> ExtractedVideo:
    return _extract(path, out / path.stem, params)


def extract_videos(
    videos: list[Path], out: str | Path, params: FramesParams = FramesParams(), workers: int = 1
) -> list[ExtractedVideo]:
    """Extract every video into ``{out}/{stem}/``; one error at the end lists the failures."""
    return run_per_video(videos, partial(_extract_into, out=Path(out), params=params), workers=workers, desc="frames")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--videos",
        nargs="+",
        required=True,
        metavar="DIR_OR_FILE",
        help=f"video files, or folders searched recursively for {', '.join(VIDEO_EXTENSIONS)}",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder: {out}/{video name}/frames/{i}.jpg and audio.wav"
    )
    parser.add_argument(
        "--fps", type=float, default=FramesParams.fps, help=f"frames written per second (default: {FramesParams.fps:g})"
    )
    parser.add_argument(
        "--seconds",
        type=int,
        default=None,
        help="take the first N seconds of each video (N * fps frames, N s of audio); "
        "a shorter video is an error (default: every complete second of each video)",
    )
    parser.add_argument(
        "--instant",
        type=float,
        default=FramesParams.instant,
        help="where within each second the frame is taken, as a fraction: the frame on "
        "screen at t = (i + instant) / fps (default: 15/16 = 0.9375, as AVSBench)",
    )
    parser.add_argument(
        "--silent-audio-ok",
        action="store_true",
        help="write a silent audio.wav for videos without an audio track (default: such a video is an error)",
    )
    parser.add_argument(
        "--jpeg-quality",
        type=int,
        default=FramesParams.jpeg_quality,
        help=f"JPEG quality of the frames (default: {FramesParams.jpeg_quality})",
    )
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes (default: 1)")


def main(args: argparse.Namespace) -> int:
    params = FramesParams(
        fps=args.fps,
        seconds=args.seconds,
        instant=args.instant,
        silent_audio_ok=args.silent_audio_ok,
        jpeg_quality=args.jpeg_quality,
    )
    videos = find_videos(args.videos)
    if not videos:
        raise SSPError(f"no video files found in {' '.join(map(str, args.videos))}")
    results = extract_videos(videos, args.out, params, workers=args.workers)
    skipped = sum(r.skipped for r in results)
    logger.info("frames: %d videos extracted, %d up to date, in %s", len(results) - skipped, skipped, args.out)
    return 0

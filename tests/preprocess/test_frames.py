"""`ssp frames` (ssp/preprocess/frames.py) and the shared stage helpers (ssp/preprocess/common.py).

Test videos are written here with PyAV: frame k of second s has its left half at grey
level 20 + 8 * (k within the second) and its right half at 30 + 60 * s, so a decoded
frame tells which instant it was taken at; the audio is a 440 Hz stereo tone at 44.1 kHz.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import soundfile as sf

from ssp.cli import main as ssp_main
from ssp.errors import DataError, SSPError
from ssp.preprocess.common import VideoOutputs, inputs_digest, is_up_to_date, run_per_video, stamp_path
from ssp.preprocess.frames import extract_video, find_videos

FPS = 25
TONE_HZ = 440.0


def write_video(
    path: Path,
    seconds: float = 3,
    fps: int = FPS,
    audio: bool = True,
    audio_seconds: float | None = None,
    codec: str = "libx264",
) -> Path:
    n_frames = int(round(seconds * fps))
    rate = 44_100
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        if audio:
            sound = container.add_stream("aac", rate=rate)
            sound.layout = "stereo"
        for k in range(n_frames):
            image = np.empty((48, 64, 3), np.uint8)
            image[:, :32] = 20 + 8 * (k % fps)
            image[:, 32:] = 30 + 60 * (k // fps)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio:
            t = np.arange(int(rate * (seconds if audio_seconds is None else audio_seconds))) / rate
            tone = (0.5 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
            for start in range(0, tone.size, 1024):
                chunk = np.ascontiguousarray(np.stack([tone[start : start + 1024]] * 2))
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = rate, start
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path


def frame_instant(jpg: Path) -> tuple[int, int]:
    """(second, frame index within the second) encoded in a test frame."""
    image = cv2.imread(str(jpg), cv2.IMREAD_GRAYSCALE)
    left, right = float(image[:, 4:28].mean()), float(image[:, 36:60].mean())
    return int(round((right - 30) / 60)), int(round((left - 20) / 8))


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * rate / samples.size)


def tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    return {
        "tone": write_video(d / "tone.mp4"),
        "silent": write_video(d / "silent.mp4", audio=False),
    }


def test_frames_at_avsbench_instant_and_16k_mono_audio(videos, tmp_path):
    result = extract_video(videos["tone"], tmp_path / "tone")
    # 3 s at 1 fps; AVSBench's instant: the frame on screen at i + 15/16 s = frame 23 of 25
    assert [p.name for p in result.frame_paths] == ["0.jpg", "1.jpg", "2.jpg"]
    assert all(p.is_file() for p in result.frame_paths)
    assert [frame_instant(p) for p in result.frame_paths] == [(0, 23), (1, 23), (2, 23)]
    assert result.frame_times_s == pytest.approx([0.92, 1.92, 2.92])
    assert result.video_fps == pytest.approx(25)
    assert not result.skipped and not result.silent_audio

    info = sf.info(str(result.audio_path))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16_000, 1, "PCM_16", 48_000)
    audio, rate = sf.read(str(result.audio_path))
    assert abs(dominant_hz(audio, rate) - TONE_HZ) < 2.0
    # downmix of two identical channels keeps the level (0.5), within codec error
    assert 0.4 < np.abs(audio[8000:40000]).max() < 0.6


def test_instant_and_seconds_params(videos, tmp_path):
    mid = extract_video(videos["tone"], tmp_path / "mid", instant=0.5)
    assert [frame_instant(p) for p in mid.frame_paths] == [(0, 12), (1, 12), (2, 12)]
    first = extract_video(videos["tone"], tmp_path / "first", instant=0.0, seconds=2)
    assert [frame_instant(p) for p in first.frame_paths] == [(0, 0), (1, 0)]
    assert sf.info(str(first.audio_path)).frames == 32_000
    two_per_s = extract_video(videos["tone"], tmp_path / "fps2", fps=2, instant=0.0)
    assert [frame_instant(p) for p in two_per_s.frame_paths] == [(0, 0), (0, 12), (1, 0), (1, 12), (2, 0), (2, 12)]


def test_rerun_does_nothing_and_param_change_redoes(videos, tmp_path):
    out = tmp_path / "tone"
    extract_video(videos["tone"], out)
    before = tree(out)
    again = extract_video(videos["tone"], out)
    assert again.skipped and tree(out) == before
    assert [p.name for p in again.frame_paths] == ["0.jpg", "1.jpg", "2.jpg"]

    shorter = extract_video(videos["tone"], out, seconds=2)  # other params: redone, stale frame 2 removed
    assert not shorter.skipped
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["0.jpg", "1.jpg"]
    assert sf.info(str(out / "audio.wav")).frames == 32_000


def test_video_without_audio_is_an_error_unless_silent_ok(videos, tmp_path):
    out = tmp_path / "silent"
    with pytest.raises(DataError, match="no audio track") as err:
        extract_video(videos["silent"], out)
    assert str(videos["silent"]) in str(err.value)
    assert not out.exists()

    result = extract_video(videos["silent"], out, silent_audio_ok=True)
    assert result.silent_audio and len(result.frame_paths) == 3
    audio, rate = sf.read(str(result.audio_path), dtype="int16")
    assert rate == 16_000 and audio.shape == (48_000,) and not audio.any()


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage, not a video" * 100], ids=["empty", "corrupt"])
def test_unreadable_video_is_an_error_naming_it(tmp_path, content):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(DataError) as err:
        extract_video(bad, tmp_path / "out" / "bad")
    assert str(bad) in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_short_video_or_short_audio_is_an_error(videos, tmp_path):
    with pytest.raises(DataError, match=r"video is 3\.00 s long, expected 5 s"):
        extract_video(videos["tone"], tmp_path / "a", seconds=5)
    short_audio = write_video(tmp_path / "short_audio.mp4", audio_seconds=1.5)
    with pytest.raises(DataError, match="audio track is 1.5"):
        extract_video(short_audio, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_reports_bad_videos_and_keeps_good_ones(videos, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("tone", "silent"):
        os.link(videos[name], folder / videos[name].name)
    (folder / "notes.txt").write_text("not a video: ignored when scanning a folder")
    out = tmp_path / "out"
    assert ssp_main(["frames", "--videos", str(folder), "--out", str(out), "--workers", "2"]) == 2
    message = capsys.readouterr().err
    assert "1 of 2 failed" in message and "silent.mp4" in message and "no audio track" in message
    assert sorted(p.name for p in out.iterdir()) == ["tone"]
    assert len(list((out / "tone" / "frames").glob("*.jpg"))) == 3
    # re-run with silence allowed: the good video is skipped, the other one now written
    before = tree(out / "tone")
    assert ssp_main(["frames", "--videos", str(folder), "--out", str(out), "--silent-audio-ok"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["silent", "tone"]
    assert tree(out / "tone") == before
    # silence no longer allowed: the silent substitute is redone, which fails and removes it
    assert ssp_main(["frames", "--videos", str(folder), "--out", str(out)]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["tone"]


def test_find_videos_rejects_name_clashes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "clip.mp4").write_bytes(b"x")
    (tmp_path / "b" / "clip.webm").write_bytes(b"x")
    with pytest.raises(SSPError, match="same name"):
        find_videos([tmp_path])
    assert find_videos([tmp_path / "a"]) == [(tmp_path / "a" / "clip.mp4").resolve()]


# --------------------------------------------------------------------------- common helpers


def test_stamp_tracks_inputs_params_and_outputs(tmp_path):
    source = tmp_path / "input.bin"
    source.write_bytes(b"abc")
    out_dir = tmp_path / "out" / "v2" / "video"
    fp = inputs_digest([source], {"threshold": 1})
    assert not is_up_to_date(out_dir, "stage", fp)
    with VideoOutputs(out_dir, "stage", fp) as outputs:
        with outputs.path("sub/a.txt") as tmp:
            tmp.write_text("a")
    assert is_up_to_date(out_dir, "stage", fp)
    assert not is_up_to_date(out_dir, "other-stage", fp)
    assert inputs_digest([source], {"threshold": 2}) != fp
    source.write_bytes(b"abcd")  # input changed
    assert inputs_digest([source], {"threshold": 1}) != fp
    (out_dir / "sub" / "a.txt").unlink()  # an output deleted by hand
    assert not is_up_to_date(out_dir, "stage", fp)


def test_failed_video_leaves_nothing_behind(tmp_path):
    shared = tmp_path / "out" / "v2"
    shared.mkdir(parents=True)
    (shared / "other_video").mkdir()
    with pytest.raises(RuntimeError):
        with VideoOutputs(shared / "video", "stage", "fp") as outputs:
            with outputs.path("frames/0.jpg") as tmp:
                tmp.write_bytes(b"jpg")
            raise RuntimeError("decoder died")
    assert sorted(p.name for p in shared.iterdir()) == ["other_video"]

    # a failed redo also drops the previous outputs of the stage, not other stages' files
    video = shared / "video"
    with VideoOutputs(video, "stage", "fp1") as outputs:
        with outputs.path("frames/0.jpg") as tmp:
            tmp.write_bytes(b"jpg")
    (video / "from_another_stage.npy").write_bytes(b"npy")
    with pytest.raises(RuntimeError):
        with VideoOutputs(video, "stage", "fp2"):
            raise RuntimeError("input is now corrupt")
    assert sorted(p.name for p in video.iterdir()) == ["from_another_stage.npy"]
    assert not stamp_path(video, "stage").exists()


def _fail_on_odd(x: int) -> int:
    if x % 2:
        raise DataError(f"video{x}.mp4", "broken")
    return x * 10


def test_run_per_video_collects_failures():
    assert run_per_video([0, 2, 4], _fail_on_odd) == [0, 20, 40]
    with pytest.raises(SSPError) as err:
        run_per_video([0, 1, 2, 3], _fail_on_odd, desc="test")
    message = str(err.value)
    assert "2 of 4 failed" in message and "video1.mp4: broken" in message and "video3.mp4: broken" in message

"""ssp/preprocess/logmel.py: the `ssp logmel` stage (log-mel patches per video, up-to-date
stamps, per-video failures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ssp.cli import main as ssp_main
from ssp.data.audio import logmel_from_wav
from ssp.data.avsbench import VideoRecord, load_records
from ssp.errors import SSPError
from ssp.preprocess.logmel import LogMelStageParams, compute_logmel
from tests.avsbench_fixtures import SAMPLE_RATE as SR
from tests.avsbench_fixtures import tone, write_semantic_dataset


def make_record(root: Path, uid: str, seconds: float, num_frames: int) -> VideoRecord:
    rel_dir = f"v2/{uid}"
    folder = root / rel_dir
    (folder / "frames").mkdir(parents=True)
    audio = folder / "audio.wav"
    sf.write(audio, tone(400 + 100 * num_frames, seconds), SR, subtype="PCM_16")
    return VideoRecord(
        uid=uid,
        subset="v2",
        split="train",
        category="dog",
        root=root,
        rel_dir=rel_dir,
        frame_paths=[folder / "frames" / f"{i}.jpg" for i in range(num_frames)],
        audio_path=audio,
        mask_paths=[None] * num_frames,
    )


def test_logmel_stage_writes_skips_and_reports(tmp_path):
    root, out = tmp_path / "data", tmp_path / "features"
    good = make_record(root, "good", 5.0, 5)
    short = make_record(root, "short", 2.0, 5)
    with pytest.raises(SSPError) as err:
        compute_logmel([good, short], out)
    assert "1 of 2 failed" in str(err.value) and str(short.audio_path) in str(err.value)
    assert not (out / "v2" / "short").exists()

    features = np.load(out / "v2" / "good" / "logmel.npy")
    assert features.shape == (5, 96, 64) and features.dtype == np.float32
    np.testing.assert_array_equal(features, logmel_from_wav(good.audio_path, 5))

    mtime = (out / "v2" / "good" / "logmel.npy").stat().st_mtime_ns
    assert compute_logmel([good], out) == [False]  # up to date: nothing done
    assert (out / "v2" / "good" / "logmel.npy").stat().st_mtime_ns == mtime

    assert compute_logmel([good, short], out, LogMelStageParams(pad_short_audio=True)) == [True, True]
    assert np.load(out / "v2" / "short" / "logmel.npy").shape == (5, 96, 64)


def test_ssp_logmel_cli_on_an_avsbench_dataset(tmp_path):
    root = write_semantic_dataset(
        tmp_path / "avsbench",
        videos=[
            {"uid": "s4_dog", "subset": "v1s", "split": "train", "objects": ["dog"]},
            {"uid": "v2_car", "subset": "v2", "split": "val", "objects": ["car"]},
        ],
    )
    out = tmp_path / "logmel"
    assert ssp_main(["logmel", str(root), "--out", str(out)]) == 0
    records = load_records(root)
    files = [out / r.rel_dir / "logmel.npy" for r in records]
    assert [np.load(f).shape for f in files] == [(r.num_frames, 96, 64) for r in records] == [(5, 96, 64), (10, 96, 64)]
    mtimes = [f.stat().st_mtime_ns for f in files]
    assert ssp_main(["logmel", str(root), "--out", str(out)]) == 0
    assert [f.stat().st_mtime_ns for f in files] == mtimes

"""`ssp predict` on a real clip that is not from the generated benchmark: scikit-image's
astronaut photograph panned by a moving camera, written as H.264 with a 440 Hz AAC tone
muxed in. Every output is checked, the overlay video is read back with PyAV, the
registry path (--model / the champion default) is exercised, and bad inputs end with a
clear message and no output."""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from ssp.errors import DataError, SSPError
from ssp.eval.predict import add_arguments, main, predict_video
from ssp.models import SSPConfig, SSPModel
from ssp.models.checkpoint import save_weights

SECONDS, SOURCE_FPS, HEIGHT, WIDTH = 3, 10, 72, 96
NAMES = ["background", "dog", "car", "man", "piano"]


def write_clip(path, audio: bool = True, sample_rate: int = 22_050) -> None:
    """A panning crop of skimage.data.astronaut() (+ a 440 Hz tone), 3 s at 10 fps."""
    from skimage import data

    image = data.astronaut()
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=SOURCE_FPS)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if audio:  # every stream must exist before the first packet is muxed
            stream = container.add_stream("aac", rate=sample_rate)
            stream.layout = "mono"
        frames = SECONDS * SOURCE_FPS
        for i in range(frames):
            x = 4 * i  # the camera pans right by 4 px per frame (on the half-size image)
            crop = np.ascontiguousarray(image[80 : 80 + 2 * HEIGHT : 2, 2 * x : 2 * x + 2 * WIDTH : 2])
            frame = av.VideoFrame.from_ndarray(crop, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, SOURCE_FPS)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio:
            t = np.arange(SECONDS * sample_rate) / sample_rate
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            for start in range(0, tone.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(tone[:, start : start + 1024]), format="fltp", layout="mono"
                )
                frame.sample_rate, frame.pts = sample_rate, start
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict-inputs")
    write_clip(folder / "astronaut.mp4")
    write_clip(folder / "silent.mp4", audio=False)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("this is not a video\n")
    torch.manual_seed(0)
    save_weights(folder / "s1.safetensors", SSPModel(SSPConfig.tiny(1, num_points=64)), {"epoch": 1})
    save_weights(
        folder / "s2.safetensors",
        SSPModel(SSPConfig.tiny(2, num_points=64, num_classes=len(NAMES), pre_mask=True)),
        {"epoch": 1},
    )
    save_weights(folder / "s1_other.safetensors", SSPModel(SSPConfig.tiny(1, num_points=64)), {"epoch": 1})
    return folder


def read_back(path):
    """(video frames, video duration s, audio samples, audio rate, audio RMS) of an mp4."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        duration = float(stream.duration * stream.time_base)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        chunks = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
        rate = container.streams.audio[0].rate
    audio = np.concatenate(chunks)
    return frames, duration, audio.size, rate, float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))


def test_predict_writes_every_output(inputs, tmp_path):
    out = tmp_path / "out"
    result = predict_video(
        inputs / "astronaut.mp4",
        out,
        checkpoint=inputs / "s2.safetensors",
        stage1_checkpoint=inputs / "s1.safetensors",
        class_names=NAMES,
        progress=False,
    )
    assert result.num_frames == SECONDS and result.frame_size == (HEIGHT, WIDTH)
    assert sorted(p.name for p in out.iterdir()) == ["masks", "overlay.mp4", "overlays", "predictions.json"]
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["frames"] == SECONDS and summary["prompts"] == {"backend": "none", "model": "", "a1": "", "a2": []}
    assert summary["models"]["stage2"]["stage"] == 2 and summary["models"]["stage1"]["stage"] == 1
    for i, frame in enumerate(summary["per_frame"]):
        mask = np.asarray(Image.open(out / "masks" / f"{i}.png"))
        assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == np.uint8 and mask.max() < len(NAMES)
        # predictions.json describes exactly this mask: classes, names, pixel shares
        present = {c["index"]: c for c in frame["classes"]}
        assert sorted(present) == sorted(np.unique(mask).tolist())
        for index, entry in present.items():
            assert entry["name"] == NAMES[index]
            assert entry["pixel_share"] == pytest.approx((mask == index).mean(), abs=1e-6)
            assert 0 < entry["mean_confidence"] <= 1
        overlay = np.asarray(Image.open(out / "overlays" / f"{i}.png"))
        assert overlay.shape[1] == WIDTH and overlay.shape[0] > HEIGHT  # the legend is below the frame

    frames, duration, samples, rate, rms = read_back(out / "overlay.mp4")
    assert len(frames) == SECONDS and duration == pytest.approx(SECONDS, abs=1e-6)
    assert frames[0].shape[1] == WIDTH and frames[0].shape[0] >= HEIGHT
    assert rate == 16_000 and abs(samples - SECONDS * rate) <= 2048  # AAC frames of 1024 samples
    assert rms == pytest.approx(0.3 / np.sqrt(2), rel=0.1)  # the clip's 440 Hz tone, not silence
    assert not list(tmp_path.glob(".out*"))  # no build folder left


def test_predict_by_registered_champion(inputs, tmp_path, mlflow_store, monkeypatch):
    """The champion's stepping stones are the stage-1 model of its own dataset and
    profile (stored with it), not the plain stage-1 champion of another dataset."""
    from ssp.ops.registry import register_checkpoint

    monkeypatch.setenv("SSP_MODEL_CACHE", str(tmp_path / "cache"))
    key = {"data_fingerprint": "d1d1d1d1d1", "profile": "demo"}
    register_checkpoint(None, inputs / "s1.safetensors", 1, 0.5, **key)
    register_checkpoint(None, inputs / "s2.safetensors", 2, 0.4, class_names=NAMES, **key)
    # a better stage-1 model of another dataset, registered last: the plain ssp-avs@champion
    register_checkpoint(None, inputs / "s1_other.safetensors", 1, 0.9, data_fingerprint="e2e2e2e2e2", profile="demo")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    params = tmp_path / "params.yaml"
    params.write_text(
        "flow:\n  method: dis\n  rule: fixed\n  value: 0.5\n  min_magnitude: 0.5\nprompts:\n  backend: none\n"
    )
    for extra in (["--model", "models:/ssp-avss@champion"], []):  # explicit alias, then the default
        out = tmp_path / f"out{len(extra)}"
        args = parser.parse_args(
            [
                str(inputs / "astronaut.mp4"),
                "--out",
                str(out),
                "--params",
                str(params),
                "--device",
                "cpu",
                "--no-progress",
                *extra,
            ]
        )
        assert main(args) == 0
        summary = json.loads((out / "predictions.json").read_text())
        assert summary["models"]["stage2"]["name"] == "ssp-avss" and summary["models"]["stage2"]["version"] == 1
        stage1 = summary["models"]["stage1"]
        assert stage1["kind"] == "stored with" and stage1["uri"] == summary["models"]["stage2"]["uri"]
        assert Path(stage1["checkpoint"]).read_bytes() == (inputs / "s1.safetensors").read_bytes()
        assert summary["class_names"] == NAMES  # names registered with the model
        assert len(list((out / "masks").glob("*.png"))) == SECONDS


def test_stage1_champion_resolved_for_the_stage2_models_key(inputs, tmp_path, mlflow_store, monkeypatch):
    """A stage-2 version stored without a stage-1 model gets the stage-1 champion of its key."""
    from ssp.eval.predict import load_models
    from ssp.ops.registry import register_checkpoint

    monkeypatch.setenv("SSP_MODEL_CACHE", str(tmp_path / "cache"))
    key = {"data_fingerprint": "f3f3f3f3f3", "profile": "paper"}
    register_checkpoint(None, inputs / "s2.safetensors", 2, 0.4, class_names=NAMES, **key)  # no stage-1 yet
    with pytest.raises(SSPError, match="ssp-avs@champion-paper-f3f3f3f3: not found"):
        load_models(None, None, "models:/ssp-avss@champion", None, "cpu")
    register_checkpoint(None, inputs / "s1.safetensors", 1, 0.5, **key)
    register_checkpoint(None, inputs / "s1_other.safetensors", 1, 0.9, data_fingerprint="0a0a0a0a0a", profile="paper")
    stage1, main = load_models(None, None, "models:/ssp-avss@champion", None, "cpu")
    assert main.source["profile"] == "paper" and main.source["data_fingerprint"] == "f3f3f3f3f3"
    assert stage1.source["uri"] == "models:/ssp-avs@champion-paper-f3f3f3f3" and stage1.source["version"] == 1


@pytest.mark.parametrize(
    "name, message",
    [
        ("silent.mp4", "no audio track"),
        ("empty.mp4", "empty"),
        ("notes.mp4", "cannot open as a video"),
        ("missing.mp4", "missing"),
    ],
)
def test_bad_inputs_fail_clearly_and_leave_no_output(inputs, tmp_path, name, message):
    out = tmp_path / "out"
    with pytest.raises(DataError, match=message) as err:
        predict_video(
            inputs / name,
            out,
            checkpoint=inputs / "s2.safetensors",
            stage1_checkpoint=inputs / "s1.safetensors",
            progress=False,
        )
    assert name in str(err.value)  # the message names the file
    assert list(tmp_path.iterdir()) == []  # no DIR, no partial build folder


def test_cli_error_is_one_line_and_an_old_output_survives(inputs, tmp_path, capsys):
    from ssp.cli import main as cli_main

    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.json").write_text("{}")
    code = cli_main(
        [
            "predict",
            str(inputs / "empty.mp4"),
            "--out",
            str(out),
            "--checkpoint",
            str(inputs / "s2.safetensors"),
            "--no-progress",
        ]
    )
    assert code == 2
    assert "empty.mp4: video file is empty (0 bytes)" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "predictions.json").read_text() == "{}"


def test_silent_audio_ok_and_a_stage1_model_alone(inputs, tmp_path):
    out = tmp_path / "out"
    predict_video(
        inputs / "silent.mp4",
        out,
        checkpoint=inputs / "s1.safetensors",
        silent_audio_ok=True,
        seconds=2,
        progress=False,
    )
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["silent_audio"] and summary["frames"] == 2 and summary["class_names"][1] == "sounding object"
    assert list(summary["models"]) == ["stage1"]
    frames, duration, _, _, rms = read_back(out / "overlay.mp4")
    assert len(frames) == 2 and duration == pytest.approx(2) and rms == 0.0
    with pytest.raises(SSPError, match="either --checkpoint or --model"):
        predict_video(
            inputs / "astronaut.mp4",
            tmp_path / "x",
            checkpoint=inputs / "s1.safetensors",
            model_uri="models:/ssp-avss@champion",
            progress=False,
        )


def test_frame_chunks_give_the_same_segmentation(inputs):
    from ssp.eval.predict import _load, run_models

    stage1 = _load(inputs / "s1.safetensors", "cpu", {})
    stage2 = _load(inputs / "s2.safetensors", "cpu", {})
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 80, 3), dtype=np.uint8) for _ in range(3)]
    logmel = rng.normal(size=(3, 96, 64)).astype(np.float32)
    flow = [rng.random((48, 80)) > 0.5 for _ in range(3)]
    prompts = {"a1": "", "a2": []}
    whole = run_models(stage1, stage2, frames, logmel, flow, prompts, "cpu", batch_frames=16)
    chunks = run_models(stage1, stage2, frames, logmel, flow, prompts, "cpu", batch_frames=2)
    for (classes_a, conf_a), (classes_b, conf_b) in zip(whole, chunks, strict=True):
        assert classes_a.shape == (48, 80)
        np.testing.assert_array_equal(classes_a, classes_b)
        np.testing.assert_allclose(conf_a, conf_b, atol=1e-5)

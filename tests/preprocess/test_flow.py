"""Optical flow stage: estimators, eq. (1), threshold rules, the `ssp flow` command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ssp.cli import main as ssp_main
from ssp.data.avsbench import load_records
from ssp.errors import DataError, SSPError
from ssp.params import FlowParams
from ssp.preprocess.flow import (
    FlowStageConfig,
    build_estimator,
    estimate_flow,
    flow_mask,
    flow_masks,
    per_frame_magnitudes,
    read_magnitude,
    video_magnitudes,
)
from ssp.preprocess.flow_networks import PerceiverFlow, RAFTFlow, _neighbourhood_features
from tests.avsbench_fixtures import write_semantic_dataset
from tests.standins import hub_cache_entry, perceiver_flow_standin


def textured_canvas(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random texture (RGB uint8): enough structure everywhere for flow to lock on."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(height, width, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), sigmaX=2.0)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * 255).astype(np.uint8)


def shifted_pair(height: int, width: int, dx: int, dy: int, seed: int = 0):
    """Two crops of one texture such that content at (x, y) in a is at (x+dx, y+dy) in b."""
    margin = 16
    canvas = textured_canvas(height + 2 * margin, width + 2 * margin, seed)
    a = canvas[margin : margin + height, margin : margin + width]
    b = canvas[margin - dy : margin - dy + height, margin - dx : margin - dx + width]
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


# --------------------------------------------------------------------------- estimators


@pytest.mark.parametrize("preset", ["fast", "medium"])
def test_dis_recovers_a_known_translation(preset):
    a, b = shifted_pair(96, 128, dx=3, dy=-2)
    flow = estimate_flow(a, b, method="dis", preset=preset)
    assert flow.shape == (96, 128, 2) and flow.dtype == np.float32
    inner = flow[16:-16, 16:-16]  # pixels that stay inside the frame
    assert abs(np.median(inner[..., 0]) - 3.0) < 0.5
    assert abs(np.median(inner[..., 1]) + 2.0) < 0.5
    # and the reverse pair gives the opposite motion
    back = estimate_flow(b, a, method="dis", preset="medium")
    assert abs(np.median(back[16:-16, 16:-16, 0]) + 3.0) < 0.5


def test_estimate_flow_rejects_bad_input_and_options():
    a, b = shifted_pair(32, 32, 1, 0)
    with pytest.raises(ValueError, match="RGB uint8"):
        estimate_flow(a.astype(np.float32), b, method="dis", preset="medium")
    with pytest.raises(ValueError, match="differ in size"):
        estimate_flow(a, b[:16], method="dis", preset="medium")
    with pytest.raises(SSPError, match="unknown flow method"):
        estimate_flow(a, b, method="farneback")
    with pytest.raises(SSPError, match="no option"):
        estimate_flow(a, b, method="dis", preset="medium", weights="x")
    with pytest.raises(SSPError, match="preset"):
        estimate_flow(a, b, method="dis", preset="slow")


@pytest.fixture(scope="module")
def raft_small_weights(tmp_path_factory) -> Path:
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("raft") / "raft_small_random.pth"
    torch.save(raft_small(weights=None).state_dict(), path)
    return path


def test_raft_plumbing_with_random_local_weights(raft_small_weights):
    # 60×90 is neither a multiple of 8 nor RAFT's 128-pixel minimum: exercises the padding.
    a, b = shifted_pair(60, 90, dx=2, dy=1)
    flow = estimate_flow(a, b, method="raft", weights=str(raft_small_weights), num_flow_updates=2, device="cpu")
    assert flow.shape == (60, 90, 2) and flow.dtype == np.float32
    assert np.isfinite(flow).all()
    estimator = build_estimator("raft", weights=raft_small_weights, num_flow_updates=2, device="cpu")
    assert estimator.variant == "small"  # picked from the weights' layer shapes
    # two pairs in one call = the two pairs one by one (batching does not mix pairs)
    c, d = shifted_pair(60, 90, dx=-1, dy=0, seed=1)
    both = estimator([a, c], [b, d])
    np.testing.assert_allclose(both[0], flow, atol=1e-4)
    assert both[1].shape == (60, 90, 2)


def test_raft_weights_errors(tmp_path, raft_small_weights):
    a, b = shifted_pair(32, 32, 1, 0)
    with pytest.raises(SSPError, match="needs weights"):
        estimate_flow(a, b, method="raft")
    missing = tmp_path / "nope.pth"
    with pytest.raises(DataError, match="weights not found") as err:
        estimate_flow(a, b, method="raft", weights=str(missing))
    assert str(missing) in str(err.value)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(DataError, match="not a torchvision RAFT state dict"):
        estimate_flow(a, b, method="raft", weights=str(wrong))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="cannot read weights"):
        estimate_flow(a, b, method="raft", weights=str(garbage))
    with pytest.raises(DataError, match="not a torchvision RAFT"):
        estimate_flow(a, b, method="raft", weights=str(raft_small_weights), variant="large")


@pytest.fixture(scope="module")
def tiny_perceiver_dir(tmp_path_factory) -> Path:
    from transformers import PerceiverForOpticalFlow

    from tests.standins import reduced_perceiver_flow_config

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("perceiver") / "tiny-perceiver-flow"
    PerceiverForOpticalFlow(reduced_perceiver_flow_config()).save_pretrained(path)
    return path


@pytest.mark.parametrize("size", [(40, 50), (16, 20)])  # tiled with overlap / smaller than a tile
def test_perceiver_plumbing_with_random_local_weights(tiny_perceiver_dir, size):
    a, b = shifted_pair(*size, dx=1, dy=1)
    flow = estimate_flow(a, b, method="perceiver", weights=str(tiny_perceiver_dir), device="cpu")
    assert flow.shape == (*size, 2) and flow.dtype == np.float32
    assert np.isfinite(flow).all()


def test_perceiver_tiles_cover_the_frame_and_blend_to_the_model_output(tiny_perceiver_dir):
    estimator = build_estimator("perceiver", weights=tiny_perceiver_dir, device="cpu", min_overlap=8)
    assert isinstance(estimator, PerceiverFlow) and estimator.tile == (24, 32)
    origins = estimator.tile_origins(40, 70)
    covered = np.zeros((40, 70), bool)
    for y, x in origins:
        assert 0 <= y <= 40 - 24 and 0 <= x <= 70 - 32
        covered[y : y + 24, x : x + 32] = True
    assert covered.all()
    assert sorted({x for _, x in origins}) == [0, 24, 38]  # step tile - overlap, last flush right

    # A model that predicts the same vector everywhere: blending must return it exactly,
    # times the flow scale (the released model predicts flow / 20).
    class ConstantModel(torch.nn.Module):
        def forward(self, inputs):
            logits = torch.ones(inputs.shape[0], *inputs.shape[-2:], 2) * torch.tensor([0.1, -0.25])
            return type("Output", (), {"logits": logits})()

    estimator = PerceiverFlow.__new__(PerceiverFlow)
    estimator.__dict__.update(
        tile=(24, 32), min_overlap=8, flow_scale=20.0, batch_size=2, device="cpu", model=ConstantModel()
    )
    a, b = shifted_pair(40, 70, 0, 0)
    (flow,) = estimator([a], [b])
    np.testing.assert_allclose(flow[..., 0], 2.0, rtol=1e-6)
    np.testing.assert_allclose(flow[..., 1], -5.0, rtol=1e-6)


def test_perceiver_input_is_the_3x3_neighbourhood_of_both_frames():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 5, 6, 3), dtype=np.uint8)
    features = _neighbourhood_features(frames, 5, 6).numpy()
    assert features.shape == (2, 27, 5, 6)
    unit = frames.astype(np.float32) / 127.5 - 1.0
    padded = np.pad(unit, ((0, 0), (1, 1), (1, 1), (0, 0)))  # zeros outside the frame
    for t in range(2):
        for y in range(5):
            for x in range(6):
                # neighbourhood-major, then RGB: index (dy * 3 + dx) * 3 + c
                expected = padded[t, y : y + 3, x : x + 3, :].reshape(27)
                np.testing.assert_allclose(features[t, :, y, x], expected, rtol=1e-6, atol=1e-6)


def test_perceiver_weights_errors(tmp_path, tiny_perceiver_dir):
    a, b = shifted_pair(24, 32, 1, 0)
    with pytest.raises(SSPError, match="needs weights"):
        estimate_flow(a, b, method="perceiver")
    with pytest.raises(DataError, match="weights not found"):
        estimate_flow(a, b, method="perceiver", weights=str(tmp_path / "absent"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no config.json"):
        estimate_flow(a, b, method="perceiver", weights=str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_perceiver_dir / "config.json").read_text())
    # a config without weights: nothing to load, must not silently run a random model
    with pytest.raises(DataError, match=str(broken)):
        estimate_flow(a, b, method="perceiver", weights=str(broken))


# --------------------------------------------------------------------------- eq. (1)


def constant_flow(dx: float, dy: float, shape=(3, 4)) -> np.ndarray:
    flow = np.zeros((*shape, 2), np.float32)
    flow[..., 0], flow[..., 1] = dx, dy
    return flow


def test_eq1_first_mean_of_adjacent_pairs_last():
    # |O^1| = 5, |O^2| = 1, |O^3| = 10 → frames: 5, (5+1)/2, (1+10)/2, 10
    maps = per_frame_magnitudes([constant_flow(3, 4), constant_flow(0, -1), constant_flow(6, 8)])
    assert len(maps) == 4
    for got, expected in zip(maps, [5.0, 3.0, 5.5, 10.0]):
        assert got.shape == (3, 4) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_eq1_averages_magnitudes_not_vectors():
    # back and forth: the vector mean would be 0, the magnitude mean is 2
    maps = per_frame_magnitudes([constant_flow(2, 0), constant_flow(-2, 0)])
    np.testing.assert_allclose(maps[1], 2.0)


def test_eq1_spatially_varying_and_short_videos():
    o1 = np.zeros((2, 2, 2), np.float32)
    o1[0, 0] = (3, 4)  # only the top-left pixel moves in the first pair
    o2 = np.zeros((2, 2, 2), np.float32)
    o2[1, 1] = (0, 2)  # only the bottom-right in the second
    first, middle, last = per_frame_magnitudes([o1, o2])
    np.testing.assert_allclose(first, [[5, 0], [0, 0]])
    np.testing.assert_allclose(middle, [[2.5, 0], [0, 1]])
    np.testing.assert_allclose(last, [[0, 0], [0, 2]])
    two = per_frame_magnitudes([o1])  # 2 frames, one pair: both frames get |O^1|
    assert len(two) == 2 and all(np.array_equal(m, [[5, 0], [0, 0]]) for m in two)
    assert per_frame_magnitudes([]) == []


# --------------------------------------------------------------------------- thresholds

MAGNITUDE = np.array([[0.0, 0.2, 1.0, 2.0], [3.0, 4.0, 5.0, 10.0]], np.float32)


def test_fixed_threshold_in_pixels():
    mask = flow_mask(MAGNITUDE, FlowParams(rule="fixed", value=2.0, min_magnitude=0.0))
    assert mask.tolist() == [[False, False, False, False], [True, True, True, True]]  # strictly above


def test_fraction_of_max_threshold():
    mask = flow_mask(MAGNITUDE, FlowParams(rule="fraction_of_max", value=0.45, min_magnitude=0.0))  # > 4.5 px
    assert mask.tolist() == [[False, False, False, False], [False, False, True, True]]


def test_otsu_threshold_splits_two_populations():
    magnitude = np.full((10, 10), 0.3, np.float32)
    magnitude[:, :3] = 0.1
    magnitude[2:6, 4:8] = 6.0  # the moving object
    magnitude[7, 8] = 7.0
    mask = flow_mask(magnitude, FlowParams(rule="otsu", min_magnitude=0.0))
    assert np.array_equal(mask, magnitude > 5.0)


def test_min_magnitude_keeps_still_frames_empty_and_cleanup_removes_specks():
    still = np.array([[0.1, 0.2], [0.3, 0.4]], np.float32)  # estimator noise only
    # min_magnitude: the params' default (1 px)
    assert not flow_mask(still, FlowParams(rule="otsu")).any()
    assert not flow_mask(still, FlowParams(rule="fraction_of_max", value=0.5)).any()
    assert not flow_mask(np.zeros((4, 4), np.float32), FlowParams(rule="otsu", min_magnitude=0.0)).any()
    magnitude = np.zeros((12, 12), np.float32)
    magnitude[2:7, 2:7] = 5.0  # an object
    magnitude[10, 10] = 5.0  # a speck
    raw = flow_mask(magnitude, FlowParams(rule="fixed", value=1.0))
    cleaned = flow_mask(magnitude, FlowParams(rule="fixed", value=1.0, cleanup=3))
    assert raw[10, 10] and not cleaned[10, 10]
    expected = np.zeros((12, 12), bool)
    expected[2:7, 2:7] = True
    assert np.array_equal(cleaned, expected)


@pytest.mark.parametrize(
    "rule, value",
    [("fixed", None), ("fixed", -1.0), ("fraction_of_max", 1.5), ("fraction_of_max", 0.0), ("median", 1.0)],
)
def test_bad_threshold_rules_are_user_errors(rule, value):
    with pytest.raises(SSPError):
        FlowStageConfig(FlowParams(rule=rule, value=value))


def test_flow_masks_of_frames_are_the_stage_masks():
    a, b = shifted_pair(96, 128, dx=4, dy=0)
    flow = FlowParams(rule="fixed", value=2.0)
    masks = flow_masks([a, b], flow)
    expected = [flow_mask(m, flow) for m in video_magnitudes([a, b], FlowStageConfig(flow))]
    assert len(masks) == 2 and all(m.dtype == bool and m.shape == (96, 128) for m in masks)
    assert all(np.array_equal(m, e) for m, e in zip(masks, expected))
    assert masks[0][16:-16, 16:-16].mean() > 0.9  # everything moves 4 px
    with pytest.raises(SSPError, match="unknown flow method"):
        flow_masks([a, b], FlowParams(method="farneback"))


def test_flow_at_another_size_is_scaled_back_to_frame_pixels():
    a, b = shifted_pair(96, 128, dx=4, dy=0)
    native = video_magnitudes([a, b], FlowStageConfig())
    half = video_magnitudes([a, b], FlowStageConfig(FlowParams(size=64)))  # 2 px in 64×64 → 4 px in 128
    for maps in (native, half):
        assert len(maps) == 2 and maps[0].shape == (96, 128)
        assert abs(np.median(maps[0][16:-16, 16:-16]) - 4.0) < 0.5
    assert video_magnitudes([a], FlowStageConfig())[0].shape == (96, 128)  # one frame: zero map
    assert not video_magnitudes([a], FlowStageConfig())[0].any()


# --------------------------------------------------------------------------- the stage

SQUARE = (slice(24, 48), slice(10, 34))  # where the moving square starts (rows, cols)
PERCEIVER_REPO = "deepmind/optical-flow-perceiver"


def write_flow_dataset(root: Path) -> dict[str, Path]:
    """Two videos in the AVSBench-semantic layout: a textured square sliding right by
    4 px per frame over a still textured background, and a video where nothing moves."""
    write_semantic_dataset(
        root,
        videos=[
            {"uid": "moving", "subset": "v1m", "split": "train"},
            {"uid": "still", "subset": "v1s", "split": "test"},
        ],
        size=(72, 96),
    )
    dirs = {r.uid: r.root / r.rel_dir for r in load_records(root)}
    background = textured_canvas(72, 96, seed=1)
    square = textured_canvas(24, 24, seed=2)
    for i in range(5):
        frame = background.copy()
        frame[SQUARE[0], SQUARE[1].start + 4 * i : SQUARE[1].stop + 4 * i] = square
        cv2.imwrite(str(dirs["moving"] / "frames" / f"{i}.jpg"), frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 98])
        cv2.imwrite(str(dirs["still"] / "frames" / f"{i}.jpg"), background[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 98])
    return dirs


def output_files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("*")) if p.is_file()}


def redone(out: Path, before: dict[str, int]) -> int:
    """Videos whose stamp was (re)written since ``before`` (an :func:`output_files`)."""
    stamps = {k: v for k, v in output_files(out).items() if k.endswith("_done_flow.json")}
    return sum(before.get(k) != v for k, v in stamps.items())


def flow_cli(tmp_path: Path, *args: str) -> int:
    """``ssp flow DATA --out FLOW`` with the params defaults (no params file) and ``args``."""
    return ssp_main(
        [
            "flow",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "flow"),
            "--params",
            os.devnull,
            *args,
        ]
    )


def test_flow_stage_writes_masks_and_magnitudes_then_skips(tmp_path):
    dirs = write_flow_dataset(tmp_path / "data")
    out = tmp_path / "flow"
    assert flow_cli(tmp_path, "--workers", "2") == 0

    for uid, video_dir in dirs.items():
        video_out = out / video_dir.relative_to(tmp_path / "data")
        for i in range(5):
            mask = cv2.imread(str(video_out / "mask" / f"{i}.png"), cv2.IMREAD_UNCHANGED)
            magnitude = read_magnitude(video_out / "magnitude" / f"{i}.png")
            assert mask.dtype == np.uint8 and mask.shape == (72, 96)
            assert set(np.unique(mask)) <= {0, 255}
            assert magnitude.shape == (72, 96)
            if uid == "still":
                assert not mask.any() and magnitude.max() < 0.5
            else:
                # the square (where it is in this frame) moves at 4 px/frame and is masked;
                # the far corner of the background is not
                cols = slice(SQUARE[1].start + 4 * i + 4, SQUARE[1].stop + 4 * i - 4)
                inside = magnitude[28:44, cols]
                assert abs(np.median(inside) - 4.0) < 1.0
                assert (mask[28:44, cols] == 255).mean() > 0.9
                assert not mask[:12, 70:].any()
        stamp = json.loads((video_out / "_done_flow.json").read_text())
        assert stamp["params"]["method"] == "dis" and stamp["params"]["preset"] == "medium"

    summary = json.loads((out / "flow_summary.json").read_text())
    assert (summary["videos"], summary["frames"]) == (2, 10)
    assert "processed" not in summary  # run counts are logged, not written (see the module doc)
    assert 0.0 < summary["mean_mask_coverage"] < 0.25

    before = output_files(out)
    assert flow_cli(tmp_path, "--workers", "1") == 0
    after = output_files(out)
    assert json.loads((out / "flow_summary.json").read_text()) == summary  # the same content
    del before["flow_summary.json"], after["flow_summary.json"]
    assert after == before  # nothing rewritten

    # the same params from a params file: still up to date; a parameter that changes the
    # masks redoes the videos (an integer for a float knob counts as that float)
    params_file = tmp_path / "params.yaml"
    params_file.write_text("flow:\n  rule: otsu\n  min_magnitude: 1\n")
    assert ssp_main(["flow", str(tmp_path / "data"), "--out", str(out), "--params", str(params_file)]) == 0
    assert redone(out, before) == 0
    assert flow_cli(tmp_path, "--workers", "1", "--set", "flow.rule=fixed", "--set", "flow.value=2") == 0
    assert redone(out, before) == 2
    assert json.loads((out / "flow_summary.json").read_text())["params"]["value"] == 2.0


def test_flow_stage_corrupt_frame_names_the_file_and_writes_nothing_for_that_video(tmp_path, capsys):
    dirs = write_flow_dataset(tmp_path / "data")
    bad = dirs["moving"] / "frames" / "2.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    out = tmp_path / "flow"
    assert flow_cli(tmp_path, "--workers", "1") == 2
    err = capsys.readouterr().err
    assert "moving" in err and "2.jpg" in err
    assert not (out / dirs["moving"].relative_to(tmp_path / "data")).exists()
    still_out = out / dirs["still"].relative_to(tmp_path / "data")
    assert len(list((still_out / "mask").glob("*.png"))) == 5  # the good video is written
    assert not (out / "flow_summary.json").exists()


def test_flow_stage_model_methods_fail_early_without_weights(tmp_path, capsys):
    write_flow_dataset(tmp_path / "data")
    out = tmp_path / "flow"
    assert flow_cli(tmp_path, "--set", "flow.method=raft") == 2
    assert "needs weights: set flow.weights" in capsys.readouterr().err
    assert flow_cli(tmp_path, "--set", "flow.method=perceiver", "--set", "flow.weights=/nowhere/perceiver") == 2
    assert "flow.weights: weights not found" in capsys.readouterr().err
    assert flow_cli(tmp_path, "--set", "flow.rule=fraction_of_max") == 2  # value 0: not a fraction
    assert "needs 0 < value" in capsys.readouterr().err
    assert not out.exists()


def test_former_flags_name_the_param_that_replaces_them(tmp_path, capsys):
    for flag, expected in [(["--size", "64"], "--set flow.size=64"), (["--device", "cpu"], "--set flow.device=cpu")]:
        with pytest.raises(SystemExit) as err:
            flow_cli(tmp_path, *flag)
        assert err.value.code == 2 and expected in capsys.readouterr().err


# --------------------------------------------------------------------------- weights by hub id


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, read offline."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_perceiver_weights_by_hub_id_offline(hub_cache):
    spec = perceiver_flow_standin(hub_cache)
    assert spec.startswith("deepmind/optical-flow-perceiver@")
    a, b = shifted_pair(30, 40, dx=1, dy=0)
    by_id = estimate_flow(a, b, method="perceiver", weights=spec, device="cpu")
    config = FlowStageConfig(FlowParams(method="perceiver", weights=spec))
    snapshot = config.weights.path
    assert snapshot.name == spec.split("@")[1] and snapshot.parent.name == "snapshots"
    assert set(config.weights.files) == {"config.json", "model.safetensors"}
    by_path = estimate_flow(a, b, method="perceiver", weights=str(snapshot), device="cpu")
    np.testing.assert_array_equal(by_id, by_path)  # the hub id is that folder
    # a revision not in the cache, and a repository without safetensors, are named
    with pytest.raises(DataError, match="not in the local Hugging Face cache"):
        FlowStageConfig(FlowParams(method="perceiver", weights="deepmind/optical-flow-perceiver@" + "0" * 40))
    pickled_only = hub_cache_entry(hub_cache, "someone/perceiver-bin", lambda f: (f / "config.json").write_text("{}"))
    with pytest.raises(DataError, match=r"no \*\.safetensors at this revision"):
        FlowStageConfig(FlowParams(method="perceiver", weights=pickled_only))


def test_raft_weights_from_a_hub_repository(hub_cache, raft_small_weights):
    from torchvision.models.optical_flow import raft_large

    one = hub_cache_entry(
        hub_cache, "someone/raft", lambda f: (f / "raft_small.pth").write_bytes(raft_small_weights.read_bytes())
    )
    estimator = build_estimator("raft", weights=one, num_flow_updates=1, device="cpu")
    assert isinstance(estimator, RAFTFlow) and estimator.variant == "small"

    def both(folder: Path) -> None:
        (folder / "raft_small.pth").write_bytes(raft_small_weights.read_bytes())
        torch.manual_seed(0)
        torch.save(raft_large(weights=None).state_dict(), folder / "raft_large.pth")

    two = hub_cache_entry(hub_cache, "someone/raft-both", both)
    with pytest.raises(DataError, match="set flow.variant to small or large"):
        build_estimator("raft", weights=two, device="cpu")
    assert build_estimator("raft", weights=two, variant="small", device="cpu").variant == "small"
    with pytest.raises(SSPError, match="unknown RAFT variant"):
        FlowStageConfig(FlowParams(method="raft", weights=one, variant="huge"))


def test_flow_stage_records_the_weights_and_a_new_revision_redoes_the_videos(tmp_path, hub_cache):
    write_flow_dataset(tmp_path / "data")
    out = tmp_path / "flow"
    spec = perceiver_flow_standin(hub_cache)
    commit = spec.split("@")[1]
    # flow at 32×32: a few 24×32 tiles per frame pair for the stand-in's training size
    args = ["--set", "flow.method=perceiver", "--set", f"flow.weights={spec}", "--set", "flow.size=32"]
    assert flow_cli(tmp_path, "--workers", "1", "--set", "flow.device=cpu", *args) == 0
    summary = json.loads((out / "flow_summary.json").read_text())
    weights = summary["weights"]
    assert (weights["source"], weights["repo_id"], weights["revision"]) == ("hub", PERCEIVER_REPO, commit)
    assert weights["spec"] == spec and "path" not in weights  # no machine-dependent path in the outputs
    assert set(weights["files"]) == {"config.json", "model.safetensors"}
    assert all(len(digest) == 64 for digest in weights["files"].values())
    assert summary["params"]["weights"]["revision"] == commit and "path" not in summary["params"]["weights"]
    stamp = json.loads(next(out.rglob("_done_flow.json")).read_text())
    assert stamp["params"]["weights"] == summary["params"]["weights"]

    # same weights (the device changes speed only): up to date
    before = output_files(out)
    assert flow_cli(tmp_path, "--workers", "1", *args) == 0
    assert redone(out, before) == 0
    # another revision: every video redone
    newer = perceiver_flow_standin(hub_cache, seed=1)
    args[3] = f"flow.weights={newer}"
    assert flow_cli(tmp_path, "--workers", "1", *args) == 0
    assert redone(out, before) == 2
    assert json.loads((out / "flow_summary.json").read_text())["weights"]["revision"] == newer.split("@")[1]

"""The generated AVSBench-format benchmark (ssp synth): layout, determinism, ground
truth consistency (masks, motion, audio) and the prompt-quality knob."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile

from ssp.cli import main as cli_main
from ssp.data import synthetic as S
from ssp.data.avsbench import split_objects
from ssp.data.palette import NUM_CLASSES, colour_to_index
from ssp.params import DataParams


def _generate(out: Path, seed: int = 0, workers: int = 1, **overrides) -> Path:
    config = S.SynthConfig.from_params(DataParams(seed=seed, size="tiny"), **overrides)
    return S.generate_dataset(config, out, workers=workers, progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return _generate(tmp_path_factory.mktemp("synth") / "tiny", seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _metadata(root: Path) -> list[dict[str, str]]:
    with open(root / "metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


def _scenes(root: Path) -> list[dict]:
    return [json.loads((root / r["label"] / r["uid"] / "scene.json").read_text()) for r in _metadata(root)]


def _many_scenes(n: int = 400, **overrides) -> list[dict]:
    """Scenes only (no pixels, no files): cheap enough to check rules on hundreds."""
    config = S.SynthConfig.from_params(DataParams(seed=3, size="demo"), **overrides)
    return [S.sample_scene(p, config) for p in S.plan_videos(config)[:n]]


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_whatever_the_workers(tiny, tmp_path):
    again = _generate(tmp_path / "again", seed=0, workers=2)
    assert _files(again) == _files(tiny)


def test_different_seed_gives_different_data(tiny, tmp_path):
    other = _files(_generate(tmp_path / "other", seed=1))
    base = _files(tiny)
    frames = [k for k in base if k.endswith(".jpg") and k in other]
    assert len(frames) > 50
    assert sum(base[k] != other[k] for k in frames) == len(frames)
    assert base["metadata.csv"] != other["metadata.csv"]


# ---------------------------------------------------------------- layout


def test_layout_is_complete_and_follows_the_labelling_rules(tiny):
    with open(tiny / "metadata.csv", newline="") as f:
        assert f.readline().strip() == "vid,uid,s_min,s_sec,a_obj,split,label"
    rows = _metadata(tiny)
    assert len(rows) == 12
    assert {(r["label"], r["split"]) for r in rows} == {(s, sp) for s in S.SUBSETS for sp in S.SPLITS}
    assert len({r["uid"] for r in rows}) == 12

    labels = json.loads((tiny / "label2idx.json").read_text())
    # the released AVSBench form: 1-based, indices 1..71 in file order, background first
    assert len(labels) == NUM_CLASSES and list(labels.values()) == list(range(1, NUM_CLASSES + 1))
    assert labels["background"] == 1
    assert list(labels)[1:9] == [c.name for c in S.CLASS_CATALOGUE[:8]]
    assert not any(sep in name for name in labels for sep in ",;|_")  # a_obj separators

    for r in rows:
        video = tiny / r["label"] / r["uid"]
        n_frames = {"v1s": 5, "v1m": 5, "v2": 10}[r["label"]]
        assert sorted(p.name for p in (video / "frames").iterdir()) == sorted(f"{i}.jpg" for i in range(n_frames))
        for i in range(n_frames):
            img = cv2.imread(str(video / "frames" / f"{i}.jpg"))
            assert img is not None and img.shape == (64, 64, 3)
        first_only = (r["label"], r["split"]) == ("v1s", "train")
        expected_masks = ["0.png"] if first_only else [f"{i}.png" for i in range(n_frames)]
        for folder in ("labels_rgb", "labels_semantic"):
            assert sorted(p.name for p in (video / folder).iterdir()) == sorted(expected_masks)
        audio, rate = soundfile.read(video / "audio.wav")
        assert rate == 16000 and audio.ndim == 1 and len(audio) == n_frames * 16000
        scene = json.loads((video / "scene.json").read_text())
        assert (scene["uid"], scene["subset"], scene["split"]) == (r["uid"], r["label"], r["split"])
        assert scene["labelled"] == [f"{i}.png" in expected_masks for i in range(n_frames)]
        assert all(o["class_index"] == labels[o["class_name"]] - 1 for o in scene["objects"])  # mask index
        sounding = list(dict.fromkeys(o["class_name"] for o in scene["objects"] if any(o["sounding"])))
        assert split_objects(r["a_obj"]) == sounding
        assert scene["answers"]["A2"] == sounding
        if r["label"] == "v1s":
            assert len(sounding) == 1
        if r["label"] == "v1m":
            assert len(sounding) >= 2

    with open(tiny / "scenarios.csv", newline="") as f:
        scen = list(csv.DictReader(f))
    assert [s["uid"] for s in scen] == [r["uid"] for r in rows]
    assert {s["scenario"] for s in scen} == set(S.SCENARIOS)

    manifest = json.loads((tiny / "manifest.json").read_text())
    digest = hashlib.sha256()
    files = sorted(p for p in tiny.rglob("*") if p.is_file() and p.name != "manifest.json")
    for p in files:
        digest.update(p.relative_to(tiny).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(p.read_bytes()).digest())
    assert manifest["files"] == len(files) and manifest["content_sha256"] == digest.hexdigest()
    assert not list(tiny.parent.glob(".*partial*"))


# ---------------------------------------------------------------- ground truth


def test_masks_label_exactly_the_sounding_objects(tiny):
    for scene in _scenes(tiny):
        video = tiny / scene["subset"] / scene["uid"]
        for t in range(scene["num_frames"]):
            if not scene["labelled"][t]:
                continue
            expected = np.zeros((64, 64), dtype=np.uint8)
            for obj in scene["objects"]:
                if obj["sounding"][t]:
                    expected[S.render_object_mask(obj, t, 64, 64)] = obj["class_index"]
            semantic = cv2.imread(str(video / "labels_semantic" / f"{t}.png"), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(semantic, expected)
            rgb = cv2.cvtColor(cv2.imread(str(video / "labels_rgb" / f"{t}.png")), cv2.COLOR_BGR2RGB)
            index, unknown = colour_to_index(rgb)
            assert not unknown.any()
            np.testing.assert_array_equal(index, expected)
            for obj in scene["objects"]:  # silent objects (e.g. the same-class twin) stay background
                if not obj["sounding"][t]:
                    assert not expected[S.render_object_mask(obj, t, 64, 64)].any()
                else:
                    assert S.render_object_mask(obj, t, 64, 64).sum() > 30


def test_frames_show_the_objects_where_the_scene_says(tiny):
    checked = 0
    for scene in _scenes(tiny):
        video = tiny / scene["subset"] / scene["uid"]
        for t in range(scene["num_frames"]):
            frame = cv2.cvtColor(cv2.imread(str(video / "frames" / f"{t}.jpg")), cv2.COLOR_BGR2RGB).astype(float)
            for obj in scene["objects"]:
                if obj["texture"] != "solid":
                    continue
                inner = cv2.erode(S.render_object_mask(obj, t, 64, 64).astype(np.uint8), np.ones((3, 3)))
                if inner.sum() < 5:
                    continue
                error = np.median(np.abs(frame[inner.astype(bool)] - np.array(obj["rgb"])), axis=0)
                assert (error < 20).all(), (scene["uid"], obj["class_name"], t, error)
                checked += 1
    assert checked > 20


def test_objects_never_overlap_and_stay_in_frame():
    for scene in _many_scenes(300):
        size = scene["image_size"][0]
        for t in range(scene["num_frames"]):
            masks = [S.render_object_mask(o, t, size, size) for o in scene["objects"]]
            assert (np.sum(masks, axis=0) <= 1).all(), scene["uid"]
            for o in scene["objects"]:
                x, y = o["positions"][t]
                reach = S.SHAPE_REACH * o["radius"]
                assert reach <= x <= size - reach and reach <= y <= size - reach


def test_layout_constants_guarantee_no_overlap_and_in_frame():
    # worst case: both objects jittered and moved towards each other
    worst_reach = S.SHAPE_REACH * S.RADIUS_RANGE[1]
    slack = S.MOTION_BOX + S.ANCHOR_JITTER * np.sqrt(2)
    for a in S.EDGE_LOCATIONS:
        ax, ay = S.ANCHORS[a]
        for coord in (ax, ay):
            assert coord - S.MOTION_BOX - S.ANCHOR_JITTER - worst_reach >= 0
            assert coord + S.MOTION_BOX + S.ANCHOR_JITTER + worst_reach <= 1
        for b in S.EDGE_LOCATIONS:
            if a != b:
                assert np.hypot(*np.subtract(S.ANCHORS[a], S.ANCHORS[b])) - 2 * slack >= 2 * worst_reach
    assert S.SPEED_RANGE[1] <= S.MOTION_BOX


def test_shapes_stay_within_their_reach():
    grid = np.linspace(-2, 2, 801)
    dx, dy = np.meshgrid(grid, grid)
    for shape in S.SHAPES:
        inside = S._shape_mask(shape, dx, dy, 1.0)
        assert inside.any() and np.hypot(dx, dy)[inside].max() <= S.SHAPE_REACH + 1e-9, shape


def test_moving_objects_move_and_still_ones_do_not(tiny):
    # on the written masks: a sounding object's pixels (its class, unique among the
    # sources) shift between frames exactly when the scene says it moves
    seen = {"moved": 0, "still": 0}
    for scene in _scenes(tiny):
        video = tiny / scene["subset"] / scene["uid"]
        for obj in scene["objects"]:
            for t in range(scene["num_frames"] - 1):
                if not (obj["sounding"][t] and obj["sounding"][t + 1] and scene["labelled"][t + 1]):
                    continue
                a, b = (
                    cv2.imread(str(video / "labels_semantic" / f"{i}.png"), cv2.IMREAD_UNCHANGED) == obj["class_index"]
                    for i in (t, t + 1)
                )
                shift = np.hypot(*(np.argwhere(a).mean(0) - np.argwhere(b).mean(0)))
                if obj["positions"][t] != obj["positions"][t + 1]:
                    assert obj["moving"][t] and obj["moving"][t + 1]
                    assert shift > 1.0
                    seen["moved"] += 1
                else:
                    assert (a == b).all()
                    seen["still"] += 1
    assert seen["moved"] > 5 and seen["still"] > 5


def test_scenarios_mean_what_they_say():
    scenes = _many_scenes(400)
    by_scenario = {s: [x for x in scenes if x["scenario"] == s] for s in S.SCENARIOS}
    assert all(len(v) >= 50 for v in by_scenario.values())
    for scene in scenes:
        objs = scene["objects"]
        sounding = [o for o in objs if any(o["sounding"])]
        silent = [o for o in objs if not any(o["sounding"])]
        assert 1 <= len(objs) <= 3 and sounding
        if scene["subset"] == "v1s":
            assert len(sounding) == 1
        if scene["scenario"] == "moving_sounding":
            assert all(any(o["moving"]) for o in sounding) and not any(any(o["moving"]) for o in silent)
        elif scene["scenario"] == "still_sounding":
            assert not any(any(o["moving"]) for o in objs)
        elif scene["scenario"] == "silent_distractor":
            assert any(any(o["moving"]) for o in silent)
            assert {o["class_name"] for o in silent}.isdisjoint(o["class_name"] for o in sounding)
        else:
            assert any(o["class_name"] == s["class_name"] and not any(o["moving"]) for o in silent for s in sounding)
        # per-second variation only in v2 (sources pausing, movers stopping)
        if scene["subset"] != "v2":
            assert all(len(set(o["sounding"])) == 1 for o in objs)
    v2 = [o for s in scenes if s["subset"] == "v2" for o in s["objects"] if any(o["sounding"])]
    assert any(not all(o["sounding"]) for o in v2)


def test_plan_follows_the_scenario_mix_and_presets():
    config = S.SynthConfig.from_params(
        DataParams(size="demo"),
        scenario_mix={"moving_sounding": 3, "still_sounding": 1, "silent_distractor": 0, "same_class_distractor": 0},
    )
    plans = S.plan_videos(config)
    assert len(plans) == 304
    counts = {s: sum(p.scenario == s for p in plans) for s in S.SCENARIOS}
    assert counts["silent_distractor"] == counts["same_class_distractor"] == 0
    assert abs(counts["moving_sounding"] - 3 * counts["still_sounding"]) <= 6
    even = S.plan_videos(S.SynthConfig.from_params(DataParams(size="demo")))
    for subset in S.SUBSETS:  # every test split covers every scenario
        assert {p.scenario for p in even if p.subset == subset and p.split == "test"} == set(S.SCENARIOS)


# ---------------------------------------------------------------- audio


def _single_source_scene(class_pos: int, sounding: list[bool], snr_db: float = 20.0) -> dict:
    scene = copy.deepcopy(_many_scenes(1)[0])
    obj = scene["objects"][0]
    cls = S.CLASS_CATALOGUE[class_pos]
    obj.update(
        class_index=class_pos + 1,
        class_name=cls.name,
        noun=cls.name,
        pitch_hz=cls.pitch_hz,
        gain=1.0,
        sounding=sounding,
    )
    scene["objects"] = [obj]
    scene["num_frames"] = len(sounding)
    scene["snr_db"] = snr_db
    return scene


def test_audio_has_energy_only_when_something_sounds():
    pattern = [True, False, False, True, True, False, True, False, False, False]
    audio = S.synthesise_audio(_single_source_scene(1, pattern)).reshape(10, 16000)
    # skip the 10 ms ramps at the second boundaries
    rms = np.sqrt(np.mean(audio[:, 200:-200] ** 2, axis=1))
    noise = S.SOURCE_RMS * 10 ** (-20 / 20)
    for second, sounds in enumerate(pattern):
        if sounds:
            assert rms[second] > 5 * noise, second
        else:
            assert rms[second] == pytest.approx(noise, rel=0.1), second


def test_each_class_sounds_at_its_pitch():
    sr = S.SAMPLE_RATE
    for pos, cls in enumerate(S.CLASS_CATALOGUE):
        audio = S.synthesise_audio(_single_source_scene(pos, [True] * 5))
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
        peak = np.fft.rfftfreq(len(audio), 1 / sr)[np.argmax(spectrum)]
        tolerance = cls.pitch_hz * (cls.fm_depth + 0.02)
        assert abs(peak - cls.pitch_hz) <= tolerance, (cls.name, peak)


def test_written_audio_matches_the_scene(tiny):
    scene = next(s for s in _scenes(tiny) if s["subset"] == "v1s")
    audio, _ = soundfile.read(tiny / "v1s" / scene["uid"] / "audio.wav")
    np.testing.assert_allclose(audio, S.synthesise_audio(scene), atol=1 / 32768 + 1e-9)
    source = next(o for o in scene["objects"] if any(o["sounding"]))
    peak = np.fft.rfftfreq(len(audio), 1 / 16000)[np.argmax(np.abs(np.fft.rfft(audio * np.hanning(len(audio)))))]
    cls = next(c for c in S.CLASS_CATALOGUE if c.name == source["class_name"])
    assert abs(peak - source["pitch_hz"]) <= source["pitch_hz"] * (cls.fm_depth + 0.02)


# ---------------------------------------------------------------- answers


def test_clean_answers_describe_the_scene():
    for scene in _many_scenes(60):
        a1, a2 = S.scene_answers(scene, 1.0, seed=0)
        assert a2 == list(dict.fromkeys(o["noun"] for o in scene["objects"] if any(o["sounding"])))
        sentences = [s for s in a1.split(". ") if s]
        assert len(sentences) == len(scene["objects"])
        for obj, sentence in zip(scene["objects"], sentences):
            assert obj["noun"] in sentence and obj["colour"] in sentence
            assert S.LOCATION_PHRASES[obj["location"]] in sentence
            assert ("silent" in sentence) == (not any(obj["sounding"]))
            assert ("moving" in sentence or "moves" in sentence) == any(obj["moving"])


def _quality_scene() -> tuple[dict, dict, dict]:
    """A v1s scene with one source and one silent object of another class."""
    for scene in _many_scenes(40):
        objs = scene["objects"]
        if scene["subset"] == "v1s" and len(objs) == 2 and objs[0]["class_name"] != objs[1]["class_name"]:
            source = next(o for o in objs if any(o["sounding"]))
            silent = next(o for o in objs if not any(o["sounding"]))
            return copy.deepcopy(scene), source, silent
    raise AssertionError("no such scene in the plan")


def test_quality_knob_corrupts_nouns_at_the_right_rate():
    scene, source_obj, silent_obj = _quality_scene()
    source, silent = source_obj["noun"], silent_obj["noun"]
    clean = S.scene_answers(scene, 1.0, seed=0)
    assert clean == (S._answers(scene, None, 0.0))
    n, p = 3000, 0.3
    kinds = {"clean": 0, "drop": 0, "blur": 0, "add": 0, "add_silent": 0}
    pads = 0
    for seed in range(n):
        scene["uid"] = f"q{seed}"
        a1, a2 = S.scene_answers(scene, 1 - p, seed=7)
        pads += sum(a1.count(s) for s in S.USELESS_SENTENCES)
        if a2 == [source]:
            kinds["clean"] += 1
        elif a2 == []:
            kinds["drop"] += 1
            assert source in a1 and f"{source} {source_obj['verb']}" not in a1
        elif a2[0] in S.VAGUE_NOUNS:
            kinds["blur"] += 1
            assert source not in a1
        else:
            assert a2[0] == source and len(a2) == 2
            kinds["add"] += 1
            kinds["add_silent"] += a2[1] == silent
    assert kinds["clean"] / n == pytest.approx(1 - p, abs=0.03)
    for kind in ("drop", "blur", "add"):
        assert kinds[kind] / n == pytest.approx(p / 3, abs=0.02), kind
    assert 0.3 < kinds["add_silent"] / kinds["add"] < 0.7  # silent object or absent class
    assert pads / n == pytest.approx(4 * p, abs=0.1)


def test_quality_knob_is_deterministic_and_monotone():
    scene, _, _ = _quality_scene()
    for seed in range(200):
        scene["uid"] = f"m{seed}"
        assert S.scene_answers(scene, 0.5, seed=1) == S.scene_answers(scene, 0.5, seed=1)
        high, low = S.scene_answers(scene, 0.8, seed=1), S.scene_answers(scene, 0.5, seed=1)
        clean = S.scene_answers(scene, 1.0, seed=1)
        if high[1] != clean[1]:
            assert low[1] == high[1]  # the same corruption, drawn once
    corrupted = [S.scene_answers(scene, 0.0, seed=s) for s in range(50)]
    assert all(a2 != S.scene_answers(scene, 1.0, 0)[1] for _, a2 in corrupted)
    with pytest.raises(ValueError):
        S.scene_answers(scene, 1.5, seed=0)


# ---------------------------------------------------------------- CLI and atomicity


def test_cli_reports_user_errors_and_replaces_with_force(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  size: tiny\n  seed: 4\n")
    out = tmp_path / "d"

    def synth(out: Path, *args: str) -> int:
        return cli_main(["synth", "--out", str(out), "--params", str(params), "--workers", "1", *args])

    assert synth(out) == 0
    first = (out / "manifest.json").read_text()
    assert json.loads(first)["config"]["seed"] == 4
    assert synth(out, "--set", "data.seed=0") == 2
    assert "--force" in capsys.readouterr().err
    assert synth(out, "--set", "data.seed=0", "--force") == 0
    assert (out / "manifest.json").read_text() != first
    assert json.loads((out / "manifest.json").read_text())["config"]["seed"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "params.yaml"]
    assert synth(tmp_path / "e", "--set", "data.classes=40") == 2
    assert "data.classes" in capsys.readouterr().err
    assert synth(tmp_path / "e", "--scenario-mix", "loud=1") == 2
    assert "loud" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_a_failed_run_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = S.generate_video

    def flaky(plan, config, root):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk full")
        return real(plan, config, root)

    monkeypatch.setattr(S, "generate_video", flaky)
    with pytest.raises(RuntimeError):
        _generate(tmp_path / "d")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the data helper's readers


def test_readers_load_the_generated_dataset(tiny):
    from ssp.data.avsbench import class_names, detect_layout, load_records, read_frame, read_mask

    assert detect_layout(tiny) == "semantic"
    names = class_names(tiny)
    assert len(names) == NUM_CLASSES and names[:3] == ["background", "bell", "drum"]
    records = load_records(tiny)
    scenes = {s["uid"]: s for s in _scenes(tiny)}
    assert [r.uid for r in records] == [r["uid"] for r in _metadata(tiny)]
    for record in records:
        scene = scenes[record.uid]
        expected = (scene["subset"], scene["split"], scene["num_frames"])
        assert (record.subset, record.split, record.num_frames) == expected
        assert record.labelled == scene["labelled"]
        assert record.objects == scene["answers"]["A2"]
        assert (record.video_dir / "scene.json").is_file()
        assert all(p.is_file() for p in record.referenced_paths())
        assert read_frame(record.frame_paths[-1], record.root).shape == (64, 64, 3)
        for t in record.labelled_indices:
            semantic = read_mask(record, t, task="avss")
            expected = cv2.imread(str(record.video_dir / "labels_semantic" / f"{t}.png"), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(semantic, expected)
            np.testing.assert_array_equal(read_mask(record, t, task="avs"), (expected > 0).astype(np.uint8))

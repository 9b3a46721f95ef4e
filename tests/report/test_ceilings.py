"""Per-scenario ceilings (ssp.report.ceilings): the oracles' choices, their scores on a
hand-made scene against a hand computation, and on a generated tiny benchmark (perfect
audio + motion + text, audio alone fooled by the same-class twin); `ssp ceilings` on
AVSBench says there is nothing to compute."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssp.report.ceilings import (
    ORACLES,
    SceneFrames,
    compute_ceilings,
    cue_headroom,
    oracle_objects,
    score_oracles,
)

SIZE = 16
RADIUS = 2.6  # a "square" of radius 2.6 covers |dx|, |dy| <= 2.002: 4 x 4 pixels around an integer centre


def square(cx: int, cy: int) -> tuple[slice, slice]:
    """The pixels of a square object centred at (cx, cy), written out by hand."""
    return slice(cy - 2, cy + 2), slice(cx - 2, cx + 2)


def obj(i: int, class_index: int, centre: tuple[int, int], sounding: list[bool], moving: list[bool]) -> dict:
    n = len(sounding)
    return {
        "id": i,
        "class_index": class_index,
        "shape": "square",
        "radius": RADIUS,
        "location": "left",
        "positions": [list(centre)] * n,
        "sounding": sounding,
        "moving": moving,
    }


def hand_scene(scenario: str, objects: list[dict]) -> SceneFrames:
    """A 2-frame v2 scene and its GT drawn by hand: each sounding object's square, its class."""
    gt = {}
    for t in range(2):
        mask = np.zeros((SIZE, SIZE), dtype=np.int64)
        for o in objects:
            if o["sounding"][t]:
                mask[square(*o["positions"][t])] = o["class_index"]
        gt[t] = mask
    return SceneFrames({"scenario": scenario, "subset": "v2", "objects": objects}, gt)


# same class twins: the source (class 1) moves in frame 0 and stands still in frame 1, its
# silent twin always stands still; a second source of class 2 stands still
TWINS = [
    obj(0, 1, (4, 4), [True, True], [True, False]),
    obj(1, 1, (12, 4), [False, False], [False, False]),
    obj(2, 2, (4, 12), [True, True], [False, False]),
]
# a silent distractor of another class moves; the source stands still
DISTRACTOR = [obj(0, 1, (4, 4), [True, True], [False, False]), obj(1, 2, (12, 12), [False, False], [True, True])]


def test_oracles_pick_by_their_cues():
    scene = {"objects": TWINS}
    picked = {(o, t): [x["id"] for x in oracle_objects(scene, t, o)] for o in ORACLES for t in (0, 1)}
    assert picked[("audio", 0)] == picked[("audio", 1)] == [0, 1, 2]  # both twins
    assert picked[("audio_motion", 0)] == [0, 2]  # the moving twin is the source
    assert picked[("audio_motion", 1)] == [0, 1, 2]  # both still: motion cannot tell
    assert picked[("audio_motion_text", 0)] == picked[("audio_motion_text", 1)] == [0, 2]
    # a silent object of another class is never picked, moving or not
    assert [x["id"] for x in oracle_objects({"objects": DISTRACTOR}, 0, "audio")] == [0]
    with pytest.raises(ValueError, match="unknown oracle"):
        oracle_objects(scene, 0, "vision")


def test_scores_equal_a_hand_computation():
    """Label space {0, 1, 2}; 256 pixels per frame, 16 per object.

    audio, both frames: bg IoU 208/224 = 13/14 (the twin's 16 pixels are predicted),
    class 1 16/32, class 2 1 -> (13/14 + 1/2 + 1) / 3 = 17/21; binary 32/48 = 2/3.
    audio + motion: frame 0 perfect, frame 1 as audio -> class 0 (1 + 13/14) / 2,
    class 1 (1 + 1/2) / 2, class 2 1 -> 19/21; binary (1 + 2/3) / 2 = 5/6.
    audio + motion + text: perfect. The silent-distractor scene: every oracle perfect."""
    result = score_oracles([hand_scene("same_class_distractor", TWINS)], (0, 1, 2))
    twins = result["scenarios"]["same_class_distractor"]
    assert (twins["frames"], twins["videos"]) == (2, 1)
    expected = {"audio": (17 / 21, 2 / 3), "audio_motion": (19 / 21, 5 / 6), "audio_motion_text": (1.0, 1.0)}
    for oracle, (miou, binary) in expected.items():
        assert twins[oracle]["miou_dataset"] == pytest.approx(miou, abs=1e-9), oracle
        assert twins[oracle]["miou"] == pytest.approx(miou * 3 / 71, abs=1e-9), oracle  # 71-class convention
        assert twins[oracle]["binary_miou"] == pytest.approx(binary, abs=1e-6), oracle
    assert twins["audio"]["fscore_dataset"] < 1 and twins["audio_motion_text"]["fscore_dataset"] == pytest.approx(1)
    assert twins["by_subset"]["v2"]["audio_motion"]["binary_miou"] == pytest.approx(5 / 6, abs=1e-6)

    both = score_oracles(
        [hand_scene("same_class_distractor", TWINS), hand_scene("silent_distractor", DISTRACTOR)], (0, 1, 2)
    )
    distractor = both["scenarios"]["silent_distractor"]
    for oracle in ORACLES:  # class 2 never occurs in this scenario: it scores 0 for everyone
        assert distractor[oracle]["miou_dataset"] == pytest.approx(2 / 3, abs=1e-9)
        assert distractor[oracle]["miou_present"] == pytest.approx(1.0, abs=1e-9)
        assert distractor[oracle]["binary_miou"] == pytest.approx(1.0, abs=1e-6)
    assert both["overall"]["frames"] == 4 and both["overall"]["audio_motion_text"]["miou_dataset"] == pytest.approx(1)
    assert list(both["scenarios"]) == ["silent_distractor", "same_class_distractor"]  # benchmark order


def test_cue_headroom_is_what_motion_and_text_add_over_perfect_audio():
    """The hand scenes above (every class present, so present-class mIoU = miou_dataset):
    twins: audio 17/21, audio + motion 19/21, all cues 1 -> +200/21 and +400/21 points; the
    silent distractor: audio alone is perfect -> nothing to add. Overall: over both."""
    result = score_oracles(
        [hand_scene("same_class_distractor", TWINS), hand_scene("silent_distractor", DISTRACTOR)], (0, 1, 2)
    )
    headroom = cue_headroom({"available": True, **result})
    assert headroom["same_class_distractor"] == pytest.approx({"motion": 200 / 21, "motion_text": 400 / 21})
    assert headroom["silent_distractor"] == pytest.approx({"motion": 0.0, "motion_text": 0.0})
    overall = result["overall"]
    expected = 100 * (overall["audio_motion_text"]["miou_present"] - overall["audio"]["miou_present"])
    assert 0 < headroom["overall"]["motion_text"] == pytest.approx(expected)
    assert cue_headroom({"available": False, "reason": "no scene records"}) == {}
    assert set(cue_headroom({"available": True, "scenarios": result["scenarios"]})) == set(result["scenarios"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from ssp.data.synthetic import SynthConfig, generate_dataset
    from ssp.params import DataParams

    root = tmp_path_factory.mktemp("ceilings")
    return generate_dataset(SynthConfig.from_params(DataParams(seed=0, size="tiny")), root / "data", progress=False)


def gt_classes(data: Path, split: str, scenario: str) -> set[int]:
    """The class indices in the label PNGs of ``scenario``'s ``split`` videos, read here."""
    import csv

    rows = [
        r for r in csv.DictReader((data / "scenarios.csv").open()) if (r["split"], r["scenario"]) == (split, scenario)
    ]
    found: set[int] = set()
    for row in rows:
        for png in (data / row["subset"] / row["uid"] / "labels_semantic").glob("*.png"):
            found |= set(np.unique(np.asarray(Image.open(png))).tolist())
    return found


def test_generated_benchmark_ceilings(tiny, tmp_path):
    from ssp.cli import main as cli

    out = tmp_path / "ceilings.json"
    assert cli(["ceilings", "--data", str(tiny), "--out", str(out), "--params", "/dev/null"]) == 0
    result = json.loads(out.read_text())
    assert result["available"] and result["split"] == "test" and result["label_space"]["num_classes"] == 8
    assert "same_class_distractor" in result["scenarios"]
    for scenario, numbers in result["scenarios"].items():
        perfect = numbers["audio_motion_text"]
        present = gt_classes(tiny, "test", scenario)
        assert perfect["binary_miou"] == pytest.approx(1.0, abs=1e-6), scenario
        assert perfect["miou_present"] == pytest.approx(1.0, abs=1e-9), scenario
        # over background + K = 8 classes, a class absent from the scenario's frames scores 0
        assert perfect["miou_dataset"] == pytest.approx(len(present) / 9, abs=1e-9), scenario
    twins = result["scenarios"]["same_class_distractor"]
    assert twins["audio"]["miou_dataset"] < twins["audio_motion_text"]["miou_dataset"]
    assert twins["audio"]["binary_miou"] < 0.9 and twins["audio"]["miou_present"] < 0.9
    assert twins["audio"]["binary_miou"] <= twins["audio_motion"]["binary_miou"]
    assert result == compute_ceilings(tiny, "test") | {"data": str(tiny)}


def test_avsbench_has_no_ceilings(tmp_path):
    from ssp.cli import main as cli
    from tests.avsbench_fixtures import write_semantic_dataset

    data = write_semantic_dataset(tmp_path / "avsbench", size=(32, 32))
    out = tmp_path / "ceilings.json"
    assert cli(["ceilings", "--data", str(data), "--out", str(out), "--params", "/dev/null"]) == 0
    result = json.loads(out.read_text())
    assert result["available"] is False and "scene records" in result["reason"]

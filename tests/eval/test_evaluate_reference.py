"""``ssp evaluate`` against an independent reference (issue 18).

A small AVSBench-semantic test split (tests/avsbench_fixtures.py: released palette and
layout) is evaluated by the real :func:`ssp.eval.evaluate.evaluate` (and once through the
``ssp evaluate`` CLI) with tiny real checkpoints whose ``SSPModel.predict`` is replaced by
a planted predictor. The predictor never sees ``batch["masks"]``: it answers, by the
batch's ``uid`` / ``frame_index``, from the masks the TEST decoded from the PNGs on disk
with the fixture's own palette. Planted predictions:

- ``oracle``: the ground truth itself -> every binary mIoU / F and the AVSS
  ``miou_present`` / ``fscore_present`` are 1.0 (the official AVSS mIoU is the mean over
  ALL 71 classes, so it is (classes present) / 71);
- ``frame``: the ground truth of the next frame of the same video;
- ``video``: the ground truth of the next video of the same subset (same frame index).

Every number is compared with the reference computed here from the decoded files with the
loop transcriptions of the official AVSBench metric in tests/eval/test_metrics.py
(``ref_*``, independent of ``ssp.metrics``): per subset in metadata order, the official
batch mode (``FSCORE_BATCH_VIDEOS`` videos per batch) and per frame. Nothing on the
reference path uses ssp's dataset, palette or metrics code.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.avsbench_fixtures import CLASS_INDEX, FRAMES_PER_SUBSET, PALETTE, write_semantic_dataset
from tests.eval.test_metrics import ref_batched, ref_eval_fmeasure, ref_mask_iou, ref_per_frame_fscore, ref_semantic

SIZE = 64  # the tiny model's image_size: masks are scored as written, no resize
NUM_CLASSES = 71
FSCORE_BATCH_VIDEOS = 2  # 3 videos per subset at most: batches of 2 + 1 differ from the per-frame mean
SUBSETS = ("v1s", "v1m", "v2")

# The test split, in metadata order. The empty video (masks all background) sits in the
# middle of v2's first F-score batch; v1s train has only frame 0 labelled (official rule).
VIDEOS = [
    {"uid": "s4_dog", "subset": "v1s", "split": "test", "objects": ["dog"]},
    {"uid": "s4_cat", "subset": "v1s", "split": "test", "objects": ["cat"]},
    {"uid": "s4_guitar", "subset": "v1s", "split": "test", "objects": ["guitar"]},
    {"uid": "ms3_piano_woman", "subset": "v1m", "split": "test", "objects": ["piano", "woman"]},
    {"uid": "ms3_man_trumpet", "subset": "v1m", "split": "test", "objects": ["man", "trumpet"]},
    {"uid": "v2_baby_girl_bird", "subset": "v2", "split": "test", "objects": ["baby", "girl", "bird"]},
    {"uid": "v2_empty", "subset": "v2", "split": "test", "objects": [], "a_obj": "dog"},
    {"uid": "v2_car_dog", "subset": "v2", "split": "test", "objects": ["car", "dog"]},
    {"uid": "s4_train_violin", "subset": "v1s", "split": "train", "objects": ["violin"]},
    {"uid": "s4_train_horse", "subset": "v1s", "split": "train", "objects": ["horse"]},
]


# ---------------------------------------------------------------------------------------
# The ground truth, decoded here from the files on disk
# ---------------------------------------------------------------------------------------
_CODES = PALETTE.astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
_ORDER = np.argsort(_CODES)


def decode_colour_mask(path: Path) -> np.ndarray:
    """A ``labels_rgb`` PNG -> class indices (H x W int64) with the fixture's palette;
    every pixel must be a palette colour."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    codes = rgb @ np.array([1 << 16, 1 << 8, 1])
    position = np.searchsorted(_CODES[_ORDER], codes).clip(0, len(_CODES) - 1)
    index = _ORDER[position]
    assert (_CODES[index] == codes).all(), f"{path}: colours outside the palette"
    return index


def decode_video(data: Path, spec: dict) -> list[np.ndarray | None]:
    """Per frame of the video: its class-index mask, or None where no mask file exists."""
    folder = data / spec["subset"] / spec["uid"] / "labels_rgb"
    paths = [folder / f"{i}.png" for i in range(FRAMES_PER_SUBSET[spec["subset"]])]
    return [decode_colour_mask(p) if p.is_file() else None for p in paths]


class Bench:
    def __init__(self, root: Path):
        from ssp.models import SSPConfig, SSPModel
        from ssp.models.checkpoint import save_weights

        self.data = write_semantic_dataset(root / "data", VIDEOS, size=(SIZE, SIZE), seed=3)
        self.gt = {spec["uid"]: decode_video(self.data, spec) for spec in VIDEOS}
        self.videos = {split: [s for s in VIDEOS if s["split"] == split] for split in ("test", "train")}
        self.binary_references: dict[tuple[str, str, str], dict] = {}
        torch.manual_seed(0)
        self.checkpoints = {}
        for stage in (1, 2):
            config = SSPConfig.tiny(stage, num_points=64)
            assert config.image_size == SIZE and (stage == 1 or config.num_classes == NUM_CLASSES)
            self.checkpoints[stage] = root / f"s{stage}.safetensors"
            save_weights(self.checkpoints[stage], SSPModel(config), {"epoch": 1})
        # stage 2's stepping stones (read as model input; the planted predictor ignores them)
        self.stage1 = root / "stage1"
        for spec in VIDEOS:
            folder = self.stage1 / spec["subset"] / spec["uid"]
            folder.mkdir(parents=True)
            for i in range(FRAMES_PER_SUBSET[spec["subset"]]):
                Image.fromarray(np.full((SIZE, SIZE), 128, np.uint8)).save(folder / f"{i}.png")

    def planted(self, plant: str) -> Callable[[str, int], np.ndarray]:
        """(uid, frame) -> the planted prediction (class indices) of that frame."""
        following = {}
        for subset in SUBSETS:
            uids = [s["uid"] for s in self.videos["test"] if s["subset"] == subset]
            following.update({uid: uids[(k + 1) % len(uids)] for k, uid in enumerate(uids)})
        blank = np.full((SIZE, SIZE), CLASS_INDEX["dog"])  # unlabelled frames: all wrong

        def predict(uid: str, i: int) -> np.ndarray:
            masks = self.gt[uid]
            if plant == "frame":
                found = masks[(i + 1) % len(masks)]
            elif plant == "video":
                found = self.gt[following[uid]][i]
            else:
                found = masks[i]
            return blank if found is None else found

        return predict


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Bench:
    return Bench(tmp_path_factory.mktemp("evaluate_reference"))


# ---------------------------------------------------------------------------------------
# Planted predictions: the model's output, and the same turned into reference inputs
# ---------------------------------------------------------------------------------------
RAMP = torch.linspace(0, 1, SIZE)  # varies the confidence across columns, so thresholds matter


def class_scores(classes: torch.Tensor) -> torch.Tensor:
    """N x H x W class indices -> N x C x H x W stage-2 class scores (sum 1 per pixel): the
    planted class gets q = sigmoid(2 + 4 x column ramp) in (0.88, 1), the rest 1 - q goes
    to background on a foreground pixel and to class 1 on a background pixel."""
    q = torch.sigmoid(2 + 4 * RAMP).expand(classes.shape)
    scores = torch.zeros(classes.shape[0], NUM_CLASSES, *classes.shape[1:])
    scores.scatter_(1, torch.where(classes > 0, 0, 1).unsqueeze(1), (1 - q).unsqueeze(1))
    scores.scatter_(1, classes.unsqueeze(1), q.unsqueeze(1))
    return scores


def foreground_logits(scores: torch.Tensor) -> torch.Tensor:
    """ssp's documented stage-2 -> binary convention: p_fg = 1 - p_bg / sum_c p_c."""
    fg = 1 - scores[:, 0] / scores.sum(1).clamp(min=1e-12)
    return torch.logit(fg.clamp(1e-6, 1 - 1e-6))


def stage1_logits(classes: torch.Tensor) -> torch.Tensor:
    """N x H x W class indices -> N x H x W binary logits (+-(2 + 4 x ramp), foreground =
    class > 0): the binary view of :func:`class_scores`, so both stages share one binary
    reference."""
    return foreground_logits(class_scores(classes))


def install_predictor(monkeypatch, predict: Callable[[str, int], np.ndarray]) -> None:
    from ssp.models.ssp import SSPModel

    def planted_predict(self, batch):
        assert "masks" not in batch, "the model saw the GT masks"
        video, frame = batch["video_index"].tolist(), batch["frame_index"].tolist()
        classes = torch.from_numpy(np.stack([predict(batch["uid"][v], f) for v, f in zip(video, frame)]))
        return stage1_logits(classes) if self.config.stage == 1 else class_scores(classes)

    monkeypatch.setattr(SSPModel, "predict", planted_predict)


# ---------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------
def reference(bench: Bench, plant: str, stage: int, split: str = "test") -> dict:
    """The official numbers of ``plant`` on ``split``, per subset (binary; stage 2 also
    semantic per subset and ``all``), over the labelled frames in metadata order."""
    out: dict = {"binary": {}, "semantic": {}}
    all_pred, all_gt = [], []
    for subset in SUBSETS:
        pairs = frame_pairs(bench, plant, split, subset)
        if not pairs:
            continue
        pred = torch.from_numpy(np.stack([p for p, _ in pairs]))
        gt = torch.from_numpy(np.stack([g for _, g in pairs]))
        key = (plant, split, subset)
        if key not in bench.binary_references:  # the same for both stages (stage1_logits)
            bench.binary_references[key] = binary_reference(stage1_logits(pred), (gt > 0).long(), subset)
        out["binary"][subset] = bench.binary_references[key]
        if stage == 2:
            out["semantic"][subset] = semantic_reference(pred, gt)
            all_pred.append(pred)
            all_gt.append(gt)
    if stage == 2:
        out["semantic"]["all"] = semantic_reference(torch.cat(all_pred), torch.cat(all_gt))
    return out


def frame_pairs(bench: Bench, plant: str, split: str, subset: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(planted prediction, GT) of every labelled frame of ``subset`` in metadata order."""
    predict = bench.planted(plant)
    return [
        (predict(s["uid"], i), mask)
        for s in bench.videos[split]
        if s["subset"] == subset
        for i, mask in enumerate(bench.gt[s["uid"]])
        if mask is not None
    ]


def binary_reference(logits: torch.Tensor, gt: torch.Tensor, subset: str) -> dict:
    batch_frames = FRAMES_PER_SUBSET[subset] * FSCORE_BATCH_VIDEOS
    return {
        "miou": ref_batched(ref_mask_iou, logits, gt, batch_frames),
        "fscore": ref_batched(ref_eval_fmeasure, logits, gt, batch_frames),
        "miou_per_frame": ref_mask_iou(logits, gt),
        "fscore_per_frame": ref_per_frame_fscore(logits, gt),
        "num_frames": len(gt),
        "batch_frames": batch_frames,
    }


def semantic_reference(pred: torch.Tensor, gt: torch.Tensor) -> dict:
    numbers = ref_semantic(class_scores(pred), gt, NUM_CLASSES)
    present = [c for c, n in enumerate(numbers["per_class_count"]) if n]
    numbers["miou_present"] = sum(numbers["per_class_iou"][c] for c in present) / len(present)
    numbers["fscore_present"] = sum(numbers["per_class_fscore"][c] for c in present) / len(present)
    numbers["num_frames"] = len(gt)
    return numbers


def assert_matches(result: dict, expected: dict) -> None:
    """Every reference number equals ssp's (same subsets, same keys)."""
    for group in ("binary", "semantic"):
        assert sorted(result[group]) == sorted(expected[group]), f"{group}: ssp {sorted(result[group])}"
        for name, numbers in expected[group].items():
            for key in (
                "miou",
                "fscore",
                "miou_per_frame",
                "fscore_per_frame",
                "miou_no_bg",
                "fscore_no_bg",
                "miou_present",
                "fscore_present",
                "num_frames",
                "batch_frames",
            ):
                if key in numbers:
                    got, want = result[group][name][key], numbers[key]
                    assert got == pytest.approx(want, abs=1e-6), f"{group}.{name}.{key}: ssp {got}, reference {want}"


def run_evaluate(bench: Bench, stage: int, out: Path, split: str = "test") -> dict:
    from ssp.eval.evaluate import evaluate

    return evaluate(
        bench.checkpoints[stage],
        bench.data,
        split,
        out,
        stage1_masks=bench.stage1 if stage == 2 else None,
        fscore_batch_videos=FSCORE_BATCH_VIDEOS,
        device="cpu",
        batch_size=3,  # forward batches straddle subsets
        progress=False,
        log_to_run=False,
    )


# ---------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------
def check_oracle(result: dict, bench: Bench, stage: int) -> None:
    """Binary: 1.0. AVSS (mean over all 71 classes): (classes in the GT files) / 71, and
    1.0 over the classes present."""
    for subset, numbers in result["binary"].items():
        for key in ("miou", "fscore", "miou_per_frame", "fscore_per_frame"):
            assert numbers[key] == pytest.approx(1.0, abs=1e-6), (subset, key, numbers[key])
    if stage == 2:
        for name, numbers in result["semantic"].items():
            masks = [m for s in bench.videos["test"] if name in ("all", s["subset"]) for m in bench.gt[s["uid"]]]
            present = len(np.unique(np.stack(masks)))
            assert numbers["miou"] == pytest.approx(present / NUM_CLASSES, abs=1e-6), (name, numbers)
            assert numbers["fscore"] == pytest.approx(present / NUM_CLASSES, abs=1e-6), (name, numbers)
            assert numbers["miou_present"] == pytest.approx(1.0, abs=1e-6), (name, numbers)
            assert numbers["fscore_present"] == pytest.approx(1.0, abs=1e-6), (name, numbers)
            # AVSBench's label space is the 71 classes: no second, equal "own label space" figure
            assert not {k for k in numbers if k.endswith("_dataset")}, (name, numbers)
        assert "label_space" not in result


def check_planted_error(result: dict, stage: int) -> None:
    for subset, numbers in result["binary"].items():
        assert numbers["miou"] < 0.99 and numbers["fscore"] < 0.99, (subset, numbers)
    for name, numbers in result["semantic"].items():
        assert numbers["miou_present"] < 0.99, (name, numbers)


@pytest.mark.parametrize("plant", ["oracle", "frame", "video"])
def test_stage2_equals_reference(bench, monkeypatch, tmp_path, plant):
    """evaluate() of a stage-2 checkpoint: binary v1s/v1m/v2 (from the class scores) and
    AVSS per subset and all, the JSON and the per-class CSV, equal the reference."""
    install_predictor(monkeypatch, bench.planted(plant))
    result = run_evaluate(bench, 2, tmp_path / "s2.json")
    expected = reference(bench, plant, 2)
    assert_matches(result, expected)
    if plant == "oracle":
        check_oracle(result, bench, 2)
    else:
        check_planted_error(result, 2)
    # what was written is what was scored: the JSON and the per-class CSV
    assert json.loads((tmp_path / "s2.json").read_text())["semantic"] == result["semantic"]
    rows = list(csv.DictReader((tmp_path / "s2.per_class.csv").open()))
    assert [float(r["iou"]) for r in rows] == pytest.approx(expected["semantic"]["all"]["per_class_iou"], abs=1e-6)
    assert [int(r["count"]) for r in rows] == expected["semantic"]["all"]["per_class_count"]


@pytest.mark.parametrize("plant", ["oracle", "frame", "video"])
def test_stage1_cli_equals_reference(bench, monkeypatch, tmp_path, plant):
    """`ssp evaluate` (the CLI, in-process) of a stage-1 checkpoint: its JSON's binary
    numbers equal the reference."""
    from ssp.cli import main as cli

    install_predictor(monkeypatch, bench.planted(plant))
    out = tmp_path / "s1.json"
    args = ["evaluate", "--checkpoint", str(bench.checkpoints[1]), "--data", str(bench.data)]
    args += ["--out", str(out), "--split", "test", "--fscore-batch-videos", str(FSCORE_BATCH_VIDEOS)]
    assert cli([*args, "--params", os.devnull, "--device", "cpu", "--no-track"]) == 0
    result = json.loads(out.read_text())
    expected = reference(bench, plant, 1)
    assert_matches(result, expected)
    if plant == "oracle":
        check_oracle(result, bench, 1)
    else:
        check_planted_error(result, 1)


def test_only_labelled_frames_are_scored(bench, monkeypatch, tmp_path):
    """v1s train: frame 0 labelled only; the oracle predicts every other frame wrong."""
    install_predictor(monkeypatch, bench.planted("oracle"))
    result = run_evaluate(bench, 1, tmp_path / "train.json", split="train")
    expected = reference(bench, "oracle", 1, split="train")
    assert expected["binary"]["v1s"]["num_frames"] == 2
    assert_matches(result, expected)
    check_oracle(result, bench, 1)

"""AVSBench-exact metrics (ssp.metrics): hand-computed quirks, agreement with a naive
transcription of the official code, and streaming == one-shot."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssp import metrics as M

B2 = 0.3


def f_measure(p: float, r: float) -> float:
    return (1 + B2) * p * r / (B2 * p + r)


# ---------------------------------------------------------------------------------------
# Naive references: loop-based transcriptions of the AVSBench definitions (docs/design.md, "Metric conventions"),
# written the way the official code reads -- per frame, per threshold, per class.
# Deliberately independent of the vectorised code under test.
# ---------------------------------------------------------------------------------------
def ref_mask_iou(logits: torch.Tensor, gt: torch.Tensor) -> float:
    """Official mask_iou over one batch (mean over its frames)."""
    num_frames = logits.shape[0]
    num_pixels = logits.shape[-1] * logits.shape[-2]
    total = 0.0
    for i in range(num_frames):
        pred = (torch.sigmoid(logits[i]) > 0.5).int()
        target = gt[i].float()
        if target.sum() == 0:
            inter = ((1 - target) * (1 - pred)).sum().item()
            union = num_pixels
        else:
            inter = (pred * target).sum().item()
            union = torch.max(pred, target).sum().item()
        total += inter / (union + 1e-7)
    return total / num_frames


def ref_eval_fmeasure(logits: torch.Tensor, gt: torch.Tensor) -> float:
    """Official Eval_Fmeasure over one batch."""
    probs = torch.sigmoid(logits)
    thresholds = torch.linspace(0, 1 - 1e-10, 255)
    avg_f, img_num = 0.0, 0
    score = torch.zeros(255)
    for img in range(probs.shape[0]):
        if torch.mean(gt[img].float()) == 0.0:
            continue
        prec, recall = torch.zeros(255), torch.zeros(255)
        for i in range(255):
            y_temp = (probs[img] >= thresholds[i]).float()
            tp = (y_temp * gt[img].float()).sum()
            prec[i] = tp / (y_temp.sum() + 1e-20)
            recall[i] = tp / (gt[img].float().sum() + 1e-20)
        f_score = (1 + B2) * prec * recall / (B2 * prec + recall)
        f_score[f_score != f_score] = 0  # noqa: PLR0124  (the official code, verbatim: NaN -> 0)
        avg_f = avg_f + f_score
        img_num += 1
        score = avg_f / img_num
    return score.max().item()


def ref_batched(fn, logits, gt, batch_frames):
    """The official test loop: one score per batch, then the mean over batches."""
    scores = [
        fn(logits[s : s + batch_frames], gt[s : s + batch_frames]) for s in range(0, logits.shape[0], batch_frames)
    ]
    return sum(scores) / len(scores)


def ref_per_frame_fscore(logits, gt):
    scores = [ref_eval_fmeasure(logits[i : i + 1], gt[i : i + 1]) for i in range(logits.shape[0]) if gt[i].sum() > 0]
    return sum(scores) / len(scores)


def ref_semantic(logits: torch.Tensor, gt: torch.Tensor, num_classes: int) -> dict:
    """AVSS: per frame, per class, with plain Python arithmetic."""
    iou_sum = [0.0] * num_classes
    f_sum = [0.0] * num_classes
    count = [0] * num_classes
    for frame in range(logits.shape[0]):
        pred = torch.argmax(torch.softmax(logits[frame], dim=0), dim=0)
        valid = gt[frame] >= 0
        for c in range(num_classes):
            inter = int(((pred == c) & (gt[frame] == c) & valid).sum())
            area_pred = int(((pred == c) & valid).sum())
            area_gt = int((gt[frame] == c).sum())
            union = area_pred + area_gt - inter
            iou_sum[c] += inter / (union + 2.220446049250313e-16)
            precision = inter / area_pred if area_pred else math.nan
            recall = inter / area_gt if area_gt else math.nan
            denominator = B2 * precision + recall
            f = (1 + B2) * precision * recall / denominator if denominator != 0 else math.nan
            f_sum[c] += 0.0 if math.isnan(f) else f
            if union > 0:
                count[c] += 1
    per_iou = [s / n if n else 0.0 for s, n in zip(iou_sum, count)]
    per_f = [s / n if n else 0.0 for s, n in zip(f_sum, count)]
    return {
        "miou": sum(per_iou) / num_classes,
        "fscore": sum(per_f) / num_classes,
        "miou_no_bg": sum(per_iou[1:]) / (num_classes - 1),
        "fscore_no_bg": sum(per_f[1:]) / (num_classes - 1),
        "per_class_iou": per_iou,
        "per_class_fscore": per_f,
        "per_class_count": count,
    }


# ---------------------------------------------------------------------------------------
# Random inputs
# ---------------------------------------------------------------------------------------
def random_binary(num_frames=24, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_frames, size, size, generator=g) * 4
    gt = (torch.rand(num_frames, size, size, generator=g) < 0.35).long()
    gt[[2, 3, 9]] = 0  # empty GTs (frames 2 and 3 share a batch of 4)
    gt[5] = 1  # a full GT
    logits[7] = 0.0  # sigmoid exactly 0.5: background
    logits[8, :6] = 30.0  # saturated: sigmoid == 1.0 reaches the last threshold
    logits[8, 6:] = -30.0
    return logits, gt


def random_semantic(num_frames=9, size=10, num_classes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_frames, num_classes, size, size, generator=g)
    present = torch.tensor([0, 1, 2, 4])  # 3, 5, 6 never in the GT
    gt = present[torch.randint(0, len(present), (num_frames, size, size), generator=g)]
    logits[:, 6] = -50.0  # class 6 never predicted either: scores 0
    # help the model get some pixels right so IoUs are not all tiny
    logits += (
        3.0
        * torch.nn.functional.one_hot(gt, num_classes).permute(0, 3, 1, 2)
        * (torch.rand(num_frames, 1, size, size, generator=g) < 0.6)
    )
    return logits, gt


# ---------------------------------------------------------------------------------------
# Binary mIoU: hand-computed rules
# ---------------------------------------------------------------------------------------
def test_miou_empty_gt_scores_background_fraction():
    gt = torch.zeros(1, 2, 2, dtype=torch.long)
    logits = torch.tensor([[[5.0, -5.0], [-5.0, -5.0]]])  # 1 of 4 pixels predicted
    assert M.binary_miou(logits, gt) == pytest.approx(3 / (4 + 1e-7), abs=1e-15)
    # nothing predicted on an empty GT is a perfect frame (up to eps)
    assert M.binary_miou(-logits.abs(), gt) == pytest.approx(4 / (4 + 1e-7), abs=1e-15)


def test_miou_eps_in_denominator():
    gt = torch.tensor([[[1, 0], [0, 0]]])
    logits = torch.tensor([[[5.0, -5.0], [-5.0, -5.0]]])
    iou = M.binary_miou(logits, gt)
    assert iou == pytest.approx(1 / (1 + 1e-7), abs=1e-15)
    assert iou < 1.0
    # partial overlap: inter 1, union 3
    logits2 = torch.tensor([[[5.0, 5.0], [5.0, -5.0]]])
    assert M.binary_miou(logits2, gt) == pytest.approx(1 / (3 + 1e-7), abs=1e-15)


def test_miou_threshold_is_strict():
    gt = torch.tensor([[[1, 1], [0, 0]]])
    # logit 0 -> sigmoid 0.5 -> not > 0.5 -> background: IoU 0
    assert M.binary_miou(torch.zeros(1, 2, 2), gt) == 0.0
    # a tiny positive logit rounds to sigmoid 0.5 in float32 (the official dtype) ...
    tiny = torch.tensor([[[1e-9, 1e-9], [-5.0, -5.0]]])
    assert M.binary_miou(tiny, gt) == 0.0
    # ... but is foreground when the logits are given in float64
    assert M.binary_miou(tiny.double(), gt) == pytest.approx(2 / (2 + 1e-7), abs=1e-15)


def test_miou_mean_over_frames_and_official_batch_mean():
    gt = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    logits = torch.tensor(
        [
            [[5.0, -5.0], [-5.0, -5.0]],  # IoU 1
            [[5.0, -5.0], [-5.0, -5.0]],  # IoU 1/2
            [[5.0, 5.0], [-5.0, -5.0]],
        ]
    )  # empty GT: 2/4
    per_frame = [1 / (1 + 1e-7), 1 / (2 + 1e-7), 2 / (4 + 1e-7)]
    assert M.binary_miou(logits, gt) == pytest.approx(sum(per_frame) / 3, abs=1e-14)
    # batches of 2: (mean(f0, f1) + f2) / 2 -- differs when the split does not divide
    expected = ((per_frame[0] + per_frame[1]) / 2 + per_frame[2]) / 2
    assert M.binary_miou(logits, gt, batch_frames=2) == pytest.approx(expected, abs=1e-14)


def test_binary_inputs_numpy_channel_dim_and_bad_gt():
    logits, gt = random_binary(num_frames=12, size=6)
    expected = M.binary_miou(logits, gt)
    assert M.binary_miou(logits.numpy(), gt.numpy()) == expected
    assert M.binary_miou(logits.unsqueeze(1), gt.unsqueeze(1).bool()) == expected
    from_numpy = M.binary_fscore(logits.numpy(), gt.numpy().astype(np.uint8))
    assert from_numpy == M.binary_fscore(logits, gt)
    with pytest.raises(ValueError, match="0 and 1"):
        M.binary_miou(logits, gt * 255)
    with pytest.raises(ValueError, match="shape"):
        M.binary_miou(logits, gt[:, :5])


# ---------------------------------------------------------------------------------------
# Binary F-score: hand-computed rules
# ---------------------------------------------------------------------------------------
# Frame A: gt [1,1,0,0], sigmoid [1,0,1,0]. Threshold 0 predicts all 4 pixels (P 1/2,
# R 1); every other threshold, 1.0 included, predicts pixels 0 and 2 (P 1/2, R 1/2).
FRAME_A = (torch.tensor([[20.0, -20.0], [20.0, -20.0]]), torch.tensor([[1, 1], [0, 0]]))
F_A_T0, F_A_REST = f_measure(0.5, 1.0), f_measure(0.5, 0.5)
# Frame B: gt [1,0,0,0], only pixel 0 on. Threshold 0: P 1/4, R 1; then P = R = 1.
FRAME_B = (torch.tensor([[20.0, -20.0], [-20.0, -20.0]]), torch.tensor([[1, 0], [0, 0]]))
F_B_T0, F_B_REST = f_measure(0.25, 1.0), 1.0
# Frame E: empty GT
FRAME_E = (torch.tensor([[3.0, -1.0], [0.5, 9.0]]), torch.zeros(2, 2, dtype=torch.long))


def stack(*frames):
    return torch.stack([f[0] for f in frames]), torch.stack([f[1] for f in frames])


def test_fscore_thresholds_match_official_float32_linspace():
    thresholds = M._f_thresholds(torch.device("cpu"), torch.float32)
    assert len(thresholds) == 255 and thresholds[0] == 0.0
    assert thresholds[-1] == 1.0  # 1 - 1e-10 rounds to 1.0 in float32
    assert torch.equal(thresholds, torch.linspace(0, 1 - 1e-10, 255))


def test_fscore_curve_hand_computed():
    stats = M._binary_frame_stats(*stack(FRAME_A, FRAME_B))
    curve_a, curve_b = stats["fcurve"]
    assert curve_a[0].item() == pytest.approx(F_A_T0, abs=1e-12)
    assert torch.allclose(curve_a[1:], torch.full((254,), F_A_REST, dtype=torch.float64))
    assert curve_b[0].item() == pytest.approx(F_B_T0, abs=1e-12)
    assert torch.allclose(curve_b[1:], torch.full((254,), F_B_REST, dtype=torch.float64))
    assert M.binary_fscore(*stack(FRAME_A)) == pytest.approx(F_A_T0, abs=1e-12)


def test_fscore_nan_becomes_zero():
    # the only GT pixel has sigmoid ~2e-9: from threshold 1 on tp = 0, so P = R = 0
    # and F = 0/0 = NaN, which must count as 0 (not poison the curve or the mean)
    logits = torch.tensor([[[-20.0, 20.0], [20.0, 20.0]]])
    gt = torch.tensor([[[1, 0], [0, 0]]])
    curve = M._binary_frame_stats(logits, gt)["fcurve"][0]
    assert not torch.isnan(curve).any()
    assert torch.all(curve[1:] == 0.0)
    assert curve[0].item() == pytest.approx(f_measure(0.25, 1.0), abs=1e-12)
    # a frame with nothing predicted anywhere above threshold 0
    assert M.binary_fscore(torch.full((1, 2, 2), -20.0), gt) == pytest.approx(f_measure(0.25, 1.0), abs=1e-12)


def test_fscore_skips_empty_gt_frames():
    logits, gt = stack(FRAME_A, FRAME_E)
    assert M.binary_fscore(logits, gt) == pytest.approx(F_A_T0, abs=1e-12)
    assert M.binary_fscore(logits, gt, batch_frames=2) == pytest.approx(F_A_T0, abs=1e-12)
    # only empty GTs: per-frame mode has nothing to average and returns 0
    assert M.binary_fscore(*stack(FRAME_E, FRAME_E)) == 0.0


def test_fscore_batch_of_empty_gts_scores_zero():
    logits, gt = stack(FRAME_A, FRAME_A, FRAME_E, FRAME_E)
    assert M.binary_fscore(logits, gt, batch_frames=2) == pytest.approx(F_A_T0 / 2, abs=1e-12)
    assert M.binary_fscore(logits, gt) == pytest.approx(F_A_T0, abs=1e-12)


def test_fscore_depends_on_batch_size():
    logits, gt = stack(FRAME_A, FRAME_B)
    one_per_batch = M.binary_fscore(logits, gt, batch_frames=1)
    two_per_batch = M.binary_fscore(logits, gt, batch_frames=2)
    # batch of 1: each frame keeps its own best threshold
    assert one_per_batch == pytest.approx((F_A_T0 + F_B_REST) / 2, abs=1e-12)
    # batch of 2: one threshold for the mean curve
    assert two_per_batch == pytest.approx(max((F_A_T0 + F_B_T0) / 2, (F_A_REST + F_B_REST) / 2), abs=1e-12)
    assert two_per_batch == pytest.approx(0.75, abs=1e-12)
    assert one_per_batch - two_per_batch > 0.03
    # per-frame mode equals batches of one frame when no GT is empty
    assert M.binary_fscore(logits, gt) == pytest.approx(one_per_batch, abs=1e-12)
    with pytest.raises(ValueError, match="batch_frames"):
        M.binary_fscore(logits, gt, batch_frames=0)


# ---------------------------------------------------------------------------------------
# Binary: agreement with the naive official transcription
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_frames", [4, 10])
def test_binary_agrees_with_reference(batch_frames):
    logits, gt = random_binary()
    assert M.binary_miou(logits, gt, batch_frames=batch_frames) == pytest.approx(
        ref_batched(ref_mask_iou, logits, gt, batch_frames), abs=1e-6
    )
    assert M.binary_fscore(logits, gt, batch_frames=batch_frames) == pytest.approx(
        ref_batched(ref_eval_fmeasure, logits, gt, batch_frames), abs=1e-6
    )


def test_binary_per_frame_agrees_with_reference():
    logits, gt = random_binary(seed=1)
    assert M.binary_miou(logits, gt) == pytest.approx(ref_mask_iou(logits, gt), abs=1e-6)
    assert M.binary_fscore(logits, gt) == pytest.approx(ref_per_frame_fscore(logits, gt), abs=1e-6)


# ---------------------------------------------------------------------------------------
# BinaryMeter: streaming == one-shot
# ---------------------------------------------------------------------------------------
def test_binary_meter_in_chunks_equals_one_shot():
    logits, gt = random_binary(num_frames=30)
    meter = M.BinaryMeter(batch_frames=8, chunk_frames=3)
    for start, stop in [(0, 1), (1, 9), (9, 10), (10, 23), (23, 30)]:
        meter.update(logits[start:stop], gt[start:stop])
    out = meter.compute()
    assert out["miou"] == pytest.approx(M.binary_miou(logits, gt, batch_frames=8), abs=1e-12)
    assert out["miou_per_frame"] == pytest.approx(M.binary_miou(logits, gt), abs=1e-12)
    assert out["fscore"] == pytest.approx(M.binary_fscore(logits, gt, batch_frames=8), abs=1e-12)
    assert out["fscore_per_frame"] == pytest.approx(M.binary_fscore(logits, gt), abs=1e-12)
    assert (out["num_frames"], out["num_frames_empty_gt"], out["num_batches"]) == (30, 3, 4)
    assert "batches of 8 frames" in meter.conventions()["fscore"]
    meter.reset()
    with pytest.raises(ValueError, match="no frames"):
        meter.compute()


def test_binary_meter_frame_ids_restore_order_and_drop_duplicates():
    logits, gt = random_binary(num_frames=12, seed=3)
    expected = M.BinaryMeter(batch_frames=4)
    expected.update(logits, gt)
    order = torch.tensor([5, 0, 11, 3, 7, 1, 10, 2, 9, 4, 8, 6])
    shuffled = M.BinaryMeter(batch_frames=4)
    shuffled.update(logits[order[:7]], gt[order[:7]], frame_ids=order[:7])
    shuffled.update(logits[order[7:]], gt[order[7:]], frame_ids=order[7:].numpy())
    # a padding DistributedSampler repeats frames: scored once
    shuffled.update(logits[:2], gt[:2], frame_ids=[0, 1])
    assert shuffled.compute() == expected.compute()
    with pytest.raises(ValueError, match="frame_ids"):
        shuffled.update(logits[:1], gt[:1])


def test_binary_meter_merge_and_state_roundtrip():
    logits, gt = random_binary(num_frames=16, seed=4)
    first, second = M.BinaryMeter(batch_frames=4), M.BinaryMeter(batch_frames=4)
    first.update(logits[:6], gt[:6])
    second.update(logits[6:], gt[6:])
    first.merge(second)
    whole = M.BinaryMeter(batch_frames=4)
    whole.update(logits, gt)
    assert first.compute() == whole.compute()
    restored = M.BinaryMeter(batch_frames=4)
    restored.load_state_tensors(first.state_tensors())
    assert restored.compute() == whole.compute()
    restored.update(logits[:4], gt[:4])  # continues after the loaded frames
    assert restored.num_frames == 20
    with pytest.raises(ValueError, match="batch_frames"):
        first.merge(M.BinaryMeter(batch_frames=5))


# ---------------------------------------------------------------------------------------
# Semantic: hand-computed rules
# ---------------------------------------------------------------------------------------
def labels(*rows):
    return torch.tensor([list(rows)])


def test_semantic_absent_classes_count_as_zero():
    meter = M.SemanticMeter(num_classes=4)
    frame = labels([0, 0], [1, 1])
    meter.update_labels(frame, frame)  # perfect, classes 0 and 1 only
    out = meter.compute()
    perfect = 2 / (2 + 2.220446049250313e-16)
    assert out["per_class_iou"] == pytest.approx([perfect, perfect, 0.0, 0.0], abs=1e-15)
    assert out["per_class_fscore"] == pytest.approx([1.0, 1.0, 0.0, 0.0], abs=1e-15)
    assert out["per_class_count"] == [1, 1, 0, 0]
    assert out["miou"] == pytest.approx(perfect / 2, abs=1e-15)  # mean over ALL 4
    assert out["fscore"] == pytest.approx(0.5, abs=1e-15)
    assert out["miou_present"] == pytest.approx(perfect, abs=1e-15)
    assert out["num_classes_present"] == 2


def test_semantic_count_only_frames_where_union_positive():
    meter = M.SemanticMeter(num_classes=3)
    # frame 1: class 2 half right (inter 1, union 2); frame 2: class 2 absent, unpredicted
    meter.update_labels(labels([2, 2], [0, 0]), labels([2, 0], [0, 0]))
    meter.update_labels(labels([1, 1], [0, 0]), labels([1, 1], [0, 0]))
    out = meter.compute()
    assert out["per_class_count"] == [2, 1, 1]
    assert out["per_class_iou"][2] == pytest.approx(0.5, abs=1e-12)  # not 0.25
    assert out["per_class_fscore"][2] == pytest.approx(f_measure(0.5, 1.0), abs=1e-12)
    # background: frame 1 inter 2 union 3, frame 2 perfect
    assert out["per_class_iou"][0] == pytest.approx((2 / 3 + 1) / 2, abs=1e-12)
    assert out["per_class_fscore"][0] == pytest.approx((f_measure(1.0, 2 / 3) + 1) / 2, abs=1e-12)


def test_semantic_precision_recall_nan_handling():
    meter = M.SemanticMeter(num_classes=3)
    # class 1 predicted but absent (R = 0/0), class 2 present but not predicted (P = 0/0)
    meter.update_labels(labels([1, 0], [0, 0]), labels([0, 0], [2, 0]))
    out = meter.compute()
    assert out["per_class_count"] == [1, 1, 1]  # union > 0 for both
    assert out["per_class_iou"][1:] == [0.0, 0.0]
    assert out["per_class_fscore"][1:] == [0.0, 0.0]  # NaN -> 0, and counted
    assert not any(math.isnan(v) for v in out["per_class_fscore"])
    # background: pred 3 pixels, gt 3 pixels, 2 in common
    assert out["per_class_fscore"][0] == pytest.approx(f_measure(2 / 3, 2 / 3), abs=1e-12)
    assert out["per_class_iou"][0] == pytest.approx(2 / 4, abs=1e-12)


def test_semantic_no_bg_drops_class_zero_not_the_last():
    meter = M.SemanticMeter(num_classes=3)
    meter.update_labels(labels([0, 0], [1, 2]), labels([0, 0], [1, 1]))
    out = meter.compute()
    per_iou = out["per_class_iou"]
    assert per_iou[0] > 0.99 and per_iou[2] == 0.0  # background right, class 2 wrong
    assert out["miou_no_bg"] == pytest.approx((per_iou[1] + per_iou[2]) / 2, abs=1e-15)
    assert out["miou_no_bg"] != pytest.approx((per_iou[0] + per_iou[1]) / 2)  # the [:-1] bug
    per_f = out["per_class_fscore"]
    assert out["fscore_no_bg"] == pytest.approx((per_f[1] + per_f[2]) / 2, abs=1e-15)


def test_semantic_argmax_of_softmax_and_ties():
    # two logits one float32 ulp apart become equal after the softmax: the official
    # argmax(softmax) then picks the first class, a raw argmax would pick the second
    low = torch.tensor(0.001)
    high = torch.nextafter(low, torch.tensor(1.0))
    logits = torch.full((1, 3, 1, 2), -10.0)
    logits[0, 0, 0, 0], logits[0, 1, 0, 0] = low, high
    logits[0, 2, 0, 1] = 5.0
    meter = M.SemanticMeter(num_classes=3)
    meter.update(logits, torch.tensor([[[0, 2]]]))
    assert meter.compute()["per_class_count"] == [1, 0, 1]  # class 1 never predicted
    assert meter.compute()["miou"] == pytest.approx(2 / 3, abs=1e-12)


def test_semantic_padding_frames_skipped_by_default():
    real, pad = labels([1, 1], [0, 0]), labels([0, 0], [0, 0])
    pred = torch.cat([real, pad, pad])
    gt = torch.cat([real, pad, pad])
    valid = torch.tensor([True, False, False])
    default = M.SemanticMeter(num_classes=2)
    default.update_labels(pred, gt, frame_valid=valid)
    padded = M.SemanticMeter(num_classes=2, include_padding=True)
    padded.update_labels(pred, gt, frame_valid=valid)
    assert default.compute()["per_class_count"] == [1, 1]
    assert default.compute()["num_padding_frames_skipped"] == 2
    assert padded.compute()["per_class_count"] == [3, 1]  # padding inflates background
    assert "real frames only" in default.conventions()["miou"]
    assert "padding frames scored" in padded.conventions()["miou"]


def test_semantic_negative_gt_pixels_are_ignored_and_bad_input_rejected():
    meter = M.SemanticMeter(num_classes=3)
    meter.update_labels(labels([2, 1], [0, 0]), labels([-1, 1], [0, 0]))
    out = meter.compute()
    assert out["per_class_count"] == [1, 1, 0]  # the prediction 2 is not counted
    with pytest.raises(ValueError, match="num_classes"):
        meter.update_labels(labels([0, 0]), labels([0, 3]))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        meter.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


# ---------------------------------------------------------------------------------------
# Semantic: agreement with the naive transcription, streaming == one-shot
# ---------------------------------------------------------------------------------------
def test_semantic_agrees_with_reference():
    logits, gt = random_semantic()
    gt[0, 0, :3] = -1  # a few ignored pixels
    out = M.semantic_scores(logits, gt)
    ref = ref_semantic(logits, gt, num_classes=7)
    assert out["per_class_count"] == ref["per_class_count"]
    # class 3: predicted but never in the GT; class 6: neither (scores 0 in the mean)
    assert ref["per_class_count"][3] > 0 and ref["per_class_count"][6] == 0
    for key in ("miou", "fscore", "miou_no_bg", "fscore_no_bg"):
        assert out[key] == pytest.approx(ref[key], abs=1e-6), key
    assert out["per_class_iou"] == pytest.approx(ref["per_class_iou"], abs=1e-6)
    assert out["per_class_fscore"] == pytest.approx(ref["per_class_fscore"], abs=1e-6)


def test_semantic_meter_in_chunks_equals_one_shot():
    logits, gt = random_semantic(num_frames=11, seed=2)
    one_shot = M.semantic_scores(logits, gt)
    meter = M.SemanticMeter(num_classes=7, pixels_per_chunk=7 * 100 * 2)  # 2 frames at a time
    for start, stop in [(0, 3), (3, 4), (4, 11)]:
        meter.update(logits[start:stop].numpy(), gt[start:stop].numpy())
    streamed = meter.compute()
    assert streamed.keys() == one_shot.keys()
    for key, value in one_shot.items():
        assert streamed[key] == pytest.approx(value, abs=1e-12), key
    # already-argmaxed predictions give the same numbers
    by_labels = M.SemanticMeter(num_classes=7)
    by_labels.update_labels(torch.softmax(logits, 1).argmax(1), gt)
    assert by_labels.compute()["miou"] == pytest.approx(one_shot["miou"], abs=1e-12)


def test_semantic_merge_and_state_roundtrip():
    logits, gt = random_semantic(num_frames=8, seed=5)
    first, second = M.SemanticMeter(num_classes=7), M.SemanticMeter(num_classes=7)
    first.update(logits[:5], gt[:5])
    second.update(logits[5:], gt[5:])
    # what an all-reduce does: element-wise sum of the state tensors
    summed = {k: v + second.state_tensors()[k] for k, v in first.state_tensors().items()}
    first.merge(second)
    whole = M.semantic_scores(logits, gt)
    for key in ("miou", "fscore", "miou_no_bg", "fscore_no_bg", "num_frames"):
        assert first.compute()[key] == pytest.approx(whole[key], abs=1e-12)
    reduced = M.SemanticMeter(num_classes=7)
    reduced.load_state_tensors(summed)
    assert reduced.compute()["per_class_iou"] == pytest.approx(whole["per_class_iou"], abs=1e-12)
    assert reduced.compute()["num_frames"] == 8


# ---------------------------------------------------------------------------------------
# The dataset's own label space (miou_dataset / fscore_dataset)
# ---------------------------------------------------------------------------------------
def test_own_label_space_by_hand():
    """C = 5 classes, label space {0, 1, 2}. Frame A: GT two pixels of class 1; the
    prediction hits one, misses one (predicted as class 3, outside the label space) and
    adds one. Frame B: class 2, predicted exactly. Per class over the split:
    IoU_0 = (5/6 + 1) / 2, IoU_1 = 1/3, IoU_2 = 1, IoU_3 = 0 (predicted, never present),
    IoU_4 = 0 (nothing)."""
    gt = torch.tensor([[[1, 1, 0, 0], [0, 0, 0, 0]], [[2, 2, 0, 0], [0, 0, 0, 0]]])
    pred = torch.tensor([[[1, 3, 0, 0], [0, 0, 0, 1]], [[2, 2, 0, 0], [0, 0, 0, 0]]])
    meter = M.SemanticMeter(num_classes=5, label_space=[2, 0, 1])  # any order
    meter.update_labels(pred, gt)
    got = meter.compute()
    iou = [(5 / 6 + 1) / 2, 1 / 3, 1.0]
    f0_frame_a = f_measure(1.0, 5 / 6)  # class 0 in frame A: P = 5/5, R = 5/6
    fscore = [(f0_frame_a + 1) / 2, f_measure(0.5, 0.5), 1.0]
    assert meter.label_space == (0, 1, 2)
    assert got["miou_dataset"] == pytest.approx(sum(iou) / 3) == pytest.approx(0.75)
    assert got["fscore_dataset"] == pytest.approx(sum(fscore) / 3)
    assert got["num_classes_dataset"] == 3
    # the published mean over all 5 classes and the present-class mean (class 3 adds a 0)
    assert got["miou"] == pytest.approx(sum(iou) / 5) == pytest.approx(got["miou_dataset"] * 3 / 5)
    assert got["miou_present"] == pytest.approx(sum(iou) / 4)
    # without a label space the meter is unchanged: no *_dataset numbers
    plain = M.SemanticMeter(num_classes=5)
    plain.update_labels(pred, gt)
    assert not {k for k in plain.compute() if k.endswith("_dataset")}
    assert "miou_dataset" not in plain.conventions()
    assert "background + K = 2 classes" in meter.conventions()["miou_dataset"]
    # a class of the label space absent from every frame scores 0: the mean keeps K + 1 terms
    wider = M.SemanticMeter(num_classes=5, label_space=(0, 1, 2, 4))
    wider.update_labels(pred, gt)
    assert wider.compute()["miou_dataset"] == pytest.approx(sum(iou) / 4)


def test_own_label_space_checks_and_merge():
    for bad in ([1, 2], [0], [0, 5]):  # no background, no class, out of range
        with pytest.raises(ValueError, match="label_space"):
            M.SemanticMeter(num_classes=5, label_space=bad)
    with pytest.raises(ValueError, match="label spaces"):
        M.SemanticMeter(5, label_space=(0, 1)).merge(M.SemanticMeter(5, label_space=(0, 1, 2)))
    logits, gt = random_semantic(num_frames=6, seed=8)
    first, second = M.SemanticMeter(7, label_space=(0, 2, 3)), M.SemanticMeter(7, label_space=(0, 2, 3))
    first.update(logits[:3], gt[:3])
    second.update(logits[3:], gt[3:])
    first.merge(second)
    whole = M.semantic_scores(logits, gt, label_space=(0, 2, 3))
    assert first.compute()["miou_dataset"] == pytest.approx(whole["miou_dataset"], abs=1e-12)
    assert whole["miou_dataset"] == pytest.approx(np.mean([whole["per_class_iou"][c] for c in (0, 2, 3)]))


def test_dataset_label_space_from_the_files(tmp_path):
    import json

    from ssp.errors import DataError

    assert M.dataset_label_space(tmp_path) is None  # no manifest: AVSBench, every class
    label2idx = {"background": 1, "accordion": 2, "bell": 3, "drum": 4, "dog": 5}
    (tmp_path / "label2idx.json").write_text(json.dumps(label2idx))
    (tmp_path / "manifest.json").write_text(json.dumps({"generator": "another tool", "classes": ["bell"]}))
    assert M.dataset_label_space(tmp_path) is None
    (tmp_path / "manifest.json").write_text(json.dumps({"generator": "ssp synth", "classes": ["dog", "bell"]}))
    assert M.dataset_label_space(tmp_path) == (0, 2, 4)  # mask index = label2idx value - 1
    (tmp_path / "manifest.json").write_text(json.dumps({"generator": "ssp synth", "classes": ["bell", "harp"]}))
    with pytest.raises(DataError, match=r"label2idx.json.*harp"):
        M.dataset_label_space(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest.json"):
        M.dataset_label_space(tmp_path)


def test_generated_benchmark_label_space_is_background_and_its_classes(tmp_path):
    from ssp.data.synthetic import SynthConfig, generate_dataset
    from ssp.params import DataParams

    data = generate_dataset(
        SynthConfig.from_params(DataParams(seed=0, size="tiny", classes=3), scale=0.5), tmp_path / "d", progress=False
    )
    assert M.dataset_label_space(data) == (0, 1, 2, 3)


# ---------------------------------------------------------------------------------------
# DDP: sync() over two gloo ranks equals one process seeing every frame
# ---------------------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import json

    import torch.distributed as dist

    torch.set_num_threads(1)  # two ranks on 2 cores
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        logits, gt = random_binary(num_frames=10, seed=6)
        # a DistributedSampler-like split: strided, the last rank padded with frame 0
        ids = {0: [0, 2, 4, 6, 8], 1: [1, 3, 5, 7, 9, 0]}[rank]
        binary = M.BinaryMeter(batch_frames=4)
        binary.update(logits[ids], gt[ids], frame_ids=ids)
        binary.sync()
        in_rank_order = M.BinaryMeter(batch_frames=4)
        in_rank_order.update(logits[ids[:5]], gt[ids[:5]])
        in_rank_order.sync()
        sem_logits, sem_gt = random_semantic(num_frames=6, seed=7)
        semantic = M.SemanticMeter(num_classes=7)
        semantic.update(sem_logits[rank::2], sem_gt[rank::2])
        semantic.sync()
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(
                {"binary": binary.compute(), "rank_order": in_rank_order.compute(), "semantic": semantic.compute()}, f
            )
    finally:
        dist.destroy_process_group()


def test_sync_across_two_gloo_ranks(tmp_path):
    import json

    import torch.multiprocessing as mp

    # spawn, not fork: forking a process that already runs threads (torch's pools, the
    # session's Prefect test server) can deadlock the child; gloo on CPU only
    context = mp.get_context("spawn")
    workers = [
        context.Process(target=_ddp_worker, args=(rank, 2, str(tmp_path / "init"), str(tmp_path))) for rank in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join(timeout=60)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
    assert [worker.exitcode for worker in workers] == [0, 0]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1]

    logits, gt = random_binary(num_frames=10, seed=6)
    single = M.BinaryMeter(batch_frames=4)
    single.update(logits, gt)
    assert results[0]["binary"] == pytest.approx(single.compute(), abs=1e-12)
    # without frame ids: rank 0's frames, then rank 1's
    rank_order = torch.tensor([0, 2, 4, 6, 8, 1, 3, 5, 7, 9])
    expected = M.BinaryMeter(batch_frames=4)
    expected.update(logits[rank_order], gt[rank_order])
    assert results[0]["rank_order"] == pytest.approx(expected.compute(), abs=1e-12)

    sem_logits, sem_gt = random_semantic(num_frames=6, seed=7)
    whole = M.semantic_scores(sem_logits, sem_gt)
    for key in ("miou", "fscore", "per_class_iou", "per_class_count", "num_frames"):
        assert results[0]["semantic"][key] == pytest.approx(whole[key], abs=1e-12), key

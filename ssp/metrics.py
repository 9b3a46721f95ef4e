"""AVSBench-exact evaluation metrics for S4 / MS3 (binary) and AVSS (semantic).

Published AVS/AVSS numbers come from the AVSBench evaluation code, quirks included.
This module reproduces those definitions (``docs/design.md``, "Metric conventions") so that our
numbers are comparable, and names the convention of every number it returns
(:data:`METRIC_CONVENTIONS`, ``Meter.conventions()``) so that reports can label them.

Binary (S4 / MS3), from ``avs_s4/utils/utility.py``:

- mIoU (``mask_iou``): prediction ``sigmoid(logit) > 0.5``; per frame
  ``|pred & gt| / (|pred | gt| + 1e-7)``; a frame with an empty GT scores the fraction
  of pixels predicted background; mean over frames (officially: mean of per-batch
  means, which is the per-frame mean when the split divides into batches).
- F-score (``Eval_Fmeasure``, beta^2 = 0.3): 255 thresholds
  ``torch.linspace(0, 1 - 1e-10, 255)`` in float32 (the last one rounds to exactly 1.0),
  a pixel is predicted at threshold t when ``sigmoid(logit) >= t``;
  ``P = tp / (|pred| + 1e-20)``, ``R = tp / (|gt| + 1e-20)``,
  ``F = (1 + b2) P R / (b2 P + R)``, NaN -> 0; frames with an empty GT are skipped.
  Official ("batch") mode: the F curve is averaged over the non-skipped frames of each
  test batch, the batch scores the max over thresholds, the result is the mean over
  batches, and a batch of empty GTs only scores 0 -- so the number depends on the test
  batch size (official: 4 videos). Per-frame mode: max over thresholds per non-empty
  frame, then the mean over those frames.

Semantic (AVSS), from ``avss/utils/compute_color_metrics.py`` and ``avss/test.py``:

- prediction = argmax over classes (of the softmax, as the official code does: the
  softmax can round two close logits to the same probability, and argmax then keeps
  the first class);
- per frame and class: inter_c, pred_c, gt_c pixel counts, union_c = pred_c + gt_c -
  inter_c, IoU_c = inter_c / (union_c + 2.220446049250313e-16), P_c = inter_c / pred_c,
  R_c = inter_c / gt_c, F_c = (1 + b2) P R / (b2 P + R), NaN -> 0;
- over the whole split: sum of IoU_c, sum of F_c and count_c = number of frames with
  union_c > 0; per-class score = sum / count (NaN -> 0); reported = mean over ALL
  classes, so a class never present nor predicted scores 0 and pulls the mean down;
- "no background": drop class 0 (the official ``[:-1]`` drops the last class, a bug).
- Real frames only by default: the official AVSS loader pads 5-frame videos to 10 and
  scores the padding too; :class:`SemanticMeter` skips frames flagged as padding unless
  built with ``include_padding=True``.

The dataset's own label space (not an AVSBench convention): a dataset that uses fewer
classes than AVSBench's 71 (the generated benchmark: background + K) is also scored over
background + its K classes (``miou_dataset`` / ``fscore_dataset``): the same per-class
scores, averaged over those K + 1 classes only, each counted whether or not it occurs in
the frames scored (one never present nor predicted scores 0, as in the 71-class mean).
A predicted class outside the label space is an error of the true class (it enlarges
that class's union) and adds no term. When the GT holds label-space classes only (always,
on the generated benchmark), ``miou_dataset = miou x C / (K + 1)``: classes the GT never
holds score 0 in both. :func:`dataset_label_space` reads the label space from the
dataset's files (None for AVSBench, whose label space is the 71 classes).

Everything is vectorised over pixels and classes (``bincount``), processes frames in
chunks to bound memory, accumulates in float64, runs on CPU or CUDA, and accepts torch
tensors or numpy arrays. Meters can be merged or synchronised across DDP ranks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ssp.errors import DataError

ArrayLike = torch.Tensor | np.ndarray

# ---------------------------------------------------------------------------------------
# Constants of the AVSBench definitions
# ---------------------------------------------------------------------------------------
F_BETA2 = 0.3  # beta^2 of the F-measure
NUM_F_THRESHOLDS = 255  # thresholds of the binary F curve
F_THRESHOLD_MAX = 1 - 1e-10  # last threshold (rounds to 1.0 in float32)
PR_EPS = 1e-20  # added to |pred| and |gt| in binary P and R
BINARY_IOU_EPS = 1e-7  # added to the union in mask_iou
SEMANTIC_IOU_EPS = 2.220446049250313e-16  # added to the union in the AVSS IoU
OFFICIAL_TEST_VIDEOS_PER_BATCH = 4  # official test_batch_size (videos)
OBJECT_FRAMES_PER_VIDEO = 5  # S4 and MS3 videos have 5 labelled frames
AVSS_NUM_CLASSES = 71  # 70 sound sources + background (index 0)


def official_batch_frames(
    frames_per_video: int = OBJECT_FRAMES_PER_VIDEO, videos_per_batch: int = OFFICIAL_TEST_VIDEOS_PER_BATCH
) -> int:
    """Frames in one official test batch: 4 videos x frames per video (S4/MS3: 20)."""
    if frames_per_video < 1 or videos_per_batch < 1:
        raise ValueError("frames_per_video and videos_per_batch must be >= 1")
    return frames_per_video * videos_per_batch


OFFICIAL_BATCH_FRAMES = official_batch_frames()

# ---------------------------------------------------------------------------------------
# Conventions: what each reported number means (reports print these next to numbers)
# ---------------------------------------------------------------------------------------
METRIC_CONVENTIONS: dict[str, dict[str, str]] = {
    "binary": {
        "miou": "AVSBench mask_iou (S4/MS3): sigmoid(logit) > 0.5, per-frame IoU with eps "
        "1e-7, an empty-GT frame scores its fraction of pixels predicted background; "
        "mean of per-batch means (= per-frame mean when the split divides into "
        "batches)",
        "miou_per_frame": "AVSBench mask_iou per frame, mean over all frames",
        "fscore": "AVSBench Eval_Fmeasure, official batch mode: beta^2 = 0.3, 255 thresholds "
        "(sigmoid >= t), F curve averaged over the non-empty-GT frames of each "
        "test batch (official batch = 4 videos), max over thresholds per batch, "
        "mean over batches, all-empty batch = 0; depends on the batch size",
        "fscore_per_frame": "AVSBench F-measure per frame: max over the 255 thresholds for "
        "each non-empty-GT frame, mean over those frames (independent "
        "of the batch size; not the published convention)",
    },
    "semantic": {
        "miou": "AVSBench AVSS mIoU: argmax over classes, per-frame IoU_c = inter / (union "
        "+ 2.2e-16) summed over the split and divided by the number of frames where "
        "class c is present or predicted; mean over ALL classes (a class never seen "
        "scores 0); real frames only (padding skipped)",
        "fscore": "AVSBench AVSS F-score: per-frame F_c (beta^2 = 0.3, NaN -> 0) summed over "
        "the split, divided by the same per-class frame count, mean over ALL "
        "classes; real frames only (padding skipped)",
        "miou_no_bg": "as miou, mean over classes 1..C-1 (background, class 0, dropped; "
        "the official code's [:-1] drops the last class instead, a bug)",
        "fscore_no_bg": "as fscore, mean over classes 1..C-1 (background dropped)",
        "miou_present": "as miou, mean over the classes present or predicted at least once "
        "(not a published convention; useful when few classes occur)",
        "fscore_present": "as fscore, mean over the classes present or predicted at least "
        "once (not a published convention)",
    },
}


# what the own-label-space numbers mean (SemanticMeter.conventions() adds them when the
# meter has a label space)
LABEL_SPACE_CONVENTIONS: dict[str, str] = {
    "miou_dataset": "AVSS mIoU over the dataset's own label space: as miou (argmax over all "
    "classes; per-class IoU summed over the split, divided by the frames where the class is "
    "present or predicted), mean over background + the K classes the dataset defines, each "
    "counted whether or not it occurs (one never present nor predicted scores 0); a predicted "
    "class outside the label space is an error of the true class and adds no term; equals "
    "miou x C / (K + 1) when the GT holds label-space classes only; real frames only",
    "fscore_dataset": "as fscore (beta^2 = 0.3), mean over the same background + K classes; real frames only",
}


# ---------------------------------------------------------------------------------------
# The dataset's own label space
# ---------------------------------------------------------------------------------------
GENERATED_MANIFEST = "manifest.json"  # `ssp synth`'s: generator, classes (the K class names), ...
GENERATOR_NAME = "ssp synth"
LABEL2IDX = "label2idx.json"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"cannot read it ({e})") from None


def dataset_label_space(root: str | Path) -> tuple[int, ...] | None:
    """The class indices (in the masks; background 0 first) of the label space a dataset
    defines when it is smaller than AVSBench's: for a generated benchmark (``manifest.json``
    written by ``ssp synth``, its ``classes`` = the K class names) background + those K
    classes, their indices from ``label2idx.json`` (released 1-based form: index = value
    - 1). None for any other dataset (AVSBench: the label space is every class).
    A class of the manifest that ``label2idx.json`` lacks is a :class:`DataError`."""
    root = Path(root)
    manifest_path = root / GENERATED_MANIFEST
    if not manifest_path.is_file():
        return None
    manifest = _read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR_NAME:
        return None
    classes = manifest.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DataError(manifest_path, "written by ssp synth but `classes` is not a non-empty list of class names")
    label2idx_path = root / LABEL2IDX
    label2idx = _read_json(label2idx_path)
    if not isinstance(label2idx, dict) or label2idx.get("background") != 1:
        raise DataError(label2idx_path, 'expected the released form {"background": 1, ...}')
    missing = [c for c in classes if not isinstance(label2idx.get(c), int)]
    if missing:
        raise DataError(label2idx_path, f"lacks the class(es) {missing} that {GENERATED_MANIFEST} defines")
    return (0, *sorted({label2idx[c] - 1 for c in classes}))


def label_space_record(label_space: Sequence[int], names: Sequence[str]) -> dict[str, Any]:
    """What a metrics JSON says about a label space: K, the class indices, their names
    (``names``: every class name by index, :func:`ssp.data.avsbench.class_names`) and the
    label reports print beside the numbers ("bg + K=8 classes")."""
    space = list(label_space)
    k = len(space) - 1
    return {
        "num_classes": k,
        "indices": space,
        "classes": [names[c] if c < len(names) else str(c) for c in space],
        "label": f"bg + K={k} classes",
    }


def _check_label_space(label_space: Sequence[int] | None, num_classes: int) -> tuple[int, ...] | None:
    if label_space is None:
        return None
    space = tuple(sorted({int(c) for c in label_space}))
    if not space or space[0] != 0 or space[-1] >= num_classes or len(space) < 2:
        raise ValueError(
            f"label_space must hold background (0) and at least one class below {num_classes}, got {list(label_space)}"
        )
    return space


# ---------------------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------------------
def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(x)
    except (TypeError, RuntimeError) as e:
        raise TypeError(f"{name}: expected a torch tensor or numpy array, got {type(x)!r}") from e


def _scoring_dtype(x: torch.Tensor) -> torch.Tensor:
    """Logits are scored in float32 (the official dtype) or float64 if given so;
    half precision and integers are upcast to float32 first."""
    if x.dtype in (torch.float32, torch.float64):
        return x
    return x.float()


def _prepare_binary(logits: ArrayLike, gt: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (logits (N, H*W) float, gt (N, H*W) bool) from N x H x W (or N x 1 x H x W)."""
    logits = _as_tensor(logits, "logits")
    gt = _as_tensor(gt, "gt")
    if logits.ndim == 4 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if gt.ndim == 4 and gt.shape[1] == 1:
        gt = gt[:, 0]
    if logits.ndim != 3:
        raise ValueError(f"logits must be N x H x W, got shape {tuple(logits.shape)}")
    if gt.shape != logits.shape:
        raise ValueError(f"gt shape {tuple(gt.shape)} != logits shape {tuple(logits.shape)}")
    if gt.dtype != torch.bool:
        if not bool(((gt == 0) | (gt == 1)).all()):
            raise ValueError("binary gt must hold only 0 and 1 (scale 0/255 masks down first)")
        gt = gt != 0
    gt = gt.to(logits.device)
    n = logits.shape[0]
    return _scoring_dtype(logits).reshape(n, -1), gt.reshape(n, -1)


def _f_thresholds(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The official thresholds: built in float32 on the CPU (as the official code does,
    before ``.cuda()``), then moved; widening to float64 keeps them exact."""
    thresholds = torch.linspace(0, F_THRESHOLD_MAX, NUM_F_THRESHOLDS, dtype=torch.float32)
    return thresholds.to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------
# Binary: per-frame statistics
# ---------------------------------------------------------------------------------------
def _binary_frame_iou(probs: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-frame mask_iou, float64 (N,). ``probs`` (N, P) sigmoid outputs, ``gt`` bool."""
    pred = probs > 0.5
    inter = (pred & gt).sum(1)
    union = (pred | gt).sum(1)
    empty_gt = ~gt.any(1)
    # Empty GT: score the background agreement, |~pred & ~gt| = |~pred|, over all pixels.
    inter = torch.where(empty_gt, (~pred).sum(1), inter)
    union = torch.where(empty_gt, torch.full_like(union, gt.shape[1]), union)
    return inter.double() / (union.double() + BINARY_IOU_EPS)


def _binary_frame_fcurves(probs: torch.Tensor, gt: torch.Tensor, beta2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame F curves over the 255 thresholds, float64 (N, 255), and the empty-GT flags.

    Instead of thresholding 255 times, each pixel goes to the bin of the highest
    threshold it reaches (``bucketize``); reverse cumulative sums of the per-frame bin
    counts then give |pred| and tp at every threshold in one pass.
    """
    n, num_pixels = probs.shape
    num_bins = NUM_F_THRESHOLDS + 1  # bin 0: below every threshold (only NaN in practice)
    thresholds = _f_thresholds(probs.device, probs.dtype)
    # right=True: number of thresholds t with t <= p; the pixel is predicted at those.
    bins = torch.bucketize(probs, thresholds, right=True)
    bins = bins.masked_fill(torch.isnan(probs), 0)  # NaN >= t is False: never predicted
    # one histogram over (frame, bin, is-GT-pixel)
    offsets = torch.arange(n, device=probs.device).unsqueeze(1) * num_bins
    flat = ((bins + offsets) * 2 + gt).reshape(-1)
    counts = torch.bincount(flat, minlength=n * num_bins * 2).view(n, num_bins, 2)
    counts_all, counts_tp = counts.sum(2), counts[:, :, 1]
    # at threshold i the pixels of bins i+1.. are predicted
    pred_count = counts_all[:, 1:].flip(1).cumsum(1).flip(1).double()
    tp = counts_tp[:, 1:].flip(1).cumsum(1).flip(1).double()
    gt_count = gt.sum(1, keepdim=True).double()

    precision = tp / (pred_count + PR_EPS)
    recall = tp / (gt_count + PR_EPS)
    fscore = (1 + beta2) * precision * recall / (beta2 * precision + recall)
    fscore = torch.nan_to_num(fscore, nan=0.0)
    return fscore, gt_count.squeeze(1) == 0


def _binary_frame_stats(
    logits: ArrayLike,
    gt: ArrayLike,
    *,
    want_iou: bool = True,
    want_fcurves: bool = True,
    beta2: float = F_BETA2,
    chunk_frames: int = 32,
) -> dict[str, torch.Tensor]:
    """Per-frame statistics on the CPU in float64, computed ``chunk_frames`` at a time."""
    if not (want_iou or want_fcurves):
        raise ValueError("nothing to compute")
    logits, gt = _prepare_binary(logits, gt)
    if logits.shape[0] == 0:
        raise ValueError("no frames to score")
    ious, curves, empties = [], [], []
    for start in range(0, logits.shape[0], chunk_frames):
        probs = torch.sigmoid(logits[start : start + chunk_frames])
        gt_chunk = gt[start : start + chunk_frames]
        if want_iou:
            ious.append(_binary_frame_iou(probs, gt_chunk).cpu())
        if want_fcurves:
            curve, empty = _binary_frame_fcurves(probs, gt_chunk, beta2)
            curves.append(curve.cpu())
            empties.append(empty.cpu())
    stats: dict[str, torch.Tensor] = {}
    if want_iou:
        stats["iou"] = torch.cat(ious)
    if want_fcurves:
        stats["fcurve"] = torch.cat(curves)
        stats["empty_gt"] = torch.cat(empties)
    return stats


# ---------------------------------------------------------------------------------------
# Binary: reductions (shared by the one-shot functions and BinaryMeter)
# ---------------------------------------------------------------------------------------
def _check_batch_frames(batch_frames: int) -> int:
    if isinstance(batch_frames, bool) or not isinstance(batch_frames, int) or batch_frames < 1:
        raise ValueError(f"batch_frames must be a positive int, got {batch_frames!r}")
    return batch_frames


def _mean_of_batch_means(values: torch.Tensor, batch_frames: int | None) -> float:
    if batch_frames is None:
        return float(values.mean())
    _check_batch_frames(batch_frames)
    means = [values[s : s + batch_frames].mean() for s in range(0, len(values), batch_frames)]
    return float(sum(means) / len(means))


def _official_batch_fscore(curves: torch.Tensor, empty_gt: torch.Tensor, batch_frames: int) -> float:
    """Eval_Fmeasure per batch of ``batch_frames`` consecutive frames, mean over batches."""
    _check_batch_frames(batch_frames)
    batch_scores = []
    for start in range(0, len(curves), batch_frames):
        kept = ~empty_gt[start : start + batch_frames]
        if not bool(kept.any()):
            batch_scores.append(0.0)  # the official score stays torch.zeros(255)
            continue
        mean_curve = curves[start : start + batch_frames][kept].mean(0)
        batch_scores.append(float(mean_curve.max()))
    return sum(batch_scores) / len(batch_scores)


def _per_frame_fscore(curves: torch.Tensor, empty_gt: torch.Tensor) -> float:
    """Max over thresholds per non-empty-GT frame, mean over those frames (0 if none)."""
    kept = ~empty_gt
    if not bool(kept.any()):
        return 0.0
    return float(curves[kept].max(1).values.mean())


# ---------------------------------------------------------------------------------------
# Binary: one-shot functions
# ---------------------------------------------------------------------------------------
def binary_miou(logits: ArrayLike, gt: ArrayLike, batch_frames: int | None = None) -> float:
    """AVSBench ``mask_iou`` over N frames.

    Args:
        logits: N x H x W (or N x 1 x H x W) logits; prediction is sigmoid(logit) > 0.5.
        gt: binary ground truth of the same shape, values in {0, 1} (or bool).
        batch_frames: None (default) -> mean over frames; k -> the official reduction,
            the mean of the means of consecutive batches of k frames (the same number
            whenever N is a multiple of k).
    """
    iou = _binary_frame_stats(logits, gt, want_fcurves=False)["iou"]
    return _mean_of_batch_means(iou, batch_frames)


def binary_fscore(logits: ArrayLike, gt: ArrayLike, batch_frames: int | None = None, beta2: float = F_BETA2) -> float:
    """AVSBench ``Eval_Fmeasure`` over N frames; frames with an empty GT are skipped.

    Conventions:
        batch_frames=None (default): per-frame mode, the max over the 255 thresholds of
            each non-empty-GT frame, averaged over those frames (0.0 if there are none).
            Not the published convention, but independent of the batch size.
        batch_frames=k: official batch mode, the F curve averaged over the non-empty-GT
            frames of each batch of k consecutive frames, max over thresholds per batch,
            mean over batches; a batch with only empty GTs scores 0. Published numbers
            use k = 4 videos x frames per video (:func:`official_batch_frames`).
    """
    stats = _binary_frame_stats(logits, gt, want_iou=False, beta2=beta2)
    if batch_frames is None:
        return _per_frame_fscore(stats["fcurve"], stats["empty_gt"])
    return _official_batch_fscore(stats["fcurve"], stats["empty_gt"], batch_frames)


# ---------------------------------------------------------------------------------------
# Distributed helpers
# ---------------------------------------------------------------------------------------
def _dist_device(process_group: Any) -> torch.device:
    """NCCL reduces CUDA tensors only; gloo / mpi reduce CPU tensors."""
    if dist.get_backend(process_group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


# ---------------------------------------------------------------------------------------
# Binary: streaming meter
# ---------------------------------------------------------------------------------------
class BinaryMeter:
    """Streams S4/MS3 logits over an epoch and computes every binary number at the end.

    Keeps only per-frame statistics (IoU, the 255-point F curve, an empty-GT flag and a
    frame id), never the logits. ``compute()`` returns:

    - ``miou``: official mask_iou reduction (mean of per-batch means),
    - ``miou_per_frame``: mean over frames,
    - ``fscore``: official batch mode with ``batch_frames`` frames per batch,
    - ``fscore_per_frame``: per-frame mode,

    plus frame counts. Batches are consecutive frames in update order, or in
    ``frame_ids`` order when ids are given (then duplicated ids, e.g. from a padding
    DistributedSampler, are scored once). Feed frames in dataset order (no shuffling) to
    match the official batches.

    Args:
        batch_frames: frames per official test batch (default 4 videos x 5 frames = 20).
        beta2: beta^2 of the F-measure.
        chunk_frames: frames processed at once inside ``update`` (bounds memory).
    """

    def __init__(self, batch_frames: int = OFFICIAL_BATCH_FRAMES, beta2: float = F_BETA2, chunk_frames: int = 32):
        self.batch_frames = _check_batch_frames(batch_frames)
        self.beta2 = beta2
        self.chunk_frames = chunk_frames
        self.reset()

    def reset(self) -> None:
        self._ids: list[torch.Tensor] = []
        self._iou: list[torch.Tensor] = []
        self._fcurve: list[torch.Tensor] = []
        self._empty: list[torch.Tensor] = []
        self._ids_given: bool | None = None  # all updates with frame_ids, or none
        self._next_id = 0

    @property
    def num_frames(self) -> int:
        return sum(len(t) for t in self._iou)

    def update(self, logits: ArrayLike, gt: ArrayLike, frame_ids: ArrayLike | None = None) -> None:
        """Add N frames: ``logits`` and ``gt`` N x H x W; optional ``frame_ids`` (N,) ints,
        e.g. the global frame index in the dataset (needed to rebuild the official batches
        after a DDP ``sync``)."""
        stats = _binary_frame_stats(logits, gt, beta2=self.beta2, chunk_frames=self.chunk_frames)
        n = len(stats["iou"])
        given = frame_ids is not None
        if self._ids_given is not None and given != self._ids_given:
            raise ValueError("give frame_ids on every update or on none")
        self._ids_given = given
        if given:
            ids = _as_tensor(frame_ids, "frame_ids").reshape(-1).to("cpu", torch.int64)
            if len(ids) != n:
                raise ValueError(f"frame_ids has {len(ids)} entries for {n} frames")
        else:
            ids = torch.arange(self._next_id, self._next_id + n, dtype=torch.int64)
            self._next_id += n
        self._ids.append(ids)
        self._iou.append(stats["iou"])
        self._fcurve.append(stats["fcurve"])
        self._empty.append(stats["empty_gt"])

    # -- state -------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The whole state as CPU tensors (frames in update order)."""
        if not self._iou:
            return {
                "frame_ids": torch.zeros(0, dtype=torch.int64),
                "iou": torch.zeros(0, dtype=torch.float64),
                "fcurve": torch.zeros(0, NUM_F_THRESHOLDS, dtype=torch.float64),
                "empty_gt": torch.zeros(0, dtype=torch.bool),
                "ids_given": torch.tensor(bool(self._ids_given)),
            }
        return {
            "frame_ids": torch.cat(self._ids),
            "iou": torch.cat(self._iou),
            "fcurve": torch.cat(self._fcurve),
            "empty_gt": torch.cat(self._empty),
            "ids_given": torch.tensor(bool(self._ids_given)),
        }

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the state with one from :meth:`state_tensors`."""
        self.reset()
        if len(state["iou"]):
            self._ids = [state["frame_ids"].to("cpu", copy=True)]
            self._iou = [state["iou"].to("cpu", copy=True)]
            self._fcurve = [state["fcurve"].to("cpu", copy=True)]
            self._empty = [state["empty_gt"].to("cpu", copy=True)]
            self._ids_given = bool(state["ids_given"])
            self._next_id = int(self._ids[0].max()) + 1

    def merge(self, other: BinaryMeter) -> None:
        """Append ``other``'s frames after this meter's (like one more update)."""
        if other.batch_frames != self.batch_frames or other.beta2 != self.beta2:
            raise ValueError("cannot merge meters with different batch_frames or beta2")
        state = other.state_tensors()
        if not len(state["iou"]):
            return
        ids_given = bool(state["ids_given"])
        if self._ids_given is not None and ids_given != self._ids_given:
            raise ValueError("cannot merge a meter with frame_ids and one without")
        ids = state["frame_ids"]
        if not ids_given:  # renumber after ours, keeping other's order
            ids = ids - ids.min() + self._next_id
            self._next_id = int(ids.max()) + 1
        self._ids_given = ids_given
        self._ids.append(ids)
        self._iou.append(state["iou"])
        self._fcurve.append(state["fcurve"])
        self._empty.append(state["empty_gt"])

    def sync(self, process_group: Any = None) -> None:
        """Gather every rank's frames into every rank (call once, after the last update).

        No-op when torch.distributed is not initialised. Without frame_ids the frames
        end up in rank order (rank 0's, then rank 1's, ...), which forms other batches
        than a single-process run; pass frame_ids to get the official batches back.
        """
        if not _dist_ready():
            return
        device = _dist_device(process_group)
        world = dist.get_world_size(process_group)
        state = self.state_tensors()
        # one float64 row per frame: id, empty flag, IoU, F curve
        rows = torch.cat(
            [
                state["frame_ids"].double().unsqueeze(1),
                state["empty_gt"].double().unsqueeze(1),
                state["iou"].unsqueeze(1),
                state["fcurve"],
            ],
            dim=1,
        ).to(device)
        size = torch.tensor([len(rows), int(self._ids_given is True), int(self._ids_given is False)], device=device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size, group=process_group)
        sizes_cpu = torch.stack(sizes).cpu()
        if int(sizes_cpu[:, 1].sum()) and int(sizes_cpu[:, 2].sum()):
            raise ValueError("some ranks gave frame_ids and others did not")
        ids_given = bool(sizes_cpu[:, 1].sum())
        longest = int(sizes_cpu[:, 0].max())
        padded = rows.new_zeros(longest, rows.shape[1])
        padded[: len(rows)] = rows
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded, group=process_group)
        rows = torch.cat([g[: int(n)].cpu() for g, n in zip(gathered, sizes_cpu[:, 0])])
        if not ids_given:  # renumber in rank order
            rows[:, 0] = torch.arange(len(rows), dtype=torch.float64)
        self.load_state_tensors(
            {
                "frame_ids": rows[:, 0].to(torch.int64),
                "empty_gt": rows[:, 1] != 0,
                "iou": rows[:, 2],
                "fcurve": rows[:, 3:],
                "ids_given": torch.tensor(ids_given),
            }
        )

    # -- results -----------------------------------------------------------------------
    def _ordered(self) -> dict[str, torch.Tensor]:
        """Frames sorted by id, duplicated ids dropped (first kept)."""
        state = self.state_tensors()
        order = torch.argsort(state["frame_ids"], stable=True)
        ids = state["frame_ids"][order]
        keep = torch.ones(len(ids), dtype=torch.bool)
        keep[1:] = ids[1:] != ids[:-1]
        order = order[keep]
        return {k: state[k][order] for k in ("frame_ids", "iou", "fcurve", "empty_gt")}

    def compute(self) -> dict[str, float | int]:
        if self.num_frames == 0:
            raise ValueError("BinaryMeter.compute(): no frames were added")
        state = self._ordered()
        num_frames = len(state["iou"])
        return {
            "miou": _mean_of_batch_means(state["iou"], self.batch_frames),
            "miou_per_frame": float(state["iou"].mean()),
            "fscore": _official_batch_fscore(state["fcurve"], state["empty_gt"], self.batch_frames),
            "fscore_per_frame": _per_frame_fscore(state["fcurve"], state["empty_gt"]),
            "num_frames": num_frames,
            "num_frames_empty_gt": int(state["empty_gt"].sum()),
            "num_batches": math.ceil(num_frames / self.batch_frames),
            "batch_frames": self.batch_frames,
        }

    def conventions(self) -> dict[str, str]:
        """METRIC_CONVENTIONS["binary"] with this meter's batch size filled in."""
        conventions = dict(METRIC_CONVENTIONS["binary"])
        note = f" [this run: batches of {self.batch_frames} frames, beta^2 = {self.beta2}]"
        conventions["miou"] += note
        conventions["fscore"] += note
        return conventions


# ---------------------------------------------------------------------------------------
# Semantic (AVSS)
# ---------------------------------------------------------------------------------------
def _semantic_frame_scores(
    pred: torch.Tensor, gt: torch.Tensor, num_classes: int, beta2: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-frame, per-class IoU, F and union>0 for class maps ``pred``, ``gt`` (n, P).

    Pixels with a negative GT are left out entirely, as the official code does
    (``predict * (target + 1 > 0)``). Returns float64 (n, C) IoU, (n, C) F, bool (n, C).
    """
    n, num_cells = pred.shape[0], num_classes * num_classes
    # one histogram over (frame, gt class, predicted class): a per-frame confusion matrix;
    # ignored pixels go to one spare bin past the end
    offsets = torch.arange(n, device=pred.device).unsqueeze(1) * num_cells
    flat = (offsets + gt * num_classes + pred).masked_fill(gt < 0, n * num_cells)
    confusion = torch.bincount(flat.reshape(-1), minlength=n * num_cells + 1)[: n * num_cells]
    confusion = confusion.view(n, num_classes, num_classes).double()
    area_inter = confusion.diagonal(dim1=1, dim2=2)
    area_gt = confusion.sum(2)
    area_pred = confusion.sum(1)
    area_union = area_pred + area_gt - area_inter

    iou = area_inter / (area_union + SEMANTIC_IOU_EPS)
    precision = area_inter / area_pred  # 0/0 = NaN when the class is not predicted
    recall = area_inter / area_gt  # 0/0 = NaN when the class is absent
    fscore = (1 + beta2) * precision * recall / (beta2 * precision + recall)
    fscore = torch.nan_to_num(fscore, nan=0.0)
    return iou, fscore, area_union > 0


class SemanticMeter:
    """Accumulates the AVSS per-class sums over a split (or an epoch) and computes mIoU / F.

    ``compute()`` returns ``miou``, ``fscore`` (mean over all C classes, the published
    convention), ``miou_no_bg``, ``fscore_no_bg`` (class 0 dropped), ``miou_present``,
    ``fscore_present`` (mean over classes seen at least once), ``per_class_iou``,
    ``per_class_fscore``, ``per_class_count`` (lists of length C), ``num_frames`` and
    ``num_padding_frames_skipped``; with a ``label_space``, also ``miou_dataset``,
    ``fscore_dataset`` (mean over the label space's classes) and ``num_classes_dataset``.

    Args:
        num_classes: C, background included as class 0 (AVSS: 71).
        beta2: beta^2 of the F-measure.
        include_padding: score frames flagged as padding too (the official AVSS test's
            behaviour, which inflates background); default False: real frames only.
        pixels_per_chunk: bound on C x pixels processed at once (memory).
        label_space: the class indices of the dataset's own label space (background 0
            included; :func:`dataset_label_space`), or None (AVSBench: all C classes,
            no ``*_dataset`` numbers).
    """

    def __init__(
        self,
        num_classes: int = AVSS_NUM_CLASSES,
        beta2: float = F_BETA2,
        include_padding: bool = False,
        pixels_per_chunk: int = 1 << 24,
        label_space: Sequence[int] | None = None,
    ):
        if num_classes < 2:
            raise ValueError("num_classes must be >= 2 (background + at least one class)")
        self.num_classes = num_classes
        self.beta2 = beta2
        self.include_padding = include_padding
        self.pixels_per_chunk = pixels_per_chunk
        self.label_space = _check_label_space(label_space, num_classes)
        self.reset()

    def reset(self) -> None:
        self.iou_sum = torch.zeros(self.num_classes, dtype=torch.float64)
        self.fscore_sum = torch.zeros(self.num_classes, dtype=torch.float64)
        self.count = torch.zeros(self.num_classes, dtype=torch.float64)
        self.num_frames = 0
        self.num_padding_skipped = 0

    # -- updates -----------------------------------------------------------------------
    def update(self, logits: ArrayLike, gt: ArrayLike, frame_valid: ArrayLike | None = None) -> None:
        """Add N frames of class logits (N x C x H x W) and class-index GT (N x H x W).

        ``frame_valid`` (N,) bool marks real frames; frames flagged False (padding) are
        skipped unless the meter was built with ``include_padding=True``.
        """
        logits = _as_tensor(logits, "logits")
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be N x {self.num_classes} x H x W, got shape {tuple(logits.shape)}")
        gt, frames = self._prepare_gt(gt, logits.shape[:1] + logits.shape[2:], frame_valid)
        for chunk in self._chunks(frames, logits.shape[-2] * logits.shape[-1]):
            chunk_logits = _scoring_dtype(logits.index_select(0, chunk.to(logits.device)))
            # argmax of the softmax, as the official code (ties go to the first class)
            pred = torch.softmax(chunk_logits, dim=1).argmax(1)
            self._add(pred, gt.index_select(0, chunk.to(gt.device)))

    def update_labels(self, pred: ArrayLike, gt: ArrayLike, frame_valid: ArrayLike | None = None) -> None:
        """Add N frames of already-argmaxed predictions (N x H x W class indices)."""
        pred = _as_tensor(pred, "pred")
        if pred.ndim != 3:
            raise ValueError(f"pred must be N x H x W class indices, got shape {tuple(pred.shape)}")
        if pred.dtype.is_floating_point or pred.dtype == torch.bool:
            raise ValueError(f"pred must hold integer class indices, got {pred.dtype}")
        gt, frames = self._prepare_gt(gt, pred.shape, frame_valid)
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= self.num_classes):
            raise ValueError(f"pred class indices must lie in [0, {self.num_classes})")
        for chunk in self._chunks(frames, pred.shape[-2] * pred.shape[-1]):
            self._add(pred.index_select(0, chunk.to(pred.device)).long(), gt.index_select(0, chunk.to(gt.device)))

    def _chunks(self, frames: torch.Tensor, pixels_per_frame: int) -> list[torch.Tensor]:
        """Split the frame indices to score into chunks of bounded C x pixels."""
        per_chunk = max(1, self.pixels_per_chunk // max(self.num_classes * pixels_per_frame, 1))
        return list(frames.split(per_chunk))

    def _prepare_gt(
        self, gt: ArrayLike, shape: tuple[int, ...], frame_valid: ArrayLike | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Check the GT; return it as int64 and the indices of the frames to score."""
        gt = _as_tensor(gt, "gt")
        if tuple(gt.shape) != tuple(shape):
            raise ValueError(f"gt must be N x H x W = {tuple(shape)}, got {tuple(gt.shape)}")
        if gt.dtype.is_floating_point and not bool((gt == gt.round()).all()):
            raise ValueError("gt must hold integer class indices")
        gt = gt.long()
        if gt.numel() and int(gt.max()) >= self.num_classes:
            raise ValueError(f"gt holds class {int(gt.max())}, but num_classes is {self.num_classes}")
        frames = torch.arange(shape[0])
        if frame_valid is not None:
            valid = _as_tensor(frame_valid, "frame_valid").reshape(-1).to("cpu").bool()
            if len(valid) != shape[0]:
                raise ValueError(f"frame_valid has {len(valid)} entries for {shape[0]} frames")
            if not self.include_padding:
                self.num_padding_skipped += int((~valid).sum())
                frames = frames[valid]
        return gt, frames

    def _add(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        n = pred.shape[0]
        if n == 0:
            return
        gt = gt.to(pred.device)
        iou, fscore, present = _semantic_frame_scores(
            pred.reshape(n, -1), gt.reshape(n, -1), self.num_classes, self.beta2
        )
        self.iou_sum += iou.sum(0).cpu()
        self.fscore_sum += fscore.sum(0).cpu()
        self.count += present.sum(0).double().cpu()
        self.num_frames += n

    # -- state -------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The state as float64 CPU tensors; element-wise sums across ranks merge them."""
        return {
            "iou_sum": self.iou_sum.clone(),
            "fscore_sum": self.fscore_sum.clone(),
            "count": self.count.clone(),
            "num_frames": torch.tensor([float(self.num_frames)], dtype=torch.float64),
            "num_padding_skipped": torch.tensor([float(self.num_padding_skipped)], dtype=torch.float64),
        }

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the state with one from :meth:`state_tensors` (e.g. after a reduce)."""
        if state["iou_sum"].shape != (self.num_classes,):
            raise ValueError(f"state is for {state['iou_sum'].shape[0]} classes, meter for {self.num_classes}")
        self.iou_sum = state["iou_sum"].to("cpu", torch.float64, copy=True)
        self.fscore_sum = state["fscore_sum"].to("cpu", torch.float64, copy=True)
        self.count = state["count"].to("cpu", torch.float64, copy=True)
        self.num_frames = int(round(float(state["num_frames"].sum())))
        self.num_padding_skipped = int(round(float(state["num_padding_skipped"].sum())))

    def merge(self, other: SemanticMeter) -> None:
        """Add ``other``'s sums to this meter's."""
        if other.num_classes != self.num_classes or other.beta2 != self.beta2:
            raise ValueError("cannot merge meters with different num_classes or beta2")
        if other.label_space != self.label_space:
            raise ValueError("cannot merge meters with different label spaces")
        self.iou_sum += other.iou_sum
        self.fscore_sum += other.fscore_sum
        self.count += other.count
        self.num_frames += other.num_frames
        self.num_padding_skipped += other.num_padding_skipped

    def sync(self, process_group: Any = None) -> None:
        """All-reduce (sum) the state over the ranks of ``process_group``; call once, after
        the last update. No-op when torch.distributed is not initialised. Frames seen by
        two ranks (a padding DistributedSampler) are counted twice."""
        if not _dist_ready():
            return
        state = self.state_tensors()
        names = list(state)
        flat = torch.cat([state[k] for k in names]).to(_dist_device(process_group))
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=process_group)
        flat = flat.cpu()
        reduced, start = {}, 0
        for k in names:
            reduced[k] = flat[start : start + len(state[k])]
            start += len(state[k])
        self.load_state_tensors(reduced)

    # -- results -----------------------------------------------------------------------
    def compute(self) -> dict[str, Any]:
        if self.num_frames == 0:
            raise ValueError("SemanticMeter.compute(): no frames were added")
        # sum / count, NaN (never present nor predicted) -> 0, as the official test
        per_class_iou = torch.nan_to_num(self.iou_sum / self.count, nan=0.0)
        per_class_fscore = torch.nan_to_num(self.fscore_sum / self.count, nan=0.0)
        present = self.count > 0
        num_present = int(present.sum())

        def present_mean(values: torch.Tensor) -> float:
            return float(values[present].mean()) if num_present else 0.0

        result: dict[str, Any] = {
            "miou": float(per_class_iou.mean()),
            "fscore": float(per_class_fscore.mean()),
            "miou_no_bg": float(per_class_iou[1:].mean()),
            "fscore_no_bg": float(per_class_fscore[1:].mean()),
            "miou_present": present_mean(per_class_iou),
            "fscore_present": present_mean(per_class_fscore),
            "per_class_iou": per_class_iou.tolist(),
            "per_class_fscore": per_class_fscore.tolist(),
            "per_class_count": [int(c) for c in self.count.tolist()],
            "num_classes_present": num_present,
            "num_frames": self.num_frames,
            "num_padding_frames_skipped": self.num_padding_skipped,
        }
        if self.label_space is not None:
            space = list(self.label_space)
            result["miou_dataset"] = float(per_class_iou[space].mean())
            result["fscore_dataset"] = float(per_class_fscore[space].mean())
            result["num_classes_dataset"] = len(space)
        return result

    def conventions(self) -> dict[str, str]:
        """METRIC_CONVENTIONS["semantic"], with the padding choice of this meter."""
        conventions = dict(METRIC_CONVENTIONS["semantic"])
        if self.include_padding:
            for key in conventions:
                conventions[key] = conventions[key].replace(
                    "real frames only (padding skipped)",
                    "padding frames scored too (official AVSS test; inflates background)",
                )
        if self.label_space is not None:
            note = f" [this dataset: background + K = {len(self.label_space) - 1} classes]"
            conventions.update({key: text + note for key, text in LABEL_SPACE_CONVENTIONS.items()})
        return conventions


def semantic_scores(
    logits: ArrayLike,
    gt: ArrayLike,
    num_classes: int | None = None,
    beta2: float = F_BETA2,
    frame_valid: ArrayLike | None = None,
    include_padding: bool = False,
    label_space: Sequence[int] | None = None,
) -> dict[str, Any]:
    """One-shot AVSS metrics of N frames (N x C x H x W logits, N x H x W class GT);
    same keys as :meth:`SemanticMeter.compute`."""
    logits = _as_tensor(logits, "logits")
    if logits.ndim != 4:
        raise ValueError(f"logits must be N x C x H x W, got shape {tuple(logits.shape)}")
    meter = SemanticMeter(
        num_classes or logits.shape[1], beta2=beta2, include_padding=include_padding, label_space=label_space
    )
    meter.update(logits, gt, frame_valid=frame_valid)
    return meter.compute()

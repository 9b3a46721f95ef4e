"""``ssp ceilings``: what a perfect model with a given set of cues can reach on the
generated benchmark, per scenario, on the metrics the models are reported with.

The benchmark (:mod:`ssp.data.synthetic`) is built so that audio identity, motion and the
scene text together decide every answer. Each *oracle* below is a perfect model that uses
only some of those cues: it segments every object it picks with its exact mask and
class, and it picks objects by the cue it has. Its ceiling is its score; the gap between
two oracles is the headroom the extra cue should take.

Per labelled frame ``t`` of a test video, with objects ``o`` (scene.json: ``class_index``,
per frame ``sounding``, ``moving``, ``positions``; ``location``):

- ``audio`` (audio only): knows exactly which classes sound at ``t`` (a class's audio
  identity and when it falls silent) and segments every object of those classes. It
  cannot tell a silent twin of the same class from the source: it predicts both.
- ``audio_motion`` (audio + motion): also knows which objects move at ``t`` (the scene's
  per-frame ``moving``, what eq. 1's flow sees). Among the objects of a sounding class,
  when some move and some stand still, it keeps the moving ones ("the mover is the
  sounder"); when motion does not split them (all still or all moving) it keeps them all.
  On the benchmark this is the best use of motion: a same-class twin always stands
  still, so a moving candidate is the source; a still source next to its still twin stays
  ambiguous.
- ``audio_motion_text`` (audio + motion + text): also reads the clean answers (A1
  describes every object by colour, noun and location word and says which ones make a
  sound): among the objects of a sounding class it keeps those the text names as
  sounding (``any(sounding)`` over the video), then applies the motion rule to what is
  left. On the benchmark it is the ground truth itself (a perfect model).

Scoring: each oracle's class map of each labelled frame of the split is scored against
the dataset's own masks (:func:`ssp.data.avsbench.read_mask`, the GT the models are
scored against) with the same meters as the models (:class:`ssp.metrics.SemanticMeter`,
:class:`ssp.metrics.BinaryMeter`): the own-label-space ``miou_dataset`` / ``fscore_dataset``
(background + the K classes, :func:`ssp.metrics.dataset_label_space`), the 71-class
``miou`` / ``fscore``, ``miou_present``, and the binary per-frame ``binary_miou`` /
``binary_fscore`` (what ``ssp evaluate``'s per-scenario table gives a stage-1 model).
A class of the label space that never occurs in a scenario's frames scores 0 there for
every model, the oracles included: an ``audio_motion_text`` ceiling under 100 % says so.
Masks are scored at the dataset's resolution (the models at ``model.image_size`` after a
nearest-neighbour resize; the same in the demo, 64 px).

Output (``--out``, JSON): ``scenarios`` (scenario -> ``frames``, ``videos``, oracle ->
numbers, ``by_subset`` -> subset -> ``frames`` and oracle -> ``binary_miou``, so that a
stage-1 model tested on some subsets only is compared with the ceiling of those
subsets), ``overall`` (every scenario together), ``oracles`` (the definitions above),
``label_space``. A dataset without scene records (AVSBench) gives ``available: false``
and a reason, not an error, so the DVC stage runs on any dataset. :func:`cue_headroom`
reads that JSON as the points motion and text can add over the audio-only oracle.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssp.data.avsbench import VideoRecord, class_names, load_records, read_mask
from ssp.data.synthetic import SCENARIOS, render_object_mask
from ssp.errors import DataError
from ssp.fileio import write_json
from ssp.metrics import AVSS_NUM_CLASSES, BinaryMeter, SemanticMeter, dataset_label_space, label_space_record
from ssp.params import add_params_arguments, stage_params

log = logging.getLogger(__name__)

ORACLES: dict[str, str] = {
    "audio": "audio only: knows which classes sound in each frame and segments every object of those "
    "classes (a silent same-class twin is predicted with the source)",
    "audio_motion": "audio + motion: also knows which objects move in the frame; among the objects of a "
    "sounding class it keeps the moving ones when some move and some do not",
    "audio_motion_text": "audio + motion + text: also knows which objects the clean answers name as sounding "
    "(colour, noun, location word); keeps those among a sounding class's objects, then the motion rule",
}
ORACLE_LABELS = {"audio": "audio only", "audio_motion": "audio + motion", "audio_motion_text": "audio + motion + text"}
SCENE_FILE = "scene.json"
BINARY_LOGIT = 10.0  # ± logit of an oracle's foreground / background pixel (sigmoid 0.99995)
DEFAULT_OUT = Path("reports/ceilings.json")


# ---------------------------------------------------------------------------------------
# The oracles
# ---------------------------------------------------------------------------------------
def oracle_objects(scene: dict[str, Any], frame: int, oracle: str) -> list[dict[str, Any]]:
    """The objects of ``scene`` that ``oracle`` segments at ``frame`` (module doc)."""
    if oracle not in ORACLES:
        raise ValueError(f"unknown oracle {oracle!r}; oracles: {', '.join(ORACLES)}")
    objects = scene["objects"]
    sounding_classes = dict.fromkeys(o["class_index"] for o in objects if o["sounding"][frame])
    kept = []
    for class_index in sounding_classes:
        candidates = [o for o in objects if o["class_index"] == class_index]
        if oracle == "audio_motion_text":
            named = [o for o in candidates if any(o["sounding"])]
            candidates = named or candidates
        if oracle != "audio":
            moving = [o for o in candidates if o["moving"][frame]]
            if moving and len(moving) < len(candidates):
                candidates = moving
        kept += candidates
    return kept


def oracle_prediction(scene: dict[str, Any], frame: int, oracle: str, height: int, width: int) -> np.ndarray:
    """``oracle``'s class map (height x width, int64) of ``frame``: each object it keeps,
    rendered from the scene record, with its class."""
    pred = np.zeros((height, width), dtype=np.int64)
    for obj in oracle_objects(scene, frame, oracle):
        pred[render_object_mask(obj, frame, height, width)] = obj["class_index"]
    return pred


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------
@dataclass
class SceneFrames:
    """One video: its scene record and the GT class map of each labelled frame."""

    scene: dict[str, Any]
    gt: dict[int, np.ndarray]  # frame index -> H x W class indices


@dataclass
class _Group:
    """The meters of one scenario (or of all of them): per oracle a semantic and a binary
    meter, and a binary meter per subset (stage-1 models are tested on some subsets only)."""

    label_space: tuple[int, ...] | None
    semantic: dict[str, SemanticMeter] = field(default_factory=dict)
    binary: dict[str, BinaryMeter] = field(default_factory=dict)
    by_subset: dict[str, dict[str, BinaryMeter]] = field(default_factory=dict)
    videos: int = 0

    def __post_init__(self):
        for oracle in ORACLES:
            self.semantic[oracle] = SemanticMeter(AVSS_NUM_CLASSES, label_space=self.label_space)
            self.binary[oracle] = BinaryMeter()

    def add(self, subset: str, oracle: str, pred: torch.Tensor, gt: torch.Tensor) -> None:
        self.semantic[oracle].update_labels(pred, gt)
        logits = torch.where(pred > 0, BINARY_LOGIT, -BINARY_LOGIT)
        self.binary[oracle].update(logits, (gt > 0).long())
        per_subset = self.by_subset.setdefault(subset, {o: BinaryMeter() for o in ORACLES})
        per_subset[oracle].update(logits, (gt > 0).long())

    def numbers(self) -> dict[str, Any]:
        out: dict[str, Any] = {"frames": self.semantic["audio"].num_frames, "videos": self.videos}
        for oracle in ORACLES:
            semantic, binary = self.semantic[oracle].compute(), self.binary[oracle].compute()
            keys = ("miou_dataset", "fscore_dataset", "miou", "fscore", "miou_present")
            out[oracle] = {k: semantic[k] for k in keys if k in semantic}
            out[oracle]["binary_miou"] = binary["miou_per_frame"]
            out[oracle]["binary_fscore"] = binary["fscore_per_frame"]
        out["by_subset"] = {
            subset: {"frames": meters["audio"].num_frames}
            | {o: {"binary_miou": meters[o].compute()["miou_per_frame"]} for o in ORACLES}
            for subset, meters in sorted(self.by_subset.items())
        }
        return out


def score_oracles(videos: Iterable[SceneFrames], label_space: tuple[int, ...] | None) -> dict[str, Any]:
    """Every oracle scored per scenario (``scenarios``) and over all (``overall``)."""
    groups: dict[str, _Group] = {}
    overall = _Group(label_space)
    for video in videos:
        if not video.gt:
            continue
        scene, frames = video.scene, sorted(video.gt)
        gt = torch.from_numpy(np.stack([video.gt[t] for t in frames]).astype(np.int64))
        height, width = gt.shape[-2:]
        group = groups.setdefault(scene["scenario"], _Group(label_space))
        for target in (group, overall):
            target.videos += 1
        for oracle in ORACLES:
            pred = torch.from_numpy(np.stack([oracle_prediction(scene, t, oracle, height, width) for t in frames]))
            for target in (group, overall):
                target.add(scene["subset"], oracle, pred, gt)
    order = [s for s in SCENARIOS if s in groups] + sorted(set(groups) - set(SCENARIOS))
    return {
        "scenarios": {s: groups[s].numbers() for s in order},
        "overall": overall.numbers() if overall.videos else {},
    }


def cue_headroom(ceilings: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Present-class mIoU points (%) that the cues can add over a perfect audio-only model,
    over the split (``overall``) and per scenario: ``motion`` = audio_motion − audio,
    ``motion_text`` = audio_motion_text − audio. The most any SSP mechanism can lift a model
    that already uses the audio perfectly; {} when the ceilings are not available."""
    if not ceilings.get("available"):
        return {}
    groups = {**({"overall": ceilings["overall"]} if ceilings.get("overall") else {}), **ceilings["scenarios"]}

    def points(group: dict[str, Any], oracle: str) -> float:
        return 100 * (group[oracle]["miou_present"] - group["audio"]["miou_present"])

    return {
        name: {"motion": points(group, "audio_motion"), "motion_text": points(group, "audio_motion_text")}
        for name, group in groups.items()
    }


# ---------------------------------------------------------------------------------------
# From a dataset
# ---------------------------------------------------------------------------------------
def read_scene(record: VideoRecord) -> dict[str, Any] | None:
    """The video's scene.json, or None when it has none."""
    folder = record.video_dir
    path = folder / SCENE_FILE if folder is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(record.display_path(path), f"cannot read the scene record ({e})") from None


def scene_frames(records: list[VideoRecord]) -> Iterator[SceneFrames]:
    """Each record's scene and GT (read as the models' GT is, class indices)."""
    for record in records:
        scene = read_scene(record)
        if scene is None:
            raise DataError(record.display_path(record.root / record.rel_dir / SCENE_FILE), "scene record is missing")
        gt = {t: read_mask(record, t, "avss") for t in record.labelled_indices}
        yield SceneFrames(scene, gt)


def compute_ceilings(data: str | Path, split: str = "test") -> dict[str, Any]:
    """The ceilings JSON of ``data``'s ``split`` (module doc); ``available: false`` with a
    ``reason`` for a dataset without scene records."""
    data = Path(data)
    header: dict[str, Any] = {"data": str(data), "split": split, "oracles": ORACLES}
    records = load_records(data, splits=[split])
    if not records:
        return {**header, "available": False, "reason": f"no {split} videos"}
    if read_scene(records[0]) is None:  # AVSBench; a generated benchmark missing one is an error (scene_frames)
        return {**header, "available": False, "reason": f"no scene records ({SCENE_FILE}): not a generated benchmark"}
    label_space = dataset_label_space(data)
    if label_space is not None:
        header["label_space"] = label_space_record(label_space, class_names(data))
    return {**header, "available": True, **score_oracles(scene_frames(records), label_space)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Ceilings per scenario of the generated benchmark: what a perfect audio-only, audio + motion and "
        "audio + motion + text model reaches on the split, scored with the models' metrics (mIoU over "
        "background + the dataset's K classes first, the 71-class mIoU, binary per-frame mIoU). "
        "Oracles: " + "; ".join(ORACLES.values()) + ". See ssp/report/ceilings.py."
    )
    parser.add_argument("--data", required=True, type=Path, help="dataset root (`ssp synth` output)")
    parser.add_argument(
        "--out", default=DEFAULT_OUT, type=Path, help=f"ceilings JSON, read by `ssp report` (default: {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--split",
        default=None,
        choices=("train", "val", "test"),
        help="split to score (default: evaluate.split of --params, the split the models are tested on)",
    )
    add_params_arguments(parser, "evaluate.split=val")  # section evaluate (split)


def main(args: argparse.Namespace) -> int:
    split = args.split if args.split is not None else stage_params(args).evaluate.split
    result = compute_ceilings(args.data, split)
    write_json(args.out, result)
    if not result["available"]:
        log.info("no ceilings for %s: %s; wrote %s", args.data, result["reason"], args.out)
        return 0
    metric = "miou_dataset" if "label_space" in result else "miou"
    for scenario, numbers in result["scenarios"].items():
        log.info(
            "%s (%d frames): %s",
            scenario,
            numbers["frames"],
            ", ".join(f"{ORACLE_LABELS[o]} {100 * numbers[o][metric]:.1f}" for o in ORACLES),
        )
    log.info("wrote %s", args.out)
    return 0

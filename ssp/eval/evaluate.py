"""``ssp evaluate``: AVSBench-exact metrics of a checkpoint on one split.

Reported (every number with its convention, from :data:`ssp.metrics.METRIC_CONVENTIONS`):

- ``binary.v1s`` / ``binary.v1m`` (S4 / MS3) and ``binary.v2``: mIoU, F in the official
  batch mode (batches of ``--fscore-batch-videos`` videos) and per-frame F. A stage-2
  model's foreground probability is 1 - its normalised background score
  (``p_bg / Σ_c p_c`` of the class scores of ``SSPModel.predict``).
- ``semantic.v2`` and ``semantic.all`` (stage 2 only): AVSS mIoU / F over real frames,
  plus per subset; a per-class CSV (``{out}.per_class.csv``: class name from
  label2idx.json, IoU, F, frame count) of ``all``.
- On a dataset with its own, smaller label space (the generated benchmark: background +
  the K classes of its ``manifest.json``, :func:`ssp.metrics.dataset_label_space`), every
  semantic entry leads with ``miou_dataset`` / ``fscore_dataset``, the mean over those
  K + 1 classes, before the 71-class AVSBench-convention ``miou`` / ``fscore``; the JSON's
  ``label_space`` names the classes. AVSBench has no such entry (its label space is the
  71 classes: the figures would coincide).
- On the generated benchmark (``scenarios.csv`` at the data root) a per-scenario CSV
  (``{out}.per_scenario.csv``): per scenario, mIoU / F (semantic for stage 2, own label
  space first; binary per-frame for stage 1).

The model runs through the engine's one predict loop (:func:`ssp.engine.predict.predict_batches`,
no autocast): its input never contains the GT masks; stage 2 reads stage 1's masks from
``--stage1-masks`` as its stepping stone. Only the metrics use GT. The split and the
F-score batch come from the ``evaluate`` section of ``--params`` unless given.

When the checkpoint is a run folder's ``checkpoints/best.safetensors`` and the folder's
``metrics.json`` names the MLflow run that trained it (``mlflow_run_id``, written by
``ssp train``), the headline numbers are also logged into that run
(:func:`log_to_training_run`), so every ablation / sweep run shows its test mIoU in MLflow.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from tqdm.auto import tqdm

from ssp.data.avsbench import VideoRecord, class_names, read_scenarios
from ssp.engine.inputs import InputDirs, build_dataset, dataset_batches, load_split_records
from ssp.engine.predict import predict_batches
from ssp.errors import DataError, SSPError
from ssp.fileio import write_json, write_text
from ssp.metrics import (
    BinaryMeter,
    SemanticMeter,
    dataset_label_space,
    label_space_record,
    official_batch_frames,
)
from ssp.models.checkpoint import load_model
from ssp.models.config import CLASS_READOUTS, SSPConfig
from ssp.ops.tracking import get_client, retry_locked, tracking_uri
from ssp.params import EvaluateParams, add_params_arguments, stage_params

log = logging.getLogger(__name__)

FRAMES_PER_VIDEO = {"v1s": 5, "v1m": 5, "v2": 10}
BINARY_KEYS = ("miou", "fscore", "fscore_per_frame", "miou_per_frame", "num_frames", "batch_frames")
SEMANTIC_KEYS = ("miou", "fscore", "miou_no_bg", "fscore_no_bg", "miou_present", "fscore_present", "num_frames")
# the own-label-space numbers (a dataset with a label space of its own); they lead
DATASET_KEYS = ("miou_dataset", "fscore_dataset")

__all__ = ["binary_from_semantic", "evaluate", "log_to_training_run", "run_metrics"]


def binary_from_semantic(scores: torch.Tensor) -> torch.Tensor:
    """Stage-2 class scores N×C×H×W -> foreground logits N×H×W (1 - normalised background)."""
    probs = scores.float().clamp(min=0)
    probs = probs / probs.sum(1, keepdim=True).clamp(min=1e-12)
    foreground = (1 - probs[:, 0]).clamp(1e-6, 1 - 1e-6)
    return torch.logit(foreground)


# ---------------------------------------------------------------------------------------
# Meters
# ---------------------------------------------------------------------------------------
@dataclass
class Meters:
    """Binary meters per subset; stage 2: semantic meters per subset and ``all``; one meter
    per scenario of the generated benchmark (semantic for stage 2, binary for stage 1)."""

    stage: int
    binary: dict[str, BinaryMeter]
    semantic: dict[str, SemanticMeter] = field(default_factory=dict)
    per_scenario: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        config: SSPConfig,
        records: list[VideoRecord],
        scenarios: dict[str, str],
        fscore_batch_videos: int,
        label_space: tuple[int, ...] | None = None,
    ) -> Meters:
        """``label_space``: the dataset's own classes (:func:`ssp.metrics.dataset_label_space`)."""
        subsets = sorted({r.subset for r in records}, key=list(FRAMES_PER_VIDEO).index)
        binary = {s: BinaryMeter(official_batch_frames(FRAMES_PER_VIDEO[s], fscore_batch_videos)) for s in subsets}
        names = sorted(set(scenarios.values()))
        if config.stage == 2:
            return cls(
                2,
                binary,
                {s: SemanticMeter(config.num_classes, label_space=label_space) for s in [*subsets, "all"]},
                {s: SemanticMeter(config.num_classes, label_space=label_space) for s in names},
            )
        return cls(1, binary, {}, {s: BinaryMeter() for s in names})

    def update(self, batch: dict[str, Any], scores: torch.Tensor, scenarios: dict[str, str]) -> None:
        """Score the labelled frames of every video of ``batch``."""
        fg_logits = scores if self.stage == 1 else binary_from_semantic(scores)
        for v, uid in enumerate(batch["uid"]):
            frames = (batch["video_index"] == v) & batch["labelled"].bool()
            index = frames.nonzero(as_tuple=True)[0]
            if not len(index):
                continue
            subset = batch["subset"][v]
            gt = batch["masks"][index]
            self.binary[subset].update(fg_logits[index], (gt > 0).long())
            scenario = scenarios.get(uid)
            if self.stage == 2:
                self.semantic[subset].update(scores[index], gt)
                self.semantic["all"].update(scores[index], gt)
                if scenario:
                    self.per_scenario[scenario].update(scores[index], gt)
            elif scenario:
                self.per_scenario[scenario].update(fg_logits[index], (gt > 0).long())

    def scenario_rows(self) -> list[dict[str, Any]]:
        rows = []
        for scenario, meter in self.per_scenario.items():
            if not meter.num_frames:
                continue
            numbers = meter.compute()
            if self.stage == 2:
                rows.append(
                    {
                        "scenario": scenario,
                        **{k: numbers[k] for k in DATASET_KEYS if k in numbers},  # own label space first
                        "miou": numbers["miou"],
                        "fscore": numbers["fscore"],
                        "miou_present": numbers["miou_present"],
                        "frames": numbers["num_frames"],
                    }
                )
            else:
                rows.append(
                    {
                        "scenario": scenario,
                        "miou": numbers["miou_per_frame"],
                        "fscore": numbers["fscore_per_frame"],
                        "frames": numbers["num_frames"],
                    }
                )
        return rows


def summarise(meters: Meters, config: SSPConfig, header: dict[str, Any]) -> dict[str, Any]:
    """The result JSON (without the CSV paths): ``header`` + binary / semantic numbers and
    their conventions."""
    result: dict[str, Any] = {**header, "binary": {}, "semantic": {}}
    for subset, meter in meters.binary.items():
        if meter.num_frames:
            numbers = meter.compute()
            result["binary"][subset] = {k: numbers[k] for k in BINARY_KEYS}
    result["conventions"] = {"binary": next(iter(meters.binary.values())).conventions() if meters.binary else {}}
    if config.stage == 2:
        for name, meter in meters.semantic.items():
            if meter.num_frames:
                numbers = meter.compute()
                result["semantic"][name] = {k: numbers[k] for k in (*DATASET_KEYS, *SEMANTIC_KEYS) if k in numbers}
        result["conventions"]["semantic"] = meters.semantic["all"].conventions()
        result["conventions"]["binary_from_stage2"] = "foreground probability = 1 - normalised background score"
    return result


def write_tables(meters: Meters, config: SSPConfig, data: Path, out: Path, result: dict[str, Any]) -> None:
    """``{out}.per_class.csv`` (stage 2) and ``{out}.per_scenario.csv`` (generated
    benchmark) beside ``out``; their paths (and the per-scenario numbers) go into ``result``."""
    stem = out.with_suffix("")
    if config.stage == 2 and meters.semantic["all"].num_frames:
        numbers = meters.semantic["all"].compute()
        names = class_names(data)
        rows = [
            {
                "index": c,
                "class": names[c] if c < len(names) else str(c),
                "iou": numbers["per_class_iou"][c],
                "fscore": numbers["per_class_fscore"][c],
                "count": numbers["per_class_count"][c],
            }
            for c in range(config.num_classes)
        ]
        write_text(f"{stem}.per_class.csv", _csv(rows))
        result["per_class_csv"] = f"{stem}.per_class.csv"
    if meters.per_scenario:
        rows = meters.scenario_rows()
        write_text(f"{stem}.per_scenario.csv", _csv(rows))
        result["per_scenario_csv"] = f"{stem}.per_scenario.csv"
        result["per_scenario"] = {r["scenario"]: {k: v for k, v in r.items() if k != "scenario"} for r in rows}


# ---------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------
def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    split: str | None = None,
    out: str | Path | None = None,
    stage1_masks: str | Path | None = None,
    flow: str | Path | None = None,
    prompts: str | Path | None = None,
    logmel: str | Path | None = None,
    fscore_batch_videos: int | None = None,
    device: str = "auto",
    batch_size: int = 4,
    premask_test_source: str | None = None,
    class_readout: str | None = None,
    progress: bool = True,
    log_to_run: bool = True,
    subsets: list[str] | None = None,
) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on ``split`` (see module doc); written to ``out`` if given.
    ``split`` and ``fscore_batch_videos`` default to the ``evaluate`` params section's
    defaults. ``log_to_run``: also log them into the checkpoint's training run, when it
    has one. ``subsets``: only these subsets' videos (None: every subset of the split)."""
    defaults = EvaluateParams()
    split = split if split is not None else defaults.split
    fscore_batch_videos = fscore_batch_videos if fscore_batch_videos is not None else defaults.fscore_batch_videos
    data = Path(data)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    overrides = {"premask_test_source": premask_test_source} if premask_test_source else {}
    if class_readout:
        overrides["class_readout"] = class_readout
    model, config, info = load_model(checkpoint, device, **overrides)
    if config.stage == 2 and stage1_masks is None:
        raise SSPError("a stage-2 checkpoint needs --stage1-masks DIR (stage 1's predictions, its stepping stones)")
    records = load_split_records(data, config.stage, split, subsets)
    dataset = build_dataset(
        records, config, InputDirs(flow, prompts, logmel), stage1_dir=stage1_masks if config.stage == 2 else None
    )
    scenarios = read_scenarios(data)
    label_space = dataset_label_space(data) if config.stage == 2 else None
    meters = Meters.create(config, records, scenarios, fscore_batch_videos, label_space)

    with tqdm(total=len(dataset), desc=f"evaluate {split}", unit="video", disable=not progress) as bar:
        for batch, scores in predict_batches(model, dataset_batches(dataset, batch_size), device):
            meters.update(batch, scores, scenarios)
            bar.update(len(batch["uid"]))

    header = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "split": split,
        "stage": config.stage,
        "model": {
            k: getattr(config, k)
            for k in (
                "size",
                "pre_mask",
                "text",
                "post_mask",
                "lambda_post",
                "post_mask_form",
                "premask_test_source",
                "class_readout",
            )
        },
        "trained": info,
        "fscore_batch_videos": fscore_batch_videos,
    }
    if label_space is not None:
        header["label_space"] = label_space_record(label_space, class_names(data))
    result = summarise(meters, config, header)
    if out is not None:
        write_tables(meters, config, data, Path(out), result)
        write_json(Path(out), result)
    if log_to_run:  # after the JSON: a tracking error (it propagates) leaves the metrics on disk
        log_to_training_run(checkpoint, result)
    return result


# ---------------------------------------------------------------------------------------
# Test metrics into the training run
# ---------------------------------------------------------------------------------------
def training_run_id(checkpoint: str | Path) -> str | None:
    """The MLflow run that trained ``checkpoint``: ``mlflow_run_id`` of ``metrics.json`` in
    its run folder (``{run_dir}/checkpoints/best.safetensors``); None for a checkpoint
    outside a run folder or a run folder without one."""
    checkpoint = Path(checkpoint)
    path = checkpoint.parent.parent / "metrics.json"
    if checkpoint.parent.name != "checkpoints" or not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(path, f"unreadable run metrics ({e})") from None
    run_id = metrics.get("mlflow_run_id") if isinstance(metrics, dict) else None
    return str(run_id) if run_id else None


def run_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numbers logged into the training run, prefixed with the split (``test/``):
    the AVSS metrics over all subsets (stage 2: ``test/miou``, ``test/fscore``, the
    ``_no_bg`` variants and the present-class ``_present`` ones; on a dataset with its own label space ``test/miou_dataset`` and
    ``test/fscore_dataset`` too) and the binary ones per subset (``test/binary/v1s/miou``,
    ..., the S4 / MS3 columns of Table 2; stage 1's only numbers). NaN is left out
    (MLflow's charts break on it)."""
    split = result["split"]
    out: dict[str, float] = {}
    semantic = result.get("semantic", {}).get("all", {})
    for key in (*DATASET_KEYS, "miou", "fscore", "miou_no_bg", "fscore_no_bg", "miou_present", "fscore_present"):
        if semantic.get(key) is not None:
            out[f"{split}/{key}"] = float(semantic[key])
    for subset, numbers in result.get("binary", {}).items():
        for key in ("miou", "fscore"):
            if numbers.get(key) is not None:
                out[f"{split}/binary/{subset}/{key}"] = float(numbers[key])
    return {k: v for k, v in out.items() if not math.isnan(v)}


def log_to_training_run(checkpoint: str | Path, result: dict[str, Any]) -> str | None:
    """Log :func:`run_metrics` of ``result`` into the checkpoint's training run; returns
    its id, or None when there is no such run. A run that no longer exists (deleted, or
    recorded in another tracking store) is a warning: the evaluation stands without it.
    Any other tracking error propagates."""
    run_id = training_run_id(checkpoint)
    if run_id is None:
        return None
    client = get_client()
    try:
        run = retry_locked(lambda: client.get_run(run_id), "get_run")
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        log.warning(
            "%s: MLflow run %s (its metrics.json) not found in %s; test metrics not logged to it",
            checkpoint,
            run_id,
            tracking_uri(),
        )
        return None
    if run.info.lifecycle_stage == "deleted":
        log.warning("%s: MLflow run %s was deleted; test metrics not logged to it", checkpoint, run_id)
        return None
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in run_metrics(result).items()]
    if metrics:
        retry_locked(lambda: client.log_batch(run_id, metrics=metrics), "log_metrics")
        log.info("%s metrics logged to MLflow run %s", result["split"], run_id)
    return run_id


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint (.safetensors) of either stage")
    parser.add_argument("--data", required=True, type=Path, help="dataset root")
    add_params_arguments(parser, "evaluate.fscore_batch_videos=1")  # section evaluate
    parser.add_argument(
        "--split", default=None, choices=("train", "val", "test"), help="split (default: evaluate.split of --params)"
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="metrics JSON; FILE.per_class.csv and FILE.per_scenario.csv are written beside it",
    )
    parser.add_argument(
        "--stage1-masks",
        type=Path,
        default=None,
        help="`ssp stage1-masks` output: stage 2's stepping stones (required for stage 2)",
    )
    parser.add_argument("--flow", type=Path, default=None, help="`ssp flow` output (if the model uses pre_mask)")
    parser.add_argument("--prompts", type=Path, default=None, help="`ssp prompts` output (if the model uses text)")
    parser.add_argument("--logmel", type=Path, default=None, help="`ssp logmel` output (default: from the wav)")
    parser.add_argument(
        "--fscore-batch-videos",
        type=int,
        default=None,
        help="videos per batch of the official (batch-mode) binary F-score "
        "(default: evaluate.fscore_batch_videos of --params; 4 is the official value)",
    )
    parser.add_argument(
        "--premask-test-source",
        choices=("stage1", "flow", "all"),
        default=None,
        help="what stands in for M_GT in the pre-mask at test (default: the checkpoint's config)",
    )
    parser.add_argument(
        "--class-readout",
        choices=CLASS_READOUTS,
        default=None,
        help="how a stage-2 model reads its classes: queries (Mask2Former) or codes (its class codes; "
        "needs a model trained with class_aux). It changes no weights (default: the checkpoint's config)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    parser.add_argument("--batch-size", type=int, default=4, help="videos per forward pass (default: 4)")
    parser.add_argument(
        "--no-track", action="store_true", help="do not log the metrics into the checkpoint's MLflow training run"
    )


def evaluate_params(args: argparse.Namespace, split: str | None, fscore_batch_videos: int | None) -> EvaluateParams:
    """The ``evaluate`` section of ``--params``/``--set`` with the explicit CLI values over it."""
    section = stage_params(args).evaluate
    return EvaluateParams(
        split=split if split is not None else section.split,
        fscore_batch_videos=fscore_batch_videos if fscore_batch_videos is not None else section.fscore_batch_videos,
    )


def main(args: argparse.Namespace) -> int:
    chosen = evaluate_params(args, args.split, args.fscore_batch_videos)
    result = evaluate(
        args.checkpoint,
        args.data,
        chosen.split,
        args.out,
        stage1_masks=args.stage1_masks,
        flow=args.flow,
        prompts=args.prompts,
        logmel=args.logmel,
        fscore_batch_videos=chosen.fscore_batch_videos,
        device=args.device,
        batch_size=args.batch_size,
        premask_test_source=args.premask_test_source,
        class_readout=args.class_readout,
        log_to_run=not args.no_track,
    )
    log_summary(result)
    return 0


def log_summary(result: dict[str, Any]) -> None:
    """One line per entry; a semantic entry with own-label-space numbers leads with them."""
    label = result.get("label_space", {}).get("label", "own label space")
    for group in ("binary", "semantic"):
        for name, numbers in result[group].items():
            if "miou_dataset" in numbers:
                log.info(
                    "%s %s: mIoU (%s) %.4f F %.4f; mIoU (71 classes) %.4f F %.4f",
                    group,
                    name,
                    label,
                    numbers["miou_dataset"],
                    numbers["fscore_dataset"],
                    numbers["miou"],
                    numbers["fscore"],
                )
            else:
                log.info("%s %s: mIoU %.4f F %.4f", group, name, numbers["miou"], numbers["fscore"])

"""``ssp evaluate``: AVSBench-exact metrics of a checkpoint on one split.

Reported (every number with its convention, from :data:`ssp.metrics.METRIC_CONVENTIONS`):

- ``binary.v1s`` / ``binary.v1m`` (S4 / MS3) and ``binary.v2``: mIoU, F in the official
  batch mode (batches of ``--fscore-batch-videos`` videos) and per-frame F. A stage-2
  model's foreground probability is 1 - its normalised background score
  (``p_bg / Σ_c p_c`` of the class scores of ``SSPModel.predict``).
- ``semantic.v2`` and ``semantic.all`` (stage 2 only): AVSS mIoU / F over real frames,
  plus per subset; a per-class CSV (``{out}.per_class.csv``: class name from
  label2idx.json, IoU, F, frame count) of ``all``.
- On the generated benchmark (``scenarios.csv`` at the data root) a per-scenario CSV
  (``{out}.per_scenario.csv``): per scenario, mIoU / F (semantic for stage 2, binary
  per-frame for stage 1).

The model's input never contains the GT masks (``ssp.engine.train.model_inputs``); stage 2 reads
stage 1's masks from ``--stage1-masks`` as its stepping stone. Only the metrics use GT.

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
import time
from pathlib import Path
from typing import Any

from ssp.errors import DataError, SSPError

log = logging.getLogger(__name__)

FRAMES_PER_VIDEO = {"v1s": 5, "v1m": 5, "v2": 10}


def binary_from_semantic(scores):
    """Stage-2 class scores N×C×H×W -> foreground logits N×H×W (1 - normalised background)."""
    import torch

    probs = scores.float().clamp(min=0)
    probs = probs / probs.sum(1, keepdim=True).clamp(min=1e-12)
    foreground = (1 - probs[:, 0]).clamp(1e-6, 1 - 1e-6)
    return torch.logit(foreground)


def read_scenarios(data: Path) -> dict[str, str]:
    path = data / "scenarios.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row["uid"]: row["scenario"] for row in csv.DictReader(f)}


def evaluate(checkpoint: str | Path, data: str | Path, split: str = "test", out: str | Path | None = None,
             stage1_masks: str | Path | None = None, flow: str | Path | None = None,
             prompts: str | Path | None = None, logmel: str | Path | None = None,
             fscore_batch_videos: int = 4, device: str = "auto", batch_size: int = 4,
             premask_test_source: str | None = None, progress: bool = True,
             log_to_run: bool = True) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on ``split`` (see module doc); written to ``out`` if given.
    ``log_to_run``: also log them into the checkpoint's training run, when it has one."""
    import torch
    from tqdm.auto import tqdm

    from ssp.models.checkpoint import load_model
    from ssp.data.avsbench import class_names
    from ssp.data.datasets import collate_frames
    from ssp.fileio import write_json, write_text
    from ssp.metrics import METRIC_CONVENTIONS, BinaryMeter, SemanticMeter, official_batch_frames
    from ssp.engine.train import build_dataset, load_split_records, model_inputs, to_device

    data = Path(data)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    overrides = {"premask_test_source": premask_test_source} if premask_test_source else {}
    model, config, info = load_model(checkpoint, device, **overrides)
    if config.stage == 2 and stage1_masks is None:
        raise SSPError("a stage-2 checkpoint needs --stage1-masks DIR (stage 1's predictions, its stepping stones)")
    records = load_split_records(data, config.stage, split, None)
    dataset = build_dataset(records, config, {"flow": flow, "prompts": prompts, "logmel": logmel},
                            stage1_dir=stage1_masks if config.stage == 2 else None)
    scenarios = read_scenarios(data)

    subsets = sorted({r.subset for r in records}, key=list(FRAMES_PER_VIDEO).index)
    binary = {s: BinaryMeter(official_batch_frames(FRAMES_PER_VIDEO[s], fscore_batch_videos)) for s in subsets}
    semantic: dict[str, SemanticMeter] = {}
    per_scenario: dict[str, Any] = {}
    if config.stage == 2:
        semantic = {s: SemanticMeter(config.num_classes) for s in [*subsets, "all"]}
        per_scenario = {s: SemanticMeter(config.num_classes) for s in sorted(set(scenarios.values()))}
    else:
        per_scenario = {s: BinaryMeter() for s in sorted(set(scenarios.values()))}

    with tqdm(total=len(dataset), desc=f"evaluate {split}", unit="video", disable=not progress) as bar:
        for start in range(0, len(dataset), batch_size):
            batch = collate_frames([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch = to_device(batch, device)
            with torch.no_grad():
                scores = model.predict(model_inputs(batch)).float()
            fg_logits = scores if config.stage == 1 else binary_from_semantic(scores)
            for v, uid in enumerate(batch["uid"]):
                frames = (batch["video_index"] == v) & batch["labelled"].bool()
                index = frames.nonzero(as_tuple=True)[0]
                if not len(index):
                    continue
                subset = batch["subset"][v]
                gt = batch["masks"][index]
                binary[subset].update(fg_logits[index], (gt > 0).long())
                scenario = scenarios.get(uid)
                if config.stage == 2:
                    semantic[subset].update(scores[index], gt)
                    semantic["all"].update(scores[index], gt)
                    if scenario:
                        per_scenario[scenario].update(scores[index], gt)
                elif scenario:
                    per_scenario[scenario].update(fg_logits[index], (gt > 0).long())
            bar.update(len(batch["uid"]))

    result: dict[str, Any] = {
        "checkpoint": str(checkpoint), "data": str(data), "split": split, "stage": config.stage,
        "model": {k: getattr(config, k) for k in ("size", "pre_mask", "text", "post_mask", "lambda_post",
                                                   "post_mask_form", "premask_test_source")},
        "trained": info, "fscore_batch_videos": fscore_batch_videos, "binary": {}, "semantic": {},
    }
    for subset, meter in binary.items():
        if meter.num_frames:
            numbers = meter.compute()
            result["binary"][subset] = {k: numbers[k] for k in ("miou", "fscore", "fscore_per_frame",
                                                                 "miou_per_frame", "num_frames", "batch_frames")}
    result["conventions"] = {"binary": next(iter(binary.values())).conventions() if binary else {}}
    if config.stage == 2:
        for name, meter in semantic.items():
            if meter.num_frames:
                numbers = meter.compute()
                result["semantic"][name] = {k: numbers[k] for k in ("miou", "fscore", "miou_no_bg", "fscore_no_bg",
                                                                     "miou_present", "fscore_present", "num_frames")}
        result["conventions"]["semantic"] = METRIC_CONVENTIONS["semantic"]
    if config.stage == 2:
        result["conventions"]["binary_from_stage2"] = "foreground probability = 1 - normalised background score"

    if out is not None:
        out = Path(out)
        stem = out.with_suffix("")
        if config.stage == 2 and semantic["all"].num_frames:
            numbers = semantic["all"].compute()
            names = class_names(data)
            rows = [{"index": c, "class": names[c] if c < len(names) else str(c),
                     "iou": numbers["per_class_iou"][c], "fscore": numbers["per_class_fscore"][c],
                     "count": numbers["per_class_count"][c]} for c in range(config.num_classes)]
            write_text(f"{stem}.per_class.csv", _csv(rows))
            result["per_class_csv"] = f"{stem}.per_class.csv"
        if per_scenario:
            rows = []
            for scenario, meter in per_scenario.items():
                if not meter.num_frames:
                    continue
                numbers = meter.compute()
                if config.stage == 2:
                    rows.append({"scenario": scenario, "miou": numbers["miou"], "fscore": numbers["fscore"],
                                 "miou_present": numbers["miou_present"], "frames": numbers["num_frames"]})
                else:
                    rows.append({"scenario": scenario, "miou": numbers["miou_per_frame"],
                                 "fscore": numbers["fscore_per_frame"], "frames": numbers["num_frames"]})
            write_text(f"{stem}.per_scenario.csv", _csv(rows))
            result["per_scenario_csv"] = f"{stem}.per_scenario.csv"
            result["per_scenario"] = {r["scenario"]: {k: v for k, v in r.items() if k != "scenario"} for r in rows}
        write_json(out, result)
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
    the AVSS metrics over all subsets (stage 2: ``test/miou``, ``test/fscore`` and the
    ``_no_bg`` variants) and the binary ones per subset (``test/binary/v1s/miou``, ...,
    the S4 / MS3 columns of Table 2; stage 1's only numbers). NaN is left out (MLflow's
    charts break on it)."""
    split = result["split"]
    out: dict[str, float] = {}
    semantic = result.get("semantic", {}).get("all", {})
    for key in ("miou", "fscore", "miou_no_bg", "fscore_no_bg"):
        if semantic.get(key) is not None:
            out[f"{split}/{key}"] = float(semantic[key])
    for subset, numbers in result.get("binary", {}).items():
        for key in ("miou", "fscore"):
            if numbers.get(key) is not None:
                out[f"{split}/binary/{subset}/{key}"] = float(numbers[key])
    return {k: v for k, v in out.items() if v == v}


def log_to_training_run(checkpoint: str | Path, result: dict[str, Any]) -> str | None:
    """Log :func:`run_metrics` of ``result`` into the checkpoint's training run; returns
    its id, or None when there is no such run. A run that no longer exists (deleted, or
    recorded in another tracking store) is a warning: the evaluation stands without it.
    Any other tracking error propagates."""
    run_id = training_run_id(checkpoint)
    if run_id is None:
        return None
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    from ssp.ops.tracking import _retry, get_client, tracking_uri

    client = get_client()
    try:
        run = _retry(lambda: client.get_run(run_id), "get_run")
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        log.warning("%s: MLflow run %s (its metrics.json) not found in %s; test metrics not logged to it",
                    checkpoint, run_id, tracking_uri())
        return None
    if run.info.lifecycle_stage == "deleted":
        log.warning("%s: MLflow run %s was deleted; test metrics not logged to it", checkpoint, run_id)
        return None
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in run_metrics(result).items()]
    if metrics:
        _retry(lambda: client.log_batch(run_id, metrics=metrics), "log_metrics")
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
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="split (default: test)")
    parser.add_argument("--out", required=True, type=Path,
                        help="metrics JSON; FILE.per_class.csv and FILE.per_scenario.csv are written beside it")
    parser.add_argument("--stage1-masks", type=Path, default=None,
                        help="`ssp stage1-masks` output: stage 2's stepping stones (required for stage 2)")
    parser.add_argument("--flow", type=Path, default=None, help="`ssp flow` output (if the model uses pre_mask)")
    parser.add_argument("--prompts", type=Path, default=None, help="`ssp prompts` output (if the model uses text)")
    parser.add_argument("--logmel", type=Path, default=None, help="`ssp logmel` output (default: from the wav)")
    parser.add_argument("--fscore-batch-videos", type=int, default=4,
                        help="videos per batch of the official (batch-mode) binary F-score (default: 4, official)")
    parser.add_argument("--premask-test-source", choices=("stage1", "flow", "all"), default=None,
                        help="what stands in for M_GT in the pre-mask at test (default: the checkpoint's config)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    parser.add_argument("--batch-size", type=int, default=4, help="videos per forward pass (default: 4)")
    parser.add_argument("--no-track", action="store_true",
                        help="do not log the metrics into the checkpoint's MLflow training run")


def main(args: argparse.Namespace) -> int:
    result = evaluate(args.checkpoint, args.data, args.split, args.out, stage1_masks=args.stage1_masks,
                      flow=args.flow, prompts=args.prompts, logmel=args.logmel,
                      fscore_batch_videos=args.fscore_batch_videos, device=args.device,
                      batch_size=args.batch_size, premask_test_source=args.premask_test_source,
                      log_to_run=not args.no_track)
    log_summary(result)
    return 0


def log_summary(result: dict[str, Any]) -> None:
    for group in ("binary", "semantic"):
        for name, numbers in result[group].items():
            log.info("%s %s: mIoU %.4f F %.4f", group, name, numbers["miou"], numbers["fscore"])

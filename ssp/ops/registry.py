"""MLflow model registry: the best stage-1 and stage-2 checkpoints under stable names.

Registered names: ``ssp-avs`` (stage 1, binary AVS) and ``ssp-avss`` (stage 2, AVSS).
A version is a folder of plain artifacts logged to a training run, no pickled code::

    ssp_model-{sha}/model.safetensors   the checkpoint (weights + model config, ssp.models.checkpoint)
    ssp_model-{sha}/ssp_model.json      stage, validation metric, class names, data hash, params

(``{sha}``: the checkpoint's content hash, so two checkpoints of one run never collide)

so it loads back with safetensors alone (:func:`resolve_model_uri` downloads it,
:func:`ssp.models.checkpoint.load_model` rebuilds the model). Each version is tagged with the
params, data hash, git commit and validation metric that made it. The alias
``champion`` moves to a new version only when its validation metric (higher is better,
mIoU by default) beats the current champion's; otherwise it stays where it is.

``ssp register --run-dir RUN --stage 1|2`` registers a ``ssp train`` run folder: its
``metrics.json`` gives the metric, its ``checkpoints/best.safetensors`` the weights, and
the MLflow run it logged to is found by (in order) ``mlflow_run.json`` /
``metrics.json["mlflow_run_id"]`` in the folder, a run tagged ``ssp.run_dir`` with the
folder, or the newest run of the stage's experiment whose logged best metrics equal
the folder's. When none matches, a small ``register`` run is created to hold the artifacts.

``models:/ssp-avss@champion`` and ``models:/ssp-avs/3`` URIs resolve to a local
checkpoint with :func:`resolve_model_uri` (cached per store, name and version).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from mlflow.artifacts import download_artifacts

from ssp.data.avsbench import class_names
from ssp.errors import DataError, SSPError
from ssp.fileio import write_json
from ssp.models.checkpoint import read_weights
from ssp.ops.tracking import EXPERIMENTS, RunLogger, data_hash, get_client, git_commit, retry_locked, tracking_uri
from ssp.params import add_params_arguments, stage_params

log = logging.getLogger(__name__)

MODEL_NAMES = {1: "ssp-avs", 2: "ssp-avss"}
CHAMPION = "champion"
ARTIFACT_DIR = "ssp_model"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "ssp_model.json"
MANIFEST_FORMAT = "ssp-model"
RUN_POINTER = "mlflow_run.json"  # {"run_id": ...} in a run folder, if the trainer wrote one
TAG_LIMIT = 5000  # MLflow's limit on a tag value
CACHE_ENV = "SSP_MODEL_CACHE"

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass
class Registration:
    """What :func:`register_checkpoint` did."""

    name: str
    version: int
    run_id: str
    metric: float
    champion: bool  # True: the alias now points at this version
    previous_champion: int | None  # the version the alias pointed at before (None: there was none)


def model_name(stage: int) -> str:
    if stage not in MODEL_NAMES:
        raise SSPError(f"stage must be 1 or 2, got {stage}")
    return MODEL_NAMES[stage]


# ---------------------------------------------------------------------------------------
# Finding the training run of a run folder
# ---------------------------------------------------------------------------------------
def _best_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in (metrics.get("best") or {}).items() if isinstance(v, (int, float))}


def read_run_metrics(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "metrics.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "missing: not a finished `ssp train` run folder") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(path, f"unreadable ({e})") from None


def metric_value(metrics: Mapping[str, Any], metric: str) -> float:
    """``val_miou`` -> ``metrics["best"]["miou"]`` (the best epoch's validation value)."""
    key = metric[len("val_") :] if metric.startswith("val_") else metric
    best = metrics.get("best") or {}
    if key not in best:
        raise SSPError(f"metrics.json has no best[{key!r}] (has: {', '.join(sorted(best)) or 'nothing'})")
    return float(best[key])


def find_run_id(run_dir: str | Path, stage: int) -> str | None:
    """The MLflow run that ``ssp train`` logged ``run_dir`` to, or None (see module doc)."""
    run_dir = Path(run_dir)
    pointer = run_dir / RUN_POINTER
    if pointer.is_file():
        try:
            return str(json.loads(pointer.read_text())["run_id"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(pointer, f"unreadable run pointer ({e})") from None
    metrics = read_run_metrics(run_dir)
    if metrics.get("mlflow_run_id"):
        return str(metrics["mlflow_run_id"])
    client = get_client()
    experiment = client.get_experiment_by_name(EXPERIMENTS[stage])
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`ssp.run_dir` = '{run_dir.resolve()}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if runs:
        return runs[0].info.run_id
    # Fallback: the newest finished run of this stage whose best metrics are the folder's.
    best = _best_metrics(metrics)
    if not best:
        return None
    candidates = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`ssp.stage` = '{stage}'",
        order_by=["attributes.start_time DESC"],
        max_results=200,
    )
    for run in candidates:
        logged = run.data.metrics
        if logged.get("best/epoch") != float(metrics.get("best_epoch", math.nan)):
            continue
        if all(
            math.isclose(logged.get(f"best/{k}", math.nan), v, rel_tol=1e-9, abs_tol=1e-12) for k, v in best.items()
        ):
            return run.info.run_id
    return None


# ---------------------------------------------------------------------------------------
# Registering
# ---------------------------------------------------------------------------------------
def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tag(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= TAG_LIMIT else text[: TAG_LIMIT - 3] + "..."


def _champion(client, name: str) -> tuple[int | None, float]:
    """(version, metric) of the current champion; (None, -inf) when there is none."""
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except Exception as e:  # MlflowException RESOURCE_DOES_NOT_EXIST: no alias yet
        if "not" in str(e).lower() and ("found" in str(e).lower() or "exist" in str(e).lower()):
            return None, -math.inf
        raise
    try:
        metric = float(version.tags.get("ssp.val_metric", "nan"))
    except ValueError:
        metric = math.nan
    return int(version.version), metric if metric == metric else -math.inf


def register_checkpoint(
    run: str | Path | None,
    checkpoint: str | Path,
    stage: int,
    val_metric: float,
    params: Mapping[str, Any] | None = None,
    data_hash: str | None = None,
    metric_name: str = "val_miou",
    class_names: list[str] | None = None,
    alias: str = CHAMPION,
) -> Registration:
    """Register ``checkpoint`` as a new version of ``ssp-avs`` (stage 1) / ``ssp-avss``.

    ``run`` is the MLflow run id the checkpoint came from, or its ``ssp train`` run folder
    (the run is then looked up, see :func:`find_run_id`), or None: a ``register`` run is
    created in the stage's experiment to hold the artifacts. ``alias`` (``champion``)
    moves to the new version iff ``val_metric`` is higher than the current holder's.
    """
    name = model_name(stage)
    checkpoint = Path(checkpoint)
    _, config, info = read_weights(checkpoint)  # DataError for anything but an SSP checkpoint
    if int(config.get("stage", 0)) != stage:
        raise SSPError(f"{checkpoint}: a stage-{config.get('stage')} checkpoint, registering as stage {stage}")
    if not math.isfinite(float(val_metric)):
        raise SSPError(f"validation metric must be a finite number, got {val_metric}")

    client = get_client()
    run_id, artifact_uri = _source_run(client, run, checkpoint, stage, name)
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "stage": stage,
        "weights": WEIGHTS_FILE,
        "metric": metric_name,
        "val_metric": float(val_metric),
        "class_names": class_names,
        "data_hash": data_hash,
        "params": dict(params or {}),
        "checkpoint_info": info,
        "source_checkpoint": str(checkpoint),
    }
    source = _upload(client, run_id, artifact_uri, checkpoint, manifest)
    tags = {
        "ssp.stage": str(stage),
        "ssp.metric": metric_name,
        "ssp.val_metric": repr(float(val_metric)),
        "ssp.data_hash": data_hash or "",
        "ssp.params": _tag(params or {}),
        "ssp.git_commit": git_commit() or "",
        "ssp.checkpoint": checkpoint.name,
    }
    version = _create_version(client, name, stage, source, run_id, tags, f"{metric_name}={float(val_metric):.4f}")

    previous, previous_metric = _champion(client, name)
    promote = float(val_metric) > previous_metric
    if promote:
        retry_locked(lambda: client.set_registered_model_alias(name, alias, str(version)), "set alias")
    log.info(
        "registered %s version %d (%s=%.4f)%s",
        name,
        version,
        metric_name,
        float(val_metric),
        f"; now @{alias}" if promote else f"; @{alias} stays on version {previous} ({previous_metric:.4f})",
    )
    return Registration(name, version, run_id, float(val_metric), promote, previous)


def _source_run(client, run: str | Path | None, checkpoint: Path, stage: int, name: str) -> tuple[str, str]:
    """The MLflow run the version points at: ``run`` itself, the run that trained the run
    folder ``run``, or a new ``register`` run holding the artifacts; (run id, artifact URI)."""
    run_id: str | None
    if run is None or (isinstance(run, Path) or Path(str(run)).is_dir()):
        run_id = find_run_id(run, stage) if run is not None else None
        if run_id is None:
            log.warning("no MLflow run found for %s; creating a `register` run for the artifacts", run or checkpoint)
            with RunLogger(
                EXPERIMENTS[stage],
                f"register-{name}",
                params={"checkpoint": str(checkpoint)},
                tags={"ssp.stage": str(stage), "ssp.kind": "register"},
                parent_run_id="",
            ) as holder:
                run_id = holder.run_id
    else:
        run_id = str(run)
    try:
        return run_id, client.get_run(run_id).info.artifact_uri
    except Exception as e:
        raise SSPError(f"MLflow run {run_id} not found in {client.tracking_uri}: {e}") from None


def _upload(client, run_id: str, artifact_uri: str, checkpoint: Path, manifest: dict[str, Any]) -> str:
    """Weights + manifest as artifacts of ``run_id``; returns their artifact URI."""
    # One artifact folder per checkpoint content: registering another checkpoint from the
    # same run must not overwrite the files an earlier version points at.
    artifact_path = f"{ARTIFACT_DIR}-{_file_digest(checkpoint)[:12]}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / artifact_path
        folder.mkdir()
        shutil.copyfile(checkpoint, folder / WEIGHTS_FILE)
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        retry_locked(lambda: client.log_artifacts(run_id, str(folder), artifact_path), "log_artifacts")
    return f"{artifact_uri.rstrip('/')}/{artifact_path}"


def _create_version(
    client, name: str, stage: int, source: str, run_id: str, tags: dict[str, str], description: str
) -> int:
    """A new version of registered model ``name`` (created on first use) at ``source``."""

    def ensure_model() -> None:
        try:
            client.create_registered_model(
                name,
                tags={"ssp.stage": str(stage)},
                description=f"SSP stage {stage} ({'AVS' if stage == 1 else 'AVSS'})",
            )
        except Exception as e:  # exists already (or created meanwhile by another pipeline)
            if "already exists" not in str(e).lower() and "unique" not in str(e).lower():
                raise

    retry_locked(ensure_model, "create_registered_model")
    created = retry_locked(
        lambda: client.create_model_version(name, source, run_id=run_id, tags=tags, description=description),
        "create_model_version",
    )
    return int(created.version)


# ---------------------------------------------------------------------------------------
# Resolving
# ---------------------------------------------------------------------------------------
def parse_model_uri(uri: str) -> tuple[str, str | None, int | None]:
    """``models:/NAME@ALIAS`` -> (NAME, ALIAS, None); ``models:/NAME/3`` -> (NAME, None, 3)."""
    match = _URI.match(uri.strip())
    if not match:
        raise SSPError(f"{uri!r} is not a registry URI (models:/NAME@ALIAS or models:/NAME/VERSION)")
    version = match.group("version")
    return match.group("name"), match.group("alias"), int(version) if version else None


def _cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ssp" / "models")


def resolve_model(uri: str, dst: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """(local checkpoint path, manifest) of a registered version; downloads it once into
    ``dst`` (default: a cache folder per tracking store, name and version)."""
    name, alias, version = parse_model_uri(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # callers show their own progress
    client = get_client()
    try:
        found = (
            client.get_model_version_by_alias(name, alias)
            if alias is not None
            else client.get_model_version(name, str(version))
        )
    except Exception as e:
        raise SSPError(
            f"{uri}: not found in the model registry at {tracking_uri()} "
            f"({str(e).splitlines()[0]}); register a model with `ssp register` first"
        ) from None
    store = hashlib.sha256(tracking_uri().encode()).hexdigest()[:12]
    folder = Path(dst) if dst is not None else _cache_root() / store / name / str(found.version)
    weights, manifest_path = folder / ARTIFACT_DIR / WEIGHTS_FILE, folder / ARTIFACT_DIR / MANIFEST_FILE
    if not (weights.is_file() and manifest_path.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:  # download whole, then move in place
            download_uri = client.get_model_version_download_uri(name, str(found.version))
            got = Path(download_artifacts(artifact_uri=download_uri, dst_path=tmp, tracking_uri=tracking_uri()))
            if not (got / MANIFEST_FILE).is_file():  # some stores nest the folder once more
                inner = [p for p in got.iterdir() if p.is_dir()] if got.is_dir() else []
                got = inner[0] if len(inner) == 1 else got
            if not (got / MANIFEST_FILE).is_file() or not (got / WEIGHTS_FILE).is_file():
                raise SSPError(
                    f"{uri} (version {found.version}) is not an SSP model: "
                    f"no {MANIFEST_FILE} / {WEIGHTS_FILE} in its artifacts"
                )
            shutil.rmtree(folder / ARTIFACT_DIR, ignore_errors=True)
            os.replace(got, folder / ARTIFACT_DIR)
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(manifest_path, "not an SSP model manifest")
    manifest["registered"] = {"name": name, "version": int(found.version), "alias": alias, "uri": uri}
    return weights, manifest


def resolve_model_uri(uri: str, dst: str | Path | None = None) -> Path:
    """``models:/ssp-avss@champion`` -> local checkpoint path (see :func:`resolve_model`)."""
    return resolve_model(uri, dst)[0]


def champion_uri(stage: int) -> str:
    return f"models:/{model_name(stage)}@{CHAMPION}"


# ---------------------------------------------------------------------------------------
# CLI: ssp register
# ---------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-dir",
        type=Path,
        required=True,
        help="an `ssp train` run folder (metrics.json, checkpoints/best.safetensors)",
    )
    parser.add_argument(
        "--stage", type=int, choices=(1, 2), required=True, help="1 registers as ssp-avs, 2 as ssp-avss"
    )
    parser.add_argument(
        "--metric",
        default="val_miou",
        help="validation metric that decides the champion, higher is better; read from "
        "metrics.json's best epoch (val_miou -> best.miou). Default: val_miou",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint to register (default: RUN_DIR/checkpoints/best.safetensors)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the dataset the run was trained on: its class names (label2idx.json) are stored "
        "with the model for `ssp predict`, and its hash tags the version",
    )
    add_params_arguments(parser, "train2.lr=0.0005")
    parser.add_argument(
        "--run-id", default=None, help="MLflow run the checkpoint was logged to (default: found from the run folder)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="also write what was registered (name, version, champion or not) to this JSON "
        "file, e.g. as a DVC stage output",
    )
    parser.add_argument(
        "--alias",
        default=CHAMPION,
        help="alias given to the new version when it beats the holder's metric. Default: champion",
    )


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    metrics = read_run_metrics(run_dir)
    if metrics.get("stage") not in (None, args.stage):
        raise SSPError(f"{run_dir}: a stage-{metrics.get('stage')} run, not stage {args.stage}")
    value = metric_value(metrics, args.metric)
    checkpoint = args.checkpoint or run_dir / "checkpoints" / "best.safetensors"
    names, digest = None, None
    if args.data is not None:
        names = class_names(args.data)
        digest = data_hash(args.data)
    params = stage_params(args).to_dict()  # recorded with the version
    result = register_checkpoint(
        args.run_id or run_dir,
        checkpoint,
        args.stage,
        value,
        params=params,
        data_hash=digest,
        metric_name=args.metric,
        class_names=names,
        alias=args.alias,
    )
    state = f"now @{args.alias}" if result.champion else f"@{args.alias} stays on version {result.previous_champion}"
    print(f"{result.name} version {result.version} ({args.metric}={value:.4f}): {state}")
    if args.out is not None:
        write_json(
            args.out,
            {
                **asdict(result),
                "metric_name": args.metric,
                "alias": args.alias,
                "uri": f"models:/{result.name}/{result.version}",
            },
        )
    return 0

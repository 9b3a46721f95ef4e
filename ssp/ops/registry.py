"""MLflow model registry: the best stage-1 and stage-2 checkpoints under stable names.

Registered names: ``ssp-avs`` (stage 1, binary AVS) and ``ssp-avss`` (stage 2, AVSS): one
registered model per task. A version is an MLflow pyfunc model logged to a training run,
plain files and no pickled code::

    ssp_model-{sha}/MLmodel                          pyfunc flavour: loader_module ssp.eval.serving
    ssp_model-{sha}/data/ssp_model/model.safetensors the checkpoint (weights + model config)
    ssp_model-{sha}/data/ssp_model/ssp_model.json    stage, metric, class names, key, params
    ssp_model-{sha}/data/ssp_model/stage1.safetensors  stage 2 only: its stepping-stone model

(``{sha}``: the content hash of the checkpoint(s), so two checkpoints of one run never
collide), so ``mlflow models serve -m models:/ssp-avss@champion`` answers requests
(:mod:`ssp.eval.serving`; the registry names that module, it does not import it) and
:func:`resolve_model_uri` downloads it for ``ssp predict``
(:func:`ssp.models.checkpoint.load_model` rebuilds the model). Each version is tagged with
the params, dataset fingerprint, profile, git commit and validation metric that made it.

**Champions are per key** (:class:`ChampionKey`): task (the registered model), dataset
fingerprint (``reports/validation.json``'s ``fingerprint.md5``, the dataset's content
digest) and profile (params ``profile``). A new version is compared only with the holder
of its key's alias ``champion-{profile}-{fingerprint[:8]}`` (e.g. ``champion-demo-1a2b3c4d``),
which moves to it only when its validation metric (higher is better, mIoU by default) is
strictly higher. The plain alias ``champion`` then points at the champion of the key
registered last, so ``models:/ssp-avss@champion`` is "the best model of the data and
profile the pipeline last ran on", and a model trained on generated data never blocks one
trained on AVSBench.

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
import importlib.metadata
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

import mlflow.pyfunc
from mlflow.artifacts import download_artifacts
from mlflow.models import Model

from ssp.data.avsbench import class_names
from ssp.errors import DataError, SSPError
from ssp.fileio import tree_digest, write_json
from ssp.models.checkpoint import read_weights
from ssp.ops.tracking import EXPERIMENTS, RunLogger, get_client, git_commit, retry_locked, tracking_uri
from ssp.params import add_params_arguments, stage_params

log = logging.getLogger(__name__)

MODEL_NAMES = {1: "ssp-avs", 2: "ssp-avss"}
TASKS = {1: "avs", 2: "avss"}
CHAMPION = "champion"
UNKNOWN = "unknown"  # key part of a version registered without a dataset fingerprint / profile
ARTIFACT_DIR = "ssp_model"
PYFUNC_DATA_DIR = "data"  # where mlflow.pyfunc.save_model copies data_path
WEIGHTS_FILE = "model.safetensors"
STAGE1_FILE = "stage1.safetensors"  # stage 2: the stepping-stone model it is served with
MANIFEST_FILE = "ssp_model.json"
MANIFEST_FORMAT = "ssp-model"
SERVING_LOADER = "ssp.eval.serving"  # the pyfunc loader module; named, never imported here
RUN_POINTER = "mlflow_run.json"  # {"run_id": ...} in a run folder, if the trainer wrote one
TAG_LIMIT = 5000  # MLflow's limit on a tag value
CACHE_ENV = "SSP_MODEL_CACHE"

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class ChampionKey:
    """What a version competes on: task (``stage``), dataset fingerprint, profile."""

    stage: int
    data_fingerprint: str | None = None  # reports/validation.json's fingerprint.md5
    profile: str | None = None  # params ``profile``

    def alias(self, base: str = CHAMPION) -> str:
        """``champion-{profile}-{fingerprint[:8]}`` (MLflow aliases allow ``[A-Za-z0-9_-]``)."""
        profile = re.sub(r"[^\w-]", "_", self.profile or UNKNOWN)
        fingerprint = re.sub(r"[^\w-]", "_", (self.data_fingerprint or UNKNOWN)[:8])
        return f"{base}-{profile}-{fingerprint}"

    def describe(self) -> str:
        fingerprint = (self.data_fingerprint or UNKNOWN)[:8]
        return f"{TASKS[self.stage]}, profile {self.profile or UNKNOWN}, data {fingerprint}"

    @classmethod
    def of_manifest(cls, manifest: Mapping[str, Any]) -> ChampionKey | None:
        """The key a registered version was registered under; None for versions registered
        before champions had keys (their manifest names no profile)."""
        if "profile" not in manifest:
            return None
        return cls(int(manifest["stage"]), manifest.get("data_fingerprint"), manifest.get("profile"))


@dataclass
class Registration:
    """What :func:`register_checkpoint` did."""

    name: str
    version: int
    run_id: str
    metric: float
    champion: bool  # True: the key's alias now points at this version
    previous_champion: int | None  # the version the key's alias pointed at before (None: there was none)
    key_alias: str  # champion-{profile}-{fingerprint[:8]}
    champion_version: int  # the version the plain alias (champion) points at now
    servable: bool  # False: a stage-2 version without a stage-1 model (mlflow models serve refuses it)


def model_name(stage: int) -> str:
    if stage not in MODEL_NAMES:
        raise SSPError(f"stage must be 1 or 2, got {stage}")
    return MODEL_NAMES[stage]


def dataset_fingerprint(validation: str | Path | None = None, data: str | Path | None = None) -> str | None:
    """The dataset's content digest: ``fingerprint.md5`` of ``ssp validate``'s report
    (``validation``; it must be the report of ``data`` when both are given), else
    :func:`ssp.fileio.tree_digest` of ``data`` (the same number, computed again: reads
    every file), else None."""
    if validation is not None:
        path = Path(validation)
        try:
            report = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(path, "missing: run `ssp validate DATA --report FILE` first") from None
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(path, f"unreadable ({e})") from None
        md5 = (report.get("fingerprint") or {}).get("md5") if isinstance(report, dict) else None
        if not md5:
            raise DataError(path, "has no fingerprint.md5 (written by an older `ssp validate`: run it again)")
        root = report.get("root")
        if data is not None and root and Path(root).resolve() != Path(data).resolve():
            raise DataError(path, f"is the report of {root}, not of --data {data}")
        return str(md5)
    if data is not None:
        log.info("fingerprinting %s (pass --validation reports/validation.json to reuse ssp validate's)", data)
        return str(tree_digest(data)["md5"])
    return None


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
def _file_digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _tag(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= TAG_LIMIT else text[: TAG_LIMIT - 3] + "..."


def _alias_holder(client, name: str, alias: str) -> tuple[int | None, float]:
    """(version, metric) of the version ``alias`` points at; (None, -inf) when none."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except Exception as e:  # MlflowException RESOURCE_DOES_NOT_EXIST: no alias (or model) yet
        if "not" in str(e).lower() and ("found" in str(e).lower() or "exist" in str(e).lower()):
            return None, -math.inf
        raise
    try:
        metric = float(version.tags.get("ssp.val_metric", "nan"))
    except ValueError:
        metric = math.nan
    return int(version.version), metric if metric == metric else -math.inf


def _stage1_bundle(stage: int, stage1: str | Path | None, key: ChampionKey) -> tuple[Path | None, dict | None]:
    """The stage-1 checkpoint a stage-2 version is served with, and where it came from:
    ``stage1`` (a checkpoint file or a ``models:/`` URI), else the stage-1 champion of the
    same key; (None, None) when there is none (the version is then not servable)."""
    if stage != 2:
        if stage1 is not None:
            raise SSPError("--stage1 is for a stage-2 model (the stepping-stone model it is served with)")
        return None, None
    if stage1 is None or str(stage1).startswith("models:/"):
        uri = str(stage1) if stage1 is not None else champion_uri(1, key)
        try:
            path, manifest = resolve_model(uri)
        except SSPError as e:
            if stage1 is not None:
                raise
            log.warning("no stage-1 model for %s (%s): this version will not be servable", key.describe(), e)
            return None, None
        source = {"uri": uri, "name": manifest["registered"]["name"], "version": manifest["registered"]["version"]}
    else:
        path, source = Path(stage1), {"checkpoint": str(stage1)}
    _, config, _ = read_weights(path)  # DataError for anything but an SSP checkpoint
    if int(config.get("stage", 0)) != 1:
        raise SSPError(f"{stage1 or path}: the stepping-stone model must be stage 1, got stage {config.get('stage')}")
    return path, {**source, "sha256": _file_digest(path)}


def register_checkpoint(
    run: str | Path | None,
    checkpoint: str | Path,
    stage: int,
    val_metric: float,
    params: Mapping[str, Any] | None = None,
    data_fingerprint: str | None = None,
    profile: str | None = None,
    metric_name: str = "val_miou",
    class_names: list[str] | None = None,
    alias: str = CHAMPION,
    stage1: str | Path | None = None,
) -> Registration:
    """Register ``checkpoint`` as a new version of ``ssp-avs`` (stage 1) / ``ssp-avss``.

    ``run`` is the MLflow run id the checkpoint came from, or its ``ssp train`` run folder
    (the run is then looked up, see :func:`find_run_id`), or None: a ``register`` run is
    created in the stage's experiment to hold the artifacts. The key (stage,
    ``data_fingerprint``, ``profile``; ``profile`` defaults to ``params["profile"]``) names
    the alias ``{alias}-{profile}-{fingerprint[:8]}``, which moves to the new version iff
    ``val_metric`` is higher than its holder's; ``alias`` itself then points at that key's
    holder. ``stage1`` (stage 2): the stepping-stone model stored with the version for
    serving (a checkpoint or ``models:/`` URI; default: the stage-1 champion of the key).
    """
    name = model_name(stage)
    checkpoint = Path(checkpoint)
    _, config, info = read_weights(checkpoint)  # DataError for anything but an SSP checkpoint
    if int(config.get("stage", 0)) != stage:
        raise SSPError(f"{checkpoint}: a stage-{config.get('stage')} checkpoint, registering as stage {stage}")
    if not math.isfinite(float(val_metric)):
        raise SSPError(f"validation metric must be a finite number, got {val_metric}")
    if profile is None and params and params.get("profile"):
        profile = str(params["profile"])
    key = ChampionKey(stage, data_fingerprint, profile)
    key_alias = key.alias(alias)
    stage1_path, stage1_source = _stage1_bundle(stage, stage1, key)
    servable = stage == 1 or stage1_path is not None

    client = get_client()
    run_id, artifact_uri = _source_run(client, run, checkpoint, stage, name)
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": 2,
        "stage": stage,
        "task": TASKS[stage],
        "weights": WEIGHTS_FILE,
        "metric": metric_name,
        "val_metric": float(val_metric),
        "class_names": class_names,
        "data_fingerprint": data_fingerprint,
        "profile": profile,
        "champion_alias": key_alias,
        "stage1": {"file": STAGE1_FILE, **stage1_source} if stage1_source else None,
        "params": dict(params or {}),
        "checkpoint_info": info,
        "source_checkpoint": str(checkpoint),
    }
    source = _upload(client, run_id, artifact_uri, checkpoint, stage1_path, manifest)
    tags = {
        "ssp.stage": str(stage),
        "ssp.task": TASKS[stage],
        "ssp.metric": metric_name,
        "ssp.val_metric": repr(float(val_metric)),
        "ssp.data_fingerprint": data_fingerprint or "",
        "ssp.profile": profile or "",
        "ssp.champion_alias": key_alias,
        "ssp.servable": str(servable).lower(),
        "ssp.params": _tag(params or {}),
        "ssp.git_commit": git_commit() or "",
        "ssp.checkpoint": checkpoint.name,
    }
    description = f"{metric_name}={float(val_metric):.4f} ({key.describe()})"
    version = _create_version(client, name, stage, source, run_id, tags, description)

    previous, previous_metric = _alias_holder(client, name, key_alias)
    promote = float(val_metric) > previous_metric
    holder = version if promote else int(previous)
    if promote:
        retry_locked(lambda: client.set_registered_model_alias(name, key_alias, str(version)), "set alias")
    # the plain alias follows the key registered last (see the module doc)
    retry_locked(lambda: client.set_registered_model_alias(name, alias, str(holder)), "set alias")
    log.info(
        "registered %s version %d (%s=%.4f, %s)%s; @%s -> version %d",
        name,
        version,
        metric_name,
        float(val_metric),
        key.describe(),
        f"; now @{key_alias}" if promote else f"; @{key_alias} stays on version {previous} ({previous_metric:.4f})",
        alias,
        holder,
    )
    return Registration(name, version, run_id, float(val_metric), promote, previous, key_alias, holder, servable)


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


def serving_requirements() -> list[str]:
    """The pip requirements written with a version: the installed ``ssp`` package's own
    (no extras). The served model also needs ``ssp`` itself, which is not on PyPI: serve
    it with ``--env-manager local`` from the project's environment."""
    try:
        requirements = importlib.metadata.requires("ssp") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    return [r for r in requirements if "extra ==" not in r]


def _upload(
    client, run_id: str, artifact_uri: str, checkpoint: Path, stage1: Path | None, manifest: dict[str, Any]
) -> str:
    """The pyfunc model (weights, stage-1 weights, manifest) as artifacts of ``run_id``;
    returns its artifact URI."""
    # One artifact folder per checkpoint content: registering another checkpoint from the
    # same run must not overwrite the files an earlier version points at.
    artifact_path = f"{ARTIFACT_DIR}-{_file_digest(checkpoint, *([stage1] if stage1 else []))[:12]}"
    with tempfile.TemporaryDirectory() as tmp:
        payload = Path(tmp) / ARTIFACT_DIR
        payload.mkdir()
        shutil.copyfile(checkpoint, payload / WEIGHTS_FILE)
        if stage1 is not None:
            shutil.copyfile(stage1, payload / STAGE1_FILE)
        (payload / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        folder = Path(tmp) / artifact_path
        mlflow.pyfunc.save_model(
            str(folder),
            loader_module=SERVING_LOADER,
            data_path=str(payload),
            pip_requirements=serving_requirements(),  # given: inferring them would load the model
            mlflow_model=Model(
                metadata={"ssp_stage": manifest["stage"], "ssp_request": f"{SERVING_LOADER} (module doc)"}
            ),
        )
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
                tags={"ssp.stage": str(stage), "ssp.task": TASKS[stage]},
                description=f"SSP stage {stage} ({'AVS' if stage == 1 else 'AVSS'}); "
                "aliases: champion-{profile}-{data fingerprint} per key, champion = the last key's",
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


def _payload(got: Path) -> Path | None:
    """The folder holding the manifest in a downloaded version: the pyfunc model's data
    folder, or the version itself (versions registered before the pyfunc flavour)."""
    for folder in (got / PYFUNC_DATA_DIR / ARTIFACT_DIR, got):
        if (folder / MANIFEST_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
            return folder
    return None


def resolve_model(uri: str, dst: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """(local checkpoint path, manifest) of a registered version; downloads it once into
    ``dst`` (default: a cache folder per tracking store, name and version). A bundled
    stage-1 model lies beside the checkpoint (:func:`bundled_stage1`)."""
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
            payload = _payload(got)
            if payload is None and got.is_dir():  # some stores nest the folder once more
                inner = [p for p in got.iterdir() if p.is_dir()]
                payload = _payload(inner[0]) if len(inner) == 1 else None
            if payload is None:
                raise SSPError(
                    f"{uri} (version {found.version}) is not an SSP model: "
                    f"no {MANIFEST_FILE} / {WEIGHTS_FILE} in its artifacts"
                )
            shutil.rmtree(folder / ARTIFACT_DIR, ignore_errors=True)
            os.replace(payload, folder / ARTIFACT_DIR)
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(manifest_path, "not an SSP model manifest")
    manifest["registered"] = {"name": name, "version": int(found.version), "alias": alias, "uri": uri}
    return weights, manifest


def resolve_model_uri(uri: str, dst: str | Path | None = None) -> Path:
    """``models:/ssp-avss@champion`` -> local checkpoint path (see :func:`resolve_model`)."""
    return resolve_model(uri, dst)[0]


def bundled_stage1(weights: Path, manifest: Mapping[str, Any]) -> Path | None:
    """The stage-1 checkpoint stored with a stage-2 version (None: registered without)."""
    stage1 = manifest.get("stage1")
    if not stage1:
        return None
    path = Path(weights).with_name(stage1.get("file", STAGE1_FILE))
    return path if path.is_file() else None


def champion_uri(stage: int, key: ChampionKey | None = None, alias: str = CHAMPION) -> str:
    """``models:/ssp-avs@champion``, or with a key its own champion
    ``models:/ssp-avs@champion-{profile}-{fingerprint[:8]}`` (the key's stage is ignored:
    a stage-2 model's key names the stage-1 champion of its data and profile)."""
    if key is None:
        return f"models:/{model_name(stage)}@{alias}"
    return f"models:/{model_name(stage)}@{ChampionKey(stage, key.data_fingerprint, key.profile).alias(alias)}"


# ---------------------------------------------------------------------------------------
# CLI: ssp register
# ---------------------------------------------------------------------------------------
HELP = """\
Champions are per key: task (ssp-avs = stage 1, ssp-avss = stage 2), dataset fingerprint
(--validation's fingerprint.md5, else the content digest of --data) and profile (params
`profile`). A new version is compared only with the holder of its key's alias
champion-{profile}-{fingerprint[:8]} (e.g. models:/ssp-avss@champion-demo-1a2b3c4d) and
takes it when its metric is strictly higher; the plain alias `champion` then points at the
champion of the key registered last (models:/ssp-avss@champion). Every version is an MLflow
pyfunc model: `mlflow models serve -m models:/ssp-avss@champion --env-manager local`
answers requests (a stage-2 version is stored with its stage-1 model, see --stage1)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = HELP
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
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
        "with the model for `ssp predict` and serving; without --validation its content "
        "digest is the key's dataset fingerprint",
    )
    parser.add_argument(
        "--validation",
        type=Path,
        default=None,
        metavar="REPORT.json",
        help="`ssp validate --report` of the dataset (dvc.yaml: reports/validation.json): its "
        "fingerprint.md5 is the key's dataset fingerprint (cheap: no re-hashing)",
    )
    parser.add_argument(
        "--stage1",
        default=None,
        metavar="CHECKPOINT_OR_URI",
        help="stage 2: the stepping-stone model stored with the version, served with it "
        "(dvc.yaml: runs/stage1/checkpoints/best.safetensors, the model that made the "
        "stage-1 masks; default: the stage-1 champion of the same key, e.g. "
        "models:/ssp-avs@champion-demo-1a2b3c4d; none: the version is not servable)",
    )
    add_params_arguments(parser, "train2.lr=0.0005")
    parser.add_argument(
        "--run-id", default=None, help="MLflow run the checkpoint was logged to (default: found from the run folder)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="also write what was registered (name, version, aliases, champion or not) to "
        "this JSON file, e.g. as a DVC stage output",
    )
    parser.add_argument(
        "--alias",
        default=CHAMPION,
        help="alias base: ALIAS-{profile}-{fingerprint[:8]} moves to the new version when it "
        "beats that key's holder, ALIAS follows the key registered last. Default: champion",
    )


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    metrics = read_run_metrics(run_dir)
    if metrics.get("stage") not in (None, args.stage):
        raise SSPError(f"{run_dir}: a stage-{metrics.get('stage')} run, not stage {args.stage}")
    value = metric_value(metrics, args.metric)
    checkpoint = args.checkpoint or run_dir / "checkpoints" / "best.safetensors"
    names = class_names(args.data) if args.data is not None else None
    fingerprint = dataset_fingerprint(args.validation, args.data)
    params = stage_params(args)
    result = register_checkpoint(
        args.run_id or run_dir,
        checkpoint,
        args.stage,
        value,
        params=params.to_dict(),  # recorded with the version
        data_fingerprint=fingerprint,
        profile=params.profile,
        metric_name=args.metric,
        class_names=names,
        alias=args.alias,
        stage1=args.stage1,
    )
    if result.champion:
        state = f"now @{result.key_alias}"
    else:
        state = f"@{result.key_alias} stays on version {result.previous_champion}"
    print(
        f"{result.name} version {result.version} ({args.metric}={value:.4f}): {state}; "
        f"@{args.alias} -> version {result.champion_version}" + ("" if result.servable else " (not servable)")
    )
    if args.out is not None:
        write_json(
            args.out,
            {
                **asdict(result),
                "metric_name": args.metric,
                "alias": args.alias,
                "data_fingerprint": fingerprint,
                "profile": params.profile,
                "uri": f"models:/{result.name}/{result.version}",
                "champion_uri": f"models:/{result.name}@{result.key_alias}",
            },
        )
    return 0

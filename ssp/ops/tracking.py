"""MLflow tracking: one place that knows where runs go and what every run records.

- Store: ``MLFLOW_TRACKING_URI`` if set (e.g. a tracking server), else the embedded
  ``sqlite:///mlruns/mlflow.db`` (artifacts land under ``mlruns/`` beside it).
- Experiments: one per task (``ssp-avs`` for stage 1 / binary AVS, ``ssp-avss`` for
  stage 2 / AVSS) unless the caller names another.
- Nesting: a pipeline run (the Prefect ``reproduce`` flow) opens a parent run and
  exports its id in ``SSP_MLFLOW_PARENT_RUN_ID``; every ``ssp train``/``evaluate``
  process started under it becomes a nested run. Environment, not params: DVC must
  not see a new parent id as a changed input.
- Tags on every run: git commit, DVC stage name (``DVC_STAGE`` / caller); the data hash
  (:func:`data_hash`) goes on registered model versions (:mod:`ssp.ops.registry`).

We use ``MlflowClient`` with explicit run ids rather than mlflow's global "active run"
so that several runs can be open in one process (tests, the ablation flow) and only
the process that owns a run touches it. Only rank 0 of a DDP job logs
(``RunLogger(enabled=False)`` elsewhere).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from ssp import __version__
from ssp.ops.mlflow_views import set_up_experiment

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
PARENT_RUN_ENV = "SSP_MLFLOW_PARENT_RUN_ID"
EXPERIMENTS = {1: "ssp-avs", 2: "ssp-avss"}

T = TypeVar("T")


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # relative sqlite path: make sure its folder exists (fresh clone: mlruns/ is empty)
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return uri


def get_client():
    return MlflowClient(tracking_uri=tracking_uri())


def retry_locked(fn: Callable[[], T], what: str, attempts: int = 8) -> T:
    """SQLite allows one writer at a time; two pipelines logging at once can see
    'database is locked'. Retry those with backoff instead of losing the run."""
    delay = 0.2
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # mlflow wraps sqlalchemy errors in MlflowException
            if "locked" not in str(e).lower() or i == attempts - 1:
                raise
            log.debug("%s: store busy, retrying in %.1fs", what, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


def parent_run_from_env(experiment: str) -> str | None:
    """The parent run a pipeline exported for ``experiment``, if any.

    ``SSP_MLFLOW_PARENT_RUN_ID`` holds either one run id, or a JSON object mapping
    experiment name -> run id (a pipeline run spans the avs and avss experiments, and
    MLflow nests runs only within one experiment).
    """
    value = os.environ.get(PARENT_RUN_ENV, "").strip()
    if not value:
        return None
    if value.startswith("{"):
        return json.loads(value).get(experiment)
    return value


def get_or_create_experiment(name: str) -> str:
    client = get_client()

    def go() -> str:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            exp_id = client.create_experiment(name)
            set_up_experiment(client, exp_id, name)  # opens on its runs and saved views in the UI
            return exp_id
        except Exception as e:  # created meanwhile by a concurrent run
            if "already exists" in str(e).lower() or "unique" in str(e).lower():
                return client.get_experiment_by_name(name).experiment_id
            raise

    return retry_locked(go, f"experiment {name}")


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def data_hash(root: str | Path) -> str:
    """A short fingerprint of a dataset: DVC's md5 of the folder when dvc.lock records
    it, else a hash of the manifest files and the sizes of all files (cheap, stable)."""
    root = Path(root)
    lock = Path("dvc.lock")
    if lock.exists():
        try:
            stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        except yaml.YAMLError:
            stages = {}
        for stage in stages.values():
            for out in stage.get("outs", []) or []:
                if Path(out.get("path", "")).resolve() == root.resolve() and out.get("md5"):
                    return "dvc:" + out["md5"].split(".")[0]
    h = hashlib.md5()
    for name in ("metadata.csv", "s4_meta_data.csv", "ms3_meta_data.csv", "label2idx.json"):
        p = root / name
        if p.exists():
            h.update(p.read_bytes())
    sizes = sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())
    h.update(repr(sizes).encode())
    return "files:" + h.hexdigest()


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3} (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class RunLogger:
    """One MLflow run. Use as a context manager; a disabled logger does nothing.

    >>> with RunLogger("ssp-avss", "full-seed0", params=cfg, tags={"row": "full"}) as run:
    ...     run.log_metrics({"loss": 0.3}, step=1)
    """

    def __init__(
        self,
        experiment: str,
        run_name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        enabled: bool = True,
    ):
        self.experiment = experiment
        self.run_name = run_name
        self.params = dict(params or {})
        self.tags = dict(tags or {})
        self.parent_run_id = parent_run_id if parent_run_id is not None else parent_run_from_env(experiment)
        self.enabled = enabled
        self.run_id: str | None = None
        self._client = None
        self._system_metrics = contextlib.ExitStack()

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> "RunLogger":
        if not self.enabled:
            return self
        self._client = get_client()
        exp_id = get_or_create_experiment(self.experiment)
        # where it ran (host, node rank, world size of a torchrun job): the main process opens the run
        tags = {"mlflow.runName": self.run_name, **default_tags(), **node_tags(), **self.tags}
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        run = retry_locked(lambda: self._client.create_run(exp_id, run_name=self.run_name, tags=tags), "create_run")
        self.run_id = run.info.run_id
        if self.params:
            self.log_params(self.params)
        # this node's CPU/memory/disk/network/GPU use while the run is open, when
        # MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING is on (as mlflow.start_run would do)
        self._system_metrics.enter_context(node_system_metrics(self.run_id))
        return self

    def end(self, status: str = "FINISHED") -> None:
        self._system_metrics.close()  # before the run ends: the monitor flushes into a running run
        if self.enabled and self.run_id:
            retry_locked(lambda: self._client.set_terminated(self.run_id, status=status), "set_terminated")

    def __enter__(self) -> "RunLogger":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            self.end("FAILED")

    # -- logging -----------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        if not (self.enabled and self.run_id):
            return
        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            chunk = items[i : i + 100]
            retry_locked(lambda: self._client.log_batch(self.run_id, params=chunk), "log_params")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not (self.enabled and self.run_id):
            return
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in flatten(metrics).items() if _is_number(v)]
        for i in range(0, len(items), 1000):
            chunk = items[i : i + 1000]
            retry_locked(lambda: self._client.log_batch(self.run_id, metrics=chunk), "log_metrics")

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not (self.enabled and self.run_id):
            return
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        retry_locked(lambda: self._client.log_batch(self.run_id, tags=items), "set_tags")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not (self.enabled and self.run_id):
            return
        p = Path(path)
        if p.is_dir():
            self._client.log_artifacts(self.run_id, str(p), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(p), artifact_path)

    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
        for p in paths:
            self.log_artifact(p, artifact_path)


class ExistingRun:
    """Logging into a run another process opened (the pipeline's parent run, exported in
    ``SSP_MLFLOW_PARENT_RUN_ID``): add artifacts and tables, never start or end the run
    (its owner does). The artifact part of :class:`RunLogger`'s interface."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self._client = get_client()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        retry_locked(lambda: self._client.log_artifact(self.run_id, str(path), artifact_path), "log_artifact")

    def log_table(self, data: Any, artifact_file: str) -> None:
        """A pandas DataFrame as an MLflow table (the run page shows it as a table)."""
        retry_locked(lambda: self._client.log_table(self.run_id, data=data, artifact_file=artifact_file), "log_table")


def _is_number(v: Any) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return f == f  # drop NaN: MLflow accepts it but the UI charts break on it


def default_tags(stage: str | None = None) -> dict[str, str]:
    tags = {"ssp.version": _version()}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    stage = stage or os.environ.get("DVC_STAGE")
    if stage:
        tags["dvc.stage"] = stage
    return tags


def _version() -> str:
    return __version__


# -- where a process of a (distributed) job ran, and its node's system metrics ------------
def node_tags(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """MLflow tags that say where a process of a (possibly distributed) job ran;
    torchrun's GROUP_RANK is the node rank, WORLD_SIZE the number of processes."""
    env = os.environ if env is None else env
    return {
        "ssp.host": socket.gethostname(),
        "ssp.node_rank": env.get("GROUP_RANK", "0"),
        "ssp.world_size": env.get("WORLD_SIZE", "1"),
        "ssp.local_world_size": env.get("LOCAL_WORLD_SIZE", "1"),
    }


@contextlib.contextmanager
def node_system_metrics(run_id: str | None, env: Mapping[str, str] | None = None) -> Iterator[None]:
    """Sample this node's CPU, memory, disk, network and GPU usage into ``run_id`` while
    the block runs, when ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` is true: one point per
    ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (MLflow's default 10; a run that
    ends sooner gets none), named ``system/node<GROUP_RANK>/...``. Every
    :class:`RunLogger` opens it for its run; call it directly on the local rank 0 of the
    other nodes of a multi-node job (one monitor per machine). Needs psutil (GPU: NVML,
    ``nvidia-ml-py``)."""
    env = os.environ if env is None else env
    enabled = env.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower() in {"1", "true", "yes"}
    if not (enabled and run_id and env.get("LOCAL_RANK", "0") == "0"):
        yield
        return
    # GROUP_RANK: the node rank torchrun settled on (c10d assigns it at rendezvous)
    node_id = env.get("MLFLOW_SYSTEM_METRICS_NODE_ID") or f"node{env.get('GROUP_RANK', '0')}"
    monitor = SystemMetricsMonitor(run_id, node_id=node_id, resume_logging=True, tracking_uri=tracking_uri())
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()

"""Shared test fixtures.

- ``mlflow_store``: a private, already-migrated SQLite MLflow store per test (copying a
  template DB migrated once per session: ~0.03 s instead of ~1.5 s), exported through
  MLFLOW_TRACKING_URI so code under test and subprocesses log there.
- ``prefect_harness``: one temporary Prefect API for the whole session (~10 s to start),
  only for tests that ask for it.

``make test`` runs the suite with pytest-xdist on two workers, one test module per worker
(``--dist loadscope``: a module's fixtures, e.g. the paper smoke's `dvc repro` or the demo
pipeline's Prefect flow, run once).
``pytest -m "not slow"`` leaves out the tests over ~20 s (end to end, real servers).

No silent skips in CI: with ``--no-skips``, ``SSP_NO_SKIPS=1`` (``.ci/run`` sets it) or
``CI=1``/``CI=true`` a skipped test FAILS, unless its reason names an environment the
project documents and CI does not provide (:data:`ALLOWED_SKIPS`). CI installs what every
other test needs (``infra/ci/install-services.sh``: PostgreSQL; ``make test``: the venv,
torchrun included); a test that cannot start its server fails there instead of skipping.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one compute thread each (and in their
    # subprocesses), instead of four threads fighting over two cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    # collection imports torch, transformers, mlflow, prefect, ...: the cyclic collector's
    # passes over those objects are a fifth of it (see ssp.cli.import_paused_gc)
    gc.disable()


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    # after collection, in every process (xdist's controller collects nothing): what the
    # imports created is frozen, later collections skip it
    gc.freeze()
    gc.enable()


# The longest modules first: under `make test` (xdist, one module per worker at a time) a
# long module that starts last would run alone at the end while the other core idles.
LONGEST_FIRST = (
    "tests/flows/test_paper_smoke.py",  # ~2.5 min: dvc repro under the paper profile
    "tests/flows/test_demo_pipeline.py",  # ~2.3 min: the Prefect flow `make demo` runs, shrunk
    "tests/flows/test_flows.py",
    "tests/engine/test_dvc_resume.py",  # ~40 s: dvc repro killed and resumed
    "tests/infra/test_servers.py",
    "tests/engine/test_train.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside a module and among the rest is kept


# reason pattern -> where that environment is documented. Nothing else may skip under CI.
ALLOWED_SKIPS = {
    r"docker compose|docker-compose": "infra/docker-compose.yml (the compose stack; README's layout, infra/)",
}


def pytest_addoption(parser):
    parser.addoption(
        "--no-skips",
        action="store_true",
        default=False,
        help="a skipped test fails unless its reason names a documented environment (also SSP_NO_SKIPS=1, CI=1)",
    )


def no_skips(config) -> bool:
    """Whether skips are failures: ``--no-skips``, or SSP_NO_SKIPS / CI set to a true value."""
    if config.getoption("--no-skips", default=False):
        return True
    return any(os.environ.get(v, "").strip().lower() not in ("", "0", "false", "no") for v in ("SSP_NO_SKIPS", "CI"))


def skip_allowed(reason: str) -> bool:
    return any(re.search(pattern, reason) for pattern in ALLOWED_SKIPS)


def _fail_skip(report, config) -> None:
    """Turn a skipped report (test or collection) into a failure unless the skip is allowed."""
    if not report.skipped or hasattr(report, "wasxfail") or not no_skips(config):
        return
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    if skip_allowed(reason):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI (--no-skips / SSP_NO_SKIPS / CI): {reason}\n"
        "CI must provide what this test needs (.ci/run, infra/ci/install-services.sh, make test); "
        f"only skips naming a documented environment may stay skips: {', '.join(ALLOWED_SKIPS.values())}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _fail_skip(report, item.config)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    _fail_skip(report, collector.config)
    return report


@pytest.fixture(scope="session")
def _mlflow_template_db(tmp_path_factory) -> Path:
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # creates + migrates
    return db


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch, _mlflow_template_db) -> str:
    """Tracking URI of a fresh store; artifacts under tmp_path/mlartifacts."""
    store = tmp_path / "mlruns"
    store.mkdir()
    shutil.copy(_mlflow_template_db, store / "mlflow.db")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("SSP_MLFLOW_PARENT_RUN_ID", raising=False)
    # set in the image (infra/): every RunLogger would sample system metrics into the test runs
    monkeypatch.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", raising=False)
    # artifacts of the template's default experiment would go to ./mlruns; keep them in tmp
    monkeypatch.chdir(tmp_path)
    return uri


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield

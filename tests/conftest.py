"""Shared test fixtures.

- ``mlflow_store``: a private, already-migrated SQLite MLflow store per test (copying a
  template DB migrated once per session: ~0.03 s instead of ~1.5 s), exported through
  MLFLOW_TRACKING_URI so code under test and subprocesses log there.
- ``prefect_harness``: one temporary Prefect API for the whole session (~10 s to start),
  only for tests that ask for it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("TQDM_DISABLE", "1")


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
    # artifacts of the template's default experiment would go to ./mlruns; keep them in tmp
    monkeypatch.chdir(tmp_path)
    return uri


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield

"""Usage telemetry of the tools the pipeline runs (DVC, Prefect, MLflow): off unless the user
turns it on.

Each tool reads its own switch from the environment, so an environment variable reaches every
process the pipeline starts (``dvc repro``, the stage commands, Prefect's temporary API server).
The same list is exported by the Makefile, infra/Dockerfile and infra/docker-compose.yml
(tests/ops/test_environment.py keeps them equal); ``quiet_by_default`` applies it to the
running process at the entry points (``ssp`` and ``python -m flows.reproduce``). A variable the
user has set, to any value, is left alone: that is how telemetry is turned back on (README,
"Telemetry").

A leaf: imports nothing of ssp and no tool (it reaches a tool only if that tool is already
imported).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

# environment variable -> the value that turns the tool's telemetry off
TELEMETRY_OFF: dict[str, str] = {
    # DVC: no analytics report (and no daemon process sending it) after each command. Any
    # non-empty value disables; .dvc/config's `core.analytics = false` does the same for this
    # repository, the variable also for the DVC projects tests and flows create elsewhere.
    "DVC_NO_ANALYTICS": "1",
    # Prefect: the API server's anonymous usage heartbeat; the client SDK's usage events follow
    # the server's setting (read locally when Prefect runs its own temporary server)
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Prefect: OpenTelemetry spans of flow and task runs
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    # MLflow: usage events of the client, the server and the UI
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def quiet_by_default(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set each tool's telemetry switch to off where the user has not set it; returns the
    variables it set. With the process environment (the default), tools imported before this
    call (Prefect and MLflow read their settings at import) read them again."""
    target = os.environ if environ is None else environ
    applied = {name: value for name, value in TELEMETRY_OFF.items() if name not in target}
    target.update(applied)
    if target is os.environ:
        _reread_imported_tools(applied)
    return applied


def _reread_imported_tools(applied: dict[str, str]) -> None:
    # Prefect builds its global settings at import; MLflow decides at import whether to make
    # a telemetry client (it sends nothing before the first recorded event, so dropping it
    # here is in time). DVC reads its switch at the end of each command: nothing to redo.
    prefect_context = sys.modules.get("prefect.context")
    if prefect_context is not None and any(name.startswith("PREFECT_") for name in applied):
        prefect_context.refresh_global_settings_context()
    mlflow_telemetry = sys.modules.get("mlflow.telemetry")
    if mlflow_telemetry is not None and any(name.startswith("MLFLOW_") for name in applied):
        mlflow_telemetry.set_telemetry_client()

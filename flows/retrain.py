"""The ``retrain`` flow: scheduled retraining (see prefect.yaml). It asks DVC whether
data or params changed since the last reproduction; if so it runs ``reproduce``
(only the stale stages do work), otherwise it ends at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.dvc_stages import stale_stages
from flows.reproduce import reproduce


@flow(name="retrain", log_prints=True)
def retrain(project_dir: str = ".", force: bool = False) -> dict[str, Any]:
    logger = get_run_logger()
    project_dir = str(Path(project_dir).resolve())
    stale = stale_stages(project_dir)
    if not stale and not force:
        logger.info("data and params unchanged since the last run: nothing to retrain")
        return {"retrained": False, "stale": []}
    logger.info("stale stages: %s", ", ".join(stale) or "(forced)")
    result = reproduce(project_dir=project_dir)
    return {"retrained": True, "stale": stale, **result}


if __name__ == "__main__":
    retrain()

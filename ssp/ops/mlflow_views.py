"""The MLflow UI out of the box: experiments that open on their training runs, and saved
views that compare the paper's rows without any clicking.

MLflow 3.17's UI opens an experiment on its GenAI "Overview" page (traces, token usage)
unless the page is asked for the "Model training" workflow (``?workflowType=
machine_learning``), and it shows nested runs collapsed under their parent with no metric
columns. MLflow's own "shared view" mechanism fixes the rest: an experiment tag
``mlflow.sharedViewState.<key>`` holds a runs-page state (filter, columns, "Group by"),
opened by ``#/experiments/<id>/runs?viewStateShareKey=<key>``. Each SSP experiment gets:

- ``ssp-avss`` (stage 2): ``table2`` = the ablation cells grouped by row (mean over the
  seeds: the AVSS columns of paper Table 2);
- ``ssp-avs`` (stage 1): ``table2`` = the S4/MS3 cells grouped by row and ``sweep`` = the
  λ'_mask points with their MS3 figures (Fig. 5 sweeps on MS3: stage-1 models);
- both: ``runs`` = every training run with row, seed, λ', profile and metrics.

:func:`set_up_experiment` tags an experiment (``ssp.ops.tracking`` calls it when it creates
one; ``ssp ui``, :mod:`ssp.ops.mlflow_ui`, for stores made before); :func:`view_links` are
the URLs ``ssp ui`` prints.
"""

from __future__ import annotations

import json
from typing import Any

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"  # MLflow's name for "Model training" experiments
SHARED_VIEW_TAG = "mlflow.sharedViewState."
WORKFLOW_QUERY = "workflowType=machine_learning"

# run params every training run logs (ssp.engine.train.run_record) that the views show
RUN_PARAMS = ("row", "seed", "lambda_post", "profile", "data_fingerprint", "dvc_experiment")


RUN_NAME_KEY = "tags.`mlflow.runName`"


def _param(name: str) -> str:
    return f"params.`{name}`"


def _metric(name: str) -> str:
    return f"metrics.`{name}`"


def _stage_filter(prefix: str) -> str:
    # the DVC stage a run came from (tag `dvc.stage`, e.g. ablation@full-0, sweep@10)
    return f"tags.`dvc.stage` LIKE '{prefix}@%'"


def _view(search: str, params: tuple[str, ...], metrics: tuple[str, ...], group_by: str | None) -> dict[str, Any]:
    state: dict[str, Any] = {
        "searchFilter": search,
        # Sorted by creation time, MLflow 3.17's runs page also fetches the parent of every
        # nested run it lists (the pipeline's parent run), which a grouped view then shows
        # as an "Additional runs" group without the param; by run name it does not.
        "orderByKey": RUN_NAME_KEY if group_by else "attributes.start_time",
        "orderByAsc": bool(group_by),
        "lifecycleFilter": "Active",
        "selectedColumns": [_param(p) for p in params] + [_metric(m) for m in metrics],
        "groupBy": None,
        "runsExpanded": {},
        "groupsExpanded": {},
    }
    if group_by:
        # MLflow's "Group by" a param, each group showing the mean of its runs
        state["groupBy"] = {"aggregateFunction": "average", "groupByKeys": [{"mode": "param", "groupByData": group_by}]}
    return state


# the test-split numbers the training runs carry (ssp.eval.evaluate.run_metrics): on a
# generated dataset its own label space (bg + K classes) first, then the 71-class figure
AVSS_METRICS = ("test/miou_dataset", "test/fscore_dataset", "test/miou_present", "test/miou", "test/fscore")
AVS_METRICS = ("test/binary/v1s/miou", "test/binary/v1s/fscore", "test/binary/v1m/miou", "test/binary/v1m/fscore")
MS3_METRICS = AVS_METRICS[2:]
VAL_METRICS = ("best/miou_dataset", "best/miou")

VIEWS: dict[str, dict[str, dict[str, Any]]] = {
    "ssp-avss": {
        "table2": _view(_stage_filter("ablation"), ("row", "seed"), AVSS_METRICS, "row"),
        "runs": _view("", RUN_PARAMS, AVSS_METRICS + VAL_METRICS, None),
    },
    "ssp-avs": {
        "table2": _view(_stage_filter("ablation_avs"), ("row", "seed"), AVS_METRICS, "row"),
        "sweep": _view(_stage_filter("sweep"), ("lambda_post", "seed"), MS3_METRICS, "lambda_post"),
        "runs": _view("", RUN_PARAMS, AVS_METRICS + ("best/miou",), None),
    },
}


def set_up_experiment(client: Any, experiment_id: str, name: str) -> None:
    """Tag an experiment so that the UI opens it on its runs, with the SSP views saved."""
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    for key, state in VIEWS.get(name, {}).items():
        client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key, json.dumps(state))


def view_links(base_url: str, experiments: dict[str, str]) -> list[tuple[str, str, str]]:
    """(experiment, view, URL) for every saved view of ``experiments`` (name -> id)."""
    base = base_url.rstrip("/")
    links = []
    for name, exp_id in experiments.items():
        for key in VIEWS.get(name, {}):
            links.append((name, key, f"{base}/#/experiments/{exp_id}/runs?viewStateShareKey={key}&{WORKFLOW_QUERY}"))
    return links

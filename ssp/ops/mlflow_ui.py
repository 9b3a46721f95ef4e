"""``ssp ui``: the MLflow UI on the pipeline's store, opening on the saved views of
:mod:`ssp.ops.mlflow_views` (the Table-2 rows grouped, the λ'_mask sweep, every run).

    ssp ui                 # tag the experiments, print the view links, run `mlflow ui`
    ssp ui --links-only    # only tag and print (e.g. for a running server)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlflow import MlflowClient

from ssp.ops.mlflow_views import VIEWS, set_up_experiment, view_links
from ssp.ops.tracking import tracking_uri


# ---------------------------------------------------------------------------------------
# ssp ui
# ---------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend-store-uri",
        default=None,
        help="the MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db, the pipeline's)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address the UI listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    parser.add_argument(
        "--links-only", action="store_true", help="tag the experiments and print the view links; start no server"
    )


def main(args: argparse.Namespace) -> int:
    """Tag every SSP experiment of the store (views, "Model training"), print one link per
    view, then run ``mlflow ui`` in this process's place."""
    uri = args.backend_store_uri or tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    found = {e.name: e.experiment_id for e in client.search_experiments() if e.name in VIEWS}
    for name, exp_id in found.items():
        set_up_experiment(client, exp_id, name)
    base = f"http://{args.host}:{args.port}"
    if not found:
        print(f"no SSP experiments in {uri} yet (run the pipeline first); the UI opens on {base}")
    for name, view, url in view_links(base, found):
        print(f"{name:9s} {view:7s} {url}")
    sys.stdout.flush()
    if args.links_only:
        return 0
    mlflow = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow) if mlflow.exists() else "mlflow", "ui", "--backend-store-uri", uri]
    # one worker: a person's browser on a local store (MLflow's default 4 start 4 copies of it)
    os.execvp(cmd[0], [*cmd, "--host", args.host, "--port", str(args.port), "--workers", "1"])
    return 0  # not reached

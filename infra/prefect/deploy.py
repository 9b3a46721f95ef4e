"""Register the pipeline's Prefect deployments (prefect.yaml) on the work pool that
params.yaml names, creating the pool first if it does not exist.

    python infra/prefect/deploy.py                      # every deployment, pool from params
    python infra/prefect/deploy.py --name retrain       # just one
    SSP_WORK_POOL=gpu-k8s python infra/prefect/deploy.py

Which pool: ``--pool``, else ``SSP_WORK_POOL``, else ``pipeline.work_pool`` of the params
(``ssp.params.load_params``: its default when params.yaml is missing). Its type when it
has to be created: ``--pool-type`` / ``SSP_WORK_POOL_TYPE`` / ``pipeline.work_pool_type``;
``docker`` and ``kubernetes`` pools get the GPU job templates beside this file
(``docker-gpu.json``, ``kubernetes-gpu.json``). An existing pool keeps its type and
template.

Concurrency: the pool gets a concurrency limit of 1 (``POOL_CONCURRENCY_LIMIT``) when it
is created, and an existing pool without a limit gets it too: the flows of one pool
share one workspace (DVC outputs, dvc.lock), so two runs must never overlap. A limit
someone set on purpose is kept, with a warning. prefect.yaml adds a limit of 1 per
deployment, and the retrain flow locks the workspace itself (flows/retrain.py).

``prefect deploy --all`` ignores ``--pool`` when it deploys several deployments, so
this runs ``prefect deploy --name NAME --pool POOL`` once per deployment. Talks to the
server in ``PREFECT_API_URL`` (without one, Prefect's temporary local server, which
forgets everything when it stops: set PREFECT_API_URL for deployments that last).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository's ssp package

from prefect.client.orchestration import get_client  # noqa: E402
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate  # noqa: E402
from prefect.exceptions import ObjectNotFound  # noqa: E402
from prefect.workers.process import ProcessWorker  # noqa: E402

from ssp.params import load_params  # noqa: E402

TEMPLATES = {"docker": HERE / "docker-gpu.json", "kubernetes": HERE / "kubernetes-gpu.json"}
POOL_CONCURRENCY_LIMIT = 1  # one flow run at a time per pool: its runs share one workspace


def pipeline_section(params_file: Path) -> dict[str, Any]:
    """params' ``pipeline`` section (``ssp.params.load_params``: the defaults when the
    file does not exist)."""
    return asdict(load_params(params_file).pipeline)


def choose_pool(cli_pool: str | None, cli_type: str | None, params_file: Path) -> tuple[str, str]:
    pipeline = pipeline_section(params_file)
    name = cli_pool or os.environ.get("SSP_WORK_POOL") or pipeline["work_pool"]
    kind = cli_type or os.environ.get("SSP_WORK_POOL_TYPE") or pipeline["work_pool_type"]
    return str(name), str(kind)


def base_job_template(kind: str) -> dict[str, Any]:
    if kind in TEMPLATES:
        return json.loads(TEMPLATES[kind].read_text())
    if kind == "process":
        return ProcessWorker.get_default_base_job_template()
    raise SystemExit(f"deploy: no job template for work pool type {kind!r} (process, docker, kubernetes)")


async def ensure_work_pool(name: str, kind: str) -> bool:
    """Create the pool (concurrency limit ``POOL_CONCURRENCY_LIMIT``) unless it exists;
    an existing pool without a limit gets that one. True when the pool was created."""
    async with get_client() as client:
        try:
            pool = await client.read_work_pool(name)
        except ObjectNotFound:
            await client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type=kind,
                    base_job_template=base_job_template(kind),
                    concurrency_limit=POOL_CONCURRENCY_LIMIT,
                )
            )
            return True
        if pool.type != kind:
            print(f"deploy: work pool {name!r} exists with type {pool.type!r}; keeping it", file=sys.stderr)
        if pool.concurrency_limit is None:
            await client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=POOL_CONCURRENCY_LIMIT))
            print(f"deploy: work pool {name!r} had no concurrency limit; set it to {POOL_CONCURRENCY_LIMIT}")
        elif pool.concurrency_limit != POOL_CONCURRENCY_LIMIT:
            print(
                f"deploy: work pool {name!r} keeps its concurrency limit {pool.concurrency_limit}: "
                f"runs sharing a workspace may overlap (the retrain flow's workspace lock still stops them)",
                file=sys.stderr,
            )
        return False


def deployment_names(prefect_file: Path) -> list[str]:
    spec = yaml.safe_load(prefect_file.read_text()) or {}
    return [d["name"] for d in spec.get("deployments") or [] if d.get("name")]


def deploy_command(prefect_file: Path, name: str, pool: str, flow_params: str | None) -> list[str]:
    prefect = Path(sys.executable).parent / "prefect"
    command = [
        str(prefect) if prefect.exists() else "prefect",
        "--no-prompt",
        "deploy",
        "--prefect-file",
        str(prefect_file),
        "--name",
        name,
        "--pool",
        pool,
    ]
    if flow_params:
        command += ["--params", flow_params]
    return command


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--params-file",
        type=Path,
        default=ROOT / "params.yaml",
        help="params.yaml whose pipeline.work_pool / pipeline.work_pool_type choose the pool "
        "(default: the repository's)",
    )
    ap.add_argument(
        "--prefect-file",
        type=Path,
        default=ROOT / "prefect.yaml",
        help="deployment definitions (default: the repository's prefect.yaml)",
    )
    ap.add_argument("--pool", help="work pool name (overrides SSP_WORK_POOL and params)")
    ap.add_argument(
        "--pool-type",
        choices=["process", "docker", "kubernetes"],
        help="type of the pool if it must be created (default from params, else process)",
    )
    ap.add_argument("--name", action="append", help="deploy only this deployment (repeatable; default: all)")
    ap.add_argument("--flow-params", help="JSON object overriding the deployments' flow parameters")
    args = ap.parse_args(argv)

    pool, kind = choose_pool(args.pool, args.pool_type, args.params_file)
    if asyncio.run(ensure_work_pool(pool, kind)):
        print(f"deploy: created {kind} work pool {pool!r}")
    prefect_file = args.prefect_file.resolve()
    for name in args.name or deployment_names(prefect_file):
        command = deploy_command(prefect_file, name, pool, args.flow_params)
        # prefect.yaml paths (entrypoints) are relative to its folder
        done = subprocess.run(command, cwd=prefect_file.parent)
        if done.returncode != 0:
            print(f"deploy: `{' '.join(command)}` failed (exit {done.returncode})", file=sys.stderr)
            return done.returncode
        print(f"deploy: {name} -> work pool {pool!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``reproduce`` flow: every DVC stage of the pipeline as a Prefect task, in
dependency order, under one MLflow parent run per experiment.

    python -m flows.reproduce                 # whole pipeline (what `make demo` runs)
    python -m flows.reproduce --targets ablation sweep
    python -m flows.reproduce --profile paper # params.yaml composed with conf/profile/paper.yaml first

With no ``PREFECT_API_URL`` Prefect starts a temporary local API for the run;
set it to use a server (see infra/). DVC decides what is stale: an up-to-date stage
is a task that finishes at once with ``ran=False``.
"""

from __future__ import annotations

import argparse
import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

from dvc.repo import Repo
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import refresh_global_settings_context
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run

from flows.dvc_stages import PlannedStage, run_ssp_commands, run_stage, stage_plan, stage_server
from ssp.errors import SSPError
from ssp.ops.telemetry import quiet_by_default
from ssp.ops.tracking import EXPERIMENTS, PARENT_RUN_ENV, RunLogger, flatten
from ssp.params import (
    CONF_DIR,
    DEFAULT_PARAMS,
    Params,
    apply_overrides,
    compose,
    load_params,
    read_yaml,
    write_params,
)
from ssp.stage_server import SERVER_ENV

# Stages where trying again can help: a flaky MLLM endpoint (answers already obtained
# are cached, so a retry only asks for the rest). Deterministic stages (validate,
# training) fail the same way twice; retrying them only delays the report.
DEFAULT_RETRIES = {"prompts": 2}


class StageFailed(RuntimeError):
    pass


@task(name="dvc-stage")
def dvc_stage(stage: str, project_dir: str, env: dict[str, str]) -> dict[str, Any]:
    logger = get_run_logger()
    logger.info("stage %s: starting", stage)  # with the line below: which stages ran at once
    result = run_stage(stage, project_dir, env=env, on_line=logger.info)
    if result.returncode != 0:
        tail = "\n".join(result.output.splitlines()[-40:])
        raise StageFailed(f"DVC stage '{stage}' failed (exit {result.returncode}):\n{tail}")
    logger.info("stage %s: %s", stage, "ran" if result.ran else "up to date, skipped")
    return {"stage": stage, "ran": result.ran}


def pipeline_params(
    project_dir: str | Path, profile: str | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """The project's params (``ssp.params.load_params``). With ``profile``, params.yaml
    is first composed from ``conf/`` with that profile, as ``dvc exp run -S profile=NAME``
    does; with ``overrides`` (``KEY=VALUE``) it is written with those values, as ``dvc exp
    run -S KEY=VALUE`` does: DVC sees (and records) the values the stages read, and the
    file keeps them afterwards."""
    path = Path(project_dir) / DEFAULT_PARAMS
    if profile is not None or overrides:
        base = compose(Path(project_dir) / CONF_DIR, profile) if profile is not None else read_yaml(path)
        changed = apply_overrides(base, overrides or [])
        Params.from_dict(changed, source="--set " + " --set ".join(overrides or []))  # checked before written
        write_params(changed, path)
    return load_params(path).to_dict()


def dvc_metrics(project_dir: str | Path) -> dict[str, float]:
    """All metrics DVC knows (``dvc metrics show``), flattened to name -> number."""
    with Repo(str(project_dir)) as repo:
        shown = repo.metrics.show()
    out: dict[str, float] = {}
    for rev in shown.values():
        for path, entry in (rev.get("data") or {}).items():
            for key, value in flatten(entry.get("data") or {}).items():
                if isinstance(value, (int, float)):
                    # the path names the metric: the grid's cells are metrics/ablation/{row}/seed{k}.json
                    out[f"{Path(path).with_suffix('').as_posix().replace('/', '.')}.{key}"] = float(value)
    return out


# `pipeline.jobs: null` on a machine without CUDA: stages side by side, at most this many
MAX_AUTO_JOBS = 4
THREADS_ENV = "OMP_NUM_THREADS"  # torch's (and OpenMP's) intra-op threads of each command


def available_cpus() -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota
    (``cpu.max`` of a container limited to fewer cores than the host shows)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    return cpus if quota == "max" else max(1, min(cpus, int(quota) // int(period)))


def stage_jobs(setting: int | None) -> int:
    """How many stages run at once: ``pipeline.jobs``, or when it is None 1 on a machine
    with a CUDA device (the stages would share it) and min(CPU count, 4) on one without."""
    if setting is not None:
        if int(setting) < 1:
            raise SSPError(f"params.yaml: pipeline.jobs must be at least 1 or null (auto), got {setting}")
        return int(setting)
    import torch  # noqa: PLC0415 -- only here: the flow itself needs no torch

    return 1 if torch.cuda.is_available() else min(available_cpus(), MAX_AUTO_JOBS)


def thread_environment(jobs: int) -> dict[str, str]:
    """Each command's share of the CPUs when ``jobs`` stages run at once (nothing with one,
    or when the user set the threads): CPU count / jobs threads, never more threads than
    cores (two trainings of 2 threads each on 2 cores run ~15x slower)."""
    if jobs == 1 or THREADS_ENV in os.environ:
        return {}
    return {THREADS_ENV: str(max(1, available_cpus() // jobs))}


def run_plan(
    plan: list[PlannedStage],
    jobs: int,
    start: Callable[[PlannedStage], PrefectFuture],
    results: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Run ``plan``'s stages, up to ``jobs`` at once, each once every stage it waits for has
    finished, the first ready one in plan order first (``start`` submits one and returns its
    future). After a failure nothing new starts; the running stages finish (their work is
    kept) and then the first failure is raised (a Ctrl-C is not held back). The stages'
    results go into ``results`` (a new list by default) as they finish, which is returned."""
    names = {s.name for s in plan}
    pending, running = list(plan), {}
    finished: set[str] = set()
    results = [] if results is None else results
    failure: Exception | None = None
    try:
        while pending or running:
            while failure is None and len(running) < jobs:
                ready = next((s for s in pending if (s.after & names) <= finished), None)
                if ready is None:
                    break
                pending.remove(ready)
                running[start(ready)] = ready.name
            if not running:
                if failure is None:  # cannot happen with stage_plan's order; never wait forever
                    raise SSPError(f"stages waiting for stages that never run: {[s.name for s in pending]}")
                break
            future = next(as_completed(list(running)))
            name = running.pop(future)
            try:
                results.append(future.result())
                finished.add(name)
            except Exception as exc:  # raised once the running stages are done
                failure = failure or exc
    except Exception:
        for future in running:  # e.g. a stage that could not be submitted: the others finish
            future.wait()
        raise
    if failure is not None:
        raise failure
    return results


@flow(name="reproduce", log_prints=True)
def reproduce(
    project_dir: str = ".",
    targets: list[str] | None = None,
    retries: dict[str, int] | None = None,
    track: bool = True,
    profile: str | None = None,
    warm_start: bool = True,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run the DVC pipeline's stages, up to ``pipeline.jobs`` at once where none waits for
    another; returns which stages ran and the metrics. ``warm_start``: the stages' ssp
    commands run as forks of one process that imported the libraries once
    (flows/dvc_stages.py: stage_server). ``profile`` / ``overrides``: params.yaml is
    written with them first (:func:`pipeline_params`)."""
    logger = get_run_logger()
    project_dir = str(Path(project_dir).resolve())
    params = pipeline_params(project_dir, profile, overrides)
    retries = {**DEFAULT_RETRIES, **params["pipeline"]["retries"], **(retries or {})}
    plan = stage_plan(project_dir, targets)
    jobs = stage_jobs(params["pipeline"].get("jobs"))
    logger.info("%d stages, up to %d at once: %s", len(plan), jobs, ", ".join(s.name for s in plan))

    run_name = f"pipeline-{flow_run.get_name() or 'local'}"
    tags = {"prefect.flow_run_id": str(flow_run.get_id() or ""), "ssp.kind": "pipeline"}
    parents = {
        exp: RunLogger(exp, run_name, params=params, tags=tags, parent_run_id="", enabled=track)
        for exp in EXPERIMENTS.values()
    }
    for p in parents.values():
        p.start()
    env = {PARENT_RUN_ENV: json.dumps({exp: p.run_id for exp, p in parents.items() if p.run_id})} if track else {}

    results: list[dict[str, Any]] = []
    status = "FAILED"
    try:
        warm = warm_start and run_ssp_commands(plan)  # not for a project without ssp
        # every stage's thread share, the server's too: its forks are then the fresh processes
        # they stand for (torch and OpenBLAS read the count at import)
        env = {**env, **thread_environment(jobs)}
        # cold: not even a server this process's environment names (the README's manual one)
        cold_env = {**env, SERVER_ENV: ""}
        with stage_server(project_dir, env) if warm else nullcontext(cold_env) as stage_env:

            def start(stage: PlannedStage) -> PrefectFuture:
                task_fn = dvc_stage.with_options(
                    task_run_name=f"dvc:{stage.name}",
                    retries=retries.get(stage.name.split("@")[0], 0),
                    retry_delay_seconds=5,
                )
                return task_fn.submit(stage.name, project_dir, stage_env)

            run_plan(plan, jobs, start, results)
        status = "FINISHED"
    finally:
        metrics = dvc_metrics(project_dir) if status == "FINISHED" else {}
        for p in parents.values():
            p.log_metrics(metrics)
            p.set_tags({"ssp.stages_ran": ",".join(r["stage"] for r in results if r["ran"]) or "none"})
            p.end(status)

    ran = [r["stage"] for r in results if r["ran"]]
    summary = (
        f"# SSP pipeline\n\n{len(ran)} of {len(results)} stages ran "
        f"({', '.join(ran) or 'none'}); the rest were up to date.\n"
    )
    create_markdown_artifact(summary, key="pipeline-summary", description="stages run by reproduce")
    logger.info(summary)
    return {"stages": results, "metrics": metrics, "parent_runs": {exp: p.run_id for exp, p in parents.items()}}


# Prefect's temporary local API (no PREFECT_API_URL) must answer within this many seconds
# (Prefect's default: 20). Its first start imports the server and migrates a new database:
# on a busy 2-core machine that took over 20 s and the flow failed before its first stage.
LOCAL_API_STARTUP_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
LOCAL_API_STARTUP_S = 180


def patient_local_api() -> None:
    """Give Prefect's temporary local API :data:`LOCAL_API_STARTUP_S` to start, unless the
    user set :data:`LOCAL_API_STARTUP_ENV` (call before the flow starts it)."""
    if LOCAL_API_STARTUP_ENV in os.environ:
        return
    os.environ[LOCAL_API_STARTUP_ENV] = str(LOCAL_API_STARTUP_S)
    refresh_global_settings_context()  # Prefect read its settings at import: again


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """The flows' ``--set KEY=VALUE`` (into ``overrides``: :func:`pipeline_params`)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="write this value into params.yaml first, as `dvc exp run -S` does "
        "(repeatable); the 3-seed grid: --set 'ablation.seeds=[0,1,2]'",
    )


def main(argv: list[str] | None = None) -> int:
    quiet_by_default()  # before the flow starts Prefect's API server and the DVC stages
    patient_local_api()
    ap = argparse.ArgumentParser(description="Run the SSP DVC pipeline as a Prefect flow.")
    ap.add_argument("--project-dir", default=".", help="folder holding dvc.yaml and params.yaml")
    ap.add_argument("--targets", nargs="*", help="only these stages (and what they depend on)")
    ap.add_argument("--no-track", action="store_true", help="do not open MLflow parent runs")
    ap.add_argument(
        "--cold-start",
        action="store_true",
        help="start each stage's ssp command as a fresh process (default: forks of one warm process)",
    )
    ap.add_argument(
        "--profile",
        default=None,
        help="compose params.yaml from conf/ with this profile first (e.g. paper); default: params.yaml as it is",
    )
    add_set_argument(ap)
    args = ap.parse_args(argv)
    reproduce(
        overrides=args.overrides,
        project_dir=args.project_dir,
        targets=args.targets,
        track=not args.no_track,
        profile=args.profile,
        warm_start=not args.cold_start,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``retrain`` flow: scheduled retraining (prefect.yaml), safe to run unattended on a
workspace that people and other runs share.

1. **Workspace lock**: an exclusive lock on ``.dvc/tmp/ssp-workspace.lock`` in the
   project dir for the whole run. A second run on the same workspace stops at once with
   a message naming the holder (or waits ``wait_for_workspace_s``). Prefect's limits
   (work pool: infra/prefect/deploy.py; deployment: prefect.yaml) keep scheduled runs
   from starting together; the lock covers what they cannot see (a manual
   ``python -m flows.retrain``, a run from another pool on the same volume).
2. **Pull** from the default DVC remote what the workspace lacks
   (``flows.dvc_stages.pull``: never discards workspace changes). No remote (a fresh
   clone): said once in the log, and the run goes on locally.
3. **Retrain** only when DVC sees changed data or params: ``reproduce`` (the stale
   stages do the work).
4. **Record** the exact dvc.lock it produced, with the git commit and any uncommitted
   change: artifacts ``retrain/dvc.lock``, ``retrain/record.json`` (and
   ``retrain/uncommitted.diff``) on the pipeline's MLflow parent runs, plus a Prefect
   artifact ``retrain-dvc-lock`` pointing at them. Nothing is committed to git: the
   workspace's checkout is left to its users (README, "Scheduled retraining").
5. **Push** to the remote at the end of every run that did not fail, retrained or not: a
   push that failed is retried by the next run.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import socket
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.dvc_stages import default_remote, pull, push, stale_stages
from flows.reproduce import patient_local_api, reproduce
from ssp.errors import SSPError
from ssp.ops.telemetry import quiet_by_default
from ssp.ops.tracking import get_client, git_commit

# inside .dvc/tmp: DVC's own machine-local folder, ignored by git (dvc init writes .dvc/.gitignore)
WORKSPACE_LOCK = Path(".dvc") / "tmp" / "ssp-workspace.lock"
RECORD_DIR = "retrain"  # artifact folder of the dvc.lock record on the MLflow parent runs


class WorkspaceBusy(SSPError):
    """Another run holds the workspace lock."""


@contextlib.contextmanager
def workspace_lock(
    project_dir: str | Path,
    holder: Mapping[str, Any],
    wait_s: float = 0.0,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[Path]:
    """Hold the workspace's exclusive lock (``flock``: the kernel releases it when the
    process dies, so a killed run leaves no stale lock) while the block runs; ``holder``
    is written into the file so that a refused run can say who has it. Raises
    :class:`WorkspaceBusy` when it is still held after ``wait_s`` seconds."""
    path = Path(project_dir) / WORKSPACE_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                held_by = path.read_text().strip() or "(a process that has not written its name yet)"
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkspaceBusy(
                        f"{path}: the workspace {project_dir} is in use by another run: {held_by}. "
                        "Two runs must not share a workspace (DVC outputs, dvc.lock); this one stops "
                        "without touching it" + (f" after waiting {wait_s:g} s" if wait_s > 0 else "") + "."
                    ) from None
                if on_wait and not told:
                    on_wait(f"{path}: workspace in use by {held_by}; waiting up to {left:.0f} s")
                    told = True
                time.sleep(min(1.0, left))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(dict(holder)).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # released: no holder to name
    finally:
        os.close(fd)  # releases the lock


def _git(args: list[str], project_dir: str) -> str:
    done = subprocess.run(["git", *args], cwd=project_dir, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else ""


def record_dvc_lock(project_dir: str, parent_runs: Mapping[str, str | None], remote: str | None) -> dict[str, Any]:
    """Attach the exact dvc.lock and what it needs to be reproduced (git commit, the
    uncommitted changes of tracked files) to the pipeline's MLflow parent runs; a
    Prefect artifact names them. Returns the record."""
    lock_text = (Path(project_dir) / "dvc.lock").read_text()
    record = {
        "dvc_lock_md5": hashlib.md5(lock_text.encode()).hexdigest(),
        "git_commit": git_commit(project_dir),
        # tracked files that differ from the commit (dvc.lock itself is expected to)
        "uncommitted": sorted(
            line[3:] for line in _git(["status", "--porcelain", "--untracked-files=no"], project_dir).splitlines()
        ),
        "dvc_remote": remote,
        "flow_run": flow_run.get_name(),
        "mlflow_runs": {exp: run_id for exp, run_id in parent_runs.items() if run_id},
    }
    diff = _git(["diff", "HEAD", "--", ".", ":(exclude)dvc.lock"], project_dir)
    client = get_client()
    for run_id in record["mlflow_runs"].values():
        client.log_text(run_id, lock_text, f"{RECORD_DIR}/dvc.lock")
        client.log_dict(run_id, record, f"{RECORD_DIR}/record.json")
        if diff:
            client.log_text(run_id, diff, f"{RECORD_DIR}/uncommitted.diff")
        client.set_tag(run_id, "ssp.dvc_lock_md5", record["dvc_lock_md5"])
    runs = "\n".join(f"- `{exp}`: run `{run_id}`" for exp, run_id in record["mlflow_runs"].items())
    create_markdown_artifact(
        f"# dvc.lock of this retrain\n\ngit commit `{record['git_commit']}`; dvc.lock md5 "
        f"`{record['dvc_lock_md5']}`; uncommitted tracked files: "
        f"{', '.join(f'`{p}`' for p in record['uncommitted']) or 'none'}; DVC remote: `{remote}`.\n\n"
        f"The file is the artifact `{RECORD_DIR}/dvc.lock` of the MLflow runs:\n\n{runs or '- (no MLflow run)'}\n",
        key="retrain-dvc-lock",
        description="the exact dvc.lock a retrain produced and its git commit",
    )
    return record


@flow(name="retrain", log_prints=True)
def retrain(project_dir: str = ".", force: bool = False, wait_for_workspace_s: float = 0.0) -> dict[str, Any]:
    logger = get_run_logger()
    project_dir = str(Path(project_dir).resolve())
    holder = {
        "flow_run": flow_run.get_name() or "local",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with workspace_lock(project_dir, holder, wait_for_workspace_s, on_wait=logger.info):
        remote = default_remote(project_dir)
        if remote is None:
            logger.info(
                "no default DVC remote in %s: nothing is pulled before or pushed after this run "
                "(`dvc remote add -d NAME URL` sets one)",
                project_dir,
            )
        else:
            pulled = pull(project_dir)
            logger.info(
                "dvc pull from %r: %s; restored %d missing outputs%s%s",
                remote,
                pulled.fetched or "nothing to fetch",
                len(pulled.restored),
                f"; kept workspace changes to {', '.join(pulled.kept)}" if pulled.kept else "",
                f"; not in the remote (their stages make them): {', '.join(pulled.unavailable)}"
                if pulled.unavailable
                else "",
            )
        result: dict[str, Any] = {"dvc_remote": remote}
        stale = stale_stages(project_dir)
        if not stale and not force:
            logger.info("data and params unchanged since the last run: nothing to retrain")
            result.update(retrained=False, stale=[])
        else:
            logger.info("stale stages: %s", ", ".join(stale) or "(forced)")
            result.update(retrained=True, stale=stale, **reproduce(project_dir=project_dir))
            result["record"] = record_dvc_lock(project_dir, result["parent_runs"], remote)
            logger.info(
                "dvc.lock %s recorded in MLflow runs %s",
                result["record"]["dvc_lock_md5"],
                ", ".join(result["record"]["mlflow_runs"].values()) or "(none)",
            )
        if remote is not None:
            result["pushed"] = push(project_dir)
            logger.info("dvc push to %r: %s", remote, result["pushed"])
    return result


def main(argv: list[str] | None = None) -> int:
    quiet_by_default()  # before the flow starts Prefect's API server and the DVC commands
    patient_local_api()
    ap = argparse.ArgumentParser(description="Retrain when DVC sees changed data or params (the scheduled flow).")
    ap.add_argument("--project-dir", default=".", help="folder holding dvc.yaml and params.yaml")
    ap.add_argument("--force", action="store_true", help="run the pipeline even when nothing changed")
    ap.add_argument(
        "--wait-for-workspace",
        type=float,
        default=0.0,
        metavar="S",
        help="when another run holds the workspace, wait up to S seconds for it (default: stop at once)",
    )
    args = ap.parse_args(argv)
    retrain(project_dir=args.project_dir, force=args.force, wait_for_workspace_s=args.wait_for_workspace)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

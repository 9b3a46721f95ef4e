"""What the flows know about DVC: the stages of dvc.yaml in dependency order, whether
one is stale, running one, and the default remote (pull before a scheduled run, push
after). DVC stays the source of truth for *what* to run and
caching; Prefect adds retries, logs, states and scheduling on top.

Each stage runs as its own ``dvc --wait-for-lock repro --single-item STAGE`` process.
DVC releases its repository lock while a stage's command runs and guards each stage's
deps and outs with read/write locks, so stages that do not depend on each other can run
at the same time (:func:`stage_plan` says which; the reproduce flow runs up to
``pipeline.jobs`` of them). Their ``ssp`` commands start warm: :func:`stage_server` keeps one process
with the heavy imports done for the length of a run, and each command runs as a fork of it
(``ssp/stage_server.py``; docs/design.md, "Start-up time").
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterable

import networkx as nx
from dvc.repo import Repo

from ssp.errors import SSPError
from ssp.stage_server import SERVER_ENV


def dvc_executable() -> str:
    # the dvc next to the running python (the project's venv) before any other on PATH
    here = Path(sys.executable).parent / "dvc"
    return str(here) if here.exists() else (shutil.which("dvc") or "dvc")


@dataclass(frozen=True)
class PlannedStage:
    name: str  # e.g. train_stage1, ablation@full-0
    cmd: str
    after: frozenset[str] = field(default_factory=frozenset)  # stages that must finish first


def stage_plan(project_dir: str | Path = ".", targets: Iterable[str] | None = None) -> list[PlannedStage]:
    """The stages to run (``foreach``/``matrix`` stages expanded, e.g. ``ablation@full-0``)
    in an order where every stage comes after the stages it depends on (ties keep dvc.yaml
    order), each with the stages it must wait for: those DVC's graph links it to (a dep on
    another's out) and those whose finished run its command would take over (``ssp train
    --adopt DIR``: a stage with an out inside DIR runs first, or the adopting cell, finding
    nothing to adopt, would train the same model a second time). With ``targets`` (stage
    names or ``foreach`` group names), only those stages and what they depend on."""
    with Repo(str(project_dir)) as repo:
        graph = repo.index.graph  # edges: stage -> stage it depends on
        stages = list(repo.index.stages)
        outs = {s: [os.path.abspath(o.fs_path) for o in s.outs] for s in stages}
    position = {s: i for i, s in enumerate(stages)}
    if targets:
        wanted = set(targets)
        chosen = [s for s in stages if s.name in wanted or s.name.split("@")[0] in wanted]
        if not chosen:
            known = sorted({s.name.split("@")[0] for s in stages})
            raise SSPError(f"no DVC stage named {sorted(wanted)} (stages: {', '.join(known)})")
        keep = set(chosen)
        for s in chosen:
            keep |= nx.descendants(graph, s)
        graph = graph.subgraph(keep)
    graph = nx.DiGraph(graph)
    for stage in list(graph):
        for folder in adopted_folders(_command(stage)):
            folder = os.path.abspath(os.path.join(stage.wdir, folder))  # as DVC spells its outs
            for other in list(graph):
                inside = any(out == folder or out.startswith(folder + os.sep) for out in outs[other])
                # an edge that would close a cycle is left out: adopting only saves time
                if other is not stage and inside and not nx.has_path(graph, other, stage):
                    graph.add_edge(stage, other)
    order = nx.lexicographical_topological_sort(graph.reverse(copy=True), key=lambda s: position[s])
    return [PlannedStage(s.name, _command(s), frozenset(d.name for d in graph.successors(s))) for s in order]


def adopted_folders(cmd: str) -> list[str]:
    """The folders an ``ssp train ... --adopt DIR [DIR ...]`` command may take a finished
    run from (none for any other command)."""
    try:
        words = shlex.split(cmd)
    except ValueError:  # not shell words (an odd command): nothing to wait for
        return []
    if "--adopt" not in words:
        return []
    ends = ("-", "&", "|", ";")  # the next option, or the next command
    return list(itertools.takewhile(lambda w: not w.startswith(ends), words[words.index("--adopt") + 1 :]))


def _command(stage) -> str:
    cmd = stage.cmd
    return cmd if isinstance(cmd, str) else "\n".join(cmd or [])


def run_ssp_commands(plan: Iterable[PlannedStage]) -> bool:
    """Whether any stage of ``plan`` runs an ``ssp`` command (what a stage server serves)."""
    return any(re.search(r"(^|[\s;&|])ssp\s", line) for s in plan for line in s.cmd.splitlines())


def stale_stages(project_dir: str | Path = ".", targets: Iterable[str] | None = None) -> list[str]:
    """Stages whose deps, params, outs or command changed (``dvc status``)."""
    cmd = [dvc_executable(), "status", "--json", *(targets or [])]
    out = subprocess.run(cmd, cwd=project_dir, capture_output=True, text=True)
    if out.returncode != 0:
        raise SSPError(f"dvc status failed in {project_dir}: {out.stderr.strip() or out.stdout.strip()}")
    return [name.split(":")[-1] for name in json.loads(out.stdout or "{}")]


def stage_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the stages' commands: this process's, with ``env`` on top."""
    # progress bars become log lines here: one every 10 s is plenty
    full_env = {"TQDM_MININTERVAL": "10", **os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    # stage commands call `ssp`: find the one installed beside this interpreter (the venv)
    full_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), full_env.get("PATH", "")])
    return full_env


@contextmanager
def stage_server(
    project_dir: str | Path = ".", env: dict[str, str] | None = None, log: IO | None = None
) -> Iterator[dict[str, str]]:
    """A warm stage server (``ssp stage-server``) for the stages run with the ``env`` this
    yields (``env`` plus ``SSP_STAGE_SERVER``) through :func:`stage_environment`; stopped on
    exit. It imports for ~10 s before it listens: the commands of the first stages start on
    their own meanwhile. ``log``: where its log lines go (default: this process's stderr)."""
    folder = tempfile.mkdtemp(prefix="ssp-stages-")  # short: a UNIX socket path has ~100 bytes
    env = {**(env or {}), SERVER_ENV: os.path.join(folder, "server.sock")}
    # `python -m ssp.cli` from the project folder: its own ssp package, the one its stages'
    # `ssp ...` commands import there (the repository's, or PYTHONPATH's)
    command = [sys.executable, "-m", "ssp.cli", "stage-server", "--socket", env[SERVER_ENV]]
    # its own session: a Ctrl-C in the terminal reaches each command once, through its client
    server = subprocess.Popen(
        command,
        cwd=project_dir,
        env=stage_environment(env),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        yield env
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class StageResult:
    stage: str
    ran: bool  # False: DVC found it up to date and skipped it
    returncode: int
    output: str


def run_stage(
    stage: str,
    project_dir: str | Path = ".",
    env: dict[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> StageResult:
    """``dvc --wait-for-lock repro --single-item STAGE``, streaming its output line by line."""
    proc = subprocess.Popen(
        # --wait-for-lock: a stage run beside others waits for DVC's repository lock (held
        # while a stage checks or records its deps and outs) instead of failing after 3 s
        [dvc_executable(), "--wait-for-lock", "repro", "--single-item", stage],
        cwd=project_dir,
        env={**stage_environment(env), "DVC_STAGE": stage},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        if on_line:
            on_line(line)
    code = proc.wait()
    output = "\n".join(lines)
    ran = "didn't change, skipping" not in output
    return StageResult(stage, ran, code, output)


# -- the DVC remote: pull before a scheduled run, push after ------------------------------
def default_remote(project_dir: str | Path = ".") -> str | None:
    """The remote ``dvc pull``/``dvc push`` use without ``-r``: ``core.remote`` from any
    level of DVC's config (the project's, ``config.local``, global, system); None when
    none is set (a fresh clone)."""
    with Repo(str(project_dir)) as repo:
        return repo.config.get("core", {}).get("remote") or None


def _dvc(args: list[str], project_dir: str | Path) -> str:
    """Run ``dvc ARGS`` in the project; its stdout, or an error naming the command."""
    done = subprocess.run([dvc_executable(), *args], cwd=project_dir, capture_output=True, text=True)
    if done.returncode != 0:
        raise SSPError(
            f"`dvc {' '.join(args)}` failed in {project_dir} (exit {done.returncode}): "
            f"{done.stderr.strip() or done.stdout.strip()}"
        )
    return done.stdout.strip()


def _last_line(text: str) -> str:
    return text.splitlines()[-1] if text else ""


@dataclass
class PullResult:
    fetched: str  # DVC's summary of the fetch ("3 files fetched", "Everything is up to date.")
    restored: list[str]  # outputs that were missing from the workspace, checked out from the cache
    kept: list[str]  # outputs changed in the workspace: left as they are (their stages are stale)
    unavailable: list[str]  # recorded version in neither the cache nor the remote: its stage makes it again


def pull(project_dir: str | Path = ".") -> PullResult:
    """``dvc pull`` from the default remote that never throws work away: fetch into the
    cache everything dvc.lock and the ``.dvc`` files name, then check out only the
    outputs missing from the workspace. Outputs changed in the workspace (new data, the
    persisted checkpoints of an interrupted training) stay: a plain ``dvc pull`` refuses
    the whole pull over them, and ``--force`` would delete them."""
    fetched = _dvc(["fetch"], project_dir)  # a file the remote lacks is a warning, not an error
    status = json.loads(_dvc(["status", "--json"], project_dir) or "{}")
    changed: dict[str, str] = {}
    for changes in status.values():
        for change in changes:
            if isinstance(change, dict):  # else a word such as "always changed"
                changed.update(change.get("changed outs") or {})
    missing = sorted(path for path, state in changed.items() if state == "deleted")
    if missing:
        _dvc(["checkout", *missing], project_dir)
    return PullResult(
        fetched=_last_line(fetched),
        # outputs with `cache: false` (metrics files) are not in the cache: they stay missing
        restored=[path for path in missing if (Path(project_dir) / path).exists()],
        kept=sorted(path for path, state in changed.items() if state == "modified"),
        unavailable=sorted(path for path, state in changed.items() if state == "not in cache"),
    )


def push(project_dir: str | Path = ".") -> str:
    """``dvc push`` to the default remote (every cached output dvc.lock and the ``.dvc``
    files name); returns DVC's summary line ("2 files pushed")."""
    return _last_line(_dvc(["push"], project_dir))

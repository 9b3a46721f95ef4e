"""How a training stage runs: one plain process, or ``torchrun`` across GPUs and nodes.

    ssp launch --params params.yaml -- train --stage 1 --data data/synth --out runs/s1
    python -m ssp.ops.launch --params params.yaml --dry-run -- train --stage 2 ...

The ``train`` section of params.yaml says how many processes the job has:

    train:
      gpus: 1                       # processes (= GPUs) per node; "auto": every visible GPU
      nodes: 1                      # machines taking part
      rdzv_endpoint: "10.0.0.1:29400"   # HOST:PORT of the rendezvous (node 0 usually)
      rdzv_id: ssp                  # job id shared by all nodes of one run
      rdzv_backend: c10d
      max_restarts: 0               # torchrun restarts of the whole worker group

With ``gpus == 1`` and ``nodes == 1`` the stage is the plain ``python -m ssp.cli train ...``
process. With several GPUs on one machine it runs under ``torchrun --standalone``
(a private rendezvous on a free local port, nothing to configure). With several nodes
every node runs the same command: torchrun's c10d rendezvous at ``rdzv_endpoint``
gathers them and hands out the node ranks itself (the node whose address the
endpoint names hosts the rendezvous store). With ``rdzv_backend:
static`` the ranks are fixed instead: ``rdzv_endpoint`` is node 0's address and each
machine says its rank in ``SSP_NODE_RANK``. Training reads the usual torchrun
variables (RANK, LOCAL_RANK, WORLD_SIZE, GROUP_RANK, MASTER_ADDR...) and only global
rank 0 logs to MLflow.

Environment variables override params (``SSP_GPUS``, ``SSP_NODES``, ``SSP_NODE_RANK``,
``SSP_RDZV_ENDPOINT``, ``SSP_RDZV_ID``, ``SSP_RDZV_BACKEND``, ``SSP_MAX_RESTARTS``):
what differs from machine to machine (the node rank, the endpoint as seen from a
node) belongs in the environment, not in params.yaml, whose every change DVC
treats as a new experiment.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

from ssp.errors import SSPError
from ssp.params import LaunchParams, add_params_arguments, stage_params

# params key -> environment variable that overrides it
ENV_OVERRIDES = {
    "gpus": "SSP_GPUS",
    "nodes": "SSP_NODES",
    "node_rank": "SSP_NODE_RANK",
    "rdzv_endpoint": "SSP_RDZV_ENDPOINT",
    "rdzv_id": "SSP_RDZV_ID",
    "rdzv_backend": "SSP_RDZV_BACKEND",
    "max_restarts": "SSP_MAX_RESTARTS",
}


@dataclass
class LaunchConfig:
    """How this machine launches the job: params' ``train`` section (:class:`LaunchParams`,
    where the defaults live) after the environment overrides, plus this node's rank."""

    gpus: int  # worker processes per node
    nodes: int
    node_rank: int  # this machine's rank; static rendezvous only
    rdzv_endpoint: str  # only used when nodes > 1
    rdzv_id: str
    rdzv_backend: str
    max_restarts: int

    @property
    def distributed(self) -> bool:
        return self.gpus > 1 or self.nodes > 1

    @property
    def world_size(self) -> int:
        return self.gpus * self.nodes

    def check(self) -> None:
        if self.gpus < 1 or self.nodes < 1:
            raise SSPError(f"train.gpus and train.nodes must be >= 1 (got gpus={self.gpus}, nodes={self.nodes})")
        if not 0 <= self.node_rank < self.nodes:
            raise SSPError(f"node rank {self.node_rank} is outside 0..{self.nodes - 1} (train.nodes={self.nodes})")
        if self.nodes > 1:
            host, sep, port = self.rdzv_endpoint.rpartition(":")
            if not (sep and host and port.isdigit()):
                raise SSPError(f"train.rdzv_endpoint must be HOST:PORT, got {self.rdzv_endpoint!r}")
        if self.max_restarts < 0:
            raise SSPError(f"train.max_restarts must be >= 0 (got {self.max_restarts})")


def visible_gpus() -> int:
    import torch  # noqa: PLC0415  (only for gpus: auto; `ssp launch` execs the trainer and stays light)

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _as_int(name: str, value: Any) -> int:
    if name == "gpus" and str(value).strip().lower() == "auto":
        return max(visible_gpus(), 1)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SSPError(f"train.{name} must be an integer, got {value!r}") from None


def launch_config(section: LaunchParams | None = None, env: Mapping[str, str] | None = None) -> LaunchConfig:
    """The launch settings from params' ``train`` section, then the environment."""
    env = os.environ if env is None else env
    given = {**asdict(section or LaunchParams()), "node_rank": 0}
    values: dict[str, Any] = {}
    for f in fields(LaunchConfig):
        value = given[f.name]
        if env.get(ENV_OVERRIDES[f.name], "") != "":
            value = env[ENV_OVERRIDES[f.name]]
        values[f.name] = _as_int(f.name, value) if f.type == "int" else str(value)
    config = LaunchConfig(**values)
    config.check()
    return config


def training_command(
    stage_args: Sequence[str], config: LaunchConfig, python: str | None = None, module: str = "ssp.cli"
) -> list[str]:
    """The argv that runs ``python -m <module> <stage_args>`` (``ssp <stage_args>``) as
    ``config`` says.

    torchrun is run as ``python -m torch.distributed.run`` (what the ``torchrun``
    script runs) so that it is always the torch of this interpreter.
    """
    python = python or sys.executable
    program = ["-m", module, *stage_args]
    if not config.distributed:
        return [python, *program]
    torchrun = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(config.gpus)]
    if config.nodes == 1:
        # one machine: a private rendezvous on a free port, nothing can clash
        torchrun += ["--standalone", "--nnodes", "1"]
    else:
        torchrun += [
            "--nnodes",
            str(config.nodes),
            "--rdzv-backend",
            config.rdzv_backend,
            "--rdzv-endpoint",
            config.rdzv_endpoint,
            "--rdzv-id",
            config.rdzv_id,
        ]
        if config.rdzv_backend == "static":
            # c10d assigns node ranks at rendezvous (and ignores --node-rank); static needs them
            torchrun += ["--node-rank", str(config.node_rank)]
    if config.max_restarts:
        torchrun += ["--max-restarts", str(config.max_restarts)]
    return [*torchrun, *program]


# -- command line -------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run an `ssp` command (a training stage) as params.yaml's `train` section says: a plain "
        "process, or under torchrun when train.gpus > 1 or train.nodes > 1. SSP_GPUS, SSP_NODES, "
        "SSP_NODE_RANK, SSP_RDZV_ENDPOINT, SSP_RDZV_ID, SSP_RDZV_BACKEND and SSP_MAX_RESTARTS override params."
    )
    add_params_arguments(parser, "train.gpus=4")
    parser.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    parser.add_argument(
        "stage_args",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND ...",
        help="the ssp command to run, after `--`, e.g. -- train --stage 1 --data DIR --out DIR",
    )


def main(args: argparse.Namespace) -> int:
    stage_args = list(args.stage_args)
    if stage_args[:1] == ["--"]:
        stage_args = stage_args[1:]
    if not stage_args:
        raise SSPError("nothing to launch: give the ssp command after `--`, e.g. -- train --stage 1 ...")
    config = launch_config(stage_params(args).train)
    command = training_command(stage_args, config)
    if args.dry_run:
        print(shlex.join(command))
        return 0
    print(
        f"ssp launch: {config.nodes} node(s) x {config.gpus} process(es), node rank {config.node_rank}: "
        f"{shlex.join(command)}",
        file=sys.stderr,
        flush=True,
    )
    # replace this process: signals (Ctrl-C, DVC or Prefect cancelling) reach torchrun or
    # the trainer directly, and its exit status is the stage's
    os.execv(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m ssp.ops.launch")
    add_arguments(_parser)
    try:
        sys.exit(main(_parser.parse_args()))
    except SSPError as e:
        print(f"ssp launch: error: {e}", file=sys.stderr)
        sys.exit(2)

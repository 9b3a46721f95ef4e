"""ssp.ops.launch: the command a training stage runs as (plain process or torchrun), from
params and environment; real torchrun launches of a tiny program on CPU (one node with
two processes, two "nodes" on 127.0.0.1 meeting at a c10d rendezvous)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from ssp.errors import SSPError
from ssp.ops import launch
from ssp.ops.launch import LaunchConfig, launch_config, training_command
from ssp.params import LaunchParams
from tests.ports import free_port

PY = sys.executable
TORCHRUN = [PY, "-m", "torch.distributed.run"]

# prints what torchrun told this process, one line
SHOW_RANK = textwrap.dedent(
    """
    import os, sys
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK")
    line = " ".join(["worker", *(f"{k}={os.environ.get(k)}" for k in keys), *sys.argv[1:]]) + "\\n"
    os.write(1, line.encode())  # one write per line: the workers share torchrun's stdout pipe
    """
)


def test_one_process_runs_the_plain_cli():
    config = launch_config(LaunchParams(gpus=1, nodes=1), env={})
    assert not config.distributed
    assert training_command(["train", "--stage", "1"], config) == [PY, "-m", "ssp.cli", "train", "--stage", "1"]


def test_defaults_when_params_have_no_train_section():
    assert launch_config(None, env={}) == launch_config(LaunchParams(), env={})
    assert training_command(["train"], launch_config(None, env={}), python="python3") == [
        "python3",
        "-m",
        "ssp.cli",
        "train",
    ]


def test_several_gpus_on_one_machine_use_a_standalone_rendezvous():
    config = launch_config(LaunchParams(gpus=4), env={})
    assert config.distributed and config.world_size == 4
    assert training_command(["train", "--stage", "2"], config) == [
        *TORCHRUN,
        "--nproc-per-node",
        "4",
        "--standalone",
        "--nnodes",
        "1",
        "-m",
        "ssp.cli",
        "train",
        "--stage",
        "2",
    ]


def test_several_nodes_meet_at_the_c10d_rendezvous():
    params = {"train": {"gpus": 8, "nodes": 2, "rdzv_endpoint": "head:29400", "rdzv_id": "job7", "max_restarts": 3}}
    config = launch_config(LaunchParams(**params["train"]), env={})
    assert config.world_size == 16
    assert training_command(["train"], config) == [
        *TORCHRUN,
        "--nproc-per-node",
        "8",
        "--nnodes",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "head:29400",
        "--rdzv-id",
        "job7",
        "--max-restarts",
        "3",
        "-m",
        "ssp.cli",
        "train",
    ]


def test_static_rendezvous_passes_this_nodes_rank_from_the_environment():
    params = {"train": {"gpus": 2, "nodes": 3, "rdzv_backend": "static", "rdzv_endpoint": "10.1.2.3:29500"}}
    config = launch_config(LaunchParams(**params["train"]), env={"SSP_NODE_RANK": "2"})
    command = training_command(["train"], config)
    assert command[command.index("--rdzv-backend") + 1] == "static"
    assert command[command.index("--node-rank") + 1] == "2"


def test_environment_overrides_params_and_empty_variables_do_not():
    params = {"train": {"gpus": 1, "nodes": 1, "rdzv_endpoint": "a:1"}}
    env = {
        "SSP_GPUS": "2",
        "SSP_NODES": "4",
        "SSP_NODE_RANK": "3",
        "SSP_RDZV_ENDPOINT": "b:2",
        "SSP_RDZV_ID": "",
        "SSP_MAX_RESTARTS": "1",
    }
    config = launch_config(LaunchParams(**params["train"]), env=env)
    assert config == LaunchConfig(
        gpus=2, nodes=4, node_rank=3, rdzv_endpoint="b:2", rdzv_id="ssp", rdzv_backend="c10d", max_restarts=1
    )


def test_gpus_auto_counts_visible_gpus(monkeypatch):
    monkeypatch.setattr(launch, "visible_gpus", lambda: 3)
    assert launch_config(LaunchParams(gpus="auto"), env={}).gpus == 3
    monkeypatch.setattr(launch, "visible_gpus", lambda: 0)  # CPU machine: one process
    assert launch_config(LaunchParams(gpus="auto"), env={}).gpus == 1


@pytest.mark.parametrize(
    "train, env, message",
    [
        ({"gpus": 0}, {}, "must be >= 1"),
        ({"gpus": "two"}, {}, "train.gpus must be an integer"),
        ({"nodes": 2}, {"SSP_NODE_RANK": "2"}, "node rank 2 is outside 0..1"),
        ({"nodes": 2, "rdzv_endpoint": "head"}, {}, "must be HOST:PORT"),
        ({"max_restarts": -1}, {}, "max_restarts must be >= 0"),
    ],
)
def test_bad_settings_are_clear_errors(train, env, message):
    with pytest.raises(SSPError, match=message):
        launch_config(LaunchParams(**train), env=env)


def test_cli_dry_run_prints_the_command(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"gpus": 2}}))
    out = subprocess.run(
        [PY, "-m", "ssp.ops.launch", "--params", str(params), "--dry-run", "--", "train", "--stage", "1"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == [
        *TORCHRUN,
        "--nproc-per-node",
        "2",
        "--standalone",
        "--nnodes",
        "1",
        "-m",
        "ssp.cli",
        "train",
        "--stage",
        "1",
    ]
    # --set wins over the file
    out = subprocess.run(
        [PY, "-m", "ssp.ops.launch", "--params", str(params), "--set", "train.gpus=1", "--dry-run", "train"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == [PY, "-m", "ssp.cli", "train"]


def test_cli_runs_the_command_in_place_and_keeps_its_exit_status(tmp_path):
    ok = subprocess.run(
        [PY, "-m", "ssp.ops.launch", "--params", os.devnull, "--", "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert ok.returncode == 0 and ok.stdout.startswith("ssp ")
    bad = subprocess.run(
        [PY, "-m", "ssp.ops.launch", "--", "no-such-command"], capture_output=True, text=True, cwd=tmp_path
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    nothing = subprocess.run([PY, "-m", "ssp.ops.launch"], capture_output=True, text=True, cwd=tmp_path)
    assert nothing.returncode == 2 and "nothing to launch" in nothing.stderr


def _worker_lines(output: str) -> list[str]:
    return sorted(line for line in output.splitlines() if line.startswith("worker "))


def test_torchrun_starts_two_processes_on_one_machine(tmp_path):
    (tmp_path / "show_rank.py").write_text(SHOW_RANK)
    command = training_command(["x"], launch_config(LaunchParams(gpus=2), env={}), module="show_rank")
    out = subprocess.run(
        command,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert _worker_lines(out.stdout) == [
        "worker RANK=0 LOCAL_RANK=0 WORLD_SIZE=2 GROUP_RANK=0 x",
        "worker RANK=1 LOCAL_RANK=1 WORLD_SIZE=2 GROUP_RANK=0 x",
    ]


def test_torchrun_nodes_meet_at_a_c10d_rendezvous(tmp_path):
    (tmp_path / "show_rank.py").write_text(SHOW_RANK)
    endpoint = f"127.0.0.1:{free_port()}"
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    nodes = []
    for _ in range(2):  # two "machines", each one process
        config = launch_config(LaunchParams(nodes=2, rdzv_endpoint=endpoint, rdzv_id="t"), env={})
        nodes.append(
            subprocess.Popen(
                training_command(["y"], config, module="show_rank"),
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for p in nodes:
            outputs.append(p.communicate(timeout=180)[0])
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(outputs)
    lines = _worker_lines("\n".join(outputs))
    assert lines == [
        "worker RANK=0 LOCAL_RANK=0 WORLD_SIZE=2 GROUP_RANK=0 y",
        "worker RANK=1 LOCAL_RANK=0 WORLD_SIZE=2 GROUP_RANK=1 y",
    ]

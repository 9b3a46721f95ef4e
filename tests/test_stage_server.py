"""The warm stage server (ssp/stage_server.py): a served command reads, writes, exits and
dies as the fresh process it replaces would; anything that could make it differ runs on
its own. A small server (``serve`` with a test command instead of ``ssp.cli.main``) and
real clients, each its own process; the real ``ssp stage-server`` runs in
tests/flows/test_demo_pipeline.py (the reproduce flow's stages)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ssp.stage_server import SERVER_ENV, environment_differences

# the command: prints argv, folder and SSP_TEST_VALUE, writes its pid, then sleeps or exits
SERVER = textwrap.dedent(
    """
    import os, sys, time
    from ssp.stage_server import serve

    def command(argv):
        print("argv", argv, "cwd", os.getcwd(), "value", os.environ.get("SSP_TEST_VALUE"), flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        open(argv[0], "w").write(str(os.getpid()))
        time.sleep(float(argv[1]))
        return int(argv[2])

    sys.exit(serve(sys.argv[1], run=command, environment=dict(os.environ)))
    """
)
CLIENT = "import sys; from ssp.stage_server import run_on_server; code = run_on_server(sys.argv[1:]); print('local' if code is None else '', end=''); sys.exit(code or 0)"


@pytest.fixture
def server(tmp_path):
    sock = tmp_path / "s.sock"
    env = {**os.environ, SERVER_ENV: str(sock), "SSP_TEST_VALUE": "server"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(sock)], env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    deadline = time.monotonic() + 60
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield env, proc
    proc.terminate()
    proc.wait(timeout=30)


def client(env, *argv, cwd, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT, *argv],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def wait_for_pid(path: Path) -> int:
    deadline = time.monotonic() + 30
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return int(path.read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by the server) is gone for our purpose
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_a_served_command_has_the_clients_streams_folder_environment_and_exit_status(server, tmp_path):
    env, _ = server
    work = tmp_path / "work"
    work.mkdir()
    out = client({**env, "SSP_TEST_VALUE": "server"}, str(tmp_path / "pid"), "0", "3", cwd=work)
    stdout, stderr = out.communicate(timeout=60)
    assert out.returncode == 3
    assert stdout.decode().splitlines() == [f"argv {[str(tmp_path / 'pid'), '0', '3']} cwd {work} value server"]
    assert stderr.decode() == "to stderr\n"
    assert wait_for_pid(tmp_path / "pid") not in (out.pid, os.getpid())  # a fork of the server ran it


def test_a_client_whose_environment_differs_runs_on_its_own(server, tmp_path):
    env, proc = server
    out = client({**env, "SSP_TEST_VALUE": "other"}, str(tmp_path / "pid"), "0", "3", cwd=tmp_path)
    stdout, _ = out.communicate(timeout=60)
    assert (out.returncode, stdout.decode()) == (0, "local")
    assert not (tmp_path / "pid").exists()
    # per-stage variables (DVC's, the shell's) may differ
    assert environment_differences({"A": "1", "PWD": "/x"}, {"A": "1", "PWD": "/y", "DVC_STAGE": "train"}) == []
    assert environment_differences({"A": "1"}, {"A": "2", "B": "3"}) == ["A", "B"]
    proc.terminate()
    assert "SSP_TEST_VALUE" in proc.communicate(timeout=30)[1]  # the server says why


def test_a_signal_to_the_client_reaches_the_command_and_ends_the_client_alike(server, tmp_path):
    env, _ = server
    out = client(env, str(tmp_path / "pid"), "60", "0", cwd=tmp_path)
    pid = wait_for_pid(tmp_path / "pid")
    out.send_signal(signal.SIGTERM)
    out.communicate(timeout=30)
    assert out.returncode == -signal.SIGTERM  # as if the command had been the client
    deadline = time.monotonic() + 10
    while alive(pid):
        assert time.monotonic() < deadline, "the command outlived the signal"
        time.sleep(0.05)


def test_a_command_does_not_outlive_a_killed_client(server, tmp_path):
    env, _ = server
    out = client(env, str(tmp_path / "pid"), "60", "0", cwd=tmp_path)
    pid = wait_for_pid(tmp_path / "pid")
    out.kill()  # SIGKILL: no chance to forward anything
    out.wait(timeout=30)
    deadline = time.monotonic() + 10
    while alive(pid):
        assert time.monotonic() < deadline, "the command outlived its client"
        time.sleep(0.05)


def test_without_a_server_the_client_runs_on_its_own(tmp_path):
    env = {**os.environ, SERVER_ENV: str(tmp_path / "absent.sock")}
    out = client(env, "x", cwd=tmp_path)
    assert out.communicate(timeout=60)[0] == b"local" and out.returncode == 0


def test_a_command_killed_outright_ends_its_client_alike(server, tmp_path):
    env, _ = server
    out = client(env, str(tmp_path / "pid"), "60", "0", cwd=tmp_path)
    os.kill(wait_for_pid(tmp_path / "pid"), signal.SIGKILL)  # what the OOM killer does
    out.communicate(timeout=30)
    assert out.returncode == -signal.SIGKILL


def test_a_client_gone_before_its_answer_neither_stops_the_server_nor_leaves_its_command(server, tmp_path):
    from ssp import stage_server

    env, proc = server
    pid_file = tmp_path / "vanished"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # a client that sends and leaves
        sock.connect(env[SERVER_ENV])
        request = {"argv": [str(pid_file), "60", "0"], "cwd": str(tmp_path), "env": env}
        request["package"] = stage_server._package_path()
        with open(os.devnull, "w") as sink:
            stage_server._send_json(sock, request, fds=(sink.fileno(),) * 3)
    # its command was forked (and told at once) or never ran: either way it is not running
    deadline = time.monotonic() + 10
    while pid_file.exists() and pid_file.read_text() and alive(int(pid_file.read_text())):
        assert time.monotonic() < deadline, "the command outlived its client"
        time.sleep(0.05)
    assert proc.poll() is None  # still serving
    out = client(env, str(tmp_path / "pid"), "0", "4", cwd=tmp_path)
    assert out.communicate(timeout=60) and out.returncode == 4

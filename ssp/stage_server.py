"""Warm start for pipeline stages: one process imports the heavy libraries once, and each
``ssp`` command of a pipeline run is a fork of it instead of a fresh interpreter.

A pipeline stage is a short command behind a long import: torch, transformers, mlflow and
pandas take 5-6 s to import on 2 cores, most of a small stage (``ssp evaluate`` on the
demo data: ~1 s of work in ~10 s). The reproduce flow starts this server for the length
of a run (``flows/dvc_stages.py``); DVC still runs every stage's command (``ssp ...``),
whose first step (:func:`run_on_server`, in ``ssp.cli.main``) hands the command to the
server when ``SSP_STAGE_SERVER`` names one:

- the client sends its argv, working folder and environment, and its stdin/stdout/stderr
  (the file descriptors themselves, over the UNIX socket): the command reads and writes
  exactly what it would have;
- the server forks; the child takes the client's folder, environment and descriptors and
  runs ``ssp.cli.main(argv)``: the same code as a fresh process, minus the imports;
- the client waits and exits with the child's status (a child killed by a signal kills
  the client with it); a signal the client receives (Ctrl-C, DVC or Prefect cancelling)
  goes to the child; a client that dies takes its child with it (SIGTERM).

It refuses, and the client runs the command itself as before, whenever the fork could
differ from a fresh process: another ``ssp`` package (path), its code changed since the
server imported it, another user's process, or any environment variable that differs
beyond the per-stage ones DVC and the shell set (:data:`PER_STAGE_VARIABLES`): libraries
read some settings once at import (``HF_HUB_OFFLINE``, thread counts), so a fork of a
server started with other settings would not be the same command. A refusal,
an unreachable socket or a server still importing costs nothing but the warm start.

A leaf: imports nothing of ssp (``ssp.cli`` passes its ``main`` in).
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

SERVER_ENV = "SSP_STAGE_SERVER"  # path of the server's UNIX socket
# set per stage by DVC (the stage, the repository) and by the shell running its command
PER_STAGE_VARIABLES = frozenset(
    {"DVC_STAGE", "DVC_ROOT", "DVC_EXP_BASELINE_REV", "DVC_EXP_NAME", "PWD", "OLDPWD", "SHLVL", "_"}
)
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
ACCEPTED = b"A"
REFUSED = b"R"

log = logging.getLogger(__name__)
_is_served_command = False  # set in a forked child: its own ``main`` must not ask the server again


# -- wire format: 4-byte length + JSON; the status is a signed 4-byte int ------------------
def _send_json(sock: socket.socket, obj, fds: Iterable[int] = ()) -> None:
    body = json.dumps(obj).encode()
    message = struct.pack("!I", len(body)) + body
    fds = list(fds)
    if fds:
        sent = socket.send_fds(sock, [message], fds)
        sock.sendall(message[sent:])
    else:
        sock.sendall(message)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def _recv_request(sock: socket.socket) -> tuple[dict, list[int]]:
    # the descriptors ride on the first bytes (the length prefix)
    head, fds, _, _ = socket.recv_fds(sock, 4, 8)
    try:
        head += _recv_exact(sock, 4 - len(head))
        (size,) = struct.unpack("!I", head)
        return json.loads(_recv_exact(sock, size)), list(fds)
    except BaseException:
        for fd in fds:  # held here, a pipe's write end would keep its reader waiting for EOF
            os.close(fd)
        raise


def _package_path() -> str:
    import ssp  # noqa: PLC0415  (the package this process runs)

    return str(Path(ssp.__file__).resolve().parent)


def _loaded_code(package: str) -> dict[str, tuple[int, int]]:
    """(mtime, size) of every module file of ``package`` this process has imported."""
    files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
    stats = {}
    for name in sorted(f for f in files if f and f.startswith(package)):
        try:
            st = os.stat(name)
        except OSError:
            continue
        stats[name] = (st.st_mtime_ns, st.st_size)
    return stats


def environment_differences(server: Mapping[str, str], client: Mapping[str, str]) -> list[str]:
    """Names of the variables whose values differ, per-stage ones aside."""
    names = (set(server) | set(client)) - PER_STAGE_VARIABLES
    return sorted(n for n in names if server.get(n) != client.get(n))


# -- client ---------------------------------------------------------------------------------
def run_on_server(argv: list[str]) -> int | None:
    """Run ``ssp argv`` on the server ``SSP_STAGE_SERVER`` names and return its exit
    status; None when there is no server, it cannot be reached or it refuses (the caller
    then runs the command itself)."""
    path = os.environ.get(SERVER_ENV)
    if not path or _is_served_command:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)  # a stuck server: run on our own (closing makes it drop the command)
    try:
        sock.connect(path)
        request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "package": _package_path()}
        _send_json(sock, request, fds=(0, 1, 2))
        answer = _recv_exact(sock, 1)
        if answer != ACCEPTED:
            (size,) = struct.unpack("!I", _recv_exact(sock, 4))
            log.debug("stage server %s: %s", path, _recv_exact(sock, size).decode())
            sock.close()
            return None
        sock.settimeout(None)
    except OSError as e:  # no server (yet), or it went away before taking the command
        log.debug("stage server %s unreachable: %s", path, e)
        sock.close()
        return None
    return _wait_for_status(sock)


def _wait_for_status(sock: socket.socket) -> int:
    def forward(signum, _frame):
        try:
            sock.sendall(bytes([signum]))
        except OSError:
            pass

    previous = {s: signal.signal(s, forward) for s in FORWARDED_SIGNALS}
    try:
        (status,) = struct.unpack("!i", _recv_exact(sock, 4))
    except ConnectionError:
        print("ssp: the stage server went away before the command finished", file=sys.stderr)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()
    if status < 0:  # the command died of a signal: so does this process
        if -status not in (signal.SIGKILL, signal.SIGSTOP):  # those two have no handler to reset
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        return 128 - status
    return status


# -- server ---------------------------------------------------------------------------------
def serve(socket_path: str | Path, run: Callable[[list[str]], int], environment: Mapping[str, str]) -> int:
    """Serve commands on ``socket_path`` until SIGTERM, or until the process that started
    this one exits. Import what the commands need before calling it (the children share
    it) and pass ``environment``, the process environment from before those imports: the
    clients' must equal it. Returns in each forked child with the status of ``run(argv)``
    (the caller exits with it); in the server, 0 once stopped."""
    path = str(socket_path)
    started_by = os.getppid()
    environment, package = dict(environment), _package_path()
    # what the imports set (torch: LD_LIBRARY_PATH, TORCHINDUCTOR_CACHE_DIR): a fresh
    # process sets the same while importing, so each child gets it on top of its client's
    set_by_imports = {k: v for k, v in os.environ.items() if environment.get(k) != v}
    code = _loaded_code(package)  # a change under the server: it would run the old code
    stop: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, lambda signum, _frame: stop.append(signum))
    _remove_stale_socket(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)  # only once imported: a client arriving earlier runs on its own
    listener.listen(16)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    # a finished command wakes the loop at once (SIGCHLD through the wakeup socket)
    wakeup, wakeup_write = socket.socketpair()
    wakeup_write.setblocking(False)
    signal.set_wakeup_fd(wakeup_write.fileno())
    signal.signal(signal.SIGCHLD, lambda signum, _frame: None)
    selector.register(wakeup, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}  # pid -> its client's connection
    in_child, served = False, 0
    try:
        while not stop and os.getppid() == started_by:
            for key, _ in selector.select(timeout=0.2):
                if key.fileobj is listener:
                    command = _accept(listener, environment, package, code)
                    if command is None:
                        continue
                    conn, request, fds = command
                    sys.stdout.flush()
                    sys.stderr.flush()
                    # held until the child has a fresh process's handlers: a SIGTERM sent to
                    # it at once (its client already gone) must not meet the server's
                    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
                    pid = os.fork()
                    if pid == 0:  # the child: drop the server's sockets, become the command
                        in_child = True
                        signal.set_wakeup_fd(-1)
                        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                        for sock in (listener, wakeup, wakeup_write, conn, *children.values()):
                            sock.close()
                        selector.close()
                        _become(request, fds, set_by_imports)
                        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
                        return run(request["argv"])
                    signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
                    try:
                        os.setpgid(pid, pid)  # as the child does: whichever runs first
                    except OSError:
                        pass
                    for fd in fds:
                        os.close(fd)
                    children[pid] = conn
                    try:
                        conn.sendall(ACCEPTED)
                    except OSError:  # the client is gone already: so must its command be
                        _kill(pid, signal.SIGTERM)
                        continue
                    selector.register(conn, selectors.EVENT_READ, pid)
                    served += 1
                elif key.fileobj is wakeup:
                    wakeup.recv(512)
                else:  # the client forwards a signal, or is gone: its command must not outlive it
                    try:
                        data = key.fileobj.recv(16)
                    except OSError:
                        data = b""
                    for signum in data or [signal.SIGTERM]:
                        _kill(key.data, signum)
                    if not data:
                        selector.unregister(key.fileobj)
            _reap(children, selector)
    finally:
        if not in_child:
            for pid in children:
                _kill(pid, signal.SIGTERM)
            signal.set_wakeup_fd(-1)
            for sock in (listener, wakeup, wakeup_write):
                sock.close()
            selector.close()
            Path(path).unlink(missing_ok=True)
            log.info("stage server: %d command(s) served", served)
    return 0


def _accept(listener: socket.socket, environment: dict[str, str], package: str, code: dict):
    """The next command, or None when it must run on its own (the client is told why)."""
    conn, _ = listener.accept()
    uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
    if uid != os.getuid():  # another user's process: no
        log.warning("stage server: refused a client of user %d", uid)
        conn.close()
        return None
    conn.settimeout(10)  # a client sends its request at once; none may stall the server
    try:
        request, fds = _recv_request(conn)
        conn.settimeout(None)
    except (OSError, ValueError) as e:
        log.warning("stage server: unreadable request: %s", e)
        conn.close()
        return None
    if len(fds) != 3:
        reason = f"expected stdin, stdout and stderr, got {len(fds)} descriptors"
    elif request.get("package") != package:
        reason = f"another ssp package ({request.get('package')}; this server runs {package})"
    elif _loaded_code(package) != code:
        reason = f"the ssp code under {package} changed since this server imported it: restart it"
    else:
        differ = environment_differences(environment, request.get("env", {}))
        reason = f"environment differs: {', '.join(differ)}" if differ else ""
    if not reason:
        return conn, request, fds
    log.warning("stage server: `ssp %s` runs on its own: %s", " ".join(request.get("argv", [])[:1]), reason)
    for fd in fds:
        os.close(fd)
    try:
        conn.sendall(REFUSED)
        _send_json(conn, reason)
    except OSError:
        pass
    conn.close()
    return None


def _become(request: dict, fds: list[int], set_by_imports: Mapping[str, str]) -> None:
    """In the forked child: the client's descriptors, folder, environment and argv, and a
    fresh process's signal handlers and logging."""
    global _is_served_command
    _is_served_command = True
    os.setpgid(0, 0)  # its own group: a forwarded signal reaches its workers too (_kill)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update({**request["env"], **set_by_imports})
    sys.argv = ["ssp", *request["argv"]]
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)


def _reap(children: dict[int, socket.socket], selector: selectors.BaseSelector) -> None:
    """Send each finished command's status to its client."""
    while children:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        try:
            selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        try:
            conn.sendall(struct.pack("!i", os.waitstatus_to_exitcode(wait_status)))
        except OSError:
            pass
        conn.close()


def _kill(pid: int, signum: int) -> None:
    """Signal a command and the processes it started (its group: :func:`_become`)."""
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        try:  # not (yet) its own group leader
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a server that died: nobody answers on it."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
    except OSError:
        pass
    finally:
        probe.close()

"""Ports for the servers the tests start on 127.0.0.1."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

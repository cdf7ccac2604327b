"""Helpers for tests that run ``cra serve`` as a real process."""

from __future__ import annotations

import queue
import socket
from typing import IO


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    """Copy a process's output into ``lines`` until it closes (run in a thread)."""
    for line in stream:
        lines.put(line)
    stream.close()

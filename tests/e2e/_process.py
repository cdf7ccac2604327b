"""Helpers for tests that run ``cra`` as a real process."""

from __future__ import annotations

import itertools
import os
import queue
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

#: Each xdist worker takes ports from its own block below Linux's ephemeral range (32768 and up), so two workers
#: never pick the same port, and no outgoing connection's local port is ever picked.
_BLOCK = 500
_FIRST = 20_000
_next = itertools.count()


def _worker_number() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # "gw3", or unset without xdist
    return int(worker.removeprefix("gw")) if worker.removeprefix("gw").isdigit() else 0


def free_port() -> int:
    """A loopback port nobody listens on now, from this worker's own block."""
    base = _FIRST + _BLOCK * (_worker_number() % 20)
    for _ in range(_BLOCK):
        port = base + next(_next) % _BLOCK
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {base}..{base + _BLOCK - 1}")


def serve_command(data_dir: Path, port: int) -> list[str]:
    """``cra serve`` on loopback as the interpreter itself runs it (no wrapper to signal), without the
    WebAssembly sandbox, which these tests do not use and whose first-use build would only slow them."""
    return [sys.executable, "-m", "cra", "serve", "--data-dir", str(data_dir), "--port", str(port), "--no-sandbox"]


def pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    """Copy a process's output into ``lines`` until it closes (run in a thread)."""
    for line in stream:
        lines.put(line)
    stream.close()


def cra(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m cra ARGS`` as a process; ``env`` adds to this process's environment."""
    return subprocess.run(  # noqa: S603 - the project's own command line, with test arguments
        [sys.executable, "-m", "cra", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
        timeout=timeout,
        check=False,
    )

"""The ``cra`` command line (Typer). Thin: every command calls the library.

Exit codes: 0 success; 1 the answer is negative (a chain that does not verify,
lint findings, failing atlas tests, a replay that differs); 2 the input is
invalid (a malformed atlas, request or trace, a missing file).
"""

from __future__ import annotations

from cra.cli._app import app, main

__all__ = ["app", "main"]

"""The ``cra`` command line (Typer). Thin: every command calls the library.

Exit codes: 0 success; 1 the answer is negative (a trace that does not verify,
malformed or tampered, lint findings, failing atlas tests, a replay that
differs); 2 the input is unusable (a malformed atlas or request, a missing file,
a batch with invalid lines).
"""

from __future__ import annotations

from cra.cli._app import app, main

__all__ = ["app", "main"]

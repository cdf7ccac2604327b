"""Printing results and errors the same way in every command."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer

from cra.errors import CRAError

__all__ = ["EXIT_INVALID", "EXIT_NEGATIVE", "fail", "print_json"]

EXIT_NEGATIVE = 1
EXIT_INVALID = 2


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, ensure_ascii=False, indent=2, sort_keys=False))


def fail(error: CRAError | str, *, as_json: bool = False, code: int = EXIT_INVALID) -> NoReturn:
    """Report an error on stderr (and as JSON on stdout with --json) and exit."""
    message = str(error)
    if as_json:
        detail: dict[str, Any] = {"error": getattr(error, "code", "error"), "message": message}
        for attr in ("path", "reason", "source", "line", "kind", "index"):
            if isinstance(error, CRAError) and hasattr(error, attr):
                detail[attr] = getattr(error, attr)
        print_json(detail)
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    sys.stderr.flush()
    raise typer.Exit(code)

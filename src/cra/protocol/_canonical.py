"""Canonical JSON and hashing helpers shared by the core packages."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["StrictJSONError", "canonical_json", "loads_strict", "sha256_hex"]


def canonical_json(value: Any) -> str:
    """TRACE/1.0 canonical JSON: sorted keys, no whitespace, ASCII escapes.

    Equal to ``json.dumps(value, sort_keys=True, separators=(",", ":"))``.
    NaN and infinities are rejected: they are not JSON.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def sha256_hex(data: str | bytes) -> str:
    """Hex SHA-256 of ``data`` (text is hashed as UTF-8)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


class StrictJSONError(ValueError):
    """Input that Python's json module would accept but JSON does not allow."""


def _no_constants(name: str) -> Any:
    raise StrictJSONError(f"{name} is not a JSON value")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise StrictJSONError(f"duplicate key {key!r} in an object")
        out[key] = value
    return out


def loads_strict(text: str | bytes) -> Any:
    """Parse JSON, refusing NaN/Infinity and objects with duplicate keys.

    Raises :class:`json.JSONDecodeError` for syntax errors, :class:`StrictJSONError`
    for the refusals and :class:`RecursionError` for absurd nesting.
    """
    return json.loads(text, parse_constant=_no_constants, object_pairs_hook=_no_duplicates)

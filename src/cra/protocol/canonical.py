"""Canonical JSON, strict JSON parsing and hashing, shared by every layer."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from cra.errors import ValidationError

__all__ = ["StrictJSONError", "canonical_json", "loads_strict", "parse_json", "sha256_hex"]


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
    """Input that Python's json module would accept but strict JSON handling refuses."""


def _no_constants(name: str) -> Any:
    raise StrictJSONError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJSONError(f"the number {text[:40]} is too large")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise StrictJSONError(f"duplicate key {key!r} in an object")
        out[key] = value
    return out


def loads_strict(text: str | bytes) -> Any:
    """Parse JSON, refusing what JSON does not mean or means twice.

    Refused with :class:`StrictJSONError`: NaN and Infinity, numbers too large to
    represent, integers too long to convert, and objects with duplicate keys
    (``{"type": "deny", "type": "allow"}`` must not mean whatever is kept last).
    Syntax errors raise :class:`json.JSONDecodeError`, absurd nesting
    :class:`RecursionError`, and bytes that are not UTF-8 :class:`UnicodeDecodeError`.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")  # json.loads would also guess UTF-16 and UTF-32 from bytes
    try:
        return json.loads(
            text, parse_constant=_no_constants, parse_float=_finite_float, object_pairs_hook=_no_duplicates
        )
    except (json.JSONDecodeError, StrictJSONError):
        raise
    except ValueError as exc:  # int() refusing a number with thousands of digits
        raise StrictJSONError(str(exc)) from None


def parse_json(data: str | bytes, *, source: str | None, error: type[ValidationError]) -> Any:
    """:func:`loads_strict`, with every failure turned into ``error`` (a reason, and ``source``)."""
    try:
        return loads_strict(data)
    except UnicodeDecodeError as exc:
        raise error("", f"not UTF-8 text (byte {exc.start})", source=source) from None
    except json.JSONDecodeError as exc:
        raise error("", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", source=source) from None
    except StrictJSONError as exc:
        raise error("", str(exc), source=source) from None
    except RecursionError:
        raise error("", "JSON is nested too deeply", source=source) from None

"""Canonical JSON, strict JSON parsing and hashing, shared by every layer."""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from cra.errors import ValidationError, json_pointer

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
    """Input that Python's json module would accept but strict JSON handling refuses.

    ``path`` is the JSON Pointer of the offending value, where one can be named."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


#: What lets a surrogate code point into parsed JSON: an escape from ``\uD800`` to ``\uDFFF``, or (in text
#: handed over as ``str``) a surrogate itself. Only text holding one is walked.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any, path: list[str | int]) -> list[str | int] | None:
    """The path to the first string (a key or a value) holding a surrogate code point, if any.

    A well-formed pair of escapes decodes to one character outside the BMP, so what is
    left is a lone surrogate: not a Unicode scalar value, unencodable as UTF-8, and so
    text that no other JSON implementation would read as this one does."""
    if isinstance(value, str):
        return path if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if _SURROGATE.search(key):  # named as an escape: the key itself cannot be printed
                return [*path, key.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")]
            found = _lone_surrogate(item, [*path, key])
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _lone_surrogate(item, [*path, index])
            if found is not None:
                return found
    return None


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
    represent, integers too long to convert, objects with duplicate keys
    (``{"type": "deny", "type": "allow"}`` must not mean whatever is kept last), and
    strings holding a lone surrogate (``"\\ud800"``), which are not Unicode text.
    Syntax errors raise :class:`json.JSONDecodeError`, absurd nesting
    :class:`RecursionError`, and bytes that are not UTF-8 :class:`UnicodeDecodeError`.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")  # json.loads would also guess UTF-16 and UTF-32 from bytes
    try:
        value = json.loads(
            text, parse_constant=_no_constants, parse_float=_finite_float, object_pairs_hook=_no_duplicates
        )
    except (json.JSONDecodeError, StrictJSONError):
        raise
    except ValueError as exc:  # int() refusing a number with thousands of digits
        raise StrictJSONError(str(exc)) from None
    if _SURROGATE_ESCAPE.search(text) or _SURROGATE.search(text):
        found = _lone_surrogate(value, [])
        if found is not None:
            raise StrictJSONError("text must be Unicode scalar values: a lone surrogate is not", json_pointer(found))
    return value


def parse_json(data: str | bytes, *, source: str | None, error: type[ValidationError]) -> Any:
    """:func:`loads_strict`, with every failure turned into ``error`` (a reason, and ``source``)."""
    try:
        return loads_strict(data)
    except UnicodeDecodeError as exc:
        raise error("", f"not UTF-8 text (byte {exc.start})", source=source) from None
    except json.JSONDecodeError as exc:
        raise error("", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", source=source) from None
    except StrictJSONError as exc:
        raise error(exc.path, str(exc), source=source) from None
    except RecursionError:
        raise error("", "JSON is nested too deeply", source=source) from None

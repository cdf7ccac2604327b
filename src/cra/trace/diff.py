"""Semantic diff of two traces.

Events are compared position by position. Identifiers, timestamps and hashes
differ between any two runs and are ignored, as are the request, resolution,
execution and approval ids inside payloads. Durations and expiry times are
compared but count as *minor*. Everything else - event types, decisions,
policies, actions, arguments, counts - is *major*.

The result is ``identical`` (no differences), ``semantically_equivalent``
(minor differences only) or ``different``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from cra.errors import json_pointer
from cra.trace.event import TraceEvent

__all__ = ["Difference", "TraceDiff", "diff_traces"]

_ENVELOPE_IGNORED: Final = frozenset(
    {
        "event_id",
        "trace_id",
        "span_id",
        "parent_span_id",
        "session_id",
        "timestamp",
        "event_hash",
        "previous_event_hash",
    }
)
_PAYLOAD_IGNORED: Final = frozenset({"request_id", "resolution_id", "execution_id", "approval_id"})
_MINOR: Final = frozenset({"duration_ms", "expires_at", "evaluation_ms"})


@dataclass(frozen=True, slots=True)
class Difference:
    path: str
    type: str  # value_changed | added | removed
    significance: str  # major | minor
    a: Any = None
    b: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "type": self.type, "significance": self.significance, "a": self.a, "b": self.b}


@dataclass(frozen=True, slots=True)
class TraceDiff:
    differences: tuple[Difference, ...]

    @property
    def compatibility(self) -> str:
        if not self.differences:
            return "identical"
        if all(d.significance == "minor" for d in self.differences):
            return "semantically_equivalent"
        return "different"

    def to_dict(self) -> dict[str, Any]:
        return {"compatibility": self.compatibility, "differences": [d.to_dict() for d in self.differences]}


def _walk(a: Any, b: Any, path: list[str | int], minor: bool, out: list[Difference]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key in _PAYLOAD_IGNORED and len(path) == 2:
                continue
            sub_minor = minor or key in _MINOR
            here = [*path, key]
            if key not in b:
                out.append(Difference(json_pointer(here), "removed", "minor" if sub_minor else "major", a[key], None))
            elif key not in a:
                out.append(Difference(json_pointer(here), "added", "minor" if sub_minor else "major", None, b[key]))
            else:
                _walk(a[key], b[key], here, sub_minor, out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _walk(x, y, [*path, i], minor, out)
    elif type(a) is not type(b) or a != b:
        out.append(Difference(json_pointer(path), "value_changed", "minor" if minor else "major", a, b))


def diff_traces(a: Sequence[TraceEvent], b: Sequence[TraceEvent]) -> TraceDiff:
    """What differs between two traces, ignoring what always differs between runs."""
    out: list[Difference] = []
    for i in range(max(len(a), len(b))):
        if i >= len(b):
            out.append(Difference(f"/{i}", "removed", "major", a[i].event_type, None))
            continue
        if i >= len(a):
            out.append(Difference(f"/{i}", "added", "major", None, b[i].event_type))
            continue
        x = {k: v for k, v in a[i].to_dict().items() if k not in _ENVELOPE_IGNORED}
        y = {k: v for k, v in b[i].to_dict().items() if k not in _ENVELOPE_IGNORED}
        _walk(x, y, [i], False, out)
    return TraceDiff(tuple(out))

"""Reading and writing traces as JSON Lines (``.trace.jsonl``), without I/O.

One event per line, keys in protocol order, compact separators, UTF-8. The line
of an event is the exact byte string that the audit ledger stores as its leaf.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from cra.errors import ProtocolError, TraceError
from cra.protocol.canonical import parse_json
from cra.protocol.validation import validate
from cra.trace.event import TraceEvent

__all__ = ["copy_event", "dumps_event", "dumps_trace", "event_from_dict", "loads_trace"]


def dumps_event(event: TraceEvent) -> str:
    """One event as a JSON line (without the newline)."""
    return json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def copy_event(event: TraceEvent) -> TraceEvent:
    """The event with its own deep copy of the payload, key order kept, so that the
    copy serialises to exactly the same line (and ledger leaf) as the original."""
    return event._replace(payload=json.loads(json.dumps(event.payload, ensure_ascii=False, allow_nan=False)))


def dumps_trace(events: Iterable[TraceEvent]) -> str:
    """A whole trace as JSON Lines, each line ending with a newline."""
    return "".join(dumps_event(e) + "\n" for e in events)


def event_from_dict(data: Any) -> TraceEvent:
    """Validate a TRACE event object against the schema and type it.

    Raises :class:`~cra.errors.ProtocolError` naming the JSON path on failure.
    """
    validate("trace-event", data)
    if type(data["sequence"]) is not int:
        raise ProtocolError("/sequence", "must be an integer, written without a fraction or exponent")
    return TraceEvent(
        data["trace_version"],
        data["event_id"],
        data["trace_id"],
        data["span_id"],
        data.get("parent_span_id"),
        data["session_id"],
        data["sequence"],
        data["timestamp"],
        data["event_type"],
        data["payload"],
        data["event_hash"],
        data["previous_event_hash"],
    )


def loads_trace(text: str) -> list[TraceEvent]:
    """Parse JSON Lines into events. Blank lines are ignored.

    Raises :class:`~cra.errors.TraceError` with the 1-based line, the JSON path
    and the reason for the first line that is not a valid TRACE event.
    """
    events: list[TraceEvent] = []
    # Only "\n" ends a line: JSON strings may hold U+2028 and friends unescaped,
    # which str.splitlines() would treat as line breaks.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        try:
            events.append(event_from_dict(parse_json(line, source=None, error=ProtocolError)))
        except ProtocolError as exc:
            raise TraceError(number, exc.path, exc.reason) from None
    return events

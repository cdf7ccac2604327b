"""Recording one operation's events into a session's hash chain."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cra.runtime.ports import EventStore, IdSource, TraceSink
from cra.runtime.records import Session
from cra.trace.event import TraceEvent, build_event

__all__ = ["SpanRecorder"]


class SpanRecorder:
    """The events of one operation: one span, one timestamp, consecutive in the chain.

    Use it while holding the resolver's lock. After releasing the lock (to run an
    executor), call :meth:`resume` before emitting again: other operations may
    have extended the chain meanwhile.
    """

    __slots__ = ("_events", "_ids", "_parent", "_previous", "_session", "_sinks", "span_id", "stamp")

    def __init__(
        self,
        *,
        events: EventStore,
        ids: IdSource,
        sinks: Sequence[TraceSink],
        session: Session,
        span_id: str,
        parent: str | None,
        stamp: str,
    ) -> None:
        self._events = events
        self._ids = ids
        self._sinks = sinks
        self._session = session
        self.span_id = span_id
        self._parent = parent
        self.stamp = stamp
        self._previous = events.last(session.session_id)

    def resume(self, stamp: str) -> None:
        """Continue after the chain may have moved, at a new timestamp."""
        self._previous = self._events.last(self._session.session_id)
        self.stamp = stamp

    def emit(self, event_type: str, payload: Mapping[str, Any], payload_json: str | None = None) -> TraceEvent:
        """Append an event to the chain and hand it to the sinks.

        The payload must not be changed afterwards: the event hashes it as it is
        now. ``payload_json`` is its canonical JSON when the caller has it.
        """
        event = build_event(
            self._previous,
            event_id=self._ids.new_id(),
            trace_id=self._session.trace_id,
            span_id=self.span_id,
            parent_span_id=self._parent,
            session_id=self._session.session_id,
            timestamp=self.stamp,
            event_type=event_type,
            payload=payload,
            payload_json=payload_json,
        )
        self._events.append(event)
        for sink in self._sinks:
            sink.emit(event)
        self._previous = event
        return event

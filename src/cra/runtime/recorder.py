"""Recording one operation's events into a session's hash chain."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from cra.runtime.ports import EventStore, IdSource, TraceSink
from cra.runtime.records import Session
from cra.trace.event import TraceEvent, build_event
from cra.trace.jsonl import copy_event

__all__ = ["SpanRecorder"]

_log = logging.getLogger("cra.trace")


class SpanRecorder:
    """The events of one operation: one span, one timestamp, consecutive in the chain.

    Use it while holding the resolver's lock. Each event continues the chain as
    the store holds it at that moment, so other operations (an executor calling
    back in, a sink reacting to an event) may interleave their own events.
    Sinks get their own copy of each payload, and a failing sink is logged, not
    raised: the store, not the sink, is the record. The ``journal``, when given,
    collects the events for the audit ledger to seal when the operation ends.
    """

    __slots__ = ("_events", "_ids", "_journal", "_parent", "_session", "_sinks", "span_id", "stamp")

    def __init__(
        self,
        *,
        events: EventStore,
        ids: IdSource,
        sinks: Sequence[TraceSink],
        journal: list[TraceEvent] | None = None,
        session: Session,
        span_id: str,
        parent: str | None,
        stamp: str,
    ) -> None:
        self._events = events
        self._ids = ids
        self._sinks = sinks
        self._journal = journal
        self._session = session
        self.span_id = span_id
        self._parent = parent
        self.stamp = stamp

    def moved(self, events: EventStore, journal: list[TraceEvent] | None) -> SpanRecorder:
        """The same span, recording into other stores (a later operation's)."""
        return SpanRecorder(
            events=events,
            ids=self._ids,
            sinks=self._sinks,
            journal=journal,
            session=self._session,
            span_id=self.span_id,
            parent=self._parent,
            stamp=self.stamp,
        )

    def emit(self, event_type: str, payload: Mapping[str, Any], payload_json: str | None = None) -> TraceEvent:
        """Append an event to the chain and hand it to the sinks.

        The payload must not be changed afterwards: the event hashes it as it is
        now. ``payload_json`` is its canonical JSON when the caller has it.
        """
        event = build_event(
            self._events.last(self._session.session_id),
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
        if self._journal is not None:
            self._journal.append(event)
        if self._sinks:
            for sink in self._sinks:
                try:
                    sink.emit(copy_event(event))
                except Exception:  # noqa: BLE001 - a sink is an export; its failure must not undo the record
                    _log.exception("trace sink %r failed on event %s", sink, event.event_id)
        return event

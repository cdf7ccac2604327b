"""TRACE/1.0 events and their hash.

``event_hash`` is the SHA-256 hex digest of the UTF-8 concatenation of
``trace_version``, ``event_id``, ``trace_id``, ``span_id``, ``parent_span_id``
(empty when null), ``session_id``, ``sequence`` (decimal), ``timestamp``,
``event_type``, ``canonical_json(payload)`` and ``previous_event_hash``.
The timestamp string is hashed and stored exactly as given, never re-rendered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

from cra.errors import ProtocolError
from cra.protocol.canonical import canonical_json

__all__ = [
    "EVENT_TYPES",
    "GENESIS_HASH",
    "TRACE_VERSION",
    "TraceEvent",
    "build_event",
    "compute_event_hash",
    "format_timestamp",
]

TRACE_VERSION: Final = "1.0"
GENESIS_HASH: Final = "0" * 64
EVENT_TYPES: Final = frozenset(
    {
        "session.started",
        "session.ended",
        "carp.request.received",
        "carp.resolution.completed",
        "carp.resolution.cached",
        "action.requested",
        "action.approved",
        "action.denied",
        "action.executed",
        "action.failed",
        "policy.evaluated",
        "policy.violated",
        "context.injected",
        "context.redacted",
        "error.occurred",
    }
)
_FIELDS: Final = (
    "trace_version",
    "event_id",
    "trace_id",
    "span_id",
    "parent_span_id",
    "session_id",
    "sequence",
    "timestamp",
    "event_type",
    "payload",
    "event_hash",
    "previous_event_hash",
)


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds and ``Z``: ``2024-12-28T12:00:00.000000Z``."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class TraceEvent(NamedTuple):
    """One TRACE/1.0 event, exactly as hashed and stored."""

    trace_version: str
    event_id: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    session_id: str
    sequence: int
    timestamp: str
    event_type: str
    payload: Mapping[str, Any]
    event_hash: str
    previous_event_hash: str

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON object, keys in protocol order."""
        return {name: getattr(self, name) for name in _FIELDS}

    def recompute_hash(self) -> str:
        return compute_event_hash(
            self.trace_version,
            self.event_id,
            self.trace_id,
            self.span_id,
            self.parent_span_id,
            self.session_id,
            self.sequence,
            self.timestamp,
            self.event_type,
            self.payload,
            self.previous_event_hash,
        )


def compute_event_hash(
    trace_version: str,
    event_id: str,
    trace_id: str,
    span_id: str,
    parent_span_id: str | None,
    session_id: str,
    sequence: int,
    timestamp: str,
    event_type: str,
    payload: Mapping[str, Any],
    previous_event_hash: str,
    *,
    payload_json: str | None = None,
) -> str:
    """The TRACE/1.0 ``event_hash`` of the given fields.

    ``payload_json`` may carry ``canonical_json(payload)`` when the caller already has it.
    """
    material = "".join(
        (
            trace_version,
            event_id,
            trace_id,
            span_id,
            parent_span_id or "",
            session_id,
            str(sequence),
            timestamp,
            event_type,
            canonical_json(payload) if payload_json is None else payload_json,
            previous_event_hash,
        )
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def build_event(
    previous: TraceEvent | None,
    *,
    event_id: str,
    trace_id: str,
    span_id: str,
    parent_span_id: str | None,
    session_id: str,
    timestamp: str,
    event_type: str,
    payload: Mapping[str, Any],
    payload_json: str | None = None,
) -> TraceEvent:
    """The next event of a chain: sequence and previous hash follow ``previous``.

    ``payload_json``, when given, must be ``canonical_json(payload)``; it saves
    re-encoding a payload the caller has already encoded.
    """
    if event_type not in EVENT_TYPES:
        raise ProtocolError("/event_type", f"{event_type!r} is not a TRACE/1.0 event type")
    if previous is None:
        sequence, prev_hash = 0, GENESIS_HASH
    else:
        if previous.session_id != session_id:
            raise ProtocolError("/session_id", "an event must continue the chain of its own session")
        sequence, prev_hash = previous.sequence + 1, previous.event_hash
    try:
        digest = compute_event_hash(
            TRACE_VERSION,
            event_id,
            trace_id,
            span_id,
            parent_span_id,
            session_id,
            sequence,
            timestamp,
            event_type,
            payload,
            prev_hash,
            payload_json=payload_json,
        )
    except (TypeError, ValueError) as exc:
        raise ProtocolError("/payload", f"payload is not JSON: {exc}") from None
    return TraceEvent(
        TRACE_VERSION,
        event_id,
        trace_id,
        span_id,
        parent_span_id,
        session_id,
        sequence,
        timestamp,
        event_type,
        payload,
        digest,
        prev_hash,
    )

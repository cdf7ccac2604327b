"""Hash-chain verification of one session's events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cra.errors import ChainError
from cra.trace.event import GENESIS_HASH, TraceEvent

__all__ = ["ChainReport", "check_chain", "verify_chain"]


def verify_chain(events: Sequence[TraceEvent]) -> None:
    """Return only if ``events`` form one valid chain; else raise :class:`ChainError`.

    Each event is checked in order for, first, its sequence (``sequence_gap``),
    then its link to the previous event (``chain_broken``), then its own hash
    (``hash_mismatch``). Every event must belong to the first event's session
    (``session_mismatch``). An empty trace proves nothing and is rejected.
    """
    if not events:
        raise ChainError("empty", 0, "the trace has no events")
    session = events[0].session_id
    expected_prev = GENESIS_HASH
    for i, event in enumerate(events):
        if event.session_id != session:
            raise ChainError("session_mismatch", i, f"event belongs to session {event.session_id}, not {session}")
        if type(event.sequence) is not int or event.sequence != i:
            raise ChainError("sequence_gap", i, f"expected sequence {i}, found {event.sequence!r}")
        if event.previous_event_hash != expected_prev:
            raise ChainError(
                "chain_broken", i, f"previous_event_hash is {event.previous_event_hash}, expected {expected_prev}"
            )
        try:
            actual = event.recompute_hash()
        except (TypeError, ValueError) as exc:
            raise ChainError("hash_mismatch", i, f"the event cannot be hashed: {exc}") from None
        if actual != event.event_hash:
            raise ChainError("hash_mismatch", i, f"event_hash is {event.event_hash}, the event hashes to {actual}")
        expected_prev = event.event_hash


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The outcome of :func:`check_chain`, for reports and JSON output."""

    valid: bool
    event_count: int
    error: str | None = None
    index: int | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"valid": self.valid, "error": self.error, "index": self.index}


def check_chain(events: Sequence[TraceEvent]) -> ChainReport:
    """Like :func:`verify_chain`, but returns a report instead of raising."""
    try:
        verify_chain(events)
    except ChainError as exc:
        return ChainReport(False, len(events), exc.kind, exc.index, exc.detail)
    return ChainReport(True, len(events))

"""The runtime's ports: the only ways it reaches the world.

Each has an in-memory implementation in :mod:`cra.runtime.memory` (or the
clock and id modules) for tests and embedded use; adapters supply the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from cra.policy.decision import Charge, LimitBreach
from cra.trace.event import TraceEvent

if TYPE_CHECKING:
    from cra.runtime.approvals import Approval
    from cra.runtime.records import IdempotentCall, ResolutionRecord, Session

__all__ = [
    "ApprovalStore",
    "Clock",
    "CounterStore",
    "EventStore",
    "IdSource",
    "ResolutionStore",
    "SessionStore",
    "Signer",
    "TraceSink",
]


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...


class IdSource(Protocol):
    def new_id(self) -> str:
        """A new UUIDv7 string."""
        ...


class CounterStore(Protocol):
    """Sliding-window counters for rate limits and budgets."""

    def check(self, charges: Sequence[Charge], now: float) -> LimitBreach | None:
        """The first charge that would exceed its limit at ``now``, without consuming."""
        ...

    def consume(self, charges: Sequence[Charge], now: float) -> LimitBreach | None:
        """Atomically take every charge, or none of them and return the breach."""
        ...


class EventStore(Protocol):
    """Where each session's hash chain lives."""

    def append(self, event: TraceEvent) -> None: ...

    def last(self, session_id: str) -> TraceEvent | None: ...

    def events(self, session_id: str) -> list[TraceEvent]: ...


class TraceSink(Protocol):
    """Somewhere events are exported to as they happen (file, HTTP, bus)."""

    def emit(self, event: TraceEvent) -> None: ...


class Signer(Protocol):
    """Signs and verifies approval tickets."""

    @property
    def key_id(self) -> str: ...

    def sign(self, message: bytes) -> str: ...

    def verify(self, message: bytes, signature: str) -> bool: ...


class SessionStore(Protocol):
    def get(self, session_id: str) -> Session | None: ...

    def put(self, session: Session) -> None: ...

    def list(self, tenant_id: str | None = None) -> list[Session]: ...

    def claim_request_id(self, session_id: str, request_id: str) -> bool:
        """Record ``request_id`` for the session; False if it was already used."""
        ...

    def claim_idempotency_key(self, session_id: str, key: str, record: IdempotentCall) -> IdempotentCall | None:
        """Reserve ``key`` for ``record`` atomically; if the key is taken, return its record instead."""
        ...

    def complete_idempotency_key(self, session_id: str, key: str, response: Mapping[str, Any]) -> None:
        """Store the response of the call that reserved ``key``."""
        ...

    def release_idempotency_key(self, session_id: str, key: str) -> None:
        """Forget a reservation whose call ended before running (denied, or waiting for approval)."""
        ...


class ResolutionStore(Protocol):
    def get(self, resolution_id: str) -> ResolutionRecord | None: ...

    def put(self, record: ResolutionRecord) -> None: ...


class ApprovalStore(Protocol):
    def get(self, approval_id: str) -> Approval | None: ...

    def put(self, approval: Approval) -> None: ...

    def list(self, *, session_id: str | None = None, status: str | None = None) -> list[Approval]: ...

    def redeem(self, approval_id: str) -> bool:
        """Atomically turn an ``approved`` approval into ``used``; False if it was not ``approved``."""
        ...

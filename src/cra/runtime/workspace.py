"""One operation's view of durable state, for a resolver whose state lives elsewhere.

A service keeps sessions, chains, resolutions and approvals in a database, not
in the process. Before each operation it loads what the operation can touch
into a :class:`Snapshot`; the resolver runs against a :class:`Workspace` that
serves those reads and records every write; the service then commits the
:class:`Changes` in one transaction. A commit that finds the database moved on
(another writer appended to the chain, used the request id, decided the
approval) fails as a whole, and the operation is run again on a new snapshot.

The workspace implements the resolver's session, event, resolution and
approval stores, and its ledger port: sealed events and their attestation
claims are handed back with the changes, for the service to seal once they are
committed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cra.runtime.approvals import Approval
from cra.runtime.records import AttestationClaim, IdempotentCall, ResolutionRecord, RunningCall, Session
from cra.trace.event import TraceEvent

__all__ = ["Changes", "Snapshot", "Workspace"]


@dataclass(slots=True)
class Snapshot:
    """The durable state one operation may read: loaded by the service beforehand."""

    sessions: dict[str, Session] = field(default_factory=dict)
    #: The last event of each loaded session's chain.
    tails: dict[str, TraceEvent] = field(default_factory=dict)
    #: Whole chains, for the operations that read them (ending a session counts its calls).
    chains: dict[str, list[TraceEvent]] = field(default_factory=dict)
    resolutions: dict[str, ResolutionRecord] = field(default_factory=dict)
    approvals: dict[str, Approval] = field(default_factory=dict)
    #: (session id, request id) pairs already used.
    request_ids: set[tuple[str, str]] = field(default_factory=set)
    idempotency: dict[tuple[str, str], IdempotentCall] = field(default_factory=dict)
    #: The execution ids of each session's running calls, for the operations that read them (ending a session).
    running: dict[str, set[str]] = field(default_factory=dict)


@dataclass(slots=True)
class Changes:
    """What one operation wrote, to be committed atomically."""

    #: Sessions created (``created``) or changed, with the status they had before (``None`` if new).
    sessions: dict[str, tuple[Session, str | None]] = field(default_factory=dict)
    events: list[TraceEvent] = field(default_factory=list)
    resolutions: list[ResolutionRecord] = field(default_factory=list)
    #: Approvals written, with the status they had in the snapshot (``None`` if new).
    approvals: dict[str, tuple[Approval, str | None]] = field(default_factory=dict)
    request_ids: list[tuple[str, str]] = field(default_factory=list)
    #: Idempotency records: new ones, completed ones, and released ones (``None``).
    idempotency_new: dict[tuple[str, str], IdempotentCall] = field(default_factory=dict)
    idempotency_done: dict[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    idempotency_released: set[tuple[str, str]] = field(default_factory=set)
    #: Calls whose executor is about to run, by execution id; and the execution ids of calls that finished.
    calls_started: dict[str, RunningCall] = field(default_factory=dict)
    calls_finished: set[str] = field(default_factory=set)
    #: Attestation claims on this operation's events, by event id.
    claims: dict[str, AttestationClaim] = field(default_factory=dict)
    #: Whether the operation asked for a signed checkpoint (a session ended).
    checkpoint: bool = False

    @property
    def empty(self) -> bool:
        return not (
            self.sessions
            or self.events
            or self.resolutions
            or self.approvals
            or self.request_ids
            or self.idempotency_new
            or self.idempotency_done
            or self.idempotency_released
            or self.calls_started
            or self.calls_finished
        )


class Workspace:
    """The resolver's stores and ledger over one :class:`Snapshot` at a time.

    Give the resolver ``sessions=ws.sessions, events=ws.events,
    resolutions=ws.resolutions, approvals=ws.approvals, ledger=ws.ledger``.
    Not thread-safe: one operation runs against it at a time, between
    :meth:`load` and :meth:`take`.
    """

    def __init__(self) -> None:
        self.snap = Snapshot()
        self.changes = Changes()
        self.sessions = _Sessions(self)
        self.events = _Events(self)
        self.resolutions = _Resolutions(self)
        self.approvals = _Approvals(self)
        self.ledger = _Ledger(self)

    def load(self, snapshot: Snapshot) -> None:
        """Start an operation on ``snapshot``; anything not taken is discarded."""
        self.snap = snapshot
        self.changes = Changes()

    def take(self) -> Changes:
        """The operation's writes; the workspace is empty afterwards."""
        changes = self.changes
        self.snap = Snapshot()
        self.changes = Changes()
        return changes


class _Sessions:
    __slots__ = ("_ws",)

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def get(self, session_id: str) -> Session | None:
        return self._ws.snap.sessions.get(session_id)

    def put(self, session: Session) -> None:
        snap, changes = self._ws.snap, self._ws.changes
        before = snap.sessions.get(session.session_id)
        prior = changes.sessions.get(session.session_id)
        status = prior[1] if prior is not None else (before.status if before is not None else None)
        snap.sessions[session.session_id] = session
        changes.sessions[session.session_id] = (session, status)

    def list(self, tenant_id: str | None = None) -> list[Session]:
        return [s for s in self._ws.snap.sessions.values() if tenant_id is None or s.tenant_id == tenant_id]

    def claim_request_id(self, session_id: str, request_id: str) -> bool:
        pair = (session_id, request_id)
        if pair in self._ws.snap.request_ids:
            return False
        self._ws.snap.request_ids.add(pair)
        self._ws.changes.request_ids.append(pair)
        return True

    def claim_idempotency_key(self, session_id: str, key: str, record: IdempotentCall) -> IdempotentCall | None:
        snap, changes = self._ws.snap, self._ws.changes
        pair = (session_id, key)
        existing = snap.idempotency.get(pair)
        if existing is not None:
            return existing
        snap.idempotency[pair] = record
        # A key released earlier in this operation stays released: the commit deletes
        # the stored record before it inserts this one.
        changes.idempotency_new[pair] = record
        return None

    def complete_idempotency_key(self, session_id: str, key: str, response: Mapping[str, Any]) -> None:
        snap, changes = self._ws.snap, self._ws.changes
        pair = (session_id, key)
        snap.idempotency[pair] = replace(snap.idempotency[pair], response=response)
        if pair in changes.idempotency_new:
            changes.idempotency_new[pair] = snap.idempotency[pair]
        else:
            changes.idempotency_done[pair] = response

    def release_idempotency_key(self, session_id: str, key: str) -> None:
        snap, changes = self._ws.snap, self._ws.changes
        pair = (session_id, key)
        snap.idempotency.pop(pair, None)
        if changes.idempotency_new.pop(pair, None) is None:
            changes.idempotency_released.add(pair)

    def start_call(self, call: RunningCall) -> None:
        self._ws.changes.calls_started[call.execution_id] = call
        running = self._ws.snap.running.get(call.session_id)
        if running is not None:
            running.add(call.execution_id)

    def finish_call(self, session_id: str, execution_id: str) -> None:
        changes = self._ws.changes
        if changes.calls_started.pop(execution_id, None) is None:
            changes.calls_finished.add(execution_id)
        self._ws.snap.running.get(session_id, set()).discard(execution_id)

    def running_calls(self, session_id: str) -> int:
        running = self._ws.snap.running.get(session_id)
        if running is None:
            raise LookupError(f"the running calls of session {session_id} were not loaded for this operation")
        return len(running)


class _Events:
    __slots__ = ("_ws",)

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def append(self, event: TraceEvent) -> None:
        snap = self._ws.snap
        tail = snap.tails.get(event.session_id)
        expected = 0 if tail is None else tail.sequence + 1
        if event.sequence != expected:
            raise ValueError(f"event {event.sequence} does not continue a chain whose next event is {expected}")
        snap.tails[event.session_id] = event
        chain = snap.chains.get(event.session_id)
        if chain is not None:
            chain.append(event)
        self._ws.changes.events.append(event)

    def last(self, session_id: str) -> TraceEvent | None:
        return self._ws.snap.tails.get(session_id)

    def events(self, session_id: str) -> list[TraceEvent]:
        chain = self._ws.snap.chains.get(session_id)
        if chain is None:
            raise LookupError(f"the chain of session {session_id} was not loaded for this operation")
        return list(chain)


class _Resolutions:
    __slots__ = ("_ws",)

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def get(self, resolution_id: str) -> ResolutionRecord | None:
        return self._ws.snap.resolutions.get(resolution_id)

    def put(self, record: ResolutionRecord) -> None:
        self._ws.snap.resolutions[record.resolution_id] = record
        self._ws.changes.resolutions.append(record)


class _Approvals:
    __slots__ = ("_ws",)

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def get(self, approval_id: str) -> Approval | None:
        return self._ws.snap.approvals.get(approval_id)

    def put(self, approval: Approval) -> None:
        snap, changes = self._ws.snap, self._ws.changes
        aid = approval.approval_id
        prior = changes.approvals.get(aid)
        before = snap.approvals.get(aid)
        status = prior[1] if prior is not None else (before.status if before is not None else None)
        snap.approvals[aid] = approval
        changes.approvals[aid] = (approval, status)

    def list(self, *, session_id: str | None = None, status: str | None = None) -> list[Approval]:
        return [
            a
            for a in self._ws.snap.approvals.values()
            if (session_id is None or a.session_id == session_id) and (status is None or a.status == status)
        ]

    def redeem(self, approval_id: str) -> bool:
        approval = self._ws.snap.approvals.get(approval_id)
        if approval is None or approval.status != "approved":
            return False
        self.put(approval.decided("used"))
        return True


class _Ledger:
    """Defers sealing: the claims go with the changes, sealed once they are committed."""

    __slots__ = ("_ws",)

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def append(self, events: Sequence[TraceEvent], claims: Sequence[AttestationClaim] = ()) -> None:
        for claim in claims:
            self._ws.changes.claims[claim.event.event_id] = claim

    def checkpoint(self) -> None:
        self._ws.changes.checkpoint = True

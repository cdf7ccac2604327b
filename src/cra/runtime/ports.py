"""The runtime's ports: the only ways it reaches the world.

Each has an in-memory implementation in :mod:`cra.runtime.memory` (or the
clock and id modules) for tests and embedded use; adapters supply the rest.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from cra.policy.decision import Charge, LimitBreach
from cra.trace.event import TraceEvent

if TYPE_CHECKING:
    from cra.ledger.note import NoteSigner, NoteVerifier  # annotations only: the portable runtime has no ledger
    from cra.runtime.approvals import Approval
    from cra.runtime.records import (
        AtlasRecord,
        AttestationClaim,
        DecisionQuery,
        DecisionRecord,
        IdempotentCall,
        ResolutionRecord,
        RunningCall,
        Session,
        SnapshotKeys,
    )
    from cra.runtime.workspace import Changes, Snapshot

__all__ = [
    "ApprovalStore",
    "AtlasDigests",
    "Clock",
    "CounterStore",
    "EventStore",
    "IdSource",
    "KeySource",
    "LedgerEntry",
    "LedgerStore",
    "ResolutionStore",
    "Sealer",
    "SessionStore",
    "Signer",
    "StateStore",
    "StoredAttestation",
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

    def release(self, charges: Sequence[Charge], now: float) -> None:
        """Give back what a successful ``consume(charges, now)`` took, for a call that was not kept."""
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

    def start_call(self, call: RunningCall) -> None:
        """Record that a call's executor is about to run. It counts as running until :meth:`finish_call`."""
        ...

    def finish_call(self, session_id: str, execution_id: str) -> None:
        """Record that a running call's outcome is recorded."""
        ...

    def running_calls(self, session_id: str) -> int:
        """How many of the session's calls are running, in this process or any other."""
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


class Sealer(Protocol):
    """Where the resolver seals each operation's events: the audit ledger, or a
    service that seals them once they are committed (see :mod:`cra.runtime.workspace`)."""

    def append(self, events: Sequence[TraceEvent], claims: Sequence[AttestationClaim] = ()) -> object:
        """Seal these events, with attestations of the decisions ``claims`` name."""
        ...

    def checkpoint(self) -> object:
        """Sign a checkpoint of everything sealed so far."""
        ...


class LedgerEntry(NamedTuple):
    """One leaf of the audit log: a TRACE event's exact bytes, with its ids for lookup."""

    event_id: str
    session_id: str
    data: bytes


class StoredAttestation(NamedTuple):
    attestation_id: str
    log_index: int
    session_id: str
    note: str


class KeySource(Protocol):
    """Where the log's keys live, for a ledger that must notice a rotation made by another process."""

    def changed(self) -> tuple[Sequence[NoteSigner], Sequence[NoteVerifier]] | None:
        """The signing keys (primary first) and the retired verifiers, if they changed since the last
        call; ``None`` if not."""
        ...


class LedgerStore(Protocol):
    """Durable storage of one append-only Merkle log (see :mod:`cra.ledger.merkle`).

    ``append`` is the only write to entries and hashes, and it is atomic and
    durable: when it returns, everything it was given survives a crash; when it
    raises, none of it was stored.
    """

    def size(self) -> int: ...

    def append(
        self,
        start: int,
        entries: Sequence[LedgerEntry],
        hashes: Sequence[tuple[int, bytes]],
        attestations: Sequence[StoredAttestation] = (),
        checkpoint: tuple[int, str] | None = None,
    ) -> None:
        """Store ``entries`` at indexes ``start``… with the Merkle hashes they complete,
        their attestations and optionally a checkpoint, all or nothing.

        Raises :class:`~cra.errors.LedgerConflict` when the log's size is no longer
        ``start`` or an event id is already logged.
        """
        ...

    def hashes(self, indexes: Sequence[int]) -> dict[int, bytes]:
        """The stored hashes at these stored indexes (missing ones are left out)."""
        ...

    def entries(self, start: int, stop: int) -> list[LedgerEntry]:
        """The entries at indexes ``start`` to ``stop - 1``, in order."""
        ...

    def find(self, event_ids: Sequence[str]) -> dict[str, int]:
        """The log index of each of these event ids that is logged."""
        ...

    def session(self, session_id: str) -> list[int]:
        """The log indexes of a session's events, in log order."""
        ...

    def put_checkpoint(self, size: int, note: str) -> None: ...

    def checkpoint(self, size: int | None = None) -> tuple[int, str] | None:
        """The newest signed checkpoint, or the one at exactly ``size``."""
        ...

    def checkpoints(self) -> list[tuple[int, str]]:
        """Every stored checkpoint, oldest first."""
        ...

    def attestation(self, attestation_id: str) -> StoredAttestation | None: ...

    def attestations(self, session_id: str) -> list[StoredAttestation]: ...

    def close(self) -> None:
        """Release the store's resources; it is not used afterwards."""
        ...


class AtlasDigests(Protocol):
    """A cache of each tenant's atlas digests, shared by the service's processes.

    ``get`` answers ``None`` when it does not know (read the state store, then ``put``);
    ``invalidate`` after a change makes every process read the store again.
    """

    async def get(self, tenant_id: str) -> dict[str, str] | None: ...

    async def put(self, tenant_id: str, digests: Mapping[str, str]) -> None: ...

    async def invalidate(self, tenant_id: str) -> None: ...


class StateStore(Protocol):
    """The service's durable state (async): what :class:`~cra.runtime.service.GovernanceService`
    reads and commits. Commits are atomic and raise :class:`~cra.errors.ConflictError`
    when they lose a race; reads are confined to one tenant."""

    #: How long a running call's lease lasts unless its process renews it.
    call_lease_seconds: float

    async def snapshot(self, keys: SnapshotKeys) -> Snapshot: ...

    async def commit(self, changes: Changes) -> None: ...

    async def renew_calls(self, execution_ids: Collection[str]) -> int:
        """Extend the leases of these calls, which this process runs; returns how many it holds."""
        ...

    async def take_over_lost_calls(self, limit: int = 100) -> list[tuple[str, RunningCall]]:
        """Lease to this process the running calls whose owner's lease ran out, with their tenants."""
        ...

    async def unsealed(self, limit: int = 10_000) -> list[tuple[int, LedgerEntry, AttestationClaim | None]]:
        """Committed events not yet sealed into the ledger, in insertion order, as ledger entries
        (the exact bytes of each event's line), with their claims."""
        ...

    async def mark_sealed(self, row_ids: Sequence[int]) -> None: ...

    async def session(self, tenant_id: str, session_id: str) -> Session | None: ...

    async def sessions(
        self,
        tenant_id: str,
        *,
        agent_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Session], int]: ...

    async def events(
        self,
        tenant_id: str,
        session_id: str,
        *,
        event_type: str | None = None,
        since_sequence: int | None = None,
        limit: int | None = None,
    ) -> list[TraceEvent]: ...

    async def approval(self, tenant_id: str, approval_id: str) -> Approval | None: ...

    async def approvals(
        self,
        tenant_id: str,
        *,
        status: str | None = None,
        session_id: str | None = None,
        agent_id: str | None = None,
        action_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Approval], int]: ...

    async def decisions(self, query: DecisionQuery) -> tuple[list[DecisionRecord], int]: ...

    async def report_rows(
        self, tenant_id: str, *, since: str | None = None, until: str | None = None, limit: int | None = None
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]: ...

    async def atlases(self, tenant_id: str) -> list[AtlasRecord]: ...

    async def atlas_digests(self, tenant_id: str) -> dict[str, str]: ...

    async def put_atlas(self, record: AtlasRecord, *, replace: bool) -> None: ...

    async def delete_atlas(self, tenant_id: str, atlas_id: str) -> bool: ...

    async def close(self) -> None: ...

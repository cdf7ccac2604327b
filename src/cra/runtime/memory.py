"""In-memory implementations of the runtime's ports."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from cra.errors import LedgerConflict
from cra.policy.decision import Charge, LimitBreach
from cra.runtime.approvals import Approval
from cra.runtime.ports import LedgerEntry, StoredAttestation
from cra.runtime.records import IdempotentCall, ResolutionRecord, RunningCall, Session
from cra.trace.event import TraceEvent

__all__ = [
    "HmacSigner",
    "MemoryApprovals",
    "MemoryCounters",
    "MemoryEventStore",
    "MemoryLedgerStore",
    "MemoryResolutions",
    "MemorySessions",
    "MemorySink",
]


class MemoryCounters:
    """Exact sliding-window counters, kept per key, safe across threads.

    Keys whose windows have emptied are dropped every ``sweep_every`` calls, so the
    counters of ended sessions do not pile up in a long-running process.
    """

    def __init__(self, *, sweep_every: int = 10_000) -> None:
        self._hits: dict[str, deque[tuple[float, int | float]]] = {}
        self._windows: dict[str, int] = {}
        self._lock = threading.Lock()
        self._sweep_every = sweep_every
        self._calls = 0

    def __len__(self) -> int:
        """How many keys hold counts."""
        return len(self._hits)

    def _sweep(self, now: float) -> None:
        self._calls += 1
        if self._calls % self._sweep_every:
            return
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1][0] <= now - self._windows[k]]:
            del self._hits[key], self._windows[key]

    def _window(self, key: str, window: int, now: float) -> deque[tuple[float, int | float]]:
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
        self._windows[key] = max(window, self._windows.get(key, 0))
        horizon = now - window
        while hits and hits[0][0] <= horizon:
            hits.popleft()
        return hits

    def _breach(self, charge: Charge, now: float) -> LimitBreach | None:
        hits = self._window(charge.key, charge.window_seconds, now)
        used = sum(amount for _, amount in hits)
        if charge.amount > charge.limit:  # before any arithmetic: the amount may be huge
            return LimitBreach(charge, used, None)
        if used + charge.amount <= charge.limit:
            return None
        # The earliest moment enough of the window has expired for this charge to fit.
        freed = 0.0
        wait = float(charge.window_seconds)
        for ts, amount in hits:
            freed += amount
            if used - freed + charge.amount <= charge.limit:
                wait = ts + charge.window_seconds - now
                break
        return LimitBreach(charge, used, max(1, int(-(-wait // 1))))

    def _first_breach(self, charges: Sequence[Charge], now: float) -> LimitBreach | None:
        return next((b for b in (self._breach(c, now) for c in charges) if b is not None), None)

    def check(self, charges: Sequence[Charge], now: float) -> LimitBreach | None:
        with self._lock:
            self._sweep(now)
            return self._first_breach(charges, now)

    def consume(self, charges: Sequence[Charge], now: float) -> LimitBreach | None:
        with self._lock:
            self._sweep(now)
            breach = self._first_breach(charges, now)
            if breach is None:
                for charge in charges:
                    self._hits[charge.key].append((now, charge.amount))
            return breach

    def release(self, charges: Sequence[Charge], now: float) -> None:
        with self._lock:
            for charge in charges:
                hits = self._hits.get(charge.key)
                if hits is not None and (now, charge.amount) in hits:
                    hits.remove((now, charge.amount))


class MemoryEventStore:
    """Every session's events in a list, in order."""

    def __init__(self) -> None:
        self._events: dict[str, list[TraceEvent]] = {}

    def append(self, event: TraceEvent) -> None:
        chain = self._events.setdefault(event.session_id, [])
        if event.sequence != len(chain):
            raise ValueError(f"event {event.sequence} does not continue a chain of {len(chain)} events")
        chain.append(event)

    def last(self, session_id: str) -> TraceEvent | None:
        chain = self._events.get(session_id)
        return chain[-1] if chain else None

    def events(self, session_id: str) -> list[TraceEvent]:
        return list(self._events.get(session_id, ()))


class MemorySink:
    """Collects emitted events; useful in tests and for streaming to a caller."""

    def __init__(self) -> None:
        self.events: list[TraceEvent] = []

    def emit(self, event: TraceEvent) -> None:
        self.events.append(event)


class HmacSigner:
    """HMAC-SHA256 signatures with a secret key (random unless one is given)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)
        if len(self._key) < 16:
            raise ValueError("an HMAC key needs at least 16 bytes")
        self._key_id = hashlib.sha256(b"cra-ticket-key\n" + self._key).hexdigest()[:8]

    @property
    def key_id(self) -> str:
        return self._key_id

    def sign(self, message: bytes) -> str:
        mac = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def verify(self, message: bytes, signature: str) -> bool:
        return hmac.compare_digest(self.sign(message), signature)


class MemorySessions:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._request_ids: dict[str, set[str]] = {}
        self._idempotent: dict[tuple[str, str], IdempotentCall] = {}
        self._running: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def put(self, session: Session) -> None:
        self._sessions[session.session_id] = session

    def list(self, tenant_id: str | None = None) -> list[Session]:
        return [s for s in self._sessions.values() if tenant_id is None or s.tenant_id == tenant_id]

    def claim_request_id(self, session_id: str, request_id: str) -> bool:
        with self._lock:
            seen = self._request_ids.setdefault(session_id, set())
            if request_id in seen:
                return False
            seen.add(request_id)
            return True

    def claim_idempotency_key(self, session_id: str, key: str, record: IdempotentCall) -> IdempotentCall | None:
        with self._lock:
            existing = self._idempotent.get((session_id, key))
            if existing is None:
                self._idempotent[(session_id, key)] = record
            return existing

    def release_idempotency_key(self, session_id: str, key: str) -> None:
        with self._lock:
            self._idempotent.pop((session_id, key), None)

    def complete_idempotency_key(self, session_id: str, key: str, response: Mapping[str, Any]) -> None:
        with self._lock:
            record = self._idempotent[(session_id, key)]
            self._idempotent[(session_id, key)] = replace(record, response=response)

    def start_call(self, call: RunningCall) -> None:
        with self._lock:
            self._running.setdefault(call.session_id, set()).add(call.execution_id)

    def finish_call(self, session_id: str, execution_id: str) -> None:
        with self._lock:
            running = self._running.get(session_id, set())
            running.discard(execution_id)
            if not running:
                self._running.pop(session_id, None)

    def running_calls(self, session_id: str) -> int:
        return len(self._running.get(session_id, ()))


class MemoryResolutions:
    def __init__(self) -> None:
        self._records: dict[str, ResolutionRecord] = {}

    def get(self, resolution_id: str) -> ResolutionRecord | None:
        return self._records.get(resolution_id)

    def put(self, record: ResolutionRecord) -> None:
        self._records[record.resolution_id] = record


class MemoryApprovals:
    def __init__(self) -> None:
        self._approvals: dict[str, Approval] = {}
        self._lock = threading.Lock()

    def get(self, approval_id: str) -> Approval | None:
        return self._approvals.get(approval_id)

    def put(self, approval: Approval) -> None:
        self._approvals[approval.approval_id] = approval

    def redeem(self, approval_id: str) -> bool:
        with self._lock:
            approval = self._approvals.get(approval_id)
            if approval is None or approval.status != "approved":
                return False
            self._approvals[approval_id] = approval.decided("used")
            return True

    def list(self, *, session_id: str | None = None, status: str | None = None) -> list[Approval]:
        return [
            a
            for a in self._approvals.values()
            if (session_id is None or a.session_id == session_id) and (status is None or a.status == status)
        ]


class MemoryLedgerStore:
    """An audit log kept in memory: for tests and for embedding without a data directory."""

    def __init__(self) -> None:
        self._entries: list[LedgerEntry] = []
        self._hashes: list[bytes] = []
        self._ids: dict[str, int] = {}
        self._sessions: dict[str, list[int]] = {}
        self._checkpoints: dict[int, str] = {}
        self._attestations: dict[str, StoredAttestation] = {}
        self._lock = threading.Lock()

    def size(self) -> int:
        return len(self._entries)

    def append(
        self,
        start: int,
        entries: Sequence[LedgerEntry],
        hashes: Sequence[tuple[int, bytes]],
        attestations: Sequence[StoredAttestation] = (),
        checkpoint: tuple[int, str] | None = None,
    ) -> None:
        with self._lock:
            if start != len(self._entries):
                raise LedgerConflict(f"the log has {len(self._entries)} entries, not {start}")
            ids = [e.event_id for e in entries]
            if len(set(ids)) != len(ids) or any(i in self._ids for i in ids):
                raise LedgerConflict("an event id in the batch is already logged")
            if [i for i, _ in hashes] != list(range(len(self._hashes), len(self._hashes) + len(hashes))):
                raise LedgerConflict("the Merkle hashes do not continue the stored sequence")
            for offset, entry in enumerate(entries):
                self._ids[entry.event_id] = start + offset
                self._sessions.setdefault(entry.session_id, []).append(start + offset)
            self._entries.extend(entries)
            self._hashes.extend(h for _, h in hashes)
            for att in attestations:
                self._attestations[att.attestation_id] = att
            if checkpoint is not None:
                self._checkpoints[checkpoint[0]] = checkpoint[1]

    def hashes(self, indexes: Sequence[int]) -> dict[int, bytes]:
        n = len(self._hashes)
        return {i: self._hashes[i] for i in indexes if 0 <= i < n}

    def entries(self, start: int, stop: int) -> list[LedgerEntry]:
        return self._entries[max(start, 0) : max(stop, 0)]

    def find(self, event_ids: Sequence[str]) -> dict[str, int]:
        return {i: self._ids[i] for i in event_ids if i in self._ids}

    def session(self, session_id: str) -> list[int]:
        return list(self._sessions.get(session_id, ()))

    def put_checkpoint(self, size: int, note: str) -> None:
        with self._lock:
            self._checkpoints[size] = note

    def checkpoint(self, size: int | None = None) -> tuple[int, str] | None:
        if size is None:
            if not self._checkpoints:
                return None
            size = max(self._checkpoints)
        note = self._checkpoints.get(size)
        return None if note is None else (size, note)

    def checkpoints(self) -> list[tuple[int, str]]:
        return sorted(self._checkpoints.items())

    def attestation(self, attestation_id: str) -> StoredAttestation | None:
        return self._attestations.get(attestation_id)

    def attestations(self, session_id: str) -> list[StoredAttestation]:
        return sorted((a for a in self._attestations.values() if a.session_id == session_id), key=lambda a: a.log_index)

    def close(self) -> None:
        """Nothing to release."""

"""The audit ledger as the runtime uses it: append events, sign checkpoints, prove.

:class:`AuditLedger` keeps the right edge of the Merkle tree in memory (O(log n))
and writes each batch of entries, the hashes they complete, their attestations
and any checkpoint that falls due to its :class:`~cra.runtime.ports.LedgerStore`
in one atomic, durable append. A checkpoint is signed when ``checkpoint_every``
entries or ``checkpoint_interval`` seconds have passed since the last one (checked
as entries arrive), and whenever a caller asks for one.

Several processes may append to one store: an append that finds the log grown
by another writer reloads the edge and tries again, and an event id that is
already logged with the same bytes is not logged twice.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from cra.errors import LedgerConflict, LedgerError, NotFoundError, ProofError, TraceError
from cra.ledger.attestation import Attestation
from cra.ledger.bundle import Bundle, BundleEntry, ConsistencyProof, SessionStatement
from cra.ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from cra.ledger.merkle import CompactRange, Plan, assemble, consistency_plan, inclusion_plan, leaf_hash
from cra.ledger.note import NoteSigner, NoteVerifier
from cra.ledger.tlog_proof import TlogProof
from cra.runtime.clock import SystemClock
from cra.runtime.ports import Clock, KeySource, LedgerEntry, LedgerStore, StoredAttestation
from cra.runtime.records import AttestationClaim
from cra.trace.event import TraceEvent
from cra.trace.jsonl import dumps_event, loads_trace

__all__ = ["AuditLedger", "AuditReport", "Evidence", "entry_of"]

_RETRIES = 5


@dataclass(frozen=True, slots=True)
class Evidence:
    """An attestation with what verifies it offline: the event's exact bytes and a tlog-proof."""

    attestation: str
    entry: bytes
    proof: str


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The outcome of recomputing a whole stored log."""

    size: int
    root: bytes
    checkpoints: int


def entry_of(event: TraceEvent) -> LedgerEntry:
    """An event's leaf: its exact JSON line (see :func:`cra.trace.jsonl.dumps_event`)."""
    return LedgerEntry(event.event_id, event.session_id, dumps_event(event).encode())


class AuditLedger:
    """One signed, append-only transparency log over TRACE events."""

    def __init__(
        self,
        store: LedgerStore,
        signers: Sequence[NoteSigner],
        *,
        origin: str,
        clock: Clock | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 1.0,
        retired: Sequence[NoteVerifier] = (),
        keys: KeySource | None = None,
    ) -> None:
        """``keys``, when given, is asked before every signature whether the keys changed (a
        ``cra keys rotate`` run beside a service), so the log always signs with the current ones."""
        if not signers:
            raise LedgerError("the ledger needs at least one signing key")
        if checkpoint_every < 1 or checkpoint_interval <= 0:
            raise LedgerError("checkpoint_every and checkpoint_interval must be positive")
        self._store = store
        self._keys = keys
        self._rekeyed = False  # the keys changed since the newest stored checkpoint was signed
        self._signers = tuple(signers)
        self.origin = origin
        self._clock: Clock = clock or SystemClock()
        self._every = checkpoint_every
        self._interval = checkpoint_interval
        self.verifiers: tuple[NoteVerifier, ...] = (*(s.verifier for s in self._signers), *retired)
        self._lock = threading.RLock()
        self._tree = CompactRange()
        self._signed_size = 0
        self._signed_at = 0.0
        self._opened: tuple[Checkpoint, str] | None = None  # the last checkpoint whose signature was checked
        self._resume()

    def _refresh(self) -> None:
        """Catch up with entries another writer appended to the same store."""
        if self._store.size() != self._tree.size:
            self._resume()

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def _resume(self) -> None:
        """Load the tree's right edge and the newest checkpoint from the store."""
        size = self._store.size()
        self._tree = CompactRange(size, self._read(CompactRange.plan(size)))
        latest = self._store.checkpoint()
        if latest is not None:
            checkpoint = open_checkpoint(latest[1], self.verifiers, origin=self.origin)
            if checkpoint.size > size or (checkpoint.size == size and checkpoint.root != self._tree.root()):
                raise LedgerError(f"the stored log does not match its newest checkpoint (size {checkpoint.size})")
        self._signed_size = latest[0] if latest is not None else 0
        self._signed_at = self._now()

    def close(self) -> None:
        """Close the store."""
        with self._lock:
            self._store.close()

    @property
    def size(self) -> int:
        with self._lock:
            return self._tree.size

    def root(self) -> bytes:
        with self._lock:
            return self._tree.root()

    # -- appending ------------------------------------------------------------

    def append(self, events: Sequence[TraceEvent], claims: Sequence[AttestationClaim] = ()) -> dict[str, int]:
        """Log these events (and attest these decisions); returns each event id's log index."""
        return self.append_entries([entry_of(e) for e in events], claims)

    def append_entries(self, entries: Sequence[LedgerEntry], claims: Sequence[AttestationClaim] = ()) -> dict[str, int]:
        """Log these entries durably, in order, skipping any already logged with the same
        bytes; returns each event id's log index. An event id logged with other bytes is
        refused, and then nothing of the batch is logged."""
        ids = [e.event_id for e in entries]
        if len(set(ids)) != len(ids):
            raise LedgerError("the batch holds the same event id twice")
        logged: dict[str, int] = {}
        with self._lock:
            for _ in range(_RETRIES):
                try:
                    return {**logged, **self._append(entries, claims)}
                except LedgerConflict:
                    self._resume()
                    logged.update(self._logged(entries))
                    entries = [e for e in entries if e.event_id not in logged]
                    claims = [c for c in claims if c.event.event_id not in logged]
                    if not entries:
                        return logged
            raise LedgerError(f"the log kept growing under this append; gave up after {_RETRIES} tries")

    def _logged(self, entries: Sequence[LedgerEntry]) -> dict[str, int]:
        """Which of these entries the log already holds, refusing any with other bytes."""
        found = self._store.find([e.event_id for e in entries])
        for entry in entries:
            index = found.get(entry.event_id)
            if index is not None:
                stored = self._store.entries(index, index + 1)
                if not stored or stored[0].data != entry.data:
                    raise LedgerError(f"event {entry.event_id} is already logged at index {index} with other bytes")
        return found

    def _append(self, entries: Sequence[LedgerEntry], claims: Sequence[AttestationClaim]) -> dict[str, int]:
        start = self._tree.size
        tree = self._tree.copy()
        hashes: list[tuple[int, bytes]] = []
        leaves: dict[str, tuple[int, bytes, LedgerEntry]] = {}
        for offset, entry in enumerate(entries):
            leaf = leaf_hash(entry.data)
            hashes.extend(tree.append(leaf))
            leaves[entry.event_id] = (start + offset, leaf, entry)
        attestations = [self._attest(claim, leaves) for claim in claims]
        checkpoint = None
        now = self._now()
        if tree.size - self._signed_size >= self._every or (
            tree.size > self._signed_size and now - self._signed_at >= self._interval
        ):
            checkpoint = (tree.size, self._sign(tree))
        self._store.append(start, entries, hashes, attestations, checkpoint)
        self._tree = tree
        if checkpoint is not None:
            self._signed_size, self._signed_at = checkpoint[0], now
        return {event_id: index for event_id, (index, _, _) in leaves.items()}

    def _attest(self, claim: AttestationClaim, leaves: dict[str, tuple[int, bytes, LedgerEntry]]) -> StoredAttestation:
        event = claim.event
        if event.event_id not in leaves:
            raise LedgerError(f"an attestation names event {event.event_id}, which is not in the batch")
        index, leaf, entry = leaves[event.event_id]
        attestation = Attestation(
            attestation_id=event.event_id,
            origin=self.origin,
            log_index=index,
            leaf_hash=leaf,
            session_id=entry.session_id,
            event_type=event.event_type,
            decision=claim.decision,
            action_id=claim.action_id,
            input_hash=claim.input_hash,
            atlases=claim.atlases,
            timestamp=event.timestamp,
        )
        self._reload_keys()
        return StoredAttestation(event.event_id, index, entry.session_id, attestation.sign(self._signers))

    def _reload_keys(self) -> None:
        """Take up keys that changed since the last signature (called under the lock)."""
        fresh = None if self._keys is None else self._keys.changed()
        if fresh is None:
            return
        signers, retired = fresh
        if not signers:
            raise LedgerError("the keyring has no active signing key")
        self._signers = tuple(signers)
        self.verifiers = (*(s.verifier for s in self._signers), *retired)
        self._rekeyed = True

    def _sign(self, tree: CompactRange) -> str:
        self._reload_keys()
        note = sign_checkpoint(Checkpoint(self.origin, tree.size, tree.root()), self._signers)
        self._rekeyed = False
        return note

    # -- checkpoints and proofs -------------------------------------------------

    def checkpoint(self) -> str:
        """A signed checkpoint of the whole log: the newest one if it is current, else a new one."""
        with self._lock:
            self._refresh()
            size = self._tree.size
            if size == 0:
                raise LedgerError("the log is empty: there is nothing to checkpoint yet")
            self._reload_keys()
            latest = self._store.checkpoint()
            if latest is not None and latest[0] == size and not self._rekeyed:
                return latest[1]
            note = self._sign(self._tree)
            self._store.put_checkpoint(size, note)
            self._signed_size, self._signed_at = size, self._now()
            return note

    def latest_checkpoint(self) -> str | None:
        """The newest stored checkpoint; after a key rotation, a new one signed by the current keys."""
        with self._lock:
            self._reload_keys()
            if self._rekeyed and self._store.size() > 0:
                return self.checkpoint()
        latest = self._store.checkpoint()
        return None if latest is None else latest[1]

    def checkpoint_at(self, size: int) -> str | None:
        """The signed checkpoint of exactly ``size`` entries, if the log signed one."""
        found = self._store.checkpoint(size)
        return None if found is None else found[1]

    def _covering(self, index: int) -> tuple[Checkpoint, str]:
        """The newest checkpoint, signed now if it does not yet cover ``index``."""
        latest = self._store.checkpoint()
        note = latest[1] if latest is not None and latest[0] > index else self.checkpoint()
        if self._opened is None or self._opened[1] != note:
            self._opened = (open_checkpoint(note, self.verifiers, origin=self.origin), note)
        return self._opened

    def index_of(self, event_id: str) -> int:
        index = self._store.find([event_id]).get(event_id)
        if index is None:
            raise NotFoundError("ledger entry", event_id)
        return index

    def entry(self, event_id: str) -> bytes:
        """The exact bytes of a logged event: its leaf is ``SHA-256(0x00 ‖ these bytes)``."""
        index = self.index_of(event_id)
        return self._store.entries(index, index + 1)[0].data

    def prove(self, event_id: str) -> str:
        """A C2SP tlog-proof of the event against the newest checkpoint."""
        with self._lock:
            index = self.index_of(event_id)
            checkpoint, note = self._covering(index)
            return TlogProof(index, self._inclusion(index, checkpoint.size), note).format()

    def _read(self, plan: Plan) -> tuple[bytes, ...]:
        """The proof nodes (or edge) ``plan`` describes, from one read of the stored hashes."""
        try:
            return tuple(assemble(plan, self._store.hashes(plan.indexes)))
        except KeyError as exc:
            raise LedgerError(f"the stored log is missing Merkle hash {exc}") from None

    def _inclusion(self, index: int, size: int) -> tuple[bytes, ...]:
        return self._read(inclusion_plan(index, size))

    def consistency(self, size1: int, size2: int | None = None) -> ConsistencyProof:
        """A consistency proof from ``size1`` to ``size2`` (default: the newest checkpoint's size)."""
        with self._lock:
            self._refresh()
            if size2 is None:
                latest = self._store.checkpoint()
                size2 = latest[0] if latest is not None else self._tree.size
            if size2 > self._tree.size:
                raise ProofError(f"the log has {self._tree.size} entries; it has no tree of size {size2}")
            return ConsistencyProof(size1, size2, self._read(consistency_plan(size1, size2)))

    # -- attestations and exports ---------------------------------------------

    def attestation(self, attestation_id: str) -> Evidence:
        """An attestation with its event's bytes and a tlog-proof against the newest checkpoint."""
        stored = self._store.attestation(attestation_id)
        if stored is None:
            raise NotFoundError("attestation", attestation_id)
        return Evidence(stored.note, self.entry(attestation_id), self.prove(attestation_id))

    def attestations(self, session_id: str) -> list[str]:
        return [a.note for a in self._store.attestations(session_id)]

    def export(self, session_id: str, *, since: int | None = None) -> Bundle:
        """Every event of a session the log holds below its newest checkpoint, with their
        inclusion proofs, the session's attestations, the checkpoint, and the log's signed
        statement of the session at that checkpoint (how many events, the last one, whether
        it ended, which decisions were attested); with ``since``, also a consistency proof
        from that tree size."""
        with self._lock:
            logged = self._store.session(session_id)
            if not logged:
                raise NotFoundError("session in the ledger", session_id)
            checkpoint, note = self._covering(max(logged))
            # Read again under the checkpoint: another writer may have logged more of the
            # session meanwhile, and the entries below a signed size never change.
            indexes = [i for i in self._store.session(session_id) if i < checkpoint.size]
            entries = []
            for index in indexes:
                entry = self._store.entries(index, index + 1)[0]
                entries.append(BundleEntry(index, entry.data, self._inclusion(index, checkpoint.size)))
            stored = [a for a in self._store.attestations(session_id) if a.log_index < checkpoint.size]
            statement = self._statement(checkpoint, session_id, entries, stored)
            consistency = (
                () if since is None or since == checkpoint.size else (self.consistency(since, checkpoint.size),)
            )
            return Bundle(note, (statement,), tuple(entries), tuple(a.note for a in stored), consistency)

    def _statement(
        self,
        checkpoint: Checkpoint,
        session_id: str,
        entries: Sequence[BundleEntry],
        attestations: Sequence[StoredAttestation],
    ) -> str:
        """The log's signed statement of what it held of a session below ``checkpoint``."""
        last = entries[-1]
        try:
            (event,) = loads_trace(last.entry.decode("utf-8"))
        except (TraceError, UnicodeDecodeError, ValueError) as exc:
            raise LedgerError(f"the log's entry at index {last.index} is not one TRACE event") from exc
        statement = SessionStatement(
            origin=self.origin,
            tree_size=checkpoint.size,
            root=checkpoint.root,
            session_id=session_id,
            events=len(entries),
            last_index=last.index,
            last_event_id=event.event_id,
            last_event_hash=event.event_hash,
            ended=event.event_type == "session.ended",
            attestations=tuple(sorted({a.attestation_id for a in attestations})),
        )
        self._reload_keys()
        return statement.sign(self._signers)

    # -- audit ----------------------------------------------------------------

    def audit(self, batch: int = 10_000) -> AuditReport:
        """Recompute the whole log from its entries: every stored hash, and every stored
        checkpoint's signature and root. Returns only if all of it matches."""
        with self._lock:
            self._refresh()
            size = self._tree.size
            checkpoints = dict(self._store.checkpoints())
            tree = CompactRange()
            for start in range(0, size, batch):
                chunk = self._store.entries(start, min(start + batch, size))
                if len(chunk) != min(batch, size - start):
                    raise LedgerError(f"the log is missing entries after index {start}")
                expected: list[tuple[int, bytes]] = []
                for entry in chunk:
                    expected.extend(tree.append(leaf_hash(entry.data)))
                    note = checkpoints.get(tree.size)
                    if note is not None:
                        signed = open_checkpoint(note, self.verifiers, origin=self.origin)
                        if signed.root != tree.root():
                            raise LedgerError(f"the checkpoint at size {tree.size} does not match the entries")
                stored = self._store.hashes([i for i, _ in expected])
                for i, value in expected:
                    if stored.get(i) != value:
                        raise LedgerError(f"stored Merkle hash {i} does not match the entries")
            if tree.root() != self._tree.root():
                raise LedgerError("the log's root does not match its entries")
            if any(s > size for s in checkpoints):
                raise LedgerError("a checkpoint is larger than the log")
            return AuditReport(size, tree.root(), len(checkpoints))

"""The ledger store contract, run against both stores through :class:`AuditLedger`.

Every root, inclusion path and consistency proof is compared with a reference
written here, which transcribes RFC 9162 §2.1.1 (MTH), §2.1.3.1 (PATH) and
§2.1.4.1 (PROOF/SUBPROOF) literally, so no expectation comes from the code under
test. The SQLite-only tests cover what only a file can do: reopening, tampering
with the file directly, a foreign file at the path, and the keyring beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import random
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import EXAMPLES

from cra.errors import LedgerError, ProofError
from cra.ledger.checkpoint import Checkpoint, checkpoint_of, open_checkpoint, sign_checkpoint
from cra.ledger.merkle import stored_count, stored_index, verify_consistency
from cra.ledger.note import NoteSigner, NoteVerifier
from cra.ledger.tlog_proof import verify_tlog_proof
from cra.runtime.clock import ManualClock
from cra.runtime.ledger import AuditLedger
from cra.runtime.memory import MemoryLedgerStore
from cra.runtime.ports import LedgerEntry, LedgerStore
from cra.runtime.resolver import Resolver
from cra.store.database import open_state, sqlite_url
from cra.store.datadir import open_ledger
from cra.store.keys import Keyring
from cra.store.ledger import SqliteLedgerStore
from cra.store.sql_ledger import SqlLedgerStore
from cra.trace.event import TraceEvent, build_event, format_timestamp

ORIGIN = "example.com/cra/test-log"
SIGNER = NoteSigner(ORIGIN, hashlib.sha256(b"cra test ledger key").digest())
STRANGER = NoteSigner(ORIGIN, hashlib.sha256(b"someone else's key with the same name").digest())
T0 = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)
NEVER = 10**9  # a checkpoint_every / checkpoint_interval that never falls due in these tests


# -- the reference: RFC 9162 §2.1, transcribed -----------------------------------------------------------------------


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def ref_leaf(entry: bytes) -> bytes:
    return _sha256(b"\x00" + entry)


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Reference:
    """MTH, PATH and PROOF over ``D[lo:hi]`` of a list of entries, subtree hashes memoised by range."""

    def __init__(self, entries: Sequence[bytes]) -> None:
        self.leaves = [ref_leaf(e) for e in entries]
        self.mth = lru_cache(maxsize=None)(self._mth)

    def _mth(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 0:
            return _sha256(b"")
        if n == 1:
            return self.leaves[lo]
        k = _k(n)
        return _sha256(b"\x01" + self.mth(lo, lo + k) + self.mth(lo + k, hi))

    def root(self, size: int) -> bytes:
        return self.mth(0, size)

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = _k(n)
        if m < k:
            return [*self.path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self.path(m - k, lo + k, hi), self.mth(lo, lo + k)]

    def proof(self, m: int, n: int) -> list[bytes]:
        return self._subproof(m, 0, n, True)

    def _subproof(self, m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if whole else [self.mth(lo, hi)]
        k = _k(n)
        if m <= k:
            return [*self._subproof(m, lo, lo + k, whole), self.mth(lo + k, hi)]
        return [*self._subproof(m - k, lo + k, hi, False), self.mth(lo, lo + k)]


def test_reference_matches_the_published_ct_root() -> None:
    """The reference itself is pinned: the RFC 6962 test leaves' root from Certificate Transparency."""
    leaves = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657")]
    leaves.append(bytes.fromhex("606162636465666768696a6b6c6d6e6f"))
    ref = Reference(leaves)
    assert ref.root(8).hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    assert ref.root(0).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# -- entries and stores --------------------------------------------------------------------------------------------


def make_entry(n: int, *, session: int = 0, salt: str = "") -> LedgerEntry:
    """A deterministic TRACE-like JSON line; ``salt`` gives the same ids with other bytes."""
    event_id = f"01950f3a-{n >> 16 & 0xFFFF:04x}-7{n & 0xFFF:03x}-8000-{n:012x}"
    session_id = f"01950f39-0000-7000-9000-{session:012x}"
    payload = {"action_id": f"tickets.update.{n % 7}", "decision": "allow" if n % 3 else "deny", "salt": salt}
    line = {
        "trace_version": "1.0",
        "event_id": event_id,
        "session_id": session_id,
        "sequence": n,
        "timestamp": format_timestamp(T0 + timedelta(milliseconds=n)),
        "event_type": "policy.evaluated",
        "payload": payload,
        "event_hash": hashlib.sha256(f"{event_id}{salt}".encode()).hexdigest(),
    }
    return LedgerEntry(event_id, session_id, json.dumps(line, separators=(",", ":")).encode())


def make_entries(start: int, count: int, *, session: int = 0) -> list[LedgerEntry]:
    return [make_entry(n, session=session) for n in range(start, start + count)]


def trace_events(count: int) -> list[TraceEvent]:
    """A real hash-chained TRACE/1.0 session."""
    events: list[TraceEvent] = []
    previous = None
    for n in range(count):
        previous = build_event(
            previous,
            event_id=f"01950f3b-0000-7000-8000-{n:012x}",
            trace_id="01950f3b-ffff-7000-8000-000000000000",
            span_id="01950f3b-fffe-7000-8000-000000000000",
            parent_span_id=None,
            session_id="01950f3b-fffd-7000-8000-000000000000",
            timestamp=format_timestamp(T0 + timedelta(seconds=n)),
            event_type="policy.evaluated",
            payload={"action_id": "documents.read", "effect": "allow", "n": n},
        )
        events.append(previous)
    return events


class Backend:
    """One log's storage; :meth:`store` gives a new handle on it (a new connection or engine, for a database)."""

    def __init__(self, kind: str, path: Path, url: str | None = None) -> None:
        self.kind = kind
        self.path = path
        self.url = url
        self.clock = ManualClock(T0)
        self._memory = MemoryLedgerStore()
        self._opened: list[SqliteLedgerStore | SqlLedgerStore] = []

    def store(self) -> LedgerStore:
        if self.kind == "memory":
            return self._memory
        store: SqliteLedgerStore | SqlLedgerStore
        if self.url is not None:
            store = SqlLedgerStore(self.url, origin=ORIGIN)
        else:
            store = SqliteLedgerStore(self.path, origin=ORIGIN)
        self._opened.append(store)
        return store

    def ledger(self, *, every: int = NEVER, interval: float = NEVER) -> AuditLedger:
        return AuditLedger(
            self.store(),
            [SIGNER],
            origin=ORIGIN,
            clock=self.clock,
            checkpoint_every=every,
            checkpoint_interval=interval,
        )

    def close(self) -> None:
        for store in self._opened:
            store.close()


def _migrated(url: str) -> str:
    """``url`` with the service's migrations run: the SQL ledger's tables are migration 0003."""

    async def migrate() -> None:
        state = await open_state(url)
        await state.close()

    asyncio.run(migrate())
    return url


@pytest.fixture(params=["memory", "sqlite", "sql-sqlite", pytest.param("sql-postgresql", marks=pytest.mark.services)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sql-sqlite":
        b = Backend(request.param, tmp_path, _migrated(sqlite_url(tmp_path / "state.sqlite3")))
        yield b
        b.close()
        return
    if request.param == "sql-postgresql":
        b = Backend(request.param, tmp_path, request.getfixturevalue("postgres_db"))
        yield b
        b.close()
        return
    b = Backend(request.param, tmp_path / "ledger.sqlite3")
    yield b
    b.close()


def opened(note: str, verifiers: Sequence[NoteVerifier] = (SIGNER.verifier,)) -> Checkpoint:
    return open_checkpoint(note, verifiers, origin=ORIGIN)


def check_log(ledger: AuditLedger, store: LedgerStore, entries: Sequence[LedgerEntry]) -> Reference:
    """The log holds exactly ``entries`` in order, and every root and checkpoint matches the reference."""
    ref = Reference([e.data for e in entries])
    assert ledger.size == store.size() == len(entries)
    assert store.entries(0, len(entries)) == list(entries)
    assert store.find([e.event_id for e in entries]) == {e.event_id: i for i, e in enumerate(entries)}
    assert ledger.root() == ref.root(len(entries))
    for size, note in store.checkpoints():
        checkpoint = opened(note)
        assert (checkpoint.origin, checkpoint.size, checkpoint.root) == (ORIGIN, size, ref.root(size))
    return ref


# -- appending -----------------------------------------------------------------------------------------------------


def test_append_batches_grow_the_log_and_its_root(backend: Backend) -> None:
    ledger = backend.ledger()
    store = backend.store()
    assert ledger.size == store.size() == 0
    assert ledger.root() == _sha256(b"")
    logged: list[LedgerEntry] = []
    for count in (1, 1, 2, 3, 5, 8, 13, 21, 1, 64, 7):
        batch = make_entries(len(logged), count)
        indexes = ledger.append_entries(batch)
        assert indexes == {e.event_id: len(logged) + i for i, e in enumerate(batch)}
        logged.extend(batch)
        check_log(ledger, store, logged)
    report = ledger.audit()
    assert (report.size, report.root) == (len(logged), Reference([e.data for e in logged]).root(len(logged)))


def test_append_trace_events_logs_their_exact_json_lines(backend: Backend) -> None:
    ledger = backend.ledger()
    events = trace_events(12)
    assert ledger.append(events[:5]) == {e.event_id: i for i, e in enumerate(events[:5])}
    assert ledger.append(events[5:]) == {e.event_id: i for i, e in enumerate(events) if i >= 5}
    # The leaf is the event's JSON line: its fields in protocol order, compact separators, UTF-8.
    lines = [json.dumps(e._asdict(), ensure_ascii=False, separators=(",", ":")).encode() for e in events]
    for i, event in enumerate(events):
        assert ledger.entry(event.event_id) == lines[i]
        assert ledger.index_of(event.event_id) == i
    assert backend.store().session(events[0].session_id) == list(range(12))
    assert ledger.root() == Reference(lines).root(12)


def test_prove_gives_a_tlog_proof_of_every_entry(backend: Backend) -> None:
    ledger = backend.ledger(every=10)
    logged = make_entries(0, 37)
    for lo in range(0, 37, 6):
        ledger.append_entries(logged[lo : lo + 6])
    ref = Reference([e.data for e in logged])
    for i, entry in enumerate(logged):
        text = ledger.prove(entry.event_id)
        proof, checkpoint = verify_tlog_proof(text, entry.data, [SIGNER.verifier], origin=ORIGIN)
        assert proof.index == i
        assert checkpoint.root == ref.root(checkpoint.size)
        assert list(proof.path) == ref.path(i, 0, checkpoint.size)
        assert checkpoint.size > i
        with pytest.raises(ProofError):
            verify_tlog_proof(text, logged[(i + 1) % 37].data, [SIGNER.verifier], origin=ORIGIN)
        with pytest.raises(ProofError):
            verify_tlog_proof(text, entry.data, [STRANGER.verifier], origin=ORIGIN)


def test_prove_signs_a_checkpoint_when_none_covers_the_entry(backend: Backend) -> None:
    ledger = backend.ledger()
    store = backend.store()
    logged = make_entries(0, 11)
    ledger.append_entries(logged)
    assert store.checkpoints() == []
    text = ledger.prove(logged[10].event_id)
    proof, checkpoint = verify_tlog_proof(text, logged[10].data, [SIGNER.verifier], origin=ORIGIN)
    assert (proof.index, checkpoint.size) == (10, 11)
    assert checkpoint.root == Reference([e.data for e in logged]).root(11)
    assert [size for size, _ in store.checkpoints()] == [11]


def test_consistency_proofs_verify_between_every_pair_of_checkpoints(backend: Backend) -> None:
    rng = random.Random(6962)
    ledger = backend.ledger(every=7)
    store = backend.store()
    logged: list[LedgerEntry] = []
    expected_sizes = []
    signed = 0
    for _ in range(25):
        batch = make_entries(len(logged), rng.randint(1, 9))
        ledger.append_entries(batch)
        logged.extend(batch)
        if len(logged) - signed >= 7:  # the schedule: at the first batch that ends 7 or more entries on
            signed = len(logged)
            expected_sizes.append(signed)
    checkpoints = store.checkpoints()
    assert [size for size, _ in checkpoints] == expected_sizes
    ref = check_log(ledger, store, logged)
    roots = {size: opened(note).root for size, note in checkpoints}
    pairs = 0
    for size1 in roots:
        for size2 in roots:
            if size1 > size2:
                continue
            proof = ledger.consistency(size1, size2)
            assert (proof.size1, proof.size2) == (size1, size2)
            assert list(proof.proof) == ref.proof(size1, size2)
            verify_consistency(size1, size2, roots[size1], roots[size2], proof.proof)
            pairs += 1
            if size1 < size2:
                with pytest.raises(ProofError):
                    verify_consistency(size1, size2, roots[size2], roots[size1], proof.proof)
    assert pairs == len(roots) * (len(roots) + 1) // 2 >= 15
    default = ledger.consistency(expected_sizes[0])
    assert default.size2 == expected_sizes[-1]


def test_a_checkpoint_is_signed_every_n_entries(backend: Backend) -> None:
    ledger = backend.ledger(every=10)
    store = backend.store()
    for lo in range(0, 45, 3):  # batches of 3: 12 is the first size 10 or more past 0, then 24, 36; 45 is 9 past
        ledger.append_entries(make_entries(lo, 3))
    assert [size for size, _ in store.checkpoints()] == [12, 24, 36]
    ledger.append_entries(make_entries(45, 1))
    assert [size for size, _ in store.checkpoints()] == [12, 24, 36, 46]
    ledger.append_entries(make_entries(46, 9))
    assert [size for size, _ in store.checkpoints()] == [12, 24, 36, 46]
    ledger.append_entries(make_entries(55, 1))
    assert [size for size, _ in store.checkpoints()] == [12, 24, 36, 46, 56]
    ledger.append_entries(make_entries(56, 25))  # one batch over two intervals signs once, at its end
    assert [size for size, _ in store.checkpoints()] == [12, 24, 36, 46, 56, 81]
    check_log(ledger, store, make_entries(0, 81))


def test_a_checkpoint_is_signed_every_t_seconds(backend: Backend) -> None:
    clock = backend.clock
    ledger = backend.ledger(interval=5.0)
    store = backend.store()
    n = 0

    def append(count: int) -> list[int]:
        nonlocal n
        ledger.append_entries(make_entries(n, count))
        n += count
        return [size for size, _ in store.checkpoints()]

    assert append(2) == []
    clock.advance(4.9)
    assert append(3) == []
    clock.advance(0.1)  # 5 s since the ledger started
    assert append(1) == [6]
    clock.advance(4.0)
    assert append(2) == [6]
    clock.advance(1.0)  # 5 s since the last checkpoint
    assert append(4) == [6, 12]
    clock.advance(60.0)  # time alone signs nothing: checkpoints fall due as entries arrive
    assert [size for size, _ in store.checkpoints()] == [6, 12]
    assert append(1) == [6, 12, 13]
    assert append(1) == [6, 12, 13]
    assert ledger.checkpoint() == store.checkpoint(14)[1]  # type: ignore[index]
    clock.advance(4.0)
    assert append(1) == [6, 12, 13, 14]  # an explicit checkpoint restarts the interval
    clock.advance(1.0)
    assert append(1) == [6, 12, 13, 14, 16]
    check_log(ledger, store, make_entries(0, 16))


# -- idempotency and conflicts -------------------------------------------------------------------------------------


def test_reappending_identical_entries_returns_their_indexes_and_logs_nothing(backend: Backend) -> None:
    ledger = backend.ledger(every=4)
    store = backend.store()
    first = make_entries(0, 6)
    second = make_entries(6, 5)
    ledger.append_entries(first)
    ledger.append_entries(second)
    checkpoints = store.checkpoints()
    root = ledger.root()
    assert ledger.append_entries(first) == {e.event_id: i for i, e in enumerate(first)}
    assert ledger.append_entries(second[2:4]) == {second[2].event_id: 8, second[3].event_id: 9}
    assert ledger.append_entries([first[5], first[0]]) == {first[5].event_id: 5, first[0].event_id: 0}
    assert ledger.size == store.size() == 11
    assert ledger.root() == root
    assert store.checkpoints() == checkpoints
    check_log(ledger, store, first + second)


def test_a_batch_mixing_logged_and_new_entries_returns_every_index(backend: Backend) -> None:
    ledger = backend.ledger()
    ledger.append_entries(make_entries(0, 2))
    batch = make_entries(0, 3)
    assert ledger.append_entries(batch) == {e.event_id: i for i, e in enumerate(batch)}


def test_a_mixed_batch_logs_only_its_new_entries(backend: Backend) -> None:
    ledger = backend.ledger()
    store = backend.store()
    ledger.append_entries(make_entries(0, 4))
    ledger.append_entries([*make_entries(2, 2), *make_entries(4, 3)])  # 2 and 3 again, then 4, 5, 6
    check_log(ledger, store, make_entries(0, 7))


def test_an_event_id_logged_with_other_bytes_refuses_the_whole_batch(backend: Backend) -> None:
    ledger = backend.ledger(every=3)
    store = backend.store()
    logged = make_entries(0, 5)
    ledger.append_entries(logged)
    checkpoints = store.checkpoints()
    impostor = make_entry(3, salt="rewritten")
    assert impostor.event_id == logged[3].event_id
    assert impostor.data != logged[3].data
    fresh = make_entries(5, 4)
    with pytest.raises(LedgerError, match=r"other bytes"):
        ledger.append_entries([fresh[0], fresh[1], impostor, fresh[2], fresh[3]])
    assert store.find([e.event_id for e in fresh]) == {}
    assert store.checkpoints() == checkpoints
    check_log(ledger, store, logged)
    # The ledger is still usable, and the refused entries log at the next indexes.
    assert ledger.append_entries(fresh) == {e.event_id: 5 + i for i, e in enumerate(fresh)}
    check_log(ledger, store, logged + fresh)
    ledger.audit()


def test_the_same_event_id_twice_in_one_batch_is_refused(backend: Backend) -> None:
    ledger = backend.ledger()
    entry = make_entry(0)
    with pytest.raises(LedgerError, match=r"twice"):
        ledger.append_entries([entry, make_entry(1), entry])
    assert ledger.size == backend.store().size() == 0


# -- several writers -----------------------------------------------------------------------------------------------


def test_two_ledgers_on_one_store_interleave_appends(backend: Backend) -> None:
    """Two AuditLedgers over one store (two connections to one file, for SQLite) as two processes would be."""
    rng = random.Random(2024)
    writers = [backend.ledger(every=5), backend.ledger(every=5)]
    logged: list[LedgerEntry] = []
    chosen = []
    for _ in range(40):
        w = rng.randrange(2)
        chosen.append(w)
        batch = make_entries(len(logged), rng.randint(1, 6), session=w)
        assert writers[w].append_entries(batch) == {e.event_id: len(logged) + i for i, e in enumerate(batch)}
        logged.extend(batch)
    assert 10 < sum(chosen) < 30  # both really wrote
    fresh = backend.ledger()
    store = backend.store()
    ref = check_log(fresh, store, logged)
    report = fresh.audit()
    assert (report.size, report.root) == (len(logged), ref.root(len(logged)))
    assert report.checkpoints == len(store.checkpoints())
    assert report.checkpoints > 5
    for w in (0, 1):
        assert store.session(f"01950f39-0000-7000-9000-{w:012x}") == [
            i for i, e in enumerate(logged) if e.session_id.endswith(f"{w:012x}")
        ]
    # Either writer proves any entry against a checkpoint that covers it.
    writers[chosen[-1]].checkpoint()  # the writer that appended last knows the whole log
    for i in (0, len(logged) // 2, len(logged) - 1):
        for writer in writers:
            proof, checkpoint = verify_tlog_proof(
                writer.prove(logged[i].event_id), logged[i].data, [SIGNER.verifier], origin=ORIGIN
            )
            assert proof.index == i
            assert checkpoint.root == ref.root(checkpoint.size)


def _stale_pair(backend: Backend) -> tuple[AuditLedger, AuditLedger, list[LedgerEntry]]:
    """Writer a appends, then writer b appends and checkpoints: a has not seen b's entries yet."""
    a, b = backend.ledger(every=2), backend.ledger(every=2)
    logged = make_entries(0, 6)
    a.append_entries(logged[:2])
    b.append_entries(logged[2:6])
    return a, b, logged


def test_a_writer_that_missed_the_other_writers_appends_still_audits(backend: Backend) -> None:
    a, _, logged = _stale_pair(backend)
    report = a.audit()
    assert report.size == len(logged)


def test_a_writer_proves_an_entry_the_other_writer_logged(backend: Backend) -> None:
    a, _, _ = _stale_pair(backend)
    backend.ledger(every=NEVER).append_entries(make_entries(6, 1))  # a third writer: no checkpoint covers 6
    entry = make_entry(6)
    proof, checkpoint = verify_tlog_proof(a.prove(entry.event_id), entry.data, [SIGNER.verifier], origin=ORIGIN)
    assert (proof.index, checkpoint.size) == (6, 7)


def test_two_connections_appending_from_threads(backend: Backend) -> None:
    """Real contention: two threads, each with its own connection (or engine), race for every append."""
    writers = [backend.ledger(every=16), backend.ledger(every=16)]
    batches = [[[make_entry(10_000 * w + 100 * k + j, session=w) for j in range(4)] for k in range(30)] for w in (0, 1)]
    generated = {e.event_id: e for per_writer in batches for batch in per_writer for e in batch}
    results: list[dict[str, int]] = [{}, {}]
    errors: list[BaseException] = []
    start = threading.Barrier(2, timeout=30)

    def run(w: int) -> None:
        try:
            for batch in batches[w]:
                start.wait()  # both writers append at once: one of them finds the log grown and retries
                results[w].update(writers[w].append_entries(batch))
        except BaseException as exc:  # noqa: BLE001 - collected, then reported by the assertion below
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=run, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    indexes = {**results[0], **results[1]}
    assert sorted(indexes.values()) == list(range(240))
    for w in (0, 1):  # each batch landed contiguously
        for batch in batches[w]:
            first = indexes[batch[0].event_id]
            assert [indexes[e.event_id] for e in batch] == list(range(first, first + 4))
    in_order = sorted(indexes, key=indexes.__getitem__)
    writer_of = [generated[i].session_id for i in in_order]
    assert sum(a != b for a, b in itertools.pairwise(writer_of)) >= 30  # both wrote in every round
    store = backend.store()
    fresh = backend.ledger()
    check_log(fresh, store, [generated[i] for i in in_order])
    assert fresh.audit().size == 240


# -- SQLite: reopening ----------------------------------------------------------------------------------------------


def test_reopening_a_sqlite_store_resumes_its_root_and_continues(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    clock = ManualClock(T0)

    def ledger() -> AuditLedger:
        return AuditLedger(
            SqliteLedgerStore(path, origin=ORIGIN), [SIGNER], origin=ORIGIN, clock=clock, checkpoint_every=8
        )

    first = ledger()
    first.append_entries(make_entries(0, 13))
    root13 = first.root()
    newest = first.latest_checkpoint()
    first.close()

    second = ledger()
    try:
        assert second.size == 13
        assert second.root() == root13 == Reference([e.data for e in make_entries(0, 13)]).root(13)
        assert second.latest_checkpoint() == newest
        second.append_entries(make_entries(13, 10))
    finally:
        second.close()

    third = ledger()
    try:
        store = SqliteLedgerStore(path, origin=ORIGIN)
        try:
            ref = check_log(third, store, make_entries(0, 23))
            assert [s for s, _ in store.checkpoints()] == [13, 23]
            report = third.audit()
            assert (report.size, report.root, report.checkpoints) == (23, ref.root(23), 2)
            assert list(third.consistency(13, 23).proof) == ref.proof(13, 23)
        finally:
            store.close()
    finally:
        third.close()


def test_open_ledger_reopens_a_data_dir(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    ledger = open_ledger(tmp_path, create=True, clock=clock, checkpoint_every=5)
    try:
        ledger.append_entries(make_entries(0, 12))
        origin = ledger.origin
        root = ledger.root()
    finally:
        ledger.close()
    assert Keyring(tmp_path / "keys").origin == origin
    again = open_ledger(tmp_path, clock=clock, checkpoint_every=5)
    try:
        assert (again.origin, again.size, again.root()) == (origin, 12, root)
        again.append_entries(make_entries(12, 3))
        entries = make_entries(0, 15)
        assert again.root() == Reference([e.data for e in entries]).root(15)
        assert again.audit().size == 15
    finally:
        again.close()


def test_open_ledger_without_create_needs_keys(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match=r"no signing key"):
        open_ledger(tmp_path)
    assert not (tmp_path / "ledger.sqlite3").exists()


# -- SQLite: tampering -----------------------------------------------------------------------------------------------

LOG_SIZE = 40


def _build_data_dir(data_dir: Path) -> None:
    """40 entries in batches of 4, a checkpoint every 8: checkpoints at 8, 16, 24, 32 and 40."""
    ledger = open_ledger(data_dir, create=True, clock=ManualClock(T0), checkpoint_every=8)
    try:
        for lo in range(0, LOG_SIZE, 4):
            ledger.append_entries(make_entries(lo, 4))
        assert ledger.latest_checkpoint() is not None
    finally:
        ledger.close()


def _open_and_audit(data_dir: Path) -> None:
    ledger = open_ledger(data_dir, clock=ManualClock(T0))
    try:
        ledger.audit()
    finally:
        ledger.close()


def _sql(data_dir: Path, statement: str, *params: Any) -> int:
    with contextlib.closing(sqlite3.connect(data_dir / "ledger.sqlite3")) as db, db:
        return db.execute(statement, params).rowcount


def _note(data_dir: Path, size: int) -> str:
    with contextlib.closing(sqlite3.connect(data_dir / "ledger.sqlite3")) as db:
        (note,) = db.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
    return str(note)


def _resign(data_dir: Path, size: int, signers: Sequence[NoteSigner], root: bytes | None = None) -> None:
    checkpoint = checkpoint_of(_note(data_dir, size))  # the keyring's key is not SIGNER
    forged = sign_checkpoint(checkpoint._replace(root=root or checkpoint.root), signers)
    assert _sql(data_dir, "UPDATE checkpoints SET note = ? WHERE size = ?", forged, size) == 1


def _tamper_entry_data(d: Path) -> None:
    altered = make_entry(21, salt="x")
    assert _sql(d, "UPDATE entries SET data = ? WHERE idx = 21", altered.data) == 1


def _tamper_entry_one_byte(d: Path) -> None:
    data = bytearray(make_entry(5).data)
    data[-3] ^= 0x01
    assert _sql(d, "UPDATE entries SET data = ? WHERE idx = 5", bytes(data)) == 1


def _tamper_inner_hash(d: Path) -> None:
    assert _sql(d, "UPDATE hashes SET hash = ? WHERE id = ?", _sha256(b"forged"), stored_index(1, 6)) == 1


def _tamper_edge_hash(d: Path) -> None:  # the newest stored hash: the root of the right edge
    assert _sql(d, "UPDATE hashes SET hash = ? WHERE id = ?", _sha256(b"forged"), stored_count(LOG_SIZE) - 1) == 1


def _tamper_delete_last_entry(d: Path) -> None:
    assert _sql(d, "DELETE FROM entries WHERE idx = ?", LOG_SIZE - 1) == 1


def _tamper_delete_middle_entry(d: Path) -> None:
    assert _sql(d, "DELETE FROM entries WHERE idx = 17") == 1


def _tamper_truncate_below_checkpoint(d: Path) -> None:
    """Drop the last entry and its hashes consistently: the log now ends below its newest checkpoint."""
    assert _sql(d, "DELETE FROM entries WHERE idx = ?", LOG_SIZE - 1) == 1
    assert _sql(d, "DELETE FROM hashes WHERE id >= ?", stored_count(LOG_SIZE - 1)) > 0


def _tamper_newest_checkpoint_other_key(d: Path) -> None:
    _resign(d, LOG_SIZE, [STRANGER])


def _tamper_older_checkpoint_other_key(d: Path) -> None:
    _resign(d, 16, [STRANGER])


def _tamper_older_checkpoint_wrong_root(d: Path) -> None:
    """Signed by the log's own key, but over a root the entries do not give."""
    signers = Keyring(d / "keys").signers()
    _resign(d, 16, signers, root=Reference([e.data for e in make_entries(0, 16)]).root(15))


def _tamper_swap_entries(d: Path) -> None:
    a, b = make_entry(30), make_entry(31)
    assert _sql(d, "UPDATE entries SET data = ? WHERE idx = 30", b.data) == 1
    assert _sql(d, "UPDATE entries SET data = ? WHERE idx = 31", a.data) == 1


TAMPERINGS: dict[str, Callable[[Path], None]] = {
    "entry-data-replaced": _tamper_entry_data,
    "entry-data-one-bit": _tamper_entry_one_byte,
    "inner-hash-altered": _tamper_inner_hash,
    "edge-hash-altered": _tamper_edge_hash,
    "last-entry-row-deleted": _tamper_delete_last_entry,
    "middle-entry-row-deleted": _tamper_delete_middle_entry,
    "log-truncated-below-checkpoint": _tamper_truncate_below_checkpoint,
    "newest-checkpoint-signed-by-other-key": _tamper_newest_checkpoint_other_key,
    "older-checkpoint-signed-by-other-key": _tamper_older_checkpoint_other_key,
    "older-checkpoint-wrong-root": _tamper_older_checkpoint_wrong_root,
    "two-entries-swapped": _tamper_swap_entries,
}


def test_an_untampered_data_dir_reopens_and_audits(tmp_path: Path) -> None:
    _build_data_dir(tmp_path)
    ledger = open_ledger(tmp_path, clock=ManualClock(T0))
    try:
        report = ledger.audit()
        assert (report.size, report.checkpoints) == (LOG_SIZE, 5)
        assert report.root == Reference([e.data for e in make_entries(0, LOG_SIZE)]).root(LOG_SIZE)
    finally:
        ledger.close()


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_tampering_with_the_sqlite_file_is_detected(tmp_path: Path, tamper: Callable[[Path], None]) -> None:
    _build_data_dir(tmp_path)
    tamper(tmp_path)
    with pytest.raises((LedgerError, ProofError)):
        _open_and_audit(tmp_path)


# -- SQLite: the wrong file ------------------------------------------------------------------------------------------


def test_a_store_of_another_log_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    store = SqliteLedgerStore(path, origin=ORIGIN)
    store.close()
    with pytest.raises(LedgerError, match=r"example\.com/cra/test-log"):
        SqliteLedgerStore(path, origin="example.com/another-log")
    again = SqliteLedgerStore(path, origin=ORIGIN)  # the refusal changed nothing
    again.close()


def test_a_ledger_over_checkpoints_of_another_origin_is_refused() -> None:
    store = MemoryLedgerStore()
    AuditLedger(store, [SIGNER], origin=ORIGIN, checkpoint_every=1).append_entries(make_entries(0, 2))
    with pytest.raises(ProofError, match=r"not 'example\.com/another-log'"):
        AuditLedger(store, [SIGNER], origin="example.com/another-log")


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    content = b"this is not a database\n" + bytes(random.Random(1).randrange(256) for _ in range(4000))
    path.write_bytes(content)
    with pytest.raises(LedgerError, match=r"not a readable ledger database"):
        SqliteLedgerStore(path, origin=ORIGIN)
    assert path.read_bytes() == content


def test_a_sqlite_file_of_another_application_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE entries (id INTEGER PRIMARY KEY, title TEXT)")
        db.execute("INSERT INTO entries (title) VALUES ('groceries')")
    with pytest.raises(LedgerError):
        SqliteLedgerStore(path, origin=ORIGIN)


def test_a_directory_at_the_store_path_is_refused_with_a_ledger_error(tmp_path: Path) -> None:
    (tmp_path / "ledger.sqlite3").mkdir()
    with pytest.raises(LedgerError):
        SqliteLedgerStore(tmp_path / "ledger.sqlite3", origin=ORIGIN)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to list open files")
def test_a_failed_open_ledger_leaves_no_database_open(tmp_path: Path) -> None:
    _build_data_dir(tmp_path)
    (key,) = (tmp_path / "keys").glob("*.key")
    key.chmod(0o644)
    db = str(tmp_path / "ledger.sqlite3")
    with pytest.raises(LedgerError) as failure:
        open_ledger(tmp_path)
    still_open = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) == db:
                still_open.append(fd.name)
    assert failure.value is not None
    assert still_open == []


# -- the keyring ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def permissive_umask() -> Iterator[None]:
    """Umask 0, so the modes seen are the ones the keyring asked for, not ones the umask cut down."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _roles(keyring: Keyring) -> list[tuple[str, str]]:
    infos = keyring.keys()
    return [(k.vkey, k.role) for k in infos]


def _key_file(keys: Path, vkey: str) -> Path:
    return keys / f"{vkey.split('+')[1]}.key"


def test_generate_writes_a_private_key_0600_in_a_0700_directory(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o755)
    with permissive_umask():
        keys.chmod(0o755)
        signer = Keyring(keys).generate("example.com/cra/keyring-test")
    assert _mode(keys) == 0o700
    (info,) = Keyring(keys).keys()
    assert (info.role, info.vkey) == ("primary", signer.vkey)
    path = _key_file(keys, info.vkey)
    assert _mode(path) == 0o600
    assert sorted(p.name for p in keys.iterdir()) == sorted([path.name, "keyring.json"])
    on_disk = NoteSigner.parse(path.read_text("utf-8").strip())
    assert on_disk.vkey == signer.vkey
    assert NoteVerifier.parse(info.vkey).public_key == signer.verifier.public_key
    assert info.vkey.startswith("example.com/cra/keyring-test+")
    assert on_disk.private_key_string() not in (keys / "keyring.json").read_text("utf-8")


def test_generate_twice_is_refused(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "keys")
    first = keyring.generate()
    before = {p.name: p.read_bytes() for p in keyring.directory.iterdir()}
    with pytest.raises(LedgerError, match=r"already has keys"):
        keyring.generate()
    assert {p.name: p.read_bytes() for p in keyring.directory.iterdir()} == before
    assert [vkey for vkey, _ in _roles(keyring)] == [first.vkey]


def _append_and_checkpoint(data_dir: Path, lo: int, count: int) -> tuple[str, list[LedgerEntry]]:
    ledger = open_ledger(data_dir, clock=ManualClock(T0))
    try:
        ledger.append_entries(make_entries(lo, count))
        return ledger.checkpoint(), make_entries(0, lo + count)
    finally:
        ledger.close()


def test_rotation_cosigns_then_retires_the_oldest_key(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "keys")
    with permissive_umask():
        k1 = keyring.generate()
        note1, _ = _append_and_checkpoint(tmp_path, 0, 5)

        k2 = keyring.rotate()
        assert _roles(keyring) == [(k1.vkey, "cosigning"), (k2.vkey, "primary")]
        assert [s.vkey for s in keyring.signers()] == [k2.vkey, k1.vkey]
        assert _mode(_key_file(keyring.directory, k2.vkey)) == 0o600
        note2, entries2 = _append_and_checkpoint(tmp_path, 5, 4)
        ref = Reference([e.data for e in entries2])
        for verifier in (k1.verifier, k2.verifier):  # either key alone verifies the checkpoint after rotation
            checkpoint = open_checkpoint(note2, [verifier], origin=keyring.origin)
            assert (checkpoint.size, checkpoint.root) == (9, ref.root(9))
        with pytest.raises(ProofError):  # the checkpoint before rotation has only the old key's signature
            open_checkpoint(note1, [k2.verifier])

        k3 = keyring.rotate()
    roles = _roles(keyring)
    assert roles == [(k1.vkey, "retired"), (k2.vkey, "cosigning"), (k3.vkey, "primary")]
    assert not _key_file(keyring.directory, k1.vkey).exists()
    assert _key_file(keyring.directory, k2.vkey).exists()
    assert _key_file(keyring.directory, k3.vkey).exists()
    assert [v.vkey for v in keyring.retired()] == [k1.vkey]
    assert [s.vkey for s in keyring.signers()] == [k3.vkey, k2.vkey]

    note3, entries3 = _append_and_checkpoint(tmp_path, 9, 3)
    with pytest.raises(ProofError):  # the retired key no longer signs
        open_checkpoint(note3, [k1.verifier])
    open_checkpoint(note3, [k2.verifier])
    open_checkpoint(note3, [k3.verifier])

    ledger = open_ledger(tmp_path, clock=ManualClock(T0))
    try:
        assert {v.vkey for v in ledger.verifiers} == {k1.vkey, k2.vkey, k3.vkey}
        ref = Reference([e.data for e in entries3])
        old = open_checkpoint(note1, ledger.verifiers, origin=ledger.origin)  # signed by the retired key alone
        assert (old.size, old.root) == (5, ref.root(5))
        report = ledger.audit()  # re-verifies every stored checkpoint, the retired key's included
        assert (report.size, report.root, report.checkpoints) == (12, ref.root(12), 3)
        proof, checkpoint = verify_tlog_proof(
            ledger.prove(entries3[2].event_id), entries3[2].data, [k1.verifier, k2.verifier]
        )
        assert (proof.index, checkpoint.size) == (2, 12)
    finally:
        ledger.close()


def test_rotate_with_retire_previous_stops_the_old_key_at_once(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "keys")
    k1 = keyring.generate()
    k2 = keyring.rotate(retire_previous=True)
    assert _roles(keyring) == [(k1.vkey, "retired"), (k2.vkey, "primary")]
    assert not _key_file(keyring.directory, k1.vkey).exists()
    assert [s.vkey for s in keyring.signers()] == [k2.vkey]


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    _build_data_dir(tmp_path)
    keyring = Keyring(tmp_path / "keys")
    (info,) = keyring.keys()
    path = _key_file(keyring.directory, info.vkey)
    path.chmod(0o644)
    with pytest.raises(LedgerError, match=r"readable by others \(mode 644\); run chmod 600"):
        keyring.signers()
    with pytest.raises(LedgerError, match=r"readable by others"):
        open_ledger(tmp_path)
    path.chmod(0o600)
    _open_and_audit(tmp_path)


def test_a_full_disk_is_a_ledger_error_and_the_resolver_keeps_the_events_to_seal_later(tmp_path: Path) -> None:
    """SQLite's page limit makes the disk 'full'; nothing half-written is left, and the
    events of the failed operation are sealed by the next one once there is room."""
    key = NoteSigner("cra.test/full", bytes(range(32)))
    store = SqliteLedgerStore(tmp_path / "ledger.sqlite3", origin="cra.test/full")
    ledger = AuditLedger(store, [key], origin="cra.test/full")
    resolver = Resolver(ledger=ledger)
    resolver.load_atlas(EXAMPLES / "customer-support")
    first = resolver.create_session(agent_id="support-bot", goal="g", roles=["agent"])
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()  # the test reaches in to fill the "disk"
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    try:
        with pytest.raises(LedgerError, match="not stored"):
            resolver.create_session(agent_id="support-bot", goal="g " * 5000, roles=["agent"])
        assert ledger.size == 1
        ledger.audit()
        store._db.execute("PRAGMA max_page_count = 1073741823")
        third = resolver.create_session(agent_id="support-bot", goal="g", roles=["agent"])
        assert ledger.size == 3
        assert {s.session_id for s in resolver.sessions()} - {first, third}
        ledger.audit()
    finally:
        ledger.close()


def test_a_failing_ledger_database_is_a_ledger_error(tmp_path: Path) -> None:
    url = _migrated(sqlite_url(tmp_path / "state.sqlite3"))
    store = SqlLedgerStore(url, origin=ORIGIN)
    try:
        with sqlite3.connect(tmp_path / "state.sqlite3") as db:
            db.execute("DROP TABLE ledger_entries")
        for read in (store.size, lambda: store.entries(0, 1), lambda: store.find(["x"]), lambda: store.session("s")):
            with pytest.raises(LedgerError, match="cannot answer"):
                read()
        with pytest.raises(LedgerError):
            store.append(0, [make_entry(0)], [])
    finally:
        store.close()

"""Measure the SQLite audit ledger and print the figures as one JSON document.

Run it with::

    uv run python tools/bench_ledger.py            # the full run (a 1,000,000-entry log)
    uv run python tools/bench_ledger.py --quick    # a 20,000-entry log, for CI smoke runs
    uv run python tools/bench_ledger.py --seed 7 --out bench-ledger.json

Workloads, all on :class:`~cra.store.ledger.SqliteLedgerStore` (WAL, ``synchronous=FULL``)
in a temporary directory, through :class:`~cra.runtime.ledger.AuditLedger`:

* ``append-batch-100`` and ``append-batch-1000``: sustained ``append_entries`` of
  hash-chained TRACE/1.0 ``policy.evaluated`` events (their exact JSON lines), with
  ``checkpoint_interval=1.0`` so a checkpoint is signed every second of appending.
  Events are built before the clock starts; only the appends are timed.
* ``prove``: inclusion proofs at the full log size (1,000,000 entries; 20,000 with
  ``--quick``), both through ``AuditLedger.prove`` (lookup by event id, the covering
  checkpoint opened and its signature checked, a C2SP tlog-proof formatted) and
  through the raw path (``inclusion_plan`` + ``store.hashes`` + ``assemble``).
* ``verify``: ``verify_inclusion`` of a raw path, and ``verify_tlog_proof`` of a
  tlog-proof (which also checks the checkpoint's Ed25519 signature).
* ``append-memory``: tracemalloc's peak of Python allocations while appending the
  same batches to an empty log and to the full log; the ledger keeps only the right
  edge of the tree in memory, so the two should match. SQLite's own page cache is
  allocated in C and is not counted (it is bounded by ``PRAGMA cache_size``).

Latencies are wall-clock times of single calls taken with ``perf_counter_ns`` on either
side. Figures are comparable only between runs on the same machine; tests never assert
them (DESIGN §7, "measure, don't time-test").
"""

from __future__ import annotations

import argparse
import gc
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from _bench import Target, attach_targets, emit, environment, latency_summary
from cra.ledger.checkpoint import open_checkpoint
from cra.ledger.merkle import assemble, inclusion_plan, leaf_hash, verify_inclusion
from cra.ledger.note import NoteSigner
from cra.ledger.tlog_proof import verify_tlog_proof
from cra.runtime.ids import uuid7
from cra.runtime.ledger import AuditLedger, entry_of
from cra.runtime.ports import LedgerEntry
from cra.store.ledger import SqliteLedgerStore
from cra.trace.event import TraceEvent, build_event, format_timestamp

FORMAT: Final = "cra.bench_ledger/1"
ORIGIN: Final = "bench.cra.local/log"
SESSION_EVENTS: Final = 100  # events per hash-chained session
BUILD_BATCH: Final = 10_000  # batch size used to grow the big log
MEMORY_BATCH: Final = 1_000
RESOURCES: Final = ("documents", "tickets", "payments", "invoices", "users", "reports", "orders", "customers")
VERBS: Final = ("read", "list", "create", "update", "delete")


@dataclass(frozen=True, slots=True)
class Counts:
    """How much work each workload does."""

    append_events: int  # per batch size
    log_size: int  # the log proofs are measured on
    proofs: int
    proof_warmup: int
    memory_batches: int


FULL: Final = Counts(append_events=300_000, log_size=1_000_000, proofs=5_000, proof_warmup=500, memory_batches=50)
QUICK: Final = Counts(append_events=20_000, log_size=20_000, proofs=1_000, proof_warmup=100, memory_batches=10)


# From the ledger issue: >= 20,000 events/s sustained, proofs in <= 200 µs, verification in <= 100 µs.
TARGETS: Final[dict[str, dict[str, Target]]] = {
    "append-batch-100": {"events_per_second": Target(20_000, higher_is_better=True)},
    "append-batch-1000": {"events_per_second": Target(20_000, higher_is_better=True)},
    "prove-auditledger": {"p50_us": Target(200.0), "p99_us": Target(200.0)},
    "prove-raw": {"p50_us": Target(200.0), "p99_us": Target(200.0)},
    "verify-inclusion": {"p50_us": Target(100.0), "p99_us": Target(100.0)},
    "verify-tlog-proof": {"p50_us": Target(100.0), "p99_us": Target(100.0)},
}


# -- statistics ----------------------------------------------------------------------------------------------------


# -- events --------------------------------------------------------------------------------------------------------


class EventSource:
    """Hash-chained ``policy.evaluated`` events, 100 to a session, with seeded UUIDv7 ids."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._start = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
        self._n = 0
        self._previous: TraceEvent | None = None
        self._session = self._trace = self._span = ""

    def _id(self) -> str:
        return uuid7(int(self._start.timestamp() * 1000) + self._n // 1000, self._rng.getrandbits(74))

    def entries(self, count: int) -> list[LedgerEntry]:
        out = []
        for _ in range(count):
            if self._n % SESSION_EVENTS == 0:
                self._previous = None
                self._session, self._trace, self._span = self._id(), self._id(), self._id()
            resource, verb = self._rng.choice(RESOURCES), self._rng.choice(VERBS)
            allowed = self._rng.random() < 0.8
            self._previous = build_event(
                self._previous,
                event_id=self._id(),
                trace_id=self._trace,
                span_id=self._span,
                parent_span_id=None,
                session_id=self._session,
                timestamp=format_timestamp(self._start + timedelta(microseconds=37 * self._n)),
                event_type="policy.evaluated",
                payload={
                    "policy_id": f"allow-{verb}-{resource}" if allowed else "default-deny",
                    "result": "allow" if allowed else "deny",
                    "action_id": f"{resource}.{verb}",
                },
            )
            out.append(entry_of(self._previous))
            self._n += 1
        return out

    def chunks(self, total: int, size: int) -> Iterator[list[LedgerEntry]]:
        for start in range(0, total, size):
            yield self.entries(min(size, total - start))


def signer(seed: int) -> NoteSigner:
    return NoteSigner(ORIGIN, random.Random(seed).randbytes(32))


def open_log(path: Path, key: NoteSigner, **kwargs: Any) -> tuple[AuditLedger, SqliteLedgerStore]:
    store = SqliteLedgerStore(path, origin=ORIGIN)
    return AuditLedger(store, [key], origin=ORIGIN, **kwargs), store


# -- workloads -----------------------------------------------------------------------------------------------------


def bench_append(workdir: Path, entries: Sequence[LedgerEntry], batch: int, key: NoteSigner) -> dict[str, Any]:
    ledger, store = open_log(workdir / f"append-{batch}.sqlite3", key, checkpoint_every=10**9, checkpoint_interval=1.0)
    perf = time.perf_counter_ns
    samples: list[int] = []
    try:
        gc.collect()
        for start in range(0, len(entries), batch):
            part = entries[start : start + batch]
            t0 = perf()
            ledger.append_entries(part)
            samples.append(perf() - t0)
        elapsed = sum(samples) / 1e9
        checkpoints = len(store.checkpoints())
        assert ledger.size == len(entries)
    finally:
        ledger.close()
    sizes = [len(e.data) for e in entries]
    return {
        "description": f"AuditLedger.append_entries in batches of {batch} (one WAL commit with fsync per batch), "
        "a checkpoint signed every second (checkpoint_interval=1.0)",
        "events": len(entries),
        "batch_size": batch,
        "entry_bytes_mean": round(statistics.fmean(sizes), 1),
        "entry_bytes_min": min(sizes),
        "entry_bytes_max": max(sizes),
        "seconds": round(elapsed, 3),
        "events_per_second": round(len(entries) / elapsed),
        "checkpoints_signed": checkpoints,
        "batch_latency_ms": {k: round(v / 1000, 3) for k, v in latency_summary(samples).items()},
    }


def build_log(path: Path, key: NoteSigner, source: EventSource, size: int) -> dict[str, Any]:
    ledger, _ = open_log(path, key, checkpoint_every=10**9, checkpoint_interval=1.0)
    appending = 0.0
    wall = time.perf_counter()
    try:
        for chunk in source.chunks(size, BUILD_BATCH):
            t0 = time.perf_counter()
            ledger.append_entries(chunk)
            appending += time.perf_counter() - t0
        ledger.checkpoint()
        assert ledger.size == size
    finally:
        ledger.close()
    return {
        "entries": size,
        "batch_size": BUILD_BATCH,
        "seconds_total": round(time.perf_counter() - wall, 2),
        "seconds_appending": round(appending, 2),
        "events_per_second_appending": round(size / appending),
        "file_bytes": path.stat().st_size + _size_or_zero(path.with_name(path.name + "-wal")),
    }


def _size_or_zero(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def bench_proofs(path: Path, key: NoteSigner, counts: Counts, seed: int) -> dict[str, dict[str, Any]]:
    ledger, store = open_log(path, key)
    try:
        size = ledger.size
        rng = random.Random(seed)
        indexes = [rng.randrange(size) for _ in range(counts.proof_warmup + counts.proofs)]
        entries = [store.entries(i, i + 1)[0] for i in indexes]
        note = ledger.latest_checkpoint()
        assert note is not None
        root = ledger.root()
        verifiers = [key.verifier]
        perf = time.perf_counter_ns
        warm = counts.proof_warmup

        def timed(fn: Any, args: Sequence[Any]) -> tuple[list[int], list[Any]]:
            samples: list[int] = []
            results: list[Any] = []
            gc.collect()
            for k, arg in enumerate(args):
                t0 = perf()
                result = fn(arg)
                t1 = perf()
                if k >= warm:
                    samples.append(t1 - t0)
                    results.append(result)
            return samples, results

        prove_samples, tlog_proofs = timed(ledger.prove, [e.event_id for e in entries])

        def raw(index: int) -> list[bytes]:
            plan = inclusion_plan(index, size)
            return assemble(plan, store.hashes(plan.indexes))

        raw_samples, paths = timed(raw, indexes)
        # The anchor, in the same process and on the same file: one stored hash read by primary key.
        point_samples, _ = timed(lambda index: store.hashes([index]), indexes)
        measured = list(zip(indexes[warm:], entries[warm:], paths, tlog_proofs, strict=True))

        def check_inclusion(item: tuple[int, LedgerEntry, list[bytes], str]) -> None:
            index, entry, proof, _ = item
            verify_inclusion(index, size, leaf_hash(entry.data), proof, root)

        def check_tlog(item: tuple[int, LedgerEntry, list[bytes], str]) -> None:
            _, entry, _, text = item
            verify_tlog_proof(text, entry.data, verifiers, origin=ORIGIN)

        warmup_items = measured[:warm]
        inclusion_samples, _ = timed(check_inclusion, warmup_items + measured)
        tlog_samples, _ = timed(check_tlog, warmup_items + measured)
        checkpoint_samples, _ = timed(
            lambda n: open_checkpoint(n, verifiers, origin=ORIGIN), [note] * (warm + len(measured))
        )
    finally:
        ledger.close()
    common = {"log_size": size, "proofs": counts.proofs, "warmup": warm, "path_nodes": len(paths[0])}
    point_p50 = latency_summary(point_samples)["p50"]

    def ratio(samples: Sequence[int]) -> float:
        return round(latency_summary(samples)["p50"] / point_p50, 2)

    return {
        "anchor-point-read": {
            "description": "the anchor: SqliteLedgerStore.hashes([index]), one row read by primary key from the "
            "same file, timed the same way; the other proof figures give their p50 as a multiple of it",
            **common,
            "latency_us": latency_summary(point_samples),
        },
        "prove-auditledger": {
            "description": "AuditLedger.prove(event_id): index lookup, the newest checkpoint read and its signature "
            "checked, the path read with one query and folded, the C2SP tlog-proof formatted",
            **common,
            "latency_us": latency_summary(prove_samples),
            "p50_over_point_read": ratio(prove_samples),
        },
        "prove-raw": {
            "description": "inclusion_plan(index, size) + SqliteLedgerStore.hashes(plan.indexes) + assemble",
            **common,
            "latency_us": latency_summary(raw_samples),
            "p50_over_point_read": ratio(raw_samples),
        },
        "verify-inclusion": {
            "description": "leaf_hash(entry) + verify_inclusion(index, size, leaf, path, root)",
            **common,
            "latency_us": latency_summary(inclusion_samples),
        },
        "verify-tlog-proof": {
            "description": "verify_tlog_proof(text, entry, verifiers): parse, Ed25519 check of the checkpoint, "
            "leaf hash and inclusion path",
            **common,
            "latency_us": latency_summary(tlog_samples),
        },
        "open-checkpoint": {
            "description": "open_checkpoint(note, verifiers): the Ed25519 check inside both AuditLedger.prove and "
            "verify_tlog_proof (no target: it shows what the two cost beyond the Merkle path)",
            **common,
            "latency_us": latency_summary(checkpoint_samples),
        },
    }


def _peak_while_appending(ledger: AuditLedger, batches: Sequence[Sequence[LedgerEntry]]) -> dict[str, int]:
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        for batch in batches:
            ledger.append_entries(batch)
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {
        "log_size_before": ledger.size - sum(map(len, batches)),
        "peak_bytes": peak - before,
        "retained_bytes": after - before,
    }


def bench_memory(workdir: Path, big: Path, key: NoteSigner, source: EventSource, counts: Counts) -> dict[str, Any]:
    small_batches = [source.entries(MEMORY_BATCH) for _ in range(counts.memory_batches)]
    big_batches = [source.entries(MEMORY_BATCH) for _ in range(counts.memory_batches)]
    empty, _ = open_log(workdir / "memory-empty.sqlite3", key, checkpoint_every=10**9, checkpoint_interval=1.0)
    try:
        at_empty = _peak_while_appending(empty, small_batches)
    finally:
        empty.close()
    full, _ = open_log(big, key, checkpoint_every=10**9, checkpoint_interval=1.0)
    try:
        at_full = _peak_while_appending(full, big_batches)
    finally:
        full.close()
    return {
        "description": f"tracemalloc peak of Python allocations while appending {counts.memory_batches} batches of "
        f"{MEMORY_BATCH} prepared entries, to an empty log and to the full log (SQLite's C page cache not counted)",
        "at_empty_log": at_empty,
        "at_full_log": at_full,
        "peak_ratio_full_over_empty": round(at_full["peak_bytes"] / at_empty["peak_bytes"], 3),
    }


# -- the report ----------------------------------------------------------------------------------------------------


def run(counts: Counts, seed: int, mode: str, workdir: Path) -> dict[str, Any]:
    started = datetime.now(UTC)
    wall = time.perf_counter()
    key = signer(seed)
    source = EventSource(seed)
    prepared = source.entries(counts.append_events)
    workloads: dict[str, dict[str, Any]] = {
        "append-batch-100": bench_append(workdir, prepared, 100, key),
        "append-batch-1000": bench_append(workdir, prepared, 1000, key),
    }
    del prepared
    big = workdir / "big.sqlite3"
    build = build_log(big, key, source, counts.log_size)
    workloads.update(bench_proofs(big, key, counts, seed))
    workloads["append-memory"] = bench_memory(workdir, big, key, source, counts)
    summary = attach_targets(workloads, TARGETS)
    return {
        "format": FORMAT,
        "mode": mode,
        "seed": seed,
        "started_at": format_timestamp(started),
        "duration_seconds": round(time.perf_counter() - wall, 2),
        "environment": environment(sqlite=sqlite3.sqlite_version),
        "log_build": build,
        "workloads": workloads,
        "summary": summary,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the SQLite audit ledger; print JSON.")
    parser.add_argument("--quick", action="store_true", help="a 20,000-entry log and smaller counts, for CI")
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the event generator (default 1234)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="cra-bench-ledger-") as tmp:
        report = run(QUICK if args.quick else FULL, args.seed, "quick" if args.quick else "full", Path(tmp))
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

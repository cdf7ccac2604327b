"""Crash safety of the SQLite ledger: a writer killed with SIGKILL at random moments.

A child process appends batches to a data directory through ``open_ledger`` and
prints ``ack <last index> <event id>`` after each ``append_entries`` returns.
The parent kills it at a random moment, reopens the directory and checks that
every acknowledged entry is there at its index, that the log holds exactly the
entries the child generates (no gap, no duplicate, no torn batch), that
``audit()`` passes and that the root and every stored checkpoint match a root
computed here from the entries (RFC 9162 §2.1.1, independently of cra's Merkle
code). The next child continues the same log.
"""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from cra.ledger.checkpoint import open_checkpoint
from cra.runtime.ports import LedgerEntry
from cra.store.datadir import open_ledger
from cra.store.keys import Keyring
from cra.store.ledger import SqliteLedgerStore

# The entries both processes agree on: entry ``i`` of the log is ``entry(i)``, a TRACE-like JSON line of about
# 400 bytes with a UUIDv7-shaped event id, fifty events to a session. The child logs them in order.
ENTRIES = r"""
import hashlib, json

def _uuid(tag, n):
    h = hashlib.sha256(f"{tag}-{n}".encode()).hexdigest()
    return f"0195{h[:4]}-{h[4:8]}-7{h[8:11]}-{'89ab'[int(h[11], 16) % 4]}{h[12:15]}-{h[15:27]}"

def entry(i):
    from cra.runtime.ports import LedgerEntry
    event_id, session_id = _uuid("event", i), _uuid("session", i // 50)
    line = {
        "trace_version": "1.0",
        "event_id": event_id,
        "trace_id": _uuid("trace", i // 50),
        "span_id": _uuid("span", i // 5),
        "parent_span_id": None,
        "session_id": session_id,
        "sequence": i % 50,
        "timestamp": f"2025-03-14T09:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}000Z",
        "event_type": "policy.evaluated",
        "payload": {"action_id": f"tickets.update.{i % 7}", "decision": "allow" if i % 3 else "deny",
                    "policy_ids": [f"pol-{i % 11}", f"pol-{i % 13}"], "amount": i * 37 % 5000},
        "event_hash": hashlib.sha256(f"event-hash-{i}".encode()).hexdigest(),
        "previous_event_hash": hashlib.sha256(f"event-hash-{i - 1}".encode()).hexdigest(),
    }
    return LedgerEntry(event_id, session_id, json.dumps(line, separators=(",", ":")).encode())
"""

CHILD = (
    ENTRIES
    + r"""
import random, sys
from cra.store.datadir import open_ledger

ledger = open_ledger(sys.argv[1], create=True, checkpoint_every=256, checkpoint_interval=0.1)
rng = random.Random(int(sys.argv[2]))
n = ledger.size
print("ready", n, flush=True)
while True:
    batch = [entry(i) for i in range(n, n + rng.randint(1, 40))]
    indexes = ledger.append_entries(batch)
    print("ack", indexes[batch[-1].event_id], batch[-1].event_id, flush=True)
    n += len(batch)
"""
)

_shared: dict[str, object] = {}
exec(compile(ENTRIES, "<entries>", "exec"), _shared)  # noqa: S102 - the child's own generator, run here too
entry = cast("Callable[[int], LedgerEntry]", _shared["entry"])

ROUNDS = 10


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mth(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    """RFC 9162 §2.1.1 MTH over ``leaves[lo:hi]``, split at the largest power of two below the size."""
    n = hi - lo
    if n == 0:
        return _sha256(b"")
    if n == 1:
        return leaves[lo]
    k = 1 << ((n - 1).bit_length() - 1)
    return _sha256(b"\x01" + mth(leaves, lo, lo + k) + mth(leaves, lo + k, hi))


def roots_at(leaves: Sequence[bytes], sizes: set[int]) -> dict[int, bytes]:
    """The root at each of ``sizes``, from one pass that keeps the perfect subtrees of the right edge."""
    roots: dict[int, bytes] = {}
    edge: list[tuple[int, bytes]] = []  # (height, hash), largest first
    for count, leaf in enumerate(leaves, 1):
        node, height = leaf, 0
        while edge and edge[-1][0] == height:
            node, height = _sha256(b"\x01" + edge.pop()[1] + node), height + 1
        edge.append((height, node))
        if count in sizes:
            acc = edge[-1][1]
            for _, left in reversed(edge[:-1]):
                acc = _sha256(b"\x01" + left + acc)
            roots[count] = acc
    return roots


def run_child(data_dir: Path, seed: int, delay: float, after_ready: bool) -> str:
    """Start a writer, SIGKILL it ``delay`` seconds after it started (or after it opened the log), return its output."""
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", CHILD, str(data_dir), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    try:
        head = ""
        if after_ready:
            assert proc.stdout is not None
            head = proc.stdout.readline()
            if not head.startswith("ready "):
                proc.kill()
                _, err = proc.communicate(timeout=60)
                pytest.fail(f"the writer did not start: {head!r}\n{err}")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        watchdog.cancel()
    assert proc.returncode == -signal.SIGKILL, f"the writer exited by itself ({proc.returncode}):\n{err}"
    return head + out


def acknowledged(output: str) -> dict[str, int]:
    """The ``ack`` lines the writer finished printing (a line cut by the kill does not count)."""
    complete = output[: output.rfind("\n") + 1]
    acks = {}
    for line in complete.splitlines():
        if line.startswith("ack "):
            _, index, event_id = line.split(" ")
            acks[event_id] = int(index)
    return acks


@pytest.mark.slow
def test_a_writer_killed_at_random_moments_never_loses_or_tears_an_acknowledged_batch(tmp_path: Path) -> None:
    rng = random.Random(20250314)
    data_dir = tmp_path / "data"
    acked: dict[str, int] = {}
    expected: list[Any] = []
    leaves: list[bytes] = []
    previous_size = 0
    verified_checkpoints = 0
    kills_mid_append = 0
    for round_no in range(ROUNDS):
        after_ready = round_no == 0 or rng.random() < 0.8  # now and then, kill it while it opens the log
        output = run_child(data_dir, rng.randrange(1 << 30), rng.uniform(0.05, 0.4), after_ready)
        new = acknowledged(output)
        kills_mid_append += bool(new)
        for event_id, index in new.items():
            assert entry(index).event_id == event_id, f"ack of index {index} names {event_id}"
        acked.update(new)

        keyring = Keyring(data_dir / "keys")
        if not keyring.exists:  # killed before it had a key: it cannot have logged anything
            assert not acked
            continue
        ledger = open_ledger(data_dir)
        store = SqliteLedgerStore(data_dir / "ledger.sqlite3", origin=keyring.origin)
        try:
            size = ledger.size
            assert store.size() == size
            assert size >= max(acked.values(), default=-1) + 1
            # Every acknowledged batch is there, at the index it was acknowledged with.
            assert store.find(list(acked)) == acked
            for event_id in rng.sample(sorted(acked), min(20, len(acked))):
                assert ledger.index_of(event_id) == acked[event_id]
            # The log is exactly entry(0) ... entry(size - 1): nothing torn, doubled or skipped, nothing committed lost.
            assert size >= previous_size, f"the log shrank from {previous_size} to {size} entries"
            previous_size = size
            while len(expected) < size:
                expected.append(entry(len(expected)))
                leaves.append(_sha256(b"\x00" + expected[-1].data))
            assert store.entries(0, size) == expected[:size]

            report = ledger.audit()
            root = mth(leaves[:size], 0, size)
            assert (report.size, report.root) == (size, root)
            assert ledger.root() == root
            checkpoints = store.checkpoints()
            roots = roots_at(leaves[:size], {s for s, _ in checkpoints} | {size})
            assert roots[size] == root
            for checkpoint_size, note in checkpoints:
                checkpoint = open_checkpoint(note, ledger.verifiers, origin=ledger.origin)
                assert (checkpoint.size, checkpoint.root) == (checkpoint_size, roots[checkpoint_size])
            assert report.checkpoints == len(checkpoints)
            verified_checkpoints = len(checkpoints)
        finally:
            store.close()
            ledger.close()

    assert kills_mid_append >= 5, "too few kills landed while the writer was appending"
    assert len(acked) >= 20
    assert verified_checkpoints >= 5

"""Sealing off the call path (issue #13): order kept, batches formed, failures retried, nothing dropped."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import EXAMPLES

from cra.errors import LedgerError
from cra.ledger.bundle import verify_bundle
from cra.ledger.note import NoteSigner
from cra.runtime.clock import ManualClock
from cra.runtime.ids import SeededIds
from cra.runtime.ledger import AuditLedger
from cra.runtime.memory import MemoryLedgerStore
from cra.runtime.records import AttestationClaim
from cra.runtime.resolver import Resolver
from cra.runtime.sealing import BackgroundSealer
from cra.trace.event import TraceEvent, build_event, format_timestamp

ORIGIN = "cra.test/log"
KEY = NoteSigner(ORIGIN, bytes(range(32)))


def _events(n: int, start: int = 0) -> list[TraceEvent]:
    """``n`` chained events of one session, from sequence ``start`` (the chain's hashes are not checked here)."""
    out: list[TraceEvent] = []
    for i in range(start, start + n):
        out.append(
            build_event(
                out[-1] if out else None,
                event_id=f"01a23700-0000-7000-8000-{i:012d}",
                trace_id="01a23700-0000-7000-8000-0000000000f1",
                span_id="01a23700-0000-7000-8000-0000000000f2",
                parent_span_id=None,
                session_id="s",
                timestamp="2026-12-02T18:00:00Z",
                event_type="session.started",
                payload={"n": i},
            )
        )
    return out


class RecordingLedger:
    """A stand-in for the audit ledger: records each append and checkpoint; can block or fail on demand."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.failures = 0

    def append(self, events: Sequence[TraceEvent], claims: Sequence[AttestationClaim] = ()) -> None:
        self.entered.set()
        assert self.gate.wait(30)
        if self.failures:
            self.failures -= 1
            raise OSError("disk full")
        self.calls.append(("append", [e.payload["n"] for e in events]))

    def checkpoint(self) -> None:
        self.calls.append(("checkpoint", []))

    def appended(self) -> list[int]:
        return [n for kind, ns in self.calls if kind == "append" for n in ns]


def test_operations_queued_while_an_append_runs_are_sealed_together_in_order() -> None:
    ledger = RecordingLedger()
    ledger.gate.clear()
    sealer = BackgroundSealer(ledger)
    sealer.append(_events(1))
    assert ledger.entered.wait(30)  # the first append is under way and held
    for i in range(1, 50):
        sealer.append(_events(1, i))  # each returns at once
    ledger.gate.set()
    sealer.flush()
    assert ledger.appended() == list(range(50))
    assert len(ledger.calls) == 2  # the first call, then the 49 that queued meanwhile in one batch
    sealer.close()


def test_a_failing_ledger_keeps_the_queue_and_flush_says_why() -> None:
    ledger = RecordingLedger()
    ledger.failures = 1
    sealer = BackgroundSealer(ledger)
    sealer.append(_events(3))
    with pytest.raises(LedgerError, match="disk full"):
        sealer.flush()
    sealer.append(_events(2, 3))
    sealer.flush()  # the retry succeeded: the failed batch first, then the rest, each exactly once
    assert ledger.appended() == [0, 1, 2, 3, 4]
    sealer.close()


def test_a_checkpoint_is_signed_after_everything_queued_before_it() -> None:
    ledger = RecordingLedger()
    sealer = BackgroundSealer(ledger)
    sealer.append(_events(2))
    sealer.checkpoint()
    sealer.flush()
    assert [kind for kind, _ in ledger.calls][-1] == "checkpoint"
    assert ledger.appended() == [0, 1]
    sealer.close()


def test_close_seals_what_is_queued_and_refuses_more() -> None:
    ledger = RecordingLedger()
    sealer = BackgroundSealer(ledger)
    sealer.append(_events(4))
    sealer.close()
    assert ledger.appended() == [0, 1, 2, 3]
    with pytest.raises(LedgerError, match="closed"):
        sealer.append(_events(1, 4))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.integers(min_value=1, max_value=5), st.just(0)), max_size=30))
def test_any_mix_of_appends_and_checkpoints_reaches_the_ledger_in_order(ops: list[int]) -> None:
    ledger = RecordingLedger()
    sealer = BackgroundSealer(ledger)
    sent = 0
    for op in ops:
        if op == 0:
            sealer.checkpoint()
        else:
            sealer.append(_events(op, sent))
            sent += op
    sealer.close()
    assert ledger.appended() == list(range(sent))
    if ops and ops[-1] == 0:
        assert ledger.calls[-1][0] == "checkpoint"


def _governed_session(r: Resolver, clock: ManualClock, ids: SeededIds) -> str:
    r.load_atlas(EXAMPLES / "customer-support")
    sid = r.create_session(agent_id="support-bot", goal="Refund order 42", roles=["agent"])
    request: dict[str, Any] = {
        "carp_version": "1.0",
        "request_id": ids.new_id(),
        "timestamp": format_timestamp(clock.now()),
        "operation": "resolve",
        "requester": {"agent_id": "support-bot", "session_id": sid},
        "task": {"goal": "Refund order 42", "risk_tier": "low"},
    }
    rid = r.resolve(request)["resolution_id"]
    for n in range(5):
        execution = {"resolution_id": rid, "action_id": "order.lookup", "parameters": {"order_id": str(n)}}
        r.execute({**request, "request_id": ids.new_id(), "operation": "execute", "execution": execution})
    r.end_session(sid)
    return sid


def test_a_resolver_sealing_in_the_background_exports_the_same_whole_session(tmp_path: Path) -> None:
    """The same governed session, sealed per call and in the background: the same ledger afterwards."""
    bundles = []
    for background in (False, True):
        clock = ManualClock(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
        ids = SeededIds(7, clock)
        ledger = AuditLedger(MemoryLedgerStore(), [KEY], origin=ORIGIN, clock=clock)
        r = Resolver(clock=clock, ids=ids, ledger=ledger, seal_in_background=background)
        r.register_executor("order.lookup", lambda args: {"found": True})
        sid = _governed_session(r, clock, ids)
        r.flush()
        assert ledger.size == len(r.get_trace(sid))
        bundle = ledger.export(sid)
        report = verify_bundle(bundle, [KEY.verifier])
        assert report.sessions[0].ended
        bundles.append([entry.entry for entry in bundle.entries])
        r.close()
    assert bundles[0] == bundles[1]

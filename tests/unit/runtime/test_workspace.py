"""The workspace must behave exactly like the resolver's own stores.

A scripted session runs twice with the same clock and ids: once on the
in-memory stores, once on a workspace that is loaded from a snapshot before
every operation and whose changes are then applied to a plain model of a
database. If the changes missed anything an operation wrote, or the snapshot
missed anything it read, the two traces would differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cra import ManualClock, Resolver, SeededIds, dumps_trace
from cra.errors import CRAError
from cra.runtime.approvals import Approval
from cra.runtime.memory import HmacSigner, MemoryCounters
from cra.runtime.records import IdempotentCall, ResolutionRecord, Session, SnapshotKeys
from cra.runtime.workspace import Changes, Snapshot, Workspace
from cra.trace.chain import verify_chain
from cra.trace.event import TraceEvent, format_timestamp

ATLAS = Path(__file__).resolve().parents[3] / "examples" / "atlases" / "customer-support"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@dataclass
class DictDatabase:
    """A model of the durable state: what a commit writes, what a snapshot reads."""

    sessions: dict[str, Session] = field(default_factory=dict)
    events: dict[str, list[TraceEvent]] = field(default_factory=dict)
    resolutions: dict[str, ResolutionRecord] = field(default_factory=dict)
    approvals: dict[str, Approval] = field(default_factory=dict)
    request_ids: set[tuple[str, str]] = field(default_factory=set)
    idempotency: dict[tuple[str, str], IdempotentCall] = field(default_factory=dict)
    claims: dict[str, Any] = field(default_factory=dict)
    checkpoints: int = 0
    #: Running calls: execution id to session id.
    running: dict[str, str] = field(default_factory=dict)

    def snapshot(self, keys: SnapshotKeys) -> Snapshot:
        snap = Snapshot()
        sid = keys.session_id
        if sid is None or sid not in self.sessions:
            return snap
        snap.sessions[sid] = self.sessions[sid]
        chain = self.events.get(sid, [])
        if chain:
            snap.tails[sid] = chain[-1]
        if keys.whole_chain:
            snap.chains[sid] = list(chain)
            snap.running[sid] = {execution for execution, owner in self.running.items() if owner == sid}
        snap.approvals = {a.approval_id: a for a in self.approvals.values() if a.session_id == sid}
        if keys.resolution_id in self.resolutions and self.resolutions[keys.resolution_id].session_id == sid:
            snap.resolutions[keys.resolution_id] = self.resolutions[keys.resolution_id]
        if (sid, keys.request_id) in self.request_ids:
            snap.request_ids.add((sid, keys.request_id or ""))
        if keys.idempotency_key is not None and (sid, keys.idempotency_key) in self.idempotency:
            snap.idempotency[(sid, keys.idempotency_key)] = self.idempotency[(sid, keys.idempotency_key)]
        return snap

    def commit(self, changes: Changes) -> None:
        for session, before in changes.sessions.values():
            stored = self.sessions.get(session.session_id)
            assert (stored.status if stored else None) == before
            self.sessions[session.session_id] = session
        for event in changes.events:
            chain = self.events.setdefault(event.session_id, [])
            assert event.sequence == len(chain)
            chain.append(event)
        for record in changes.resolutions:
            self.resolutions[record.resolution_id] = record
        for approval, before in changes.approvals.values():
            stored_approval = self.approvals.get(approval.approval_id)
            assert (stored_approval.status if stored_approval else None) == before
            self.approvals[approval.approval_id] = approval
        for pair in changes.request_ids:
            assert pair not in self.request_ids
            self.request_ids.add(pair)
        for pair in changes.idempotency_released:
            self.idempotency.pop(pair, None)
        for pair, call in changes.idempotency_new.items():
            assert pair not in self.idempotency
            self.idempotency[pair] = call
        for pair, response in changes.idempotency_done.items():
            self.idempotency[pair] = replace(self.idempotency[pair], response=response)
        for execution_id, running in changes.calls_started.items():
            assert execution_id not in self.running
            self.running[execution_id] = running.session_id
        for execution_id in changes.calls_finished:
            del self.running[execution_id]
        self.claims.update(changes.claims)
        self.checkpoints += changes.checkpoint


def _executor(args: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "echo": args}


class Script:
    """Runs operations on a resolver, recording what each returned or raised."""

    def __init__(self, clock: ManualClock, run: Callable[[SnapshotKeys, Callable[[Resolver], Any]], Any]) -> None:
        self.clock = clock
        self.run = run
        self.outcomes: list[Any] = []
        self.n = 0

    def request_id(self) -> str:
        self.n += 1
        return f"00000000-0000-4000-8000-{self.n:012d}"

    def carp(self, sid: str, operation: str, **extra: Any) -> dict[str, Any]:
        return {
            "carp_version": "1.0",
            "request_id": extra.pop("request_id", None) or self.request_id(),
            "timestamp": format_timestamp(self.clock.now()),
            "operation": operation,
            "requester": {"agent_id": "support-bot", "session_id": sid},
            "task": {"goal": "Refund order 42"},
            **extra,
        }

    def step(self, keys: SnapshotKeys, op: Callable[[Resolver], Any]) -> Any:
        try:
            out = self.run(keys, op)
        except CRAError as exc:
            out = ("raised", type(exc).__name__, str(exc))
        self.outcomes.append(out)
        self.clock.advance(1)
        return out


def scenario(script: Script) -> str:
    sid: str = script.step(
        SnapshotKeys("default"),
        lambda r: r.create_session("support-bot", "Refund order 42", roles=["agent"]),
    )
    resolve = script.carp(sid, "resolve")
    resolution = script.step(
        SnapshotKeys("default", sid, request_id=resolve["request_id"]), lambda r: r.resolve(resolve)
    )
    rid = resolution["resolution_id"]

    def execute(action: str, params: dict[str, Any], ticket: str | None = None, key: str | None = None) -> Any:
        execution: dict[str, Any] = {"resolution_id": rid, "action_id": action, "parameters": params}
        if key is not None:
            execution["idempotency_key"] = key
        req = script.carp(sid, "execute", execution=execution)
        keys = SnapshotKeys("default", sid, resolution_id=rid, request_id=req["request_id"], idempotency_key=key)
        return script.step(keys, lambda r: r.execute(req, approval_ticket=ticket))

    execute("order.lookup", {"order_id": "42"}, key="k1")
    execute("order.lookup", {"order_id": "42"}, key="k1")  # idempotent repeat
    execute("customer.delete", {"customer_id": "7"})  # denied
    pending = execute("refund.create", {"order_id": "42", "amount": 25_000, "currency": "SAR"}, key="k2")
    assert pending["status"] == "pending_approval", pending
    approval_id = pending["result"]["approval_id"]
    ticket = script.step(
        SnapshotKeys("default", sid),
        lambda r: r.approve(approval_id, approver="lead", approver_roles=["supervisor"]),
    )
    execute("refund.create", {"order_id": "42", "amount": 25_000, "currency": "SAR"}, ticket=ticket.token, key="k2")
    execute("refund.create", {"order_id": "42", "amount": 25_000, "currency": "SAR"}, ticket=ticket.token)  # used
    replayed = script.carp(sid, "resolve", request_id=resolve["request_id"])
    script.step(SnapshotKeys("default", sid, request_id=replayed["request_id"]), lambda r: r.resolve(replayed))
    script.step(SnapshotKeys("default", sid, whole_chain=True), lambda r: r.end_session(sid))
    return sid


def _resolver(clock: ManualClock, **ports: Any) -> Resolver:
    r = Resolver(clock=clock, ids=SeededIds(7, clock), counters=MemoryCounters(), signer=HmacSigner(b"k" * 32), **ports)
    r.load_atlas(ATLAS)
    for action in ("order.lookup", "refund.create", "customer.lookup", "ticket.reply"):
        r.register_executor(action, _executor)
    return r


def test_a_workspace_over_committed_snapshots_traces_exactly_like_the_memory_stores() -> None:
    clock_a = ManualClock(T0)
    plain = _resolver(clock_a)
    script_a = Script(clock_a, lambda keys, op: op(plain))
    sid_a = scenario(script_a)

    clock_b = ManualClock(T0)
    db = DictDatabase()
    ws = Workspace()
    over = _resolver(
        clock_b,
        sessions=ws.sessions,
        events=ws.events,
        resolutions=ws.resolutions,
        approvals=ws.approvals,
        ledger=ws.ledger,
    )

    def run(keys: SnapshotKeys, op: Callable[[Resolver], Any]) -> Any:
        ws.load(db.snapshot(keys))
        try:
            return op(over)
        finally:
            db.commit(ws.take())

    script_b = Script(clock_b, run)
    sid_b = scenario(script_b)

    assert sid_a == sid_b
    assert dumps_trace(plain.get_trace(sid_a)) == dumps_trace(db.events[sid_b])
    assert [repr(o) for o in script_a.outcomes] == [repr(o) for o in script_b.outcomes]
    verify_chain(db.events[sid_b])
    kinds = [e.event_type for e in db.events[sid_b]]
    assert kinds.count("action.approved") == 1
    assert kinds[-1] == "session.ended"
    assert db.checkpoints == 1  # ending the session asked the ledger for a checkpoint
    # Every attested decision is an event of the chain.
    assert set(db.claims) <= {e.event_id for e in db.events[sid_b]}
    assert db.claims  # the resolution and the policy decisions of execute were attested


def test_a_snapshot_without_the_chain_refuses_to_count_it() -> None:
    ws = Workspace()
    with pytest.raises(LookupError, match="was not loaded"):
        ws.events.events("some-session")


def test_events_must_continue_the_loaded_tail() -> None:
    ws = Workspace()
    r = _resolver(ManualClock(T0), sessions=ws.sessions, events=ws.events, ledger=ws.ledger)
    sid = r.create_session("support-bot", "x", roles=["agent"])
    first = ws.take()
    assert [e.sequence for e in first.events] == [0]
    # A new operation on a snapshot that lacks the tail cannot silently restart the chain at 0.
    ws.load(Snapshot(sessions={sid: first.sessions[sid][0]}))
    with pytest.raises(ValueError, match="does not continue"):
        ws.events.append(first.events[0]._replace(sequence=1))


def test_changes_record_the_status_each_write_started_from() -> None:
    ws = Workspace()
    r = _resolver(ManualClock(T0), sessions=ws.sessions, events=ws.events, ledger=ws.ledger)
    sid = r.create_session("support-bot", "x", roles=["agent"])
    created = ws.take()
    session, before = created.sessions[sid]
    assert before is None
    assert session.status == "active"
    ws.load(
        Snapshot(
            sessions={sid: session},
            tails={sid: created.events[-1]},
            chains={sid: list(created.events)},
            running={sid: set()},
        )
    )
    r.end_session(sid)
    ended = ws.take()
    assert ended.sessions[sid][1] == "active"
    assert ended.sessions[sid][0].status == "ended"
    assert ended.checkpoint
    assert ws.take().empty

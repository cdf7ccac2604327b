"""The service's SQL state store, on SQLite and (with ``CRA_TEST_POSTGRES_URL``) PostgreSQL.

Everything written goes in as runtime values (sessions, chained TRACE events,
resolutions, approvals, idempotency records, attestation claims) and is
compared with the values the test built, never with another read of the same
rows. Expected orders and counts are worked out here from the data the test
chose. The async API runs under ``asyncio.run`` inside ordinary tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from cra.errors import ConflictError
from cra.protocol.atlas import AtlasRef
from cra.runtime.approvals import Approval
from cra.runtime.ledger import entry_of
from cra.runtime.records import AtlasRecord, AttestationClaim, IdempotentCall, ResolutionRecord, Session, SnapshotKeys
from cra.runtime.workspace import Changes, Snapshot, Workspace
from cra.store.database import alembic_config, open_state
from cra.store.state import ApiKeyRecord, SqlState
from cra.store.tables import Base
from cra.trace.chain import verify_chain
from cra.trace.event import GENESIS_HASH, TraceEvent, build_event, format_timestamp
from cra.trace.jsonl import dumps_event

T = TypeVar("T")

TENANT = "acme"
OTHER = "globex"
T0 = datetime(2025, 3, 14, 9, 26, 53, 123456, tzinfo=UTC)
ARABIC = "مرحبا بالعالم — اقرأ المستند رقم ٤٢ 🌙"
SERVICE_TABLES = {
    "api_keys",
    "approvals",
    "atlases",
    "events",
    "idempotency_keys",
    "ledger_attestations",
    "ledger_checkpoints",
    "ledger_entries",
    "ledger_hashes",
    "ledger_meta",
    "request_ids",
    "resolutions",
    "running_calls",
    "sessions",
}


# -- building runtime values -------------------------------------------------------------------------------------------


def uid(kind: int, n: int) -> str:
    """A UUID-shaped id, distinct per (kind, n)."""
    return f"01950f3b-{kind:04x}-7000-8000-{n:012x}"


def stamp(seconds: float) -> str:
    return format_timestamp(T0 + timedelta(seconds=seconds))


def make_session(n: int, *, tenant: str = TENANT, agent: str = "agent-1", minutes: int = 0, **changes: Any) -> Session:
    session = Session(
        session_id=uid(1, n),
        tenant_id=tenant,
        agent_id=agent,
        goal=f"{ARABIC} ({n})",
        roles=frozenset({"analyst", "مراجع"}),
        trace_id=uid(2, n),
        root_span_id=uid(3, n),
        created_at=T0 + timedelta(minutes=minutes),
        atlas_ids=("atlas.docs", "atlas.مالية"),
        metadata={"ticket": f"T-{n}", "ملاحظة": ARABIC, "nested": {"depth": [1, 2.5, None, True]}},
    )
    return replace(session, **changes)


def next_event(
    previous: TraceEvent | None,
    session: Session,
    event_type: str,
    payload: Mapping[str, Any],
    *,
    tag: int = 0,
) -> TraceEvent:
    sequence = 0 if previous is None else previous.sequence + 1
    return build_event(
        previous,
        event_id=uid(0x100 + tag, int(session.session_id[-6:], 16) * 10_000 + sequence),
        trace_id=session.trace_id,
        span_id=uid(4, sequence),
        parent_span_id=None if previous is None else session.root_span_id,
        session_id=session.session_id,
        timestamp=stamp(sequence),
        event_type=event_type,
        payload=payload,
    )


def chain_of(session: Session, count: int, *, start: TraceEvent | None = None) -> list[TraceEvent]:
    """``count`` more events of the session's chain, after ``start``."""
    events: list[TraceEvent] = []
    previous = start
    for _ in range(count):
        n = 0 if previous is None else previous.sequence + 1
        previous = next_event(previous, session, "policy.evaluated", {"policy_id": f"p{n}", "result": "allow", "n": n})
        events.append(previous)
    return events


def story(session: Session) -> list[TraceEvent]:
    """A realistic chain: start, request, resolution, action requested and executed, Arabic text throughout."""
    payloads: list[tuple[str, dict[str, Any]]] = [
        ("session.started", {"agent_id": session.agent_id, "goal": session.goal, "metadata": {"لغة": "العربية"}}),
        ("carp.request.received", {"request_id": uid(5, 1), "operation": "resolve", "goal": ARABIC}),
        (
            "carp.resolution.completed",
            {"resolution_id": uid(6, 1), "decision_type": "allow", "allowed_count": 2, "denied_count": 0},
        ),
        ("action.requested", {"action_id": "documents.read", "parameters_hash": "ab" * 32, "note": ARABIC}),
        (
            "action.executed",
            {"action_id": "documents.read", "execution_id": uid(7, 1), "duration_ms": 12, "result": {"نص": ARABIC}},
        ),
    ]
    events: list[TraceEvent] = []
    previous = None
    for event_type, payload in payloads:
        previous = next_event(previous, session, event_type, payload)
        events.append(previous)
    return events


def make_resolution(session: Session, n: int = 1) -> ResolutionRecord:
    return ResolutionRecord(
        resolution_id=uid(6, n),
        session_id=session.session_id,
        request_id=uid(5, n),
        expires_at=T0 + timedelta(minutes=5),
        actions={"documents.read": "atlas.docs", "ledger.post": "atlas.مالية"},
        risk_tier="medium",
        context={"blocks": [{"id": "b1", "text": ARABIC}]},
        document={"carp_version": "1.0", "decision": {"type": "allow"}, "تعليق": ARABIC},
    )


def make_approval(
    n: int,
    session: Session,
    *,
    action: str = "ledger.post",
    agent: str | None = None,
    minutes: int = 0,
    status: str = "pending",
) -> Approval:
    approval = Approval(
        approval_id=uid(8, n),
        tenant_id=session.tenant_id,
        session_id=session.session_id,
        agent_id=agent or session.agent_id,
        action_id=action,
        arguments_hash=f"{n:02x}" * 32,
        parameters={"amount": 125.5, "memo": ARABIC},
        policy_id="two-person-rule",
        atlas_digest="sha256:" + "cd" * 32,
        satisfies=("two-person-rule",),
        carries=(),
        reason=f"يتطلب موافقة {n}",
        approver_roles=("finance-lead", "cfo"),
        ticket_ttl_seconds=300,
        requested_at=T0 + timedelta(minutes=minutes),
    )
    if status == "pending":
        return approval
    return approval.decided(
        status,  # type: ignore[arg-type]
        approver="leila@example.com",
        comment=f"تمت {status}",
        decided_at=T0 + timedelta(minutes=minutes + 1),
        expires_at=None if status != "approved" else T0 + timedelta(minutes=minutes + 6),
    )


def new_session_changes(session: Session, events: list[TraceEvent] | None = None) -> Changes:
    return Changes(sessions={session.session_id: (session, None)}, events=list(events or []))


# -- running -----------------------------------------------------------------------------------------------------------


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[SqlState]:
    state = await open_state(url)
    try:
        yield state
    finally:
        await state.close()


def run(url: str, body: Callable[[SqlState], Awaitable[T]]) -> T:
    async def main() -> T:
        async with opened(url) as state:
            return await body(state)

    return asyncio.run(main())


def _schema_diff(conn: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


async def _bare_schema(url: str) -> tuple[set[str], str | None]:
    """The tables and Alembic revision at ``url``, read without :func:`open_state` (which would migrate)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_tables), await conn.run_sync(_revision)
    finally:
        await engine.dispose()


# -- 1. migrations and models ------------------------------------------------------------------------------------------


#: The newest migration, read from the migration scripts themselves.
HEAD = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite://")).get_current_head()


def test_the_migrations_build_exactly_the_schema_the_models_declare(blank_state_url: str) -> None:
    async def inspect_db(state: SqlState) -> tuple[list[Any], set[str], str | None]:
        async with state.engine.connect() as conn:
            return await conn.run_sync(_schema_diff), await conn.run_sync(_tables), await conn.run_sync(_revision)

    diff, tables, revision = run(blank_state_url, inspect_db)
    assert diff == []
    assert tables == SERVICE_TABLES | {"alembic_version"}
    assert set(Base.metadata.tables) == SERVICE_TABLES
    assert revision == HEAD


def test_a_downgrade_to_base_and_upgrade_again_leaves_a_working_schema(state_url: str) -> None:
    session = make_session(1)
    events = chain_of(session, 3)

    async def before(state: SqlState) -> None:
        await state.commit(new_session_changes(session, events))

    run(state_url, before)
    asyncio.run(asyncio.to_thread(command.downgrade, alembic_config(state_url), "base"))

    tables, revision = asyncio.run(_bare_schema(state_url))
    assert tables <= {"alembic_version"}  # every service table is gone
    assert revision is None

    async def after(state: SqlState) -> tuple[list[Any], str | None, list[str]]:
        async with state.engine.connect() as conn:
            diff, rev = await conn.run_sync(_schema_diff), await conn.run_sync(_revision)
        # The rebuilt schema is empty and takes the same session again.
        assert await state.snapshot(SnapshotKeys(TENANT, session.session_id)) == Snapshot()
        await state.commit(new_session_changes(session, events))
        return diff, rev, await state.event_lines(TENANT, session.session_id)

    diff, revision, lines = run(state_url, after)
    assert diff == []
    assert revision == HEAD
    assert lines == [dumps_event(e) for e in events]


# -- 2. commit and snapshot --------------------------------------------------------------------------------------------


def test_a_committed_operation_reads_back_equal_and_its_lines_byte_exact(state_url: str) -> None:
    session = make_session(1)
    neighbour = make_session(2, minutes=1)  # same tenant: its approvals are not this session's
    events = story(session)
    resolution = make_resolution(session)
    pending = make_approval(1, session, minutes=1)
    approved = make_approval(2, session, minutes=2, status="approved")
    elsewhere = make_approval(3, neighbour, minutes=3)
    first = IdempotentCall("documents.read", "11" * 32, uid(7, 1))
    second = IdempotentCall("ledger.post", "22" * 32, uid(7, 2), {"status": "ok", "نتيجة": ARABIC})
    third = IdempotentCall("ledger.post", "33" * 32, uid(7, 3))
    done = {"status": "completed", "result": {"نص": ARABIC, "n": 3}}
    sid = session.session_id

    async def body(state: SqlState) -> dict[str, Any]:
        await state.commit(
            Changes(
                sessions={sid: (session, None), neighbour.session_id: (neighbour, None)},
                events=events[:3],
                resolutions=[resolution],
                approvals={a.approval_id: (a, None) for a in (pending, approved, elsewhere)},
                request_ids=[(sid, "req-1"), (sid, "req-2")],
                idempotency_new={(sid, "k1"): first, (sid, "k2"): second},
            )
        )
        # A second operation: two more events, k1 completed, k2 released, k3 new.
        await state.commit(
            Changes(
                events=events[3:],
                idempotency_done={(sid, "k1"): done},
                idempotency_released={(sid, "k2")},
                idempotency_new={(sid, "k3"): third},
            )
        )
        out: dict[str, Any] = {
            "full": await state.snapshot(
                SnapshotKeys(
                    TENANT,
                    sid,
                    whole_chain=True,
                    resolution_id=resolution.resolution_id,
                    request_id="req-1",
                    idempotency_key="k1",
                )
            ),
            "tail": await state.snapshot(SnapshotKeys(TENANT, sid, request_id="req-3", idempotency_key="k2")),
            "k3": await state.snapshot(SnapshotKeys(TENANT, sid, idempotency_key="k3")),
            "no_session": await state.snapshot(SnapshotKeys(TENANT)),
            "lines": await state.event_lines(TENANT, sid),
            "events": await state.events(TENANT, sid),
            "executed": await state.events(TENANT, sid, event_type="action.executed"),
            "since": await state.events(TENANT, sid, since_sequence=1, limit=2),
            "session": await state.session(TENANT, sid),
            "approval": await state.approval(TENANT, approved.approval_id),
        }
        return out

    got = run(state_url, body)
    full: Snapshot = got["full"]
    assert full.sessions == {sid: session}
    assert full.tails == {sid: events[4]}
    assert full.chains == {sid: events}
    assert full.resolutions == {resolution.resolution_id: resolution}
    assert full.approvals == {pending.approval_id: pending, approved.approval_id: approved}
    assert full.request_ids == {(sid, "req-1")}
    assert full.idempotency == {(sid, "k1"): IdempotentCall("documents.read", "11" * 32, uid(7, 1), done)}

    tail: Snapshot = got["tail"]
    assert tail.sessions == {sid: session}
    assert tail.tails == {sid: events[4]}
    assert tail.chains == {}
    assert tail.resolutions == {}
    assert tail.request_ids == set()
    assert tail.idempotency == {}  # released
    assert got["k3"].idempotency == {(sid, "k3"): third}
    assert got["no_session"] == Snapshot()

    # The stored lines are the very lines that were hashed, Arabic written as itself.
    expected_lines = [
        json.dumps(e._asdict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False) for e in events
    ]
    assert got["lines"] == expected_lines == [dumps_event(e) for e in events]
    assert ARABIC in got["lines"][1]
    assert "\\u" not in "".join(got["lines"])
    assert [e.sequence for e in got["events"]] == [0, 1, 2, 3, 4]
    assert got["events"] == events
    verify_chain(got["events"])
    assert got["events"][0].previous_event_hash == GENESIS_HASH
    assert got["executed"] == [events[4]]
    assert got["since"] == events[2:4]
    assert got["session"] == session
    assert got["session"].goal == f"{ARABIC} (1)"
    assert got["approval"] == approved
    assert got["approval"].comment == "تمت approved"


def test_state_survives_closing_and_reopening_the_database(state_url: str) -> None:
    session = make_session(1)
    events = story(session)
    ended = replace(session, status="ended", ended_at=T0 + timedelta(hours=1))

    async def write(state: SqlState) -> None:
        await state.commit(new_session_changes(session, events))
        await state.commit(Changes(sessions={session.session_id: (ended, "active")}))

    async def read(state: SqlState) -> tuple[Snapshot, list[str]]:
        snap = await state.snapshot(SnapshotKeys(TENANT, session.session_id, whole_chain=True))
        return snap, await state.event_lines(TENANT, session.session_id)

    run(state_url, write)
    snap, lines = run(state_url, read)
    assert snap.sessions == {session.session_id: ended}
    assert snap.sessions[session.session_id].ended_at == datetime(2025, 3, 14, 10, 26, 53, 123456, tzinfo=UTC)
    assert snap.chains == {session.session_id: events}
    assert lines == [dumps_event(e) for e in events]


def test_an_empty_change_set_writes_nothing(state_url: str) -> None:
    async def body(state: SqlState) -> tuple[tuple[list[Session], int], list[Any]]:
        await state.commit(Changes(claims={}, checkpoint=True))
        return await state.sessions(TENANT), await state.unsealed()

    assert run(state_url, body) == (([], 0), [])


# -- 3. tenancy --------------------------------------------------------------------------------------------------------


def test_another_tenant_sees_nothing_of_a_session(state_url: str) -> None:
    session = make_session(1)
    sid = session.session_id
    approval = make_approval(1, session)
    resolution = make_resolution(session)
    record = IdempotentCall("documents.read", "11" * 32, uid(7, 1))

    async def body(state: SqlState) -> tuple[list[Any], list[Any]]:
        await state.commit(
            Changes(
                sessions={sid: (session, None)},
                events=story(session),
                resolutions=[resolution],
                approvals={approval.approval_id: (approval, None)},
                request_ids=[(sid, "req-1")],
                idempotency_new={(sid, "k1"): record},
            )
        )
        keys: dict[str, Any] = {
            "session_id": sid,
            "whole_chain": True,
            "resolution_id": resolution.resolution_id,
            "request_id": "req-1",
            "idempotency_key": "k1",
        }
        theirs = [
            await state.snapshot(SnapshotKeys(OTHER, **keys)),
            await state.session(OTHER, sid),
            await state.approval(OTHER, approval.approval_id),
            await state.sessions(OTHER),
            await state.approvals(OTHER),
            await state.events(OTHER, sid),
            await state.event_lines(OTHER, sid),
        ]
        ours = [
            await state.snapshot(SnapshotKeys(TENANT, **keys)),
            await state.session(TENANT, sid),
            await state.approval(TENANT, approval.approval_id),
            await state.sessions(TENANT),
            await state.approvals(TENANT),
            len(await state.events(TENANT, sid)),
        ]
        return theirs, ours

    theirs, ours = run(state_url, body)
    assert theirs == [Snapshot(), None, None, ([], 0), ([], 0), [], []]
    snap = ours[0]
    assert snap.sessions == {sid: session}
    assert snap.approvals == {approval.approval_id: approval}
    assert snap.resolutions == {resolution.resolution_id: resolution}
    assert snap.request_ids == {(sid, "req-1")}
    assert snap.idempotency == {(sid, "k1"): record}
    assert ours[1:-1] == [session, approval, ([session], 1), ([approval], 1)]
    assert ours[-1] > 0


# -- 4. conflicts ------------------------------------------------------------------------------------------------------


def test_an_event_at_a_taken_position_conflicts_and_writes_nothing_else(state_url: str) -> None:
    session = make_session(1)
    sid = session.session_id
    events = chain_of(session, 2)
    newcomer = make_session(2)
    ended = replace(session, status="ended", ended_at=T0 + timedelta(hours=1))
    # A different event at sequence 1, which events[1] already holds.
    rival = next_event(events[0], session, "error.occurred", {"code": "late", "message": ARABIC}, tag=9)
    assert rival.sequence == events[1].sequence
    assert rival.event_id != events[1].event_id
    approval = make_approval(1, session)
    resolution = make_resolution(session)

    async def body(state: SqlState) -> dict[str, Any]:
        await state.commit(new_session_changes(session, events))
        with pytest.raises(ConflictError):
            await state.commit(
                Changes(
                    sessions={newcomer.session_id: (newcomer, None), sid: (ended, "active")},
                    events=[rival],
                    resolutions=[resolution],
                    approvals={approval.approval_id: (approval, None)},
                    request_ids=[(sid, "req-lost")],
                    idempotency_new={(sid, "k-lost"): IdempotentCall("a", "b", "c")},
                )
            )
        return {
            "newcomer": await state.session(TENANT, newcomer.session_id),
            "session": await state.session(TENANT, sid),
            "approval": await state.approval(TENANT, approval.approval_id),
            "snap": await state.snapshot(
                SnapshotKeys(
                    TENANT,
                    sid,
                    resolution_id=resolution.resolution_id,
                    request_id="req-lost",
                    idempotency_key="k-lost",
                )
            ),
            "lines": await state.event_lines(TENANT, sid),
            "unsealed": [e for _, e, _ in await state.unsealed()],
            "sessions": await state.sessions(TENANT),
        }

    got = run(state_url, body)
    assert got["newcomer"] is None
    assert got["session"] == session  # still active
    assert got["approval"] is None
    assert got["snap"].resolutions == {}
    assert got["snap"].request_ids == set()
    assert got["snap"].idempotency == {}
    assert got["snap"].approvals == {}
    assert got["lines"] == [dumps_event(e) for e in events]
    assert got["unsealed"] == [entry_of(e) for e in events]
    assert got["sessions"] == ([session], 1)


def test_a_reused_request_id_conflicts(state_url: str) -> None:
    session = make_session(1)
    sid = session.session_id
    events = chain_of(session, 3)

    async def body(state: SqlState) -> tuple[list[str], Snapshot]:
        await state.commit(Changes(sessions={sid: (session, None)}, events=events[:1], request_ids=[(sid, "req-1")]))
        with pytest.raises(ConflictError):
            await state.commit(Changes(events=events[1:2], request_ids=[(sid, "req-1")]))
        # The same request id in another session is a different request.
        other = make_session(2)
        await state.commit(
            Changes(sessions={other.session_id: (other, None)}, request_ids=[(other.session_id, "req-1")])
        )
        # A new request id goes through.
        await state.commit(Changes(events=events[1:3], request_ids=[(sid, "req-2")]))
        return await state.event_lines(TENANT, sid), await state.snapshot(SnapshotKeys(TENANT, sid, request_id="req-2"))

    lines, snap = run(state_url, body)
    assert lines == [dumps_event(e) for e in events]
    assert snap.request_ids == {(session.session_id, "req-2")}


def test_an_approval_decided_from_a_stale_status_conflicts(state_url: str) -> None:
    session = make_session(1)
    sid = session.session_id
    pending = make_approval(1, session)
    approved = make_approval(1, session, status="approved")
    denied = make_approval(1, session, status="denied")
    events = chain_of(session, 2)

    async def body(state: SqlState) -> tuple[Approval | None, list[str], Approval | None]:
        await state.commit(
            Changes(
                sessions={sid: (session, None)}, events=events[:1], approvals={pending.approval_id: (pending, None)}
            )
        )
        await state.commit(Changes(approvals={pending.approval_id: (approved, "pending")}))
        # A second approver who also saw it pending loses, and its event goes with it.
        with pytest.raises(ConflictError):
            await state.commit(Changes(events=events[1:], approvals={pending.approval_id: (denied, "pending")}))
        # Creating it again as new conflicts with the existing row.
        with pytest.raises(ConflictError):
            await state.commit(Changes(approvals={pending.approval_id: (pending, None)}))
        # Deciding an approval that does not exist conflicts too.
        ghost = make_approval(9, session, status="approved")
        with pytest.raises(ConflictError):
            await state.commit(Changes(approvals={ghost.approval_id: (ghost, "pending")}))
        # Redeeming from the status actually stored goes through.
        used = approved.decided("used")
        await state.commit(Changes(approvals={pending.approval_id: (used, "approved")}))
        return (
            await state.approval(TENANT, pending.approval_id),
            await state.event_lines(TENANT, sid),
            await state.approval(TENANT, ghost.approval_id),
        )

    stored, lines, ghost = run(state_url, body)
    assert stored == replace(approved, status="used")
    assert stored is not None
    assert stored.approver == "leila@example.com"
    assert lines == [dumps_event(events[0])]
    assert ghost is None


def test_a_session_changed_from_a_stale_status_conflicts(state_url: str) -> None:
    session = make_session(1)
    sid = session.session_id
    ended = replace(session, status="ended", ended_at=T0 + timedelta(hours=1))
    again = replace(session, status="ended", ended_at=T0 + timedelta(hours=2))
    events = chain_of(session, 2)

    async def body(state: SqlState) -> tuple[Session | None, list[str]]:
        await state.commit(new_session_changes(session, events[:1]))
        await state.commit(Changes(sessions={sid: (ended, "active")}))
        with pytest.raises(ConflictError):
            await state.commit(Changes(sessions={sid: (again, "active")}, events=events[1:]))
        with pytest.raises(ConflictError):  # created twice
            await state.commit(Changes(sessions={sid: (session, None)}))
        missing = make_session(5)
        with pytest.raises(ConflictError):  # updating a session that was never stored
            await state.commit(Changes(sessions={missing.session_id: (missing, "active")}))
        return await state.session(TENANT, sid), await state.event_lines(TENANT, sid)

    stored, lines = run(state_url, body)
    assert stored == ended
    assert stored is not None
    assert stored.ended_at == T0 + timedelta(hours=1)
    assert lines == [dumps_event(events[0])]


def test_idempotency_records_conflict_when_claimed_twice_or_completed_after_vanishing(state_url: str) -> None:
    session = make_session(1)
    sid = session.session_id
    record = IdempotentCall("documents.read", "11" * 32, uid(7, 1))

    async def body(state: SqlState) -> Snapshot:
        await state.commit(Changes(sessions={sid: (session, None)}, idempotency_new={(sid, "k1"): record}))
        with pytest.raises(ConflictError):
            await state.commit(Changes(idempotency_new={(sid, "k1"): replace(record, execution_id=uid(7, 2))}))
        with pytest.raises(ConflictError):
            await state.commit(Changes(idempotency_done={(sid, "never-claimed"): {"status": "ok"}}))
        return await state.snapshot(SnapshotKeys(TENANT, sid, idempotency_key="k1"))

    assert run(state_url, body).idempotency == {(sid, "k1"): record}


def test_a_key_released_and_claimed_again_in_one_operation_replaces_the_stored_record(state_url: str) -> None:
    session = make_session(1)
    sid = session.session_id
    old = IdempotentCall("documents.read", "11" * 32, uid(7, 1))
    new = IdempotentCall("documents.read", "22" * 32, uid(7, 2))

    async def body(state: SqlState) -> Snapshot:
        await state.commit(Changes(sessions={sid: (session, None)}, idempotency_new={(sid, "k1"): old}))
        ws = Workspace()
        ws.load(await state.snapshot(SnapshotKeys(TENANT, sid, idempotency_key="k1")))
        assert ws.sessions.claim_idempotency_key(sid, "k1", new) == old
        ws.sessions.release_idempotency_key(sid, "k1")
        assert ws.sessions.claim_idempotency_key(sid, "k1", new) is None
        await state.commit(ws.take())
        return await state.snapshot(SnapshotKeys(TENANT, sid, idempotency_key="k1"))

    assert run(state_url, body).idempotency == {(sid, "k1"): new}


# -- 5. concurrency ----------------------------------------------------------------------------------------------------


def test_two_writers_racing_for_the_next_position_one_wins_and_the_chain_stays_whole(state_url: str) -> None:
    session = make_session(1)
    sid = session.session_id
    rounds = 20

    async def attempt(state: SqlState, barrier: asyncio.Barrier, n: int, tag: int) -> str:
        snap = await state.snapshot(SnapshotKeys(TENANT, sid, request_id=f"req-{n}-{tag}"))
        assert snap.request_ids == set()
        event = next_event(snap.tails[sid], session, "action.requested", {"action_id": "documents.read"}, tag=tag)
        await barrier.wait()  # both have read the same tail before either writes
        await state.commit(Changes(events=[event], request_ids=[(sid, f"req-{n}-{tag}")]))
        return event.event_id

    async def body(state: SqlState) -> tuple[list[list[str]], list[TraceEvent], list[set[Any]]]:
        await state.commit(new_session_changes(session, chain_of(session, 1)))
        outcomes: list[list[str]] = []
        winners: list[str] = []
        for n in range(rounds):
            barrier = asyncio.Barrier(2)
            results = await asyncio.gather(
                attempt(state, barrier, n, 1), attempt(state, barrier, n, 2), return_exceptions=True
            )
            outcomes.append(sorted(type(r).__name__ for r in results))
            winners.extend(r for r in results if isinstance(r, str))
            for r in results:
                if not isinstance(r, str | ConflictError):
                    raise r
        chain = await state.events(TENANT, sid)
        assert [e.event_id for e in chain[1:]] == winners
        used = [
            (await state.snapshot(SnapshotKeys(TENANT, sid, request_id=f"req-{n}-{tag}"))).request_ids
            for n in range(rounds)
            for tag in (1, 2)
        ]
        return outcomes, chain, used

    outcomes, chain, used = run(state_url, body)
    assert outcomes == [["ConflictError", "str"]] * rounds
    assert [e.sequence for e in chain] == list(range(rounds + 1))
    verify_chain(chain)
    # Each round kept exactly one of the two request ids: the loser wrote nothing.
    assert [sum(len(u) for u in used[2 * n : 2 * n + 2]) for n in range(rounds)] == [1] * rounds


def test_two_approvers_racing_to_decide_one_approval_one_wins(state_url: str) -> None:
    session = make_session(1)
    sid = session.session_id
    rounds = 10
    pending = [make_approval(n, session, minutes=n) for n in range(rounds)]

    async def decide(state: SqlState, barrier: asyncio.Barrier, approval: Approval, status: str) -> str:
        snap = await state.snapshot(SnapshotKeys(TENANT, sid))
        seen = snap.approvals[approval.approval_id]
        decided = seen.decided(status, approver=f"{status}@example.com", decided_at=T0)  # type: ignore[arg-type]
        await barrier.wait()
        await state.commit(Changes(approvals={approval.approval_id: (decided, seen.status)}))
        return status

    async def body(state: SqlState) -> tuple[list[list[str]], list[Approval | None]]:
        await state.commit(
            Changes(sessions={sid: (session, None)}, approvals={a.approval_id: (a, None) for a in pending})
        )
        outcomes: list[list[str]] = []
        stored: list[Approval | None] = []
        for approval in pending:
            barrier = asyncio.Barrier(2)
            results = await asyncio.gather(
                decide(state, barrier, approval, "approved"),
                decide(state, barrier, approval, "denied"),
                return_exceptions=True,
            )
            for r in results:
                if not isinstance(r, str | ConflictError):
                    raise r
            outcomes.append(sorted(type(r).__name__ for r in results))
            winner = next(r for r in results if isinstance(r, str))
            expected.append(approval.decided(winner, approver=f"{winner}@example.com", decided_at=T0))  # type: ignore[arg-type]
            stored.append(await state.approval(TENANT, approval.approval_id))
        return outcomes, stored

    expected: list[Approval] = []
    outcomes, stored = run(state_url, body)
    assert outcomes == [["ConflictError", "str"]] * rounds
    # The stored decision is the winner's, whole: status, approver and time together.
    assert stored == expected
    assert len(expected) == rounds


# -- 6. unsealed events ------------------------------------------------------------------------------------------------


def test_unsealed_events_come_in_commit_order_with_their_claims(state_url: str) -> None:
    a, b = make_session(1), make_session(2)
    a_events = chain_of(a, 3)
    b_events = chain_of(b, 2)
    docs = AtlasRef("atlas.docs", "1.2.0", "sha256:" + "ab" * 32)
    money = AtlasRef("atlas.مالية", "0.9.1", "sha256:" + "ef" * 32)
    claim_a1 = AttestationClaim(a_events[1], "allow", "documents.read", "12" * 32, (docs,))
    claim_b0 = AttestationClaim(b_events[0], "requires_approval", None, "34" * 32, (docs, money))
    claim_a2 = AttestationClaim(a_events[2], "deny", "ledger.post", "56" * 32, ())

    async def body(state: SqlState) -> dict[str, Any]:
        # Commit order interleaves the sessions: a0 a1 | b0 | a2 b1.
        await state.commit(
            Changes(sessions={a.session_id: (a, None)}, events=a_events[:2], claims={claim_a1.event.event_id: claim_a1})
        )
        await state.commit(
            Changes(sessions={b.session_id: (b, None)}, events=b_events[:1], claims={claim_b0.event.event_id: claim_b0})
        )
        await state.commit(Changes(events=[a_events[2], b_events[1]], claims={claim_a2.event.event_id: claim_a2}))
        everything = await state.unsealed()
        first_two = await state.unsealed(limit=2)
        await state.mark_sealed([row for row, _, _ in first_two])
        rest = await state.unsealed()
        await state.mark_sealed([])
        await state.mark_sealed([row for row, _, _ in rest])
        return {
            "everything": everything,
            "first_two": first_two,
            "rest": rest,
            "after": await state.unsealed(),
            "chain": await state.events(TENANT, a.session_id),
        }

    got = run(state_url, body)
    expected = [
        (entry_of(a_events[0]), None),
        (entry_of(a_events[1]), claim_a1),
        (entry_of(b_events[0]), claim_b0),
        (entry_of(a_events[2]), claim_a2),
        (entry_of(b_events[1]), None),
    ]
    assert [(e, c) for _, e, c in got["everything"]] == expected
    rows = [row for row, _, _ in got["everything"]]
    assert rows == sorted(rows)
    assert len(set(rows)) == 5
    assert got["first_two"] == got["everything"][:2]
    assert got["rest"] == got["everything"][2:]
    assert got["after"] == []
    assert got["chain"] == a_events  # sealing leaves the chain itself alone
    claim = got["everything"][2][2]
    assert claim is not None
    assert claim.atlases[1].atlas_id == "atlas.مالية"
    assert claim.action_id is None


def test_mark_sealed_handles_more_rows_than_one_statement_takes(state_url: str) -> None:
    session = make_session(1)
    events = chain_of(session, 1203)

    async def body(state: SqlState) -> tuple[int, list[Any], list[Any]]:
        await state.commit(new_session_changes(session, events))
        pending = await state.unsealed()
        await state.mark_sealed([row for row, _, _ in pending[:1201]])
        left = await state.unsealed()
        return (
            len(pending),
            [e for _, e, _ in left],
            [e.event_id for e in await state.events(TENANT, session.session_id)],
        )

    count, left, ids = run(state_url, body)
    assert count == 1203
    assert left == [entry_of(e) for e in events[1201:]]
    assert ids == [e.event_id for e in events]


# -- 7. listings, atlases, API keys ------------------------------------------------------------------------------------


def test_sessions_list_newest_first_with_filters_counts_and_pages(state_url: str) -> None:
    # (n, agent, minutes after T0, ended?)
    plan = [(1, "agent-1", 0, False), (2, "agent-2", 5, True), (3, "agent-1", 2, False), (4, "agent-1", 9, True)]
    plan += [(5, "agent-2", 7, False)]
    ours = {
        n: make_session(
            n,
            agent=agent,
            minutes=minutes,
            status="ended" if ended else "active",
            ended_at=T0 + timedelta(hours=1) if ended else None,
        )
        for n, agent, minutes, ended in plan
    }
    theirs = [make_session(10 + n, tenant=OTHER, minutes=100 + n) for n in range(2)]

    async def body(state: SqlState) -> dict[str, Any]:
        for s in [*ours.values(), *theirs]:
            await state.commit(new_session_changes(s))
        return {
            "all": await state.sessions(TENANT),
            "agent1": await state.sessions(TENANT, agent_id="agent-1"),
            "ended": await state.sessions(TENANT, status="ended"),
            "agent2_active": await state.sessions(TENANT, agent_id="agent-2", status="active"),
            "page": await state.sessions(TENANT, limit=2, offset=1),
            "past_end": await state.sessions(TENANT, limit=10, offset=5),
            "other": await state.sessions(OTHER),
            "nobody": await state.sessions(TENANT, agent_id="agent-9"),
        }

    got = run(state_url, body)
    # Newest first: minutes 9, 7, 5, 2, 0.
    assert got["all"] == ([ours[4], ours[5], ours[2], ours[3], ours[1]], 5)
    assert got["agent1"] == ([ours[4], ours[3], ours[1]], 3)
    assert got["ended"] == ([ours[4], ours[2]], 2)
    assert got["agent2_active"] == ([ours[5]], 1)
    assert got["page"] == ([ours[5], ours[2]], 5)
    assert got["past_end"] == ([], 5)
    assert got["other"] == ([theirs[1], theirs[0]], 2)
    assert got["nobody"] == ([], 0)


def test_approvals_list_oldest_first_with_filters_counts_and_pages(state_url: str) -> None:
    s1, s2 = make_session(1), make_session(2, agent="agent-2")
    foreign = make_session(3, tenant=OTHER)
    a = {
        1: make_approval(1, s1, minutes=4),
        2: make_approval(2, s1, minutes=1, action="documents.delete", status="approved"),
        3: make_approval(3, s2, minutes=3, status="denied"),
        4: make_approval(4, s2, minutes=0),
        5: make_approval(5, s1, minutes=2, action="documents.delete"),
    }
    f = make_approval(6, foreign, minutes=0)

    async def body(state: SqlState) -> dict[str, Any]:
        for s in (s1, s2, foreign):
            await state.commit(new_session_changes(s))
        await state.commit(Changes(approvals={x.approval_id: (x, None) for x in [*a.values(), f]}))
        return {
            "all": await state.approvals(TENANT),
            "pending": await state.approvals(TENANT, status="pending"),
            "s2": await state.approvals(TENANT, session_id=s2.session_id),
            "agent2": await state.approvals(TENANT, agent_id="agent-2"),
            "delete_pending": await state.approvals(TENANT, action_id="documents.delete", status="pending"),
            "page": await state.approvals(TENANT, limit=2, offset=2),
            "other": await state.approvals(OTHER),
            "other_by_session": await state.approvals(TENANT, session_id=foreign.session_id),
        }

    got = run(state_url, body)
    # Oldest first: minutes 0, 1, 2, 3, 4.
    assert got["all"] == ([a[4], a[2], a[5], a[3], a[1]], 5)
    assert got["pending"] == ([a[4], a[5], a[1]], 3)
    assert got["s2"] == ([a[4], a[3]], 2)
    assert got["agent2"] == ([a[4], a[3]], 2)
    assert got["delete_pending"] == ([a[5]], 1)
    assert got["page"] == ([a[5], a[3]], 5)
    assert got["other"] == ([f], 1)
    assert got["other_by_session"] == ([], 0)


def test_atlases_are_loaded_once_unless_replaced_and_kept_per_tenant(state_url: str) -> None:
    source = json.dumps({"manifest": {"id": "atlas.docs", "name": ARABIC}, "files": {}}, ensure_ascii=False)
    v1 = AtlasRecord(TENANT, "atlas.docs", "1.0.0", "sha256:" + "11" * 32, source, stamp(0))
    v2 = AtlasRecord(TENANT, "atlas.docs", "2.0.0", "sha256:" + "22" * 32, source.replace("atlas", "ATLAS"), stamp(60))
    money = AtlasRecord(TENANT, "atlas.money", "0.1.0", "sha256:" + "33" * 32, "{}", stamp(30))
    theirs = AtlasRecord(OTHER, "atlas.docs", "9.9.9", "sha256:" + "99" * 32, "{}", stamp(90))

    async def body(state: SqlState) -> dict[str, Any]:
        await state.put_atlas(v1, replace=False)
        with pytest.raises(ConflictError):
            await state.put_atlas(v2, replace=False)
        kept = await state.atlases(TENANT)
        await state.put_atlas(theirs, replace=False)  # the same id in another tenant is another atlas
        await state.put_atlas(money, replace=True)  # replace=True also loads one that was not there
        await state.put_atlas(v2, replace=True)
        out = {
            "kept": kept,
            "ours": await state.atlases(TENANT),
            "digests": await state.atlas_digests(TENANT),
            "their_digests": await state.atlas_digests(OTHER),
            "delete_missing": await state.delete_atlas(TENANT, "atlas.nowhere"),
            "delete_wrong_tenant": await state.delete_atlas(OTHER, "atlas.money"),
            "delete": await state.delete_atlas(TENANT, "atlas.docs"),
            "delete_again": await state.delete_atlas(TENANT, "atlas.docs"),
        }
        out["after"] = await state.atlases(TENANT)
        out["theirs_after"] = await state.atlases(OTHER)
        return out

    got = run(state_url, body)
    assert got["kept"] == [v1]
    assert got["ours"] == [v2, money]  # by atlas id
    assert got["ours"][0].source == source.replace("atlas", "ATLAS")
    assert got["digests"] == {"atlas.docs": "sha256:" + "22" * 32, "atlas.money": "sha256:" + "33" * 32}
    assert got["their_digests"] == {"atlas.docs": "sha256:" + "99" * 32}
    assert (got["delete_missing"], got["delete_wrong_tenant"], got["delete"], got["delete_again"]) == (
        False,
        False,
        True,
        False,
    )
    assert got["after"] == [money]
    assert got["theirs_after"] == [theirs]


def test_api_keys_are_stored_listed_counted_and_revoked_once(state_url: str) -> None:
    admin = ApiKeyRecord("key-a", TENANT, "admin", None, (), "aa" * 32, "ops", stamp(0), None)
    agent = ApiKeyRecord("key-b", TENANT, "agent", "agent-1", ("analyst", "مراجع"), "bb" * 32, "وكيل", stamp(10), None)
    early = ApiKeyRecord("key-c", OTHER, "agent", "agent-9", ("viewer",), "cc" * 32, None, stamp(5), None)
    revoked_at = stamp(3600)

    async def body(state: SqlState) -> dict[str, Any]:
        for k in (admin, agent, early):
            await state.put_key(k)
        out: dict[str, Any] = {
            "agent": await state.key("key-b"),
            "missing": await state.key("key-z"),
            "all": await state.keys(),
            "ours": await state.keys(TENANT),
            "theirs": await state.keys(OTHER),
            "count": await state.count_keys(),
            "revoke": await state.revoke_key("key-b", revoked_at),
            "revoke_again": await state.revoke_key("key-b", stamp(7200)),
            "revoke_missing": await state.revoke_key("key-z", revoked_at),
        }
        out["revoked"] = await state.key("key-b")
        out["count_after"] = await state.count_keys()
        return out

    got = run(state_url, body)
    assert got["agent"] == agent
    assert got["agent"].policy_roles == ("analyst", "مراجع")
    assert got["missing"] is None
    assert got["all"] == [admin, early, agent]  # by creation time
    assert got["ours"] == [admin, agent]
    assert got["theirs"] == [early]
    assert got["count"] == 3
    assert (got["revoke"], got["revoke_again"], got["revoke_missing"]) == (True, False, False)
    assert got["revoked"] == replace(agent, revoked_at="2025-03-14T10:26:53.123456Z")
    assert got["count_after"] == 3

"""The service's durable state over async SQLAlchemy: SQLite by default, PostgreSQL to scale out.

:class:`SqlState` loads the :class:`~cra.runtime.workspace.Snapshot` an
operation needs and commits its :class:`~cra.runtime.workspace.Changes` in
one transaction. Every write that could race with another writer is checked
by the database, not by the process: a chain position is unique per session,
a request id once per session, an approval or session changes only from the
status the operation saw. A commit that loses such a race raises
:class:`~cra.errors.ConflictError` and writes nothing.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cra.errors import ConflictError
from cra.runtime.approvals import Approval
from cra.runtime.ports import LedgerEntry
from cra.runtime.records import (
    AtlasRecord,
    AttestationClaim,
    DecisionQuery,
    DecisionRecord,
    RunningCall,
    Session,
    SnapshotKeys,
)
from cra.runtime.workspace import Changes, Snapshot
from cra.store import _codec as codec
from cra.store.tables import (
    ApiKeyRow,
    ApprovalRow,
    AtlasRow,
    EventRow,
    IdempotencyRow,
    RequestIdRow,
    ResolutionRow,
    RunningCallRow,
    SessionRow,
)
from cra.trace.event import TraceEvent
from cra.trace.jsonl import dumps_event

__all__ = ["ApiKeyRecord", "SqlState"]


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    key_id: str
    tenant_id: str
    role: str
    agent_id: str | None
    policy_roles: tuple[str, ...]
    secret_hash: str
    label: str | None
    created_at: str
    revoked_at: str | None


def _session(row: Any) -> Session:
    return codec.session_from(
        session_id=row.session_id,
        tenant_id=row.tenant_id,
        agent_id=row.agent_id,
        status=row.status,
        created_at=row.created_at,
        ended_at=row.ended_at,
        data=row.data,
    )


def _approval(row: Any) -> Approval:
    return codec.approval_from(
        approval_id=row.approval_id,
        tenant_id=row.tenant_id,
        session_id=row.session_id,
        agent_id=row.agent_id,
        action_id=row.action_id,
        status=row.status,
        requested_at=row.requested_at,
        data=row.data,
    )


def _key(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row.key_id,
        tenant_id=row.tenant_id,
        role=row.role,
        agent_id=row.agent_id,
        policy_roles=tuple(json.loads(row.policy_roles)),
        secret_hash=row.secret_hash,
        label=row.label,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


class SqlState:
    """Sessions, chains, resolutions, approvals, atlases and API keys in one database."""

    def __init__(self, engine: AsyncEngine, *, call_lease_seconds: float = 30.0) -> None:
        self.engine = engine
        #: This process's name on the calls it runs: host, process id and a random part, so
        #: that a restarted process with the same id is another owner.
        self.owner = f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:16]}"
        #: How long a running call's lease lasts unless this process renews it.
        self.call_lease_seconds = call_lease_seconds

    async def close(self) -> None:
        await self.engine.dispose()

    # -- one operation --------------------------------------------------------

    async def snapshot(self, keys: SnapshotKeys) -> Snapshot:
        snap = Snapshot()
        sid = keys.session_id
        if sid is None:
            return snap
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(SessionRow).where(SessionRow.session_id == sid, SessionRow.tenant_id == keys.tenant_id)
                )
            ).first()
            if row is None:
                return snap
            snap.sessions[sid] = _session(row)
            if keys.whole_chain:
                lines = (
                    await conn.execute(
                        select(EventRow.line).where(EventRow.session_id == sid).order_by(EventRow.sequence)
                    )
                ).scalars()
                chain = [codec.event_from(line) for line in lines]
                snap.chains[sid] = chain
                if chain:
                    snap.tails[sid] = chain[-1]
            else:
                tail = (
                    await conn.execute(
                        select(EventRow.line)
                        .where(EventRow.session_id == sid)
                        .order_by(EventRow.sequence.desc())
                        .limit(1)
                    )
                ).scalar()
                if tail is not None:
                    snap.tails[sid] = codec.event_from(tail)
            if keys.whole_chain:
                running = await conn.execute(
                    select(RunningCallRow.execution_id).where(RunningCallRow.session_id == sid)
                )
                snap.running[sid] = set(running.scalars())
            for arow in await conn.execute(select(ApprovalRow).where(ApprovalRow.session_id == sid)):
                approval = _approval(arow)
                snap.approvals[approval.approval_id] = approval
            if keys.resolution_id is not None:
                rrow = (
                    await conn.execute(
                        select(ResolutionRow).where(
                            ResolutionRow.resolution_id == keys.resolution_id, ResolutionRow.session_id == sid
                        )
                    )
                ).first()
                if rrow is not None:
                    snap.resolutions[rrow.resolution_id] = codec.resolution_from(
                        rrow.resolution_id, rrow.session_id, rrow.data
                    )
            if keys.request_id is not None:
                used = (
                    await conn.execute(
                        select(RequestIdRow.request_id).where(
                            RequestIdRow.session_id == sid, RequestIdRow.request_id == keys.request_id
                        )
                    )
                ).first()
                if used is not None:
                    snap.request_ids.add((sid, keys.request_id))
            if keys.idempotency_key is not None:
                data = (
                    await conn.execute(
                        select(IdempotencyRow.data).where(
                            IdempotencyRow.session_id == sid, IdempotencyRow.key == keys.idempotency_key
                        )
                    )
                ).scalar()
                if data is not None:
                    snap.idempotency[(sid, keys.idempotency_key)] = codec.idempotent_from(data)
        return snap

    async def commit(self, changes: Changes) -> None:
        """Write one operation's changes, all or nothing; :class:`ConflictError` if it lost a race."""
        if changes.empty:
            return
        try:
            async with self.engine.begin() as conn:
                await self._write(conn, changes)
        except IntegrityError as exc:
            raise ConflictError(f"another writer changed this state first ({type(exc.orig).__name__})") from None

    async def _write(self, conn: AsyncConnection, changes: Changes) -> None:
        for session, before in changes.sessions.values():
            values = {
                "tenant_id": session.tenant_id,
                "agent_id": session.agent_id,
                "status": session.status,
                "created_at": codec.stamp(session.created_at),
                "ended_at": None if session.ended_at is None else codec.stamp(session.ended_at),
                "data": codec.session_data(session),
            }
            if before is None:
                await conn.execute(insert(SessionRow).values(session_id=session.session_id, **values))
            else:
                await _changed(
                    conn,
                    update(SessionRow)
                    .where(SessionRow.session_id == session.session_id, SessionRow.status == before)
                    .values(**values),
                    f"session {session.session_id}",
                )
        owners = {s.session_id: (s.tenant_id, s.agent_id) for s, _ in changes.sessions.values()}
        needed = {e.session_id for e in changes.events} | {c.session_id for c in changes.calls_started.values()}
        if needed - owners.keys():
            rows = await conn.execute(
                select(SessionRow.session_id, SessionRow.tenant_id, SessionRow.agent_id).where(
                    SessionRow.session_id.in_(needed - owners.keys())
                )
            )
            owners.update({r.session_id: (r.tenant_id, r.agent_id) for r in rows})
        if changes.events:
            await conn.execute(
                insert(EventRow),
                [
                    {
                        "event_id": e.event_id,
                        "tenant_id": owners[e.session_id][0],
                        "agent_id": owners[e.session_id][1],
                        "session_id": e.session_id,
                        "sequence": e.sequence,
                        "event_type": e.event_type,
                        "timestamp": e.timestamp,
                        "line": dumps_event(e),
                        "sealed": False,
                        "claim": _claim(changes.claims.get(e.event_id)),
                        "attested": e.event_id in changes.claims,
                        **_decision_columns(e),
                    }
                    for e in changes.events
                ],
            )
        if changes.resolutions:
            await conn.execute(
                insert(ResolutionRow),
                [
                    {"resolution_id": r.resolution_id, "session_id": r.session_id, "data": codec.resolution_json(r)}
                    for r in changes.resolutions
                ],
            )
        for approval, before in changes.approvals.values():
            values = {
                "tenant_id": approval.tenant_id,
                "session_id": approval.session_id,
                "agent_id": approval.agent_id,
                "action_id": approval.action_id,
                "status": approval.status,
                "requested_at": codec.stamp(approval.requested_at),
                "data": codec.approval_json(approval),
            }
            if before is None:
                await conn.execute(insert(ApprovalRow).values(approval_id=approval.approval_id, **values))
            else:
                await _changed(
                    conn,
                    update(ApprovalRow)
                    .where(ApprovalRow.approval_id == approval.approval_id, ApprovalRow.status == before)
                    .values(**values),
                    f"approval {approval.approval_id}",
                )
        if changes.request_ids:
            await conn.execute(
                insert(RequestIdRow), [{"session_id": s, "request_id": r} for s, r in changes.request_ids]
            )
        for sid, key in changes.idempotency_released:
            await conn.execute(
                delete(IdempotencyRow).where(IdempotencyRow.session_id == sid, IdempotencyRow.key == key)
            )
        for (sid, key), record in changes.idempotency_new.items():
            await conn.execute(
                insert(IdempotencyRow).values(session_id=sid, key=key, data=codec.idempotent_json(record))
            )
        if changes.calls_started:
            expires = time.time() + self.call_lease_seconds
            await conn.execute(
                insert(RunningCallRow),
                [
                    {
                        "execution_id": call.execution_id,
                        "tenant_id": owners[call.session_id][0],
                        "session_id": call.session_id,
                        "action_id": call.action_id,
                        "idempotency_key": call.idempotency_key,
                        "started_at": codec.stamp(call.started_at),
                        "owner": self.owner,
                        "expires_at": expires,
                    }
                    for call in changes.calls_started.values()
                ],
            )
        for execution_id in changes.calls_finished:
            # Only the owner records a call's end: a call another process took over as lost
            # (its lease ran out) keeps the one outcome that process recorded.
            await _changed(
                conn,
                delete(RunningCallRow).where(
                    RunningCallRow.execution_id == execution_id, RunningCallRow.owner == self.owner
                ),
                f"running call {execution_id}",
            )
        for (sid, key), response in changes.idempotency_done.items():
            data = (
                await conn.execute(
                    select(IdempotencyRow.data).where(IdempotencyRow.session_id == sid, IdempotencyRow.key == key)
                )
            ).scalar()
            if data is None:
                raise IntegrityError("idempotency key vanished", None, ValueError(key))
            done = codec.idempotent_from(data)
            record = type(done)(done.action_id, done.arguments_hash, done.execution_id, response)
            await conn.execute(
                update(IdempotencyRow)
                .where(IdempotencyRow.session_id == sid, IdempotencyRow.key == key)
                .values(data=codec.idempotent_json(record))
            )

    # -- running calls ----------------------------------------------------------

    async def renew_calls(self, execution_ids: Collection[str]) -> int:
        """Extend the leases of these calls, which this process runs; returns how many it holds.

        Only calls the process still runs are renewed: a call whose outcome could not be
        recorded stops being renewed, and is taken over as lost once its lease runs out."""
        if not execution_ids:
            return 0
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(RunningCallRow)
                .where(RunningCallRow.owner == self.owner, RunningCallRow.execution_id.in_(list(execution_ids)))
                .values(expires_at=time.time() + self.call_lease_seconds)
            )
        return int(done.rowcount or 0)

    async def take_over_lost_calls(self, limit: int = 100) -> list[tuple[str, RunningCall]]:
        """Calls whose owner's lease ran out (their process stopped), each now leased to this process so
        that it alone records them; with their tenant."""
        now = time.time()
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(RunningCallRow)
                    .where(RunningCallRow.expires_at < now)
                    .order_by(RunningCallRow.expires_at)
                    .limit(limit)
                )
            ).all()
        taken = []
        for row in rows:
            async with self.engine.begin() as conn:
                claimed = await conn.execute(
                    update(RunningCallRow)
                    .where(RunningCallRow.execution_id == row.execution_id, RunningCallRow.expires_at < now)
                    .values(owner=self.owner, expires_at=time.time() + self.call_lease_seconds)
                )
            if claimed.rowcount == 1:
                call = RunningCall(
                    row.session_id, row.execution_id, row.action_id, codec.when(row.started_at), row.idempotency_key
                )
                taken.append((row.tenant_id, call))
        return taken

    # -- sealing --------------------------------------------------------------

    async def unsealed(self, limit: int = 10_000) -> list[tuple[int, LedgerEntry, AttestationClaim | None]]:
        """Committed events not yet sealed into the ledger, in insertion order (each chain in order),
        as the ledger's entries: the stored line is the leaf. Only events with a claim are parsed."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(EventRow.id, EventRow.event_id, EventRow.session_id, EventRow.line, EventRow.claim)
                .where(EventRow.sealed.is_(False))
                .order_by(EventRow.id)
                .limit(limit)
            )
            out: list[tuple[int, LedgerEntry, AttestationClaim | None]] = []
            for row in rows:
                entry = LedgerEntry(row.event_id, row.session_id, row.line.encode("utf-8"))
                claim = None if row.claim is None else codec.claim_from(codec.event_from(row.line), row.claim)
                out.append((row.id, entry, claim))
            return out

    async def mark_sealed(self, row_ids: Sequence[int]) -> None:
        async with self.engine.begin() as conn:
            for start in range(0, len(row_ids), 500):
                chunk = list(row_ids[start : start + 500])
                await conn.execute(update(EventRow).where(EventRow.id.in_(chunk)).values(sealed=True, claim=None))

    # -- reads ----------------------------------------------------------------

    async def session(self, tenant_id: str, session_id: str) -> Session | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(SessionRow).where(SessionRow.session_id == session_id, SessionRow.tenant_id == tenant_id)
                )
            ).first()
        return None if row is None else _session(row)

    async def sessions(
        self,
        tenant_id: str,
        *,
        agent_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Session], int]:
        where = [SessionRow.tenant_id == tenant_id]
        if agent_id is not None:
            where.append(SessionRow.agent_id == agent_id)
        if status is not None:
            where.append(SessionRow.status == status)
        async with self.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(SessionRow).where(*where))).scalar_one()
            rows = await conn.execute(
                select(SessionRow)
                .where(*where)
                .order_by(SessionRow.created_at.desc(), SessionRow.session_id.desc())
                .limit(limit)
                .offset(offset)
            )
            return [_session(r) for r in rows], int(total)

    async def events(
        self,
        tenant_id: str,
        session_id: str,
        *,
        event_type: str | None = None,
        since_sequence: int | None = None,
        limit: int | None = None,
    ) -> list[TraceEvent]:
        query: Select[Any] = select(EventRow.line).where(
            EventRow.tenant_id == tenant_id, EventRow.session_id == session_id
        )
        if event_type is not None:
            query = query.where(EventRow.event_type == event_type)
        if since_sequence is not None:
            query = query.where(EventRow.sequence > since_sequence)
        query = query.order_by(EventRow.sequence)
        if limit is not None:
            query = query.limit(limit)
        async with self.engine.connect() as conn:
            return [codec.event_from(line) for line in (await conn.execute(query)).scalars()]

    async def event_lines(self, tenant_id: str, session_id: str) -> list[str]:
        """The session's stored lines, exactly as written, in chain order."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(EventRow.line)
                .where(EventRow.tenant_id == tenant_id, EventRow.session_id == session_id)
                .order_by(EventRow.sequence)
            )
            return list(rows.scalars())

    async def approval(self, tenant_id: str, approval_id: str) -> Approval | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(ApprovalRow).where(
                        ApprovalRow.approval_id == approval_id, ApprovalRow.tenant_id == tenant_id
                    )
                )
            ).first()
        return None if row is None else _approval(row)

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
    ) -> tuple[list[Approval], int]:
        where = [ApprovalRow.tenant_id == tenant_id]
        for column, value in (
            (ApprovalRow.status, status),
            (ApprovalRow.session_id, session_id),
            (ApprovalRow.agent_id, agent_id),
            (ApprovalRow.action_id, action_id),
        ):
            if value is not None:
                where.append(column == value)
        async with self.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(ApprovalRow).where(*where))).scalar_one()
            rows = await conn.execute(
                select(ApprovalRow)
                .where(*where)
                .order_by(ApprovalRow.requested_at, ApprovalRow.approval_id)
                .limit(limit)
                .offset(offset)
            )
            return [_approval(r) for r in rows], int(total)

    async def decisions(self, query: DecisionQuery) -> tuple[list[DecisionRecord], int]:
        """Recorded decisions of one tenant, oldest first, with their total count."""
        where = [EventRow.tenant_id == query.tenant_id, EventRow.decision.is_not(None)]
        for column, value in (
            (EventRow.agent_id, query.agent_id),
            (EventRow.action_id, query.action_id),
            (EventRow.decision, query.decision),
            (EventRow.session_id, query.session_id),
        ):
            if value is not None:
                where.append(column == value)
        if query.since is not None:
            where.append(EventRow.timestamp >= query.since)
        if query.until is not None:
            where.append(EventRow.timestamp < query.until)
        if query.attested_only:
            where.append(EventRow.attested.is_(True))
        async with self.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(EventRow).where(*where))).scalar_one()
            rows = await conn.execute(
                select(
                    EventRow.event_id,
                    EventRow.session_id,
                    EventRow.agent_id,
                    EventRow.event_type,
                    EventRow.timestamp,
                    EventRow.action_id,
                    EventRow.decision,
                    EventRow.policy_id,
                    EventRow.attested,
                    EventRow.sealed,
                )
                .where(*where)
                .order_by(EventRow.id)
                .limit(query.limit)
                .offset(query.offset)
            )
            records = [
                DecisionRecord(
                    event_id=r.event_id,
                    session_id=r.session_id,
                    agent_id=r.agent_id,
                    event_type=r.event_type,
                    timestamp=r.timestamp,
                    action_id=r.action_id,
                    decision=r.decision,
                    policy_id=r.policy_id,
                    attestation_id=r.event_id if r.attested else None,
                    sealed=bool(r.sealed),
                )
                for r in rows
            ]
        return records, int(total)

    async def report_rows(
        self, tenant_id: str, *, since: str | None = None, until: str | None = None, limit: int | None = None
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """What reports aggregate: the tenant's decision rows and its approvals' timings.

        Decision rows are ``(timestamp, event_type, agent_id, action_id, decision, policy_id, attested)``;
        approval rows are ``(requested_at, status, action_id, agent_id, data)``.
        """
        where = [EventRow.tenant_id == tenant_id, EventRow.decision.is_not(None)]
        approvals_where = [ApprovalRow.tenant_id == tenant_id]
        if since is not None:
            where.append(EventRow.timestamp >= since)
            approvals_where.append(ApprovalRow.requested_at >= since)
        if until is not None:
            where.append(EventRow.timestamp < until)
            approvals_where.append(ApprovalRow.requested_at < until)
        async with self.engine.connect() as conn:
            decisions = await conn.execute(
                select(
                    EventRow.timestamp,
                    EventRow.event_type,
                    EventRow.agent_id,
                    EventRow.action_id,
                    EventRow.decision,
                    EventRow.policy_id,
                    EventRow.attested,
                )
                .where(*where)
                .order_by(EventRow.id)
                .limit(limit)
            )
            approvals = await conn.execute(
                select(
                    ApprovalRow.requested_at,
                    ApprovalRow.status,
                    ApprovalRow.action_id,
                    ApprovalRow.agent_id,
                    ApprovalRow.data,
                )
                .where(*approvals_where)
                .limit(limit)
            )
            return [tuple(r) for r in decisions], [tuple(r) for r in approvals]

    # -- atlases --------------------------------------------------------------

    async def atlases(self, tenant_id: str) -> list[AtlasRecord]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(AtlasRow).where(AtlasRow.tenant_id == tenant_id).order_by(AtlasRow.atlas_id)
            )
            return [AtlasRecord(r.tenant_id, r.atlas_id, r.version, r.digest, r.source, r.loaded_at) for r in rows]

    async def atlas_digests(self, tenant_id: str) -> dict[str, str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(AtlasRow.atlas_id, AtlasRow.digest).where(AtlasRow.tenant_id == tenant_id))
            return {r.atlas_id: r.digest for r in rows}

    async def put_atlas(self, record: AtlasRecord, *, replace: bool) -> None:
        """Store an atlas; :class:`ConflictError` if one with its id is loaded and ``replace`` is false."""
        values = {
            "version": record.version,
            "digest": record.digest,
            "source": record.source,
            "loaded_at": record.loaded_at,
        }
        try:
            async with self.engine.begin() as conn:
                if replace:
                    await conn.execute(
                        delete(AtlasRow).where(
                            AtlasRow.tenant_id == record.tenant_id, AtlasRow.atlas_id == record.atlas_id
                        )
                    )
                await conn.execute(
                    insert(AtlasRow).values(tenant_id=record.tenant_id, atlas_id=record.atlas_id, **values)
                )
        except IntegrityError:
            raise ConflictError(f"atlas {record.atlas_id!r} is already loaded") from None

    async def delete_atlas(self, tenant_id: str, atlas_id: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(AtlasRow).where(AtlasRow.tenant_id == tenant_id, AtlasRow.atlas_id == atlas_id)
            )
            return bool(result.rowcount)

    # -- API keys -------------------------------------------------------------

    async def put_key(self, record: ApiKeyRecord) -> None:
        try:
            async with self.engine.begin() as conn:
                await self._insert_key(conn, record)
        except IntegrityError:
            raise ConflictError(f"API key {record.key_id} exists") from None

    async def _insert_key(self, conn: AsyncConnection, record: ApiKeyRecord) -> None:
        await conn.execute(
            insert(ApiKeyRow).values(
                key_id=record.key_id,
                tenant_id=record.tenant_id,
                role=record.role,
                agent_id=record.agent_id,
                policy_roles=json.dumps(list(record.policy_roles)),
                secret_hash=record.secret_hash,
                label=record.label,
                created_at=record.created_at,
                revoked_at=record.revoked_at,
            )
        )

    async def key(self, key_id: str) -> ApiKeyRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(ApiKeyRow).where(ApiKeyRow.key_id == key_id))).first()
        return None if row is None else _key(row)

    async def keys(self, tenant_id: str | None = None) -> list[ApiKeyRecord]:
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.key_id)
        if tenant_id is not None:
            query = query.where(ApiKeyRow.tenant_id == tenant_id)
        async with self.engine.connect() as conn:
            return [_key(r) for r in await conn.execute(query)]

    async def count_keys(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(ApiKeyRow))).scalar_one())

    async def revoke_key(self, key_id: str, at: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.key_id == key_id, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=at)
            )
            return bool(result.rowcount)


def _decision_columns(event: TraceEvent) -> dict[str, str | None]:
    """The action, decision and policy an event records, for evidence and reports."""
    payload = event.payload
    decision: Any = None
    if event.event_type == "policy.evaluated":
        decision = payload.get("result")
    elif event.event_type == "carp.resolution.completed":
        decision = payload.get("decision_type")
    elif event.event_type == "policy.violated":
        decision = payload.get("violation_type")
    action, policy = payload.get("action_id"), payload.get("policy_id")
    return {
        "action_id": action if isinstance(action, str) else None,
        "decision": decision if isinstance(decision, str) else None,
        "policy_id": policy if isinstance(policy, str) else None,
    }


def _claim(claim: AttestationClaim | None) -> str | None:
    return None if claim is None else codec.claim_json(claim)


async def _changed(conn: AsyncConnection, statement: Any, what: str) -> None:
    """Run a conditional update; a row that no longer matches means another writer got there first."""
    result = await conn.execute(statement)
    if result.rowcount != 1:
        raise IntegrityError(f"{what} changed under this operation", None, ValueError(what))

"""Evidence and reports: decision records with their attestations, attached evidence, aggregates."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from starlette.responses import JSONResponse

from cra.errors import ProtocolError
from cra.protocol.carp import parse_timestamp
from cra.runtime.records import DecisionQuery, DecisionRecord
from cra.server import bodies
from cra.server.auth import Identity, Permission
from cra.server.deps import Body, Caller, Service, own_session
from cra.store.reports import REPORTS, build_reports, render
from cra.trace.event import format_timestamp

__all__ = ["aliases", "router"]

router = APIRouter(prefix="/v1")
aliases = APIRouter()

_STAMP = "RFC 3339 date-time, e.g. 2026-12-01T00:00:00Z"
#: The most records one report aggregates; a wider range must be narrowed.
_REPORT_ROWS = 1_000_000


def _bound(value: str | None, name: str) -> str | None:
    """A time bound as the stored timestamps spell it (UTC, microseconds, Z), so they compare as text."""
    if value is None:
        return None
    try:
        return format_timestamp(parse_timestamp(value, f"/{name}"))
    except ProtocolError:
        raise ProtocolError(f"/{name}", f"must be an {_STAMP}") from None


def _record(r: DecisionRecord) -> dict[str, Any]:
    return {
        "event_id": r.event_id,
        "attestation_id": r.attestation_id,
        "session_id": r.session_id,
        "agent_id": r.agent_id,
        "event_type": r.event_type,
        "timestamp": r.timestamp,
        "action_id": r.action_id,
        "decision": r.decision,
        "policy_id": r.policy_id,
        "sealed": r.sealed,
    }


def _readable_agent(who: Identity, agent_id: str | None) -> str | None:
    """The agent filter this caller may use: an agent key sees only its own records."""
    if who.can(Permission.READ_SESSIONS):
        return agent_id
    who.require(Permission.RUN_SESSIONS)
    return who.agent_id if who.agent_id is not None else agent_id


async def list_evidence(
    service: Service,
    who: Caller,
    agent_id: str | None = None,
    action_id: str | None = None,
    decision: str | None = None,
    session_id: str | None = None,
    since: str | None = None,
    until: str | None = None,
    attested: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, Any]:
    query = DecisionQuery(
        tenant_id=who.tenant_id,
        agent_id=_readable_agent(who, agent_id),
        action_id=action_id,
        decision=decision,
        session_id=session_id,
        since=_bound(since, "since"),
        until=_bound(until, "until"),
        attested_only=attested,
        limit=limit,
        offset=offset,
    )
    items, total = await service.decisions(query)
    return {"items": [_record(r) for r in items], "total": total, "limit": limit, "offset": offset}


async def attach_evidence(service: Service, who: Caller, data: Body) -> JSONResponse:
    who.require(Permission.ATTACH_EVIDENCE)
    body = bodies.EVIDENCE.check(data)
    await own_session(service, who, body["session_id"])
    event = await service.attach_evidence(
        who.tenant_id,
        body["session_id"],
        sha256=body["sha256"],
        media_type=body["media_type"],
        description=body["description"],
        attached_by=who.principal,
        size_bytes=body.get("size_bytes"),
    )
    return JSONResponse(
        {"event_id": event.event_id, "session_id": event.session_id, "sequence": event.sequence, **event.payload},
        status_code=201,
    )


async def reports(
    service: Service,
    who: Caller,
    report: str | None = None,
    fmt: Annotated[str, Query(alias="format", pattern="^(json|csv|parquet)$")] = "json",
    since: str | None = None,
    until: str | None = None,
) -> Response:
    who.require(Permission.READ_REPORTS)
    if report is not None and report not in REPORTS:
        raise ProtocolError("/report", f"must be one of {', '.join(REPORTS)}")
    if fmt != "json" and report is None:
        raise ProtocolError("/report", f"a {fmt} report is one table: name it with ?report=")
    decision_rows, approval_rows = await service.report_rows(
        who.tenant_id, since=_bound(since, "since"), until=_bound(until, "until"), limit=_REPORT_ROWS + 1
    )
    if len(decision_rows) > _REPORT_ROWS or len(approval_rows) > _REPORT_ROWS:
        raise ProtocolError("/since", f"more than {_REPORT_ROWS} records in range: narrow it with since and until")
    tables = await asyncio.to_thread(build_reports, decision_rows, approval_rows)  # off the event loop
    if fmt == "json":
        chosen = {report: tables[report]} if report is not None else tables
        return JSONResponse({"reports": {name: frame.to_dicts() for name, frame in chosen.items()}})
    assert report is not None
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/vnd.apache.parquet"
    return Response(
        render(tables[report], fmt),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{report}.{fmt}"'},
    )


for _router in (router, aliases):
    _router.get("/evidence", tags=["Evidence"], include_in_schema=_router is router)(list_evidence)
    _router.post(
        "/evidence",
        status_code=201,
        tags=["Evidence"],
        include_in_schema=_router is router,
        openapi_extra=bodies.EVIDENCE.openapi,
    )(attach_evidence)
    _router.get("/reports", tags=["Reports"], include_in_schema=_router is router)(reports)

"""The routes: the CRA 1.0 API under ``/v1``, with CRA's decisions and approvals."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.responses import JSONResponse, PlainTextResponse

import cra
from cra.errors import ProtocolError
from cra.runtime.approvals import Approval
from cra.runtime.records import Session
from cra.runtime.service import GovernanceService, package_of
from cra.server import bodies
from cra.server.auth import Identity, Permission
from cra.server.deps import (
    MAX_INDEX,
    Body,
    Caller,
    OptionalBody,
    Service,
    authenticate,
    context,
    own_session,
    read_body,
    runnable_session,
)
from cra.trace.event import format_timestamp
from cra.trace.jsonl import dumps_event

__all__ = ["HOT_PATHS", "aliases", "hot", "router"]


def _session_json(s: Session) -> dict[str, Any]:
    out: dict[str, Any] = {
        "session_id": s.session_id,
        "agent_id": s.agent_id,
        "goal": s.goal,
        "status": s.status,
        "created_at": format_timestamp(s.created_at),
        "roles": sorted(s.roles),
        "trace_id": s.trace_id,
        "metadata": dict(s.metadata),
    }
    if s.atlas_ids is not None:
        out["atlas_ids"] = list(s.atlas_ids)
        if len(s.atlas_ids) == 1:
            out["atlas_id"] = s.atlas_ids[0]
    if s.ended_at is not None:
        out["ended_at"] = format_timestamp(s.ended_at)
    return out


def _approval_json(a: Approval) -> dict[str, Any]:
    out: dict[str, Any] = {
        "approval_id": a.approval_id,
        "session_id": a.session_id,
        "agent_id": a.agent_id,
        "action_id": a.action_id,
        "status": a.status,
        "reason": a.reason,
        "policy_id": a.policy_id,
        "parameters": dict(a.parameters),
        "parameters_hash": a.arguments_hash,
        "approver_roles": list(a.approver_roles),
        "requested_at": format_timestamp(a.requested_at),
        "requested_by": a.requested_by,
        "approver": a.approver,
        "comment": a.comment,
    }
    if a.decided_at is not None:
        out["decided_at"] = format_timestamp(a.decided_at)
    if a.expires_at is not None:
        out["expires_at"] = format_timestamp(a.expires_at)
    return out


router = APIRouter(prefix="/v1")
aliases = APIRouter()


@router.get("/health", tags=["Health"])
async def health(request: Request) -> dict[str, Any]:
    uptime = int(time.monotonic() - request.app.state.started)
    return {"status": "healthy", "version": cra.__version__, "uptime_seconds": uptime}


# -- sessions -------------------------------------------------------------


@router.post("/sessions", status_code=201, tags=["Sessions"], openapi_extra=bodies.CREATE_SESSION.openapi)
async def create_session(service: Service, who: Caller, data: Body) -> dict[str, Any]:
    who.require(Permission.RUN_SESSIONS)
    fields = bodies.CREATE_SESSION.check(data)
    who.acting_as(fields["agent_id"])
    atlas_ids: list[str] | None = fields.get("atlas_ids")
    if fields.get("atlas_id") is not None:
        atlas_ids = [*(atlas_ids or []), fields["atlas_id"]]
    session = await service.create_session(
        who.tenant_id,
        agent_id=fields["agent_id"],
        goal=fields["goal"],
        roles=who.policy_roles,
        atlas_ids=atlas_ids,
        metadata=fields.get("metadata"),
    )
    return _session_json(session)


@router.get("/sessions", tags=["Sessions"])
async def list_sessions(
    service: Service,
    who: Caller,
    agent_id: str | None = None,
    status: Annotated[str | None, Query(pattern="^(active|ended)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, Any]:
    if not who.can(Permission.READ_SESSIONS):
        who.require(Permission.RUN_SESSIONS)
        agent_id = who.agent_id if who.agent_id is not None else agent_id
    items, total = await service.sessions(who.tenant_id, agent_id=agent_id, status=status, limit=limit, offset=offset)
    return {"items": [_session_json(s) for s in items], "total": total, "limit": limit, "offset": offset}


@router.get("/sessions/{session_id}", tags=["Sessions"])
async def get_session(service: Service, who: Caller, session_id: str) -> dict[str, Any]:
    return _session_json(await own_session(service, who, session_id))


@router.delete("/sessions/{session_id}", status_code=204, tags=["Sessions"])
async def end_session(
    service: Service,
    who: Caller,
    session_id: str,
    reason: Annotated[str, Query(pattern="^(completed|timeout|error|cancelled)$")] = "completed",
) -> Response:
    who.require(Permission.RUN_SESSIONS)
    await runnable_session(service, who, session_id)
    await service.end_session(who.tenant_id, session_id, reason)
    return Response(status_code=204)


# -- CARP -----------------------------------------------------------------


async def _admit(service: GovernanceService, who: Identity, data: Any) -> None:
    """A CARP request may act only as the caller's agent, in a session the caller may run."""
    who.require(Permission.RUN_SESSIONS)
    requester = data.get("requester") if isinstance(data, dict) else None
    agent = requester.get("agent_id") if isinstance(requester, dict) else None
    session_id = requester.get("session_id") if isinstance(requester, dict) else None
    if not isinstance(agent, str):
        raise ProtocolError("/requester/agent_id", "is required")
    if not isinstance(session_id, str):
        raise ProtocolError("/requester/session_id", "is required")
    who.acting_as(agent)
    await runnable_session(service, who, session_id)


@router.post("/resolve", tags=["CARP"], openapi_extra=bodies.documented(bodies.carp_request()))
async def resolve(service: Service, who: Caller, data: Body) -> dict[str, Any]:
    await _admit(service, who, data)
    return await service.resolve(who.tenant_id, data)


@router.post("/execute", tags=["CARP"], openapi_extra=bodies.documented(bodies.carp_request()))
async def execute(
    service: Service,
    who: Caller,
    data: Body,
    x_cra_approval_ticket: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    await _admit(service, who, data)
    return await service.execute(who.tenant_id, data, approval_ticket=x_cra_approval_ticket, requested_by=who.principal)


async def evaluate(request: Request) -> JSONResponse:
    """One decision for one proposed call. The integrations' hot path, so it takes the request
    itself and skips FastAPI's dependency resolution; it checks exactly what the other routes do."""
    who = await authenticate(request)
    who.require(Permission.EVALUATE)
    fields = bodies.EVALUATE.check(await read_body(request))
    agent = fields.get("agent") or who.agent_id
    if agent is None:
        raise ProtocolError("/agent", "is required for a key that is not bound to an agent")
    who.acting_as(agent)
    atlas, decision = await context(request).service.evaluate(
        who.tenant_id,
        action=fields["action"],
        agent=agent,
        roles=who.policy_roles,
        risk_tier=fields.get("risk_tier"),
        params=fields.get("params"),
        context=fields.get("context"),
        atlas_id=fields.get("atlas_id"),
    )
    out = decision.to_dict()
    out["atlas"] = {"atlas_id": atlas.atlas_id, "version": atlas.version, "digest": atlas.digest}
    if fields.get("explain"):
        out["explanation"] = decision.explain()
    return JSONResponse(out)


_EVALUATE_DOC: dict[str, Any] = {**bodies.EVALUATE.openapi, "security": [{"apiKey": []}, {"bearerAuth": []}]}
#: The hot path's URLs. The app serves them before its router (see cra.server.app); these
#: routes put them in the OpenAPI document and serve them to a router used without that app.
HOT_PATHS = ("/v1/evaluate", "/evaluate")
hot = APIRouter()
hot.add_api_route(
    "/v1/evaluate",
    evaluate,
    methods=["POST"],
    tags=["Decisions"],
    response_class=JSONResponse,
    openapi_extra=_EVALUATE_DOC,
)
hot.add_api_route("/evaluate", evaluate, methods=["POST"], include_in_schema=False, response_class=JSONResponse)

# -- traces ---------------------------------------------------------------


@router.get("/traces/{session_id}", tags=["Traces"])
async def get_trace(
    service: Service,
    who: Caller,
    request: Request,
    session_id: str,
    event_type: str | None = None,
    since_sequence: Annotated[int | None, Query(ge=0, le=MAX_INDEX)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    await own_session(service, who, session_id)
    events = await service.trace(
        who.tenant_id, session_id, event_type=event_type, since_sequence=since_sequence, limit=limit
    )
    if "application/x-ndjson" in request.headers.get("accept", ""):
        return PlainTextResponse("".join(dumps_event(e) + "\n" for e in events), media_type="application/x-ndjson")
    body: dict[str, Any] = {
        "session_id": session_id,
        "events": [e.to_dict() for e in events],
        "total": len(events),
    }
    if events:
        body["last_sequence"] = events[-1].sequence
    return JSONResponse(body)


@router.post("/traces/{session_id}/verify", tags=["Traces"])
async def verify_trace(service: Service, who: Caller, session_id: str) -> dict[str, Any]:
    await own_session(service, who, session_id)
    report = await service.verify_trace(who.tenant_id, session_id)
    out: dict[str, Any] = {"valid": report.valid, "event_count": report.event_count, "errors": []}
    if not report.valid:
        out["errors"] = [{"sequence": report.index, "error": report.error, "details": report.detail or ""}]
    return out


# -- atlases --------------------------------------------------------------


def _summary(atlas: cra.Atlas) -> dict[str, Any]:
    domains = atlas.manifest.get("domains")
    return {
        "atlas_id": atlas.atlas_id,
        "version": atlas.version,
        "name": atlas.name,
        "description": atlas.description,
        "domains": list(domains) if isinstance(domains, list) else [],
        "action_count": len(atlas.actions),
        "digest": atlas.digest,
    }


@router.get("/atlases", tags=["Atlases"])
async def list_atlases(service: Service, who: Caller) -> dict[str, Any]:
    who.require(Permission.READ_ATLASES)
    atlases = await service.atlases(who.tenant_id)
    return {"items": [_summary(a) for a in atlases], "total": len(atlases)}


_ATLAS_DOC = bodies.documented({"oneOf": [{"type": "object", "required": ["atlas_id"]}, bodies.ATLAS_UPLOAD.schema]})


@router.post("/atlases", status_code=201, tags=["Atlases"], openapi_extra=_ATLAS_DOC)
async def load_atlas(
    service: Service, who: Caller, data: Body, replace: Annotated[bool, Query()] = False
) -> dict[str, Any]:
    who.require(Permission.WRITE_ATLASES)
    if isinstance(data, dict) and "manifest" in data and "atlas_id" not in data:
        wrapper = bodies.ATLAS_UPLOAD.check(data)
        package = package_of(wrapper["manifest"], wrapper.get("files"))
    else:
        if not isinstance(data, dict):
            raise ProtocolError("", "the body must be an atlas manifest (a JSON object)")
        package = package_of(data)
    atlas = await service.load_atlas(who.tenant_id, package, replace=replace)
    return _summary(atlas)


@router.get("/atlases/{atlas_id}", tags=["Atlases"])
async def get_atlas(service: Service, who: Caller, atlas_id: str) -> dict[str, Any]:
    who.require(Permission.READ_ATLASES)
    return dict((await service.atlas(who.tenant_id, atlas_id)).manifest)


@router.delete("/atlases/{atlas_id}", status_code=204, tags=["Atlases"])
async def unload_atlas(service: Service, who: Caller, atlas_id: str) -> Response:
    who.require(Permission.WRITE_ATLASES)
    await service.unload_atlas(who.tenant_id, atlas_id)
    return Response(status_code=204)


# -- approvals ------------------------------------------------------------


@router.get("/approvals", tags=["Approvals"])
async def list_approvals(
    service: Service,
    who: Caller,
    status: Annotated[str | None, Query(pattern="^(pending|approved|denied|used)$")] = "pending",
    session_id: str | None = None,
    agent_id: str | None = None,
    action_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, Any]:
    who.require(Permission.READ_APPROVALS)
    items, total = await service.approvals(
        who.tenant_id,
        status=status,
        session_id=session_id,
        agent_id=agent_id,
        action_id=action_id,
        limit=limit,
        offset=offset,
    )
    return {"items": [_approval_json(a) for a in items], "total": total, "limit": limit, "offset": offset}


@router.get("/approvals/{approval_id}", tags=["Approvals"])
async def get_approval(service: Service, who: Caller, approval_id: str) -> dict[str, Any]:
    who.require(Permission.READ_APPROVALS)
    return _approval_json(await service.approval(who.tenant_id, approval_id))


#: The body is optional: an empty one decides without a comment.
_DECISION_DOC = {"requestBody": {**bodies.APPROVAL_DECISION.openapi["requestBody"], "required": False}}


def _comment(data: Any) -> str | None:
    if data is None:
        return None
    comment: str | None = bodies.APPROVAL_DECISION.check(data).get("comment")
    return comment


@router.post("/approvals/{approval_id}/approve", tags=["Approvals"], openapi_extra=_DECISION_DOC)
async def approve(service: Service, who: Caller, approval_id: str, data: OptionalBody) -> dict[str, Any]:
    who.require(Permission.DECIDE_APPROVALS)
    ticket = await service.approve(
        who.tenant_id,
        approval_id,
        approver=who.principal,
        approver_roles=who.policy_roles,
        comment=_comment(data),
    )
    approval = await service.approval(who.tenant_id, approval_id)
    return {
        **_approval_json(approval),
        "ticket": ticket.token,
        "ticket_expires_at": format_timestamp(ticket.expires_at),
    }


@router.post("/approvals/{approval_id}/deny", tags=["Approvals"], openapi_extra=_DECISION_DOC)
async def deny(service: Service, who: Caller, approval_id: str, data: OptionalBody) -> dict[str, Any]:
    who.require(Permission.DECIDE_APPROVALS)
    approval = await service.deny(
        who.tenant_id,
        approval_id,
        approver=who.principal,
        approver_roles=who.policy_roles,
        comment=_comment(data),
    )
    return _approval_json(approval)

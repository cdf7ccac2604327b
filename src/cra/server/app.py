"""The FastAPI application: the CRA 1.0 API under ``/v1``, and CRA's governance endpoints.

Thin by design: each route authenticates, checks the caller's permission,
parses the body with CRA's strict JSON parser, calls the
:class:`~cra.runtime.service.GovernanceService`, and renders the answer.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import cra
from cra.errors import NotFoundError, ProtocolError
from cra.protocol.canonical import parse_json
from cra.runtime.approvals import Approval
from cra.runtime.records import Session
from cra.runtime.service import GovernanceService, package_of
from cra.server.auth import AuthError, Identity, Permission, authenticate_key
from cra.server.problems import install_handlers, problem
from cra.store.state import SqlState
from cra.trace.event import format_timestamp
from cra.trace.jsonl import dumps_event

__all__ = ["ServerSettings", "create_app"]

_SECURITY_HEADERS: Final = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    #: Largest request body accepted, in bytes.
    max_body_bytes: int = 1_048_576
    #: Deepest JSON nesting accepted in a body.
    max_json_depth: int = 64
    #: Requests per second each API key may make (a burst of twice that is allowed); 0 turns it off.
    key_requests_per_second: float = 1000.0
    #: Origins allowed by CORS; none by default.
    cors_origins: tuple[str, ...] = ()


class _Guard:
    """Request size limit and security headers, as raw ASGI middleware (no body buffering)."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self._app = app
        self._max = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self._max):
            response = problem(413, "too_large", "Request too large", f"the body limit is {self._max} bytes")
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self._max:
                    raise _TooLarge
            return message

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        try:
            await self._app(scope, limited, secured)
        except _TooLarge:
            response = problem(413, "too_large", "Request too large", f"the body limit is {self._max} bytes")
            await response(scope, receive, send)


class _TooLarge(Exception):
    pass


class _Buckets:
    """A token bucket per API key, in this process."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._burst = max(1.0, 2 * rate)
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float | None:
        """None if the request may go ahead, else the seconds until it may."""
        if self._rate <= 0:
            return None
        now = time.monotonic()
        tokens, at = self._state.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        if tokens < 1:
            self._state[key] = (tokens, now)
            return (1 - tokens) / self._rate
        self._state[key] = (tokens - 1, now)
        return None


def _depth(value: Any, limit: int) -> bool:
    """Whether ``value`` nests no deeper than ``limit``."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return True


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
        "approver": a.approver,
        "comment": a.comment,
    }
    if a.decided_at is not None:
        out["decided_at"] = format_timestamp(a.decided_at)
    if a.expires_at is not None:
        out["expires_at"] = format_timestamp(a.expires_at)
    return out


def _fields(body: Any, allowed: dict[str, type | tuple[type, ...]], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check a body object's keys and value types: unknown keys are refused, with their path."""
    if not isinstance(body, dict):
        raise ProtocolError("", "the body must be a JSON object")
    for key in body:
        if key not in allowed:
            raise ProtocolError(f"/{key}", "is not a known field")
    for key in required:
        if key not in body:
            raise ProtocolError(f"/{key}", "is required")
    for key, value in body.items():
        kinds = _tuple(allowed[key])
        wrong_bool = isinstance(value, bool) and bool not in kinds
        if value is not None and (wrong_bool or not isinstance(value, kinds)):
            raise ProtocolError(f"/{key}", f"must be {_kind_name(kinds)}")
    return body


def _tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _kind_name(kinds: type | tuple[type, ...]) -> str:
    names = {str: "a string", dict: "an object", list: "a list", bool: "true or false", int: "an integer"}
    return " or ".join(names.get(k, k.__name__) for k in _tuple(kinds))


def _strings(value: Any, path: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ProtocolError(path, "must be a list of non-empty strings")
    return value


@dataclass(frozen=True, slots=True)
class _Context:
    state: SqlState
    settings: ServerSettings
    buckets: _Buckets


def _context(request: Request) -> _Context:
    ctx: _Context = request.app.state.cra
    return ctx


async def _identity(
    request: Request,
    x_api_key: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> Identity:
    token = x_api_key
    if token is None and authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer":
            token = credentials.strip()
    if not token:
        raise AuthError("send an API key in X-API-Key (or as a Bearer token)")
    ctx = _context(request)
    who = await authenticate_key(ctx.state, token)
    wait = ctx.buckets.take(who.key_id)
    if wait is not None:
        raise _RateLimited(wait)
    return who


async def _body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise ProtocolError("", "the request needs a JSON body")
    value = parse_json(raw, source=None, error=ProtocolError)
    limit = _context(request).settings.max_json_depth
    if not _depth(value, limit):
        raise ProtocolError("", f"JSON is nested deeper than {limit} levels")
    return value


async def _optional_body(request: Request) -> Any:
    return await _body(request) if await request.body() else None


Caller = Annotated[Identity, Depends(_identity)]
Body = Annotated[Any, Depends(_body)]
OptionalBody = Annotated[Any, Depends(_optional_body)]


def create_app(
    service: GovernanceService,
    state: SqlState,
    *,
    settings: ServerSettings | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    """The API over ``service``. ``state`` holds the API keys."""
    conf = settings or ServerSettings()
    buckets = _Buckets(conf.key_requests_per_second)
    started = time.monotonic()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        yield
        if on_shutdown is not None:
            await on_shutdown()

    app = FastAPI(
        title="CRA governance API",
        version=cra.__version__,
        description="CARP/1.0 resolve and execute, TRACE/1.0 traces, atlases, decisions and approvals.",
        lifespan=lifespan,
    )
    app.state.cra = _Context(state, conf, buckets)
    install_handlers(app)
    if conf.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(conf.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type", "X-CRA-Approval-Ticket"],
        )
    app.add_middleware(_Guard, max_body=conf.max_body_bytes)

    async def own_session(who: Identity, session_id: str) -> Session:
        """The session, if this caller may see it; a 404 otherwise, so existence does not leak."""
        session = await service.session(who.tenant_id, session_id)
        if who.can(Permission.READ_SESSIONS):
            return session
        if who.can(Permission.RUN_SESSIONS) and (who.agent_id is None or who.agent_id == session.agent_id):
            return session
        raise NotFoundError("session", session_id)

    v1 = APIRouter(prefix="/v1")
    alias = APIRouter()

    @v1.get("/health", tags=["Health"])
    async def health() -> dict[str, Any]:
        return {"status": "healthy", "version": cra.__version__, "uptime_seconds": int(time.monotonic() - started)}

    # -- sessions -------------------------------------------------------------

    @v1.post("/sessions", status_code=201, tags=["Sessions"])
    async def create_session(who: Caller, data: Body) -> dict[str, Any]:
        who.require(Permission.RUN_SESSIONS)
        fields = _fields(
            data,
            {"agent_id": str, "goal": str, "atlas_id": str, "atlas_ids": list, "metadata": dict},
            ("agent_id", "goal"),
        )
        who.acting_as(fields["agent_id"])
        atlas_ids: list[str] | None = None
        if fields.get("atlas_ids") is not None:
            atlas_ids = _strings(fields["atlas_ids"], "/atlas_ids")
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

    @v1.get("/sessions", tags=["Sessions"])
    async def list_sessions(
        who: Caller,
        agent_id: str | None = None,
        status: Annotated[str | None, Query(pattern="^(active|ended)$")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ) -> dict[str, Any]:
        if not who.can(Permission.READ_SESSIONS):
            who.require(Permission.RUN_SESSIONS)
            agent_id = who.agent_id if who.agent_id is not None else agent_id
        items, total = await service.state.sessions(
            who.tenant_id, agent_id=agent_id, status=status, limit=limit, offset=offset
        )
        return {"items": [_session_json(s) for s in items], "total": total, "limit": limit, "offset": offset}

    @v1.get("/sessions/{session_id}", tags=["Sessions"])
    async def get_session(who: Caller, session_id: str) -> dict[str, Any]:
        return _session_json(await own_session(who, session_id))

    @v1.delete("/sessions/{session_id}", status_code=204, tags=["Sessions"])
    async def end_session(
        who: Caller,
        session_id: str,
        reason: Annotated[str, Query(pattern="^(completed|timeout|error|cancelled)$")] = "completed",
    ) -> Response:
        who.require(Permission.RUN_SESSIONS)
        await own_session(who, session_id)
        await service.end_session(who.tenant_id, session_id, reason)
        return Response(status_code=204)

    # -- CARP -----------------------------------------------------------------

    def _requester(data: Any) -> None:
        requester = data.get("requester") if isinstance(data, dict) else None
        agent = requester.get("agent_id") if isinstance(requester, dict) else None
        if not isinstance(agent, str):
            raise ProtocolError("/requester/agent_id", "is required")

    @v1.post("/resolve", tags=["CARP"])
    async def resolve(who: Caller, data: Body) -> dict[str, Any]:
        who.require(Permission.RUN_SESSIONS)
        _requester(data)
        who.acting_as(data["requester"]["agent_id"])
        return await service.resolve(who.tenant_id, data)

    @v1.post("/execute", tags=["CARP"])
    async def execute(
        who: Caller,
        data: Body,
        x_cra_approval_ticket: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        who.require(Permission.RUN_SESSIONS)
        _requester(data)
        who.acting_as(data["requester"]["agent_id"])
        return await service.execute(who.tenant_id, data, approval_ticket=x_cra_approval_ticket)

    async def evaluate(who: Caller, data: Body) -> dict[str, Any]:
        who.require(Permission.EVALUATE)
        fields = _fields(
            data,
            {
                "action": str,
                "agent": str,
                "risk_tier": str,
                "params": dict,
                "context": dict,
                "atlas_id": str,
                "explain": bool,
            },
            ("action",),
        )
        agent = fields.get("agent") or who.agent_id
        if agent is None:
            raise ProtocolError("/agent", "is required for a key that is not bound to an agent")
        who.acting_as(agent)
        if fields.get("risk_tier") not in (None, "low", "medium", "high", "critical"):
            raise ProtocolError("/risk_tier", "must be low, medium, high or critical")
        atlas, decision = await service.evaluate(
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
        return out

    v1.post("/evaluate", tags=["Decisions"])(evaluate)
    alias.post("/evaluate", tags=["Decisions"], include_in_schema=False)(evaluate)

    # -- traces ---------------------------------------------------------------

    @v1.get("/traces/{session_id}", tags=["Traces"])
    async def get_trace(
        who: Caller,
        request: Request,
        session_id: str,
        event_type: str | None = None,
        since_sequence: Annotated[int | None, Query(ge=0)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Response:
        await own_session(who, session_id)
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

    @v1.post("/traces/{session_id}/verify", tags=["Traces"])
    async def verify_trace(who: Caller, session_id: str) -> dict[str, Any]:
        await own_session(who, session_id)
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

    @v1.get("/atlases", tags=["Atlases"])
    async def list_atlases(who: Caller) -> dict[str, Any]:
        who.require(Permission.READ_ATLASES)
        atlases = await service.atlases(who.tenant_id)
        return {"items": [_summary(a) for a in atlases], "total": len(atlases)}

    @v1.post("/atlases", status_code=201, tags=["Atlases"])
    async def load_atlas(who: Caller, data: Body, replace: Annotated[bool, Query()] = False) -> dict[str, Any]:
        who.require(Permission.WRITE_ATLASES)
        if isinstance(data, dict) and "manifest" in data and "atlas_id" not in data:
            wrapper = _fields(data, {"manifest": dict, "files": dict}, ("manifest",))
            files = wrapper.get("files") or {}
            for path, text in files.items():
                if not isinstance(text, str):
                    raise ProtocolError(f"/files/{path}", "must be the file's text")
            package = package_of(wrapper["manifest"], files)
        else:
            if not isinstance(data, dict):
                raise ProtocolError("", "the body must be an atlas manifest (a JSON object)")
            package = package_of(data)
        atlas = await service.load_atlas(who.tenant_id, package, replace=replace)
        return _summary(atlas)

    @v1.get("/atlases/{atlas_id}", tags=["Atlases"])
    async def get_atlas(who: Caller, atlas_id: str) -> dict[str, Any]:
        who.require(Permission.READ_ATLASES)
        return dict((await service.atlas(who.tenant_id, atlas_id)).manifest)

    @v1.delete("/atlases/{atlas_id}", status_code=204, tags=["Atlases"])
    async def unload_atlas(who: Caller, atlas_id: str) -> Response:
        who.require(Permission.WRITE_ATLASES)
        await service.unload_atlas(who.tenant_id, atlas_id)
        return Response(status_code=204)

    # -- approvals ------------------------------------------------------------

    @v1.get("/approvals", tags=["Approvals"])
    async def list_approvals(
        who: Caller,
        status: Annotated[str | None, Query(pattern="^(pending|approved|denied|used)$")] = "pending",
        session_id: str | None = None,
        agent_id: str | None = None,
        action_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ) -> dict[str, Any]:
        who.require(Permission.READ_APPROVALS)
        items, total = await service.state.approvals(
            who.tenant_id,
            status=status,
            session_id=session_id,
            agent_id=agent_id,
            action_id=action_id,
            limit=limit,
            offset=offset,
        )
        return {"items": [_approval_json(a) for a in items], "total": total, "limit": limit, "offset": offset}

    @v1.get("/approvals/{approval_id}", tags=["Approvals"])
    async def get_approval(who: Caller, approval_id: str) -> dict[str, Any]:
        who.require(Permission.READ_APPROVALS)
        return _approval_json(await service.approval(who.tenant_id, approval_id))

    def _comment(data: Any) -> str | None:
        if data is None:
            return None
        fields = _fields(data, {"comment": str})
        comment: str | None = fields.get("comment")
        return comment

    @v1.post("/approvals/{approval_id}/approve", tags=["Approvals"])
    async def approve(who: Caller, approval_id: str, data: OptionalBody) -> dict[str, Any]:
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

    @v1.post("/approvals/{approval_id}/deny", tags=["Approvals"])
    async def deny(who: Caller, approval_id: str, data: OptionalBody) -> dict[str, Any]:
        who.require(Permission.DECIDE_APPROVALS)
        approval = await service.deny(
            who.tenant_id,
            approval_id,
            approver=who.principal,
            approver_roles=who.policy_roles,
            comment=_comment(data),
        )
        return _approval_json(approval)

    @app.exception_handler(_RateLimited)
    async def _limited(request: Request, exc: _RateLimited) -> JSONResponse:
        seconds = max(1, int(exc.wait + 0.999))
        response = problem(429, "rate_limited", "Too many requests", f"retry after {seconds} s", retry_after=seconds)
        response.headers["Retry-After"] = str(seconds)
        return response

    app.include_router(v1)
    app.include_router(alias)
    return app


class _RateLimited(Exception):
    def __init__(self, wait: float) -> None:
        self.wait = wait

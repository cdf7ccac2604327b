"""The FastAPI application: the CRA 1.0 API under ``/v1``, and CRA's governance endpoints.

Thin by design: each route authenticates, checks the caller's permission,
parses the body with CRA's strict JSON parser, calls the
:class:`~cra.runtime.service.GovernanceService`, and renders the answer. The
routes live in :mod:`cra.server.api`; this module assembles them with the
middleware and the error handlers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import cra
from cra.errors import CRAError
from cra.runtime.service import GovernanceService
from cra.server import api, evidence_api, ledger_api, stream_api
from cra.server.auth import Authenticator
from cra.server.deps import Buckets, Context, RateLimited
from cra.server.problems import (
    SECURITY_HEADERS,
    crash_problem,
    disconnected,
    install_handlers,
    problem,
    problem_for,
)
from cra.server.settings import ServerSettings
from cra.server.tokens import JwtVerifier
from cra.store.state import SqlState

if TYPE_CHECKING:
    from cra.server.boot import Booted

__all__ = ["ServerSettings", "create_app", "serving_app"]

_SECURITY_HEADERS: Final = tuple((k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items())


#: The CORS policy for the origins ``--cors-origin`` names: the methods and headers the API uses.
_CORS_METHODS: Final = ("GET", "POST", "DELETE")
_CORS_HEADERS: Final = ("X-API-Key", "Authorization", "Content-Type", "X-CRA-Approval-Ticket")


def _with_cors(app: ASGIApp, origins: tuple[str, ...]) -> ASGIApp:
    if not origins:
        return app
    return CORSMiddleware(app, allow_origins=origins, allow_methods=_CORS_METHODS, allow_headers=_CORS_HEADERS)


class _Guard:
    """Request size limit, request timeout and security headers, as raw ASGI middleware (no body buffering).

    It also serves the hot path (``POST /v1/evaluate``) itself, past the router, by the same
    endpoint with the same error answers; the only other middleware the app has, CORS, wraps it
    here too, so the hot path keeps every promise the routed ones do."""

    def __init__(self, app: ASGIApp, max_body: int, timeout: float, cors_origins: tuple[str, ...] = ()) -> None:
        self._app = app
        self._max = max_body
        self._timeout = timeout
        fast = _with_cors(_served(api.evaluate), cors_origins)
        self._fast: dict[tuple[str, str], ASGIApp] = {("POST", p): fast for p in api.HOT_PATHS}

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
        started = False

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self._max:
                    raise _TooLarge
            return message

        async def secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                message["headers"] = headers + [h for h in _SECURITY_HEADERS if h[0] not in present]
            await send(message)

        streaming = str(scope.get("path", "")).endswith("/stream")
        target = self._fast.get((scope["method"], scope["path"]), self._app)
        try:
            if streaming:
                await target(scope, limited, secured)
            else:
                async with asyncio.timeout(self._timeout):
                    await target(scope, limited, secured)
        except _TooLarge:
            response = problem(413, "too_large", "Request too large", f"the body limit is {self._max} bytes")
            await response(scope, receive, send)
        except TimeoutError:
            if started:
                raise
            detail = f"the request took longer than {self._timeout:g} s"
            await problem(503, "timeout", "Request timed out", detail)(scope, receive, send)


class _TooLarge(Exception):
    """The body grew past the limit while it streamed in."""


def _served(endpoint: Callable[[Request], Awaitable[Response]]) -> ASGIApp:
    """An endpoint as an ASGI app of its own, with the errors answered as the app answers them."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except CRAError as exc:
            response = problem_for(exc)
        except RateLimited as exc:
            response = limited(exc)
        except _TooLarge:
            raise
        except ClientDisconnect:
            response = disconnected(request)
        except Exception as exc:  # noqa: BLE001 - the app's last-resort handler, for this path
            response = crash_problem(request, exc)
        await response(scope, receive, send)

    return serve


def limited(exc: RateLimited) -> JSONResponse:
    seconds = max(1, int(exc.wait + 0.999))
    response = problem(429, "rate_limited", "Too many requests", f"retry after {seconds} s", retry_after=seconds)
    response.headers["Retry-After"] = str(seconds)
    return response


def create_app(
    service: GovernanceService,
    state: SqlState,
    *,
    settings: ServerSettings | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    """The API over a service that is already open. ``state`` holds the API keys."""
    conf = settings or ServerSettings()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        yield
        if on_shutdown is not None:
            await on_shutdown()

    app = _assemble(conf, lifespan)
    _attach(app, service, state, conf)
    return app


def serving_app(open_service: Callable[[], Awaitable[Booted]], *, settings: ServerSettings | None = None) -> FastAPI:
    """The API over a service it opens when it starts and closes when it stops (one per worker process)."""
    conf = settings or ServerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        booted = await open_service()
        try:
            _attach(app, booted.service, booted.state, conf)
            await booted.service.start()
            yield
        finally:
            await booted.close()

    return _assemble(conf, lifespan)


def _attach(app: FastAPI, service: GovernanceService, state: SqlState, conf: ServerSettings) -> None:
    auth = Authenticator(state, ttl_seconds=conf.key_cache_seconds)
    tokens = JwtVerifier(conf.jwt) if conf.jwt is not None else None
    app.state.cra = Context(service, state, conf, Buckets(conf.key_requests_per_second), auth, tokens)


def _assemble(conf: ServerSettings, lifespan: Callable[[FastAPI], Any]) -> FastAPI:
    app = FastAPI(
        title="CRA governance API",
        version=cra.__version__,
        description="CARP/1.0 resolve and execute, TRACE/1.0 traces, atlases, decisions and approvals.",
        lifespan=lifespan,
        openapi_url="/openapi.json" if conf.public_openapi else None,
        docs_url=None,  # Swagger UI and ReDoc load their code from a CDN: never served
        redoc_url=None,
    )
    app.state.started = time.monotonic()
    install_handlers(app)
    if conf.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=conf.cors_origins, allow_methods=_CORS_METHODS, allow_headers=_CORS_HEADERS
        )
    app.add_middleware(
        _Guard, max_body=conf.max_body_bytes, timeout=conf.request_timeout_seconds, cors_origins=conf.cors_origins
    )

    @app.exception_handler(RateLimited)
    async def _limited(request: Request, exc: RateLimited) -> JSONResponse:
        return limited(exc)

    app.include_router(api.hot)
    for module in (api, evidence_api, ledger_api, stream_api):
        app.include_router(module.router)
        app.include_router(module.aliases)
    return app

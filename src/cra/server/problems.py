"""Errors as RFC 9457 ``application/problem+json``: the one place domain errors meet HTTP.

Every problem has a stable ``type`` (``https://cra.dev/problems/<code>``), a
title, the HTTP status, a human ``detail`` and, for bad input, the JSON
Pointer of the offending field in ``path`` (and the CRA ``code``).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from cra.errors import (
    ApprovalError,
    ConflictError,
    CRAError,
    LedgerError,
    NotFoundError,
    Overloaded,
    RuntimeStateError,
    UnavailableError,
    ValidationError,
    json_pointer,
)
from cra.server.auth import AuthError, ForbiddenError

__all__ = [
    "PROBLEM_JSON",
    "SECURITY_HEADERS",
    "crash_problem",
    "disconnected",
    "install_handlers",
    "problem",
    "problem_for",
]

PROBLEM_JSON: Final = "application/problem+json"
_BASE: Final = "https://cra.dev/problems/"
#: Sent with every response.
SECURITY_HEADERS: Final = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
}
_log = logging.getLogger("cra.server")


def problem(status: int, code: str, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": _BASE + code, "title": title, "status": status, "detail": detail, "code": code, **extra}
    body["error"] = {"code": code, "message": detail}  # the CRA 1.0 Error shape, beside RFC 9457
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def _status(exc: CRAError) -> tuple[int, str]:
    if isinstance(exc, AuthError):
        return 401, "Authentication required"
    if isinstance(exc, ForbiddenError):
        return 403, "Forbidden"
    if isinstance(exc, ValidationError):
        return 400, "Invalid request"
    if isinstance(exc, NotFoundError):
        return 404, "Not found"
    if isinstance(exc, ConflictError):
        return 409, "Conflict"
    if isinstance(exc, ApprovalError):
        return 403, "Approval refused"
    if isinstance(exc, RuntimeStateError):
        return 409, "Not allowed in the current state"
    if isinstance(exc, LedgerError):
        return 503, "Audit ledger unavailable"
    if isinstance(exc, UnavailableError):
        return 503, "A service CRA depends on is unavailable"
    return 400, "Request refused"


def problem_for(exc: CRAError) -> JSONResponse:
    """The problem response for one of CRA's errors."""
    status, title = _status(exc)
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationError):
        extra["path"] = exc.path
        extra["reason"] = exc.reason
    response = problem(status, exc.code, title, str(exc), **extra)
    if isinstance(exc, Overloaded):
        response.headers["Retry-After"] = str(exc.retry_after)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'ApiKey header="X-API-Key", Bearer'
    return response


def crash_problem(request: Request, exc: Exception) -> JSONResponse:
    """The answer to a failure nobody foresaw: logged with its type and path, told without detail."""
    _log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
    response = problem(500, "internal", "Internal error", "the server failed; the error is logged")
    response.headers.update(SECURITY_HEADERS)
    return response


def disconnected(request: Request) -> JSONResponse:
    """A client that left before its body arrived: nobody is there to read an answer, and nothing failed.
    One debug line, no traceback."""
    _log.debug("the client left during %s %s before its body arrived", request.method, request.url.path)
    return problem(400, "disconnected", "Client disconnected", "the request body did not arrive")


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        return disconnected(request)

    @app.exception_handler(CRAError)
    async def _cra(request: Request, exc: CRAError) -> JSONResponse:
        return problem_for(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [p for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        path = json_pointer([str(p) for p in loc])
        where = next(iter(first.get("loc", ())), "body")
        detail = f"{where} {path or '/'}: {first.get('msg', 'invalid')}"
        return problem(400, "invalid", "Invalid request", detail, path=path, reason=first.get("msg", "invalid"))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 429: "rate_limited"}.get(
            exc.status_code, "http_error"
        )
        response = problem(exc.status_code, code, str(exc.detail), str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        # This handler answers outside the guard middleware, so the response carries the security headers itself.
        return crash_problem(request, exc)

"""What the routes share: the request context, authentication, strict bodies and checks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

from fastapi import Depends, Header, Request

from cra.errors import NotFoundError, ProtocolError
from cra.protocol.canonical import parse_json
from cra.runtime.records import Session
from cra.runtime.service import GovernanceService
from cra.server.auth import Authenticator, AuthError, ForbiddenError, Identity, Permission
from cra.server.settings import ServerSettings
from cra.server.tokens import JwtVerifier
from cra.store.state import SqlState

__all__ = [
    "MAX_INDEX",
    "Body",
    "Buckets",
    "Caller",
    "Context",
    "OptionalBody",
    "RateLimited",
    "Service",
    "authenticate",
    "context",
    "own_session",
    "read_body",
    "runnable_session",
]


#: The largest sequence number, log index or tree size a query may name: the stores keep them as
#: 64-bit signed integers, so a larger number can only be a 400, never a database error.
MAX_INDEX: Final = (1 << 63) - 1


class Buckets:
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
    """Whether ``value`` nests objects and arrays no more than ``limit`` levels deep."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            if depth > limit:
                return False
            stack.extend((v, depth) for v in (item.values() if isinstance(item, dict) else item))
    return True


@dataclass(frozen=True, slots=True)
class Context:
    """What every request reaches through ``app.state.cra``."""

    service: GovernanceService
    state: SqlState
    settings: ServerSettings
    buckets: Buckets
    auth: Authenticator
    tokens: JwtVerifier | None
    #: Open event streams per key id, in this process.
    streams: dict[str, int] = field(default_factory=dict)


def context(request: Request) -> Context:
    ctx: Context = request.app.state.cra
    return ctx


async def authenticate(request: Request) -> Identity:
    """The caller of ``request`` (``X-API-Key``, or ``Authorization: Bearer``), within its rate limit."""
    headers = request.headers
    token = headers.get("x-api-key")
    if token is None:
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            token = credentials.strip()
    if not token:
        raise AuthError("send an API key in X-API-Key, or a bearer token")
    ctx = context(request)
    if token.startswith("cra_") or ctx.tokens is None:
        who = await ctx.auth.identity(token)
    else:
        who = ctx.tokens.identity(token)
    wait = ctx.buckets.take(who.key_id)
    if wait is not None:
        raise RateLimited(wait)
    return who


async def _identity(
    request: Request,
    x_api_key: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> Identity:
    # The header parameters document the credentials in the OpenAPI; authenticate() reads them.
    return await authenticate(request)


async def read_body(request: Request) -> Any:
    """The request body, parsed by CRA's strict JSON parser within the depth limit."""
    raw = await request.body()
    if not raw:
        raise ProtocolError("", "the request needs a JSON body")
    value = parse_json(raw, source=None, error=ProtocolError)
    limit = context(request).settings.max_json_depth
    if not _depth(value, limit):
        raise ProtocolError("", f"JSON is nested deeper than {limit} levels")
    return value


async def _optional_body(request: Request) -> Any:
    return await read_body(request) if await request.body() else None


Caller = Annotated[Identity, Depends(_identity)]
Body = Annotated[Any, Depends(read_body)]
OptionalBody = Annotated[Any, Depends(_optional_body)]


async def _service(request: Request) -> GovernanceService:
    return context(request).service


Service = Annotated[GovernanceService, Depends(_service)]


async def own_session(service: GovernanceService, who: Identity, session_id: str) -> Session:
    """The session, if this caller may see it; a 404 otherwise, so existence does not leak."""
    session = await service.session(who.tenant_id, session_id)
    if who.can(Permission.READ_SESSIONS):
        return session
    if who.can(Permission.RUN_SESSIONS) and (who.agent_id is None or who.agent_id == session.agent_id):
        return session
    raise NotFoundError("session", session_id)


async def runnable_session(service: GovernanceService, who: Identity, session_id: str) -> Session:
    """The session, if this caller may act in it: as :func:`own_session`, and a key other than an
    admin's must hold every policy role the session carries, so that nobody borrows another's roles."""
    session = await own_session(service, who, session_id)
    if who.role != "admin" and not session.roles <= set(who.policy_roles):
        raise ForbiddenError("this session carries policy roles this key does not have")
    return session


class RateLimited(Exception):
    """An API key over its request rate; ``wait`` is the seconds until it may go on."""

    def __init__(self, wait: float) -> None:
        self.wait = wait

"""A session's TRACE events as Server-Sent Events, as they are committed.

``GET /v1/traces/{session_id}/stream`` polls the state store and sends each new
event as one SSE message::

    id: <sequence>
    event: <event_type>
    data: <the event's exact JSON line, as the NDJSON trace and the ledger leaf>

A client resumes with ``Last-Event-ID`` (what ``EventSource`` sends on reconnect)
or ``?since_sequence=N``: only events after that sequence follow. Once the session
has ended and every event was sent, an ``event: end`` message closes the stream.
A ``: keep-alive`` comment goes out when nothing was sent for a while, and the
stream closes after ``max_seconds`` (without ``end``: resume to go on) or when the
client goes away.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Final

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import StreamingResponse

from cra.errors import NotFoundError, ValidationError
from cra.runtime.service import GovernanceService
from cra.server.auth import AuthError
from cra.server.deps import MAX_INDEX, Caller, RateLimited, Service, authenticate, context, own_session
from cra.trace.event import TraceEvent
from cra.trace.jsonl import dumps_event

__all__ = ["KEEPALIVE_SECONDS", "aliases", "message", "router"]

#: Seconds without a message after which a keep-alive comment is sent.
KEEPALIVE_SECONDS: float = 15.0
#: Event streams one API key (or token) may hold open in one process.
MAX_STREAMS_PER_KEY: Final = 8
#: How often a stream checks its caller's credentials again.
_RECHECK_SECONDS: Final = 5.0
#: Events read from the store per query, so a long backlog streams in bounded pieces.
_PAGE: Final = 500
_SEQUENCE: Final = re.compile(r"0|[1-9][0-9]{0,18}")
_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")

router = APIRouter(prefix="/v1")
aliases = APIRouter()  # none yet; here so create_app can include every module alike


def _field(name: str, value: str) -> str:
    """One SSE field; a value with line breaks becomes several lines of the field."""
    return "".join(f"{name}: {line}\n" for line in _LINE_BREAK.split(value))


def message(event: TraceEvent) -> str:
    """The SSE message of one event."""
    kind = _LINE_BREAK.sub(" ", event.event_type)
    return f"id: {event.sequence}\nevent: {kind}\n" + _field("data", dumps_event(event)) + "\n"


def _end(session_id: str, last_sequence: int | None) -> str:
    data = json.dumps({"session_id": session_id, "status": "ended", "last_sequence": last_sequence})
    return "event: end\n" + _field("data", data) + "\n"


def _resume_point(last_event_id: str | None, since_sequence: int | None) -> int | None:
    """Where to resume: ``Last-Event-ID`` (the browser's reconnect) wins over the query."""
    if last_event_id is None:
        return since_sequence
    value = last_event_id.strip()
    if not _SEQUENCE.fullmatch(value) or int(value) > MAX_INDEX:
        raise ValidationError("/last-event-id", "must be the sequence number of an event (a non-negative integer)")
    return int(value)


async def _stream(
    request: Request,
    service: GovernanceService,
    tenant_id: str,
    session_id: str,
    after: int | None,
    poll: float,
    max_seconds: float,
) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    keepalive = KEEPALIVE_SECONDS
    deadline = loop.time() + max_seconds
    last_sent = loop.time()
    checked = loop.time()
    while True:
        if await request.is_disconnected():
            return
        if loop.time() - checked >= _RECHECK_SECONDS:
            # The caller's credentials are checked again as the stream goes on: a revoked key
            # or an expired token ends it.
            try:
                await authenticate(request)
            except (AuthError, RateLimited):
                yield ": credentials no longer valid\n\n"
                return
            checked = loop.time()
        try:
            # Read the status first: every event committed before the session ended is then
            # visible to the reads below, so ``end`` follows the last of them.
            ended = (await service.session(tenant_id, session_id)).status == "ended"
        except NotFoundError:
            return
        while True:
            events = await service.events_after(tenant_id, session_id, after, _PAGE)
            for event in events:
                yield message(event)
                after = event.sequence
            if events:
                last_sent = loop.time()
            if len(events) < _PAGE:
                break
            if await request.is_disconnected():
                return
        if ended:
            yield _end(session_id, after)
            return
        now = loop.time()
        if now >= deadline:
            yield ": max_seconds reached; resume with Last-Event-ID\n\n"
            return
        if now - last_sent >= keepalive:
            yield ": keep-alive\n\n"
            last_sent = now
        await asyncio.sleep(max(0.0, min(poll, deadline - now, keepalive - (now - last_sent))))


@router.get("/traces/{session_id}/stream", tags=["Traces"], response_class=StreamingResponse)
async def stream_trace(
    request: Request,
    service: Service,
    who: Caller,
    session_id: str,
    since_sequence: Annotated[
        int | None, Query(ge=0, le=MAX_INDEX, description="Send only events after this sequence.")
    ] = None,
    poll_ms: Annotated[int, Query(ge=50, le=5000, description="How often to look for new events.")] = 250,
    max_seconds: Annotated[int, Query(ge=1, le=86_400, description="Close the stream after this long.")] = 3600,
    last_event_id: Annotated[str | None, Header(description="Resume after this event (SSE reconnect).")] = None,
) -> StreamingResponse:
    """The session's TRACE events as Server-Sent Events, live, ending with ``event: end``."""
    await own_session(service, who, session_id)
    after = _resume_point(last_event_id, since_sequence)
    streams = context(request).streams
    if streams.get(who.key_id, 0) >= MAX_STREAMS_PER_KEY:
        raise RateLimited(1.0)
    streams[who.key_id] = streams.get(who.key_id, 0) + 1

    async def counted() -> AsyncIterator[str]:
        try:
            async for chunk in _stream(request, service, who.tenant_id, session_id, after, poll_ms / 1000, max_seconds):
                yield chunk
        finally:
            left = streams.get(who.key_id, 1) - 1
            if left > 0:
                streams[who.key_id] = left
            else:
                streams.pop(who.key_id, None)

    return StreamingResponse(counted(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})

"""``GET /v1/traces/{id}/stream``: a session's TRACE events as Server-Sent Events.

``httpx.ASGITransport`` hands a response over only once the app has finished it,
which is enough for a stream that ends (an ended session, ``max_seconds``). The
live tests use :class:`LiveTransport`, which hands the response over as soon as
its headers are sent and the body chunk by chunk, as a real server would, and
tells the app when the client closes the stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from tests.e2e._service import carp

from cra.server import stream_api
from cra.server.app import create_app
from cra.server.auth import issue_key
from cra.server.boot import Booted, boot, load_atlas_dirs

SUPPORT = Path(__file__).resolve().parents[2] / "examples" / "atlases" / "customer-support"
PROBLEM = "application/problem+json"
NDJSON = "application/x-ndjson"
TIMEOUT = 30.0
BASE = "http://cra.test"


# -- a transport that streams ------------------------------------------------------


class _Body(httpx.AsyncByteStream):
    def __init__(self, chunks: asyncio.Queue[bytes | None], closed: asyncio.Event, task: asyncio.Task[None]) -> None:
        self._chunks = chunks
        self._closed = closed
        self._task = task

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self._chunks.get()) is not None:
            yield chunk

    async def aclose(self) -> None:
        self._closed.set()  # the client went away: the app's receive() now says http.disconnect
        await asyncio.wait_for(self._task, 10)


@dataclass
class LiveTransport(httpx.AsyncBaseTransport):
    """An ASGI transport that streams the response body as the app sends it."""

    app: FastAPI
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port),
            "client": ("127.0.0.1", 123),
            "root_path": "",
        }
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        closed = asyncio.Event()
        started: asyncio.Future[MutableMapping[str, Any]] = asyncio.get_running_loop().create_future()
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": body, "more_body": False}
            await closed.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.set_result(message)
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    chunks.put_nowait(message["body"])
                if not message.get("more_body", False):
                    chunks.put_nowait(None)

        async def serve() -> None:
            try:
                await self.app(scope, receive, send)
            except BaseException as exc:
                if not started.done():
                    started.set_exception(exc)
                raise
            finally:
                chunks.put_nowait(None)
                if not started.done():
                    started.set_exception(RuntimeError("the app sent no response"))

        task = asyncio.create_task(serve())
        self.tasks.append(task)
        start = await started
        return httpx.Response(start["status"], headers=start.get("headers", []), stream=_Body(chunks, closed, task))


# -- helpers --------------------------------------------------------------------


@dataclass
class Env:
    booted: Booted
    app: FastAPI
    client: httpx.AsyncClient
    live: httpx.AsyncClient
    transport: LiveTransport

    async def key(self, tenant: str, role: str, *, agent: str | None = None) -> dict[str, str]:
        token, _ = await issue_key(
            self.booted.state, tenant_id=tenant, role=role, agent_id=agent, policy_roles=[role], now=datetime.now(UTC)
        )
        return {"X-API-Key": token}


@asynccontextmanager
async def served(data_dir: Path) -> AsyncIterator[Env]:
    booted = await boot(data_dir)
    try:
        await booted.service.start()
        assert await load_atlas_dirs(booted.service, "acme", [SUPPORT])
        app = create_app(booted.service, booted.state)
        transport = LiveTransport(app)
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client,
            httpx.AsyncClient(transport=transport, base_url=BASE) as live,
        ):
            yield Env(booted, app, client, live, transport)
            # Every stream the app served has finished: none outlives its client.
            assert all(task.done() for task in transport.tasks)
    finally:
        await booted.close()


def run(data_dir: Path, body: Callable[[Env], Awaitable[None]]) -> None:
    async def main() -> None:
        async with served(data_dir) as env:
            await asyncio.wait_for(body(env), TIMEOUT)

    asyncio.run(main())


async def new_session(env: Env, headers: dict[str, str], agent: str) -> str:
    r = await env.client.post("/v1/sessions", json={"agent_id": agent, "goal": "Help a customer"}, headers=headers)
    assert r.status_code == 201, r.text
    session_id: str = r.json()["session_id"]
    return session_id


async def resolve(env: Env, headers: dict[str, str], agent: str, session_id: str) -> str:
    r = await env.client.post("/v1/resolve", json=carp(agent, session_id, "resolve"), headers=headers)
    assert r.status_code == 200, r.text
    resolution_id: str = r.json()["resolution_id"]
    return resolution_id


async def ndjson(env: Env, headers: dict[str, str], session_id: str) -> list[str]:
    r = await env.client.get(f"/v1/traces/{session_id}", params={"limit": 1000}, headers={**headers, "Accept": NDJSON})
    assert r.status_code == 200, r.text
    lines = r.text.split("\n")
    assert lines[-1] == ""
    return lines[:-1]


def parse_sse(text: str) -> list[dict[str, str]]:
    """SSE messages (and comments, as ``{"comment": …}``), as the WHATWG parser splits them."""
    assert text.endswith("\n\n"), text[-200:]
    out = []
    for block in text[:-2].split("\n\n"):
        message: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                message["comment"] = line[1:].strip()
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data" and "data" in message:
                message["data"] += "\n" + value
            else:
                assert name not in message, f"{name} twice in {block!r}"
                message[name] = value
        out.append(message)
    return out


async def messages(response: httpx.Response) -> AsyncGenerator[dict[str, str], None]:
    """The SSE messages of a streaming response, as they arrive."""
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            yield parse_sse(block + "\n\n")[0]


def events_of(parsed: list[dict[str, str]]) -> list[dict[str, str]]:
    return [m for m in parsed if "comment" not in m]


def expected(lines: list[str]) -> list[dict[str, str]]:
    out = []
    for line in lines:
        event = json.loads(line)
        out.append({"id": str(event["sequence"]), "event": event["event_type"], "data": line})
    return out


async def stream_text(env: Env, session_id: str, headers: dict[str, str], **params: Any) -> httpx.Response:
    async with env.client.stream("GET", f"/v1/traces/{session_id}/stream", params=params, headers=headers) as r:
        await r.aread()
        return r


# -- 1. an ended session --------------------------------------------------------------


def test_an_ended_session_streams_every_event_then_end(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        agent = await env.key("acme", "agent", agent="support-bot")
        sid = await new_session(env, agent, "support-bot")
        await resolve(env, agent, "support-bot", sid)
        r = await env.client.delete(f"/v1/sessions/{sid}", headers=agent)
        assert r.status_code == 204, r.text
        lines = await ndjson(env, agent, sid)
        assert len(lines) >= 3

        r = await stream_text(env, sid, agent)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/event-stream")
        parsed = parse_sse(r.text)
        *events, end = events_of(parsed)
        # Byte for byte the NDJSON lines, in sequence order, each with its id and type.
        assert events == expected(lines)
        assert [int(e["id"]) for e in events] == sorted(int(e["id"]) for e in events)
        assert end["event"] == "end"
        assert "id" not in end
        assert json.loads(end["data"]) == {
            "session_id": sid,
            "status": "ended",
            "last_sequence": json.loads(lines[-1])["sequence"],
        }
        assert json.loads(lines[-1])["event_type"] == "session.ended"

        # Resuming: Last-Event-ID (what EventSource sends) or since_sequence give only later events.
        middle = json.loads(lines[1])["sequence"]
        for headers, params in (
            ({**agent, "Last-Event-ID": str(middle)}, {}),
            (agent, {"since_sequence": middle}),
            ({**agent, "Last-Event-ID": str(middle)}, {"since_sequence": 0}),  # the header wins
        ):
            r = await stream_text(env, sid, headers, **params)
            assert r.status_code == 200, r.text
            *events, end = events_of(parse_sse(r.text))
            assert events == expected(lines[2:])
            assert end["event"] == "end"
        # Resuming after the last event: nothing but end.
        r = await stream_text(env, sid, {**agent, "Last-Event-ID": events[-1]["id"]})
        assert [m["event"] for m in events_of(parse_sse(r.text))] == ["end"]

    run(tmp_path, body)


def test_stream_access_and_bad_parameters(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        agent = await env.key("acme", "agent", agent="support-bot")
        other_agent = await env.key("acme", "agent", agent="other-bot")
        auditor = await env.key("acme", "auditor")
        stranger = await env.key("globex", "admin")
        sid = await new_session(env, agent, "support-bot")
        await env.client.delete(f"/v1/sessions/{sid}", headers=agent)

        for headers in (stranger, other_agent):
            r = await stream_text(env, sid, headers)
            assert r.status_code == 404, r.text
            assert r.headers["content-type"].startswith(PROBLEM)
        r = await stream_text(env, sid, {})
        assert r.status_code == 401
        r = await stream_text(env, "no-such-session", auditor)
        assert r.status_code == 404
        r = await stream_text(env, sid, auditor)
        assert r.status_code == 200
        assert events_of(parse_sse(r.text))[-1]["event"] == "end"

        for headers, params, path in (
            (agent, {"poll_ms": 49}, "/poll_ms"),
            (agent, {"poll_ms": 5001}, "/poll_ms"),
            (agent, {"max_seconds": 0}, "/max_seconds"),
            (agent, {"max_seconds": 86_401}, "/max_seconds"),
            (agent, {"since_sequence": -1}, "/since_sequence"),
            ({**agent, "Last-Event-ID": "seven"}, {}, "/last-event-id"),
            ({**agent, "Last-Event-ID": "-1"}, {}, "/last-event-id"),
            ({**agent, "Last-Event-ID": "01"}, {}, "/last-event-id"),
        ):
            r = await stream_text(env, sid, headers, **params)
            assert r.status_code == 400, (params, r.text)
            assert r.headers["content-type"].startswith(PROBLEM)
            assert r.json()["path"] == path

    run(tmp_path, body)


# -- 2. a live session ---------------------------------------------------------------


def test_a_live_stream_sees_new_events_and_then_end(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        agent = await env.key("acme", "agent", agent="support-bot")
        sid = await new_session(env, agent, "support-bot")
        before = await ndjson(env, agent, sid)

        url = f"/v1/traces/{sid}/stream"
        async with env.live.stream("GET", url, params={"poll_ms": 50}, headers=agent) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            incoming = messages(r)
            got = [await asyncio.wait_for(anext(incoming), 5) for _ in before]
            assert got == expected(before)

            # An operation while the stream is open: its events arrive on it.
            rid = await resolve(env, agent, "support-bot", sid)
            after_resolve = await ndjson(env, agent, sid)
            new = after_resolve[len(before) :]
            assert new
            got = [await asyncio.wait_for(anext(incoming), 5) for _ in new]
            assert got == expected(new)
            assert any(json.loads(m["data"]).get("payload", {}).get("resolution_id") == rid for m in got)

            # Ending the session, concurrently with the reader: its last events, then end.
            async def read_to_end() -> list[dict[str, str]]:
                out = []
                async for m in incoming:
                    out.append(m)
                    if m.get("event") == "end":
                        break
                return out

            reader = asyncio.create_task(read_to_end())
            await asyncio.sleep(0.1)
            assert not reader.done()
            r_end = await env.client.delete(f"/v1/sessions/{sid}", headers=agent)
            assert r_end.status_code == 204
            rest = await asyncio.wait_for(reader, 5)
            final = await ndjson(env, agent, sid)
            assert events_of(rest)[:-1] == expected(final[len(after_resolve) :])
            assert rest[-1]["event"] == "end"
            # And the stream is over.
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(anext(incoming), 5)

    run(tmp_path, body)


def test_keep_alive_max_seconds_and_disconnect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_api, "KEEPALIVE_SECONDS", 0.2)

    async def body(env: Env) -> None:
        agent = await env.key("acme", "agent", agent="support-bot")
        sid = await new_session(env, agent, "support-bot")
        lines = await ndjson(env, agent, sid)

        # A quiet, active session: keep-alive comments, and the stream closes at max_seconds, without end.
        loop = asyncio.get_running_loop()
        started = loop.time()
        r = await stream_text(env, sid, agent, poll_ms=50, max_seconds=1)
        assert 0.9 <= loop.time() - started < 5
        parsed = parse_sse(r.text)
        assert events_of(parsed) == expected(lines)
        comments = [m["comment"] for m in parsed if "comment" in m]
        assert comments.count("keep-alive") >= 2
        assert comments[-1].startswith("max_seconds reached")
        assert all(m.get("event") != "end" for m in parsed)

        # A client that goes away: the app stops streaming (LiveTransport waits for it on close).
        async with env.live.stream("GET", f"/v1/traces/{sid}/stream", params={"poll_ms": 50}, headers=agent) as s:
            incoming = messages(s)
            first = await asyncio.wait_for(anext(incoming), 5)
            assert first == expected(lines)[0]
            await incoming.aclose()
        assert env.transport.tasks[-1].done()
        assert env.transport.tasks[-1].exception() is None

    run(tmp_path, body)


def test_a_stream_ends_when_its_key_is_revoked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_api, "_RECHECK_SECONDS", 0.2)

    async def body(env: Env) -> None:
        env.app.state.cra.auth._ttl = 0.0  # no key cache: the store's word on every check
        token, record = await issue_key(
            env.booted.state,
            tenant_id="acme",
            role="agent",
            agent_id="support-bot",
            policy_roles=["agent"],
            now=datetime.now(UTC),
        )
        agent = {"X-API-Key": token}
        sid = await new_session(env, agent, "support-bot")
        lines = await ndjson(env, agent, sid)
        async with env.live.stream("GET", f"/v1/traces/{sid}/stream", params={"poll_ms": 50}, headers=agent) as r:
            incoming = messages(r)
            assert [await asyncio.wait_for(anext(incoming), 5) for _ in lines] == expected(lines)
            assert await env.booted.state.revoke_key(record.key_id, "2026-12-01T00:00:00.000000Z")
            rest = [m async for m in incoming]  # the stream ends by itself
        assert rest[-1] == {"comment": "credentials no longer valid"}
        assert all(m.get("event") != "end" for m in rest)

    run(tmp_path, body)

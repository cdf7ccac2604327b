"""The request guard's timeout and size limit, and the log redaction, on tiny apps and records."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cra.server.app import _Guard
from cra.server.logs import log_config, redact


async def slow(request: Request) -> Response:
    await asyncio.sleep(float(request.query_params.get("s", "0")))
    return JSONResponse({"ok": True})


async def raw_echo(scope: Any, receive: Any, send: Any) -> None:
    """Reads the whole body as the app's routes do; a guard refusal surfaces from receive()."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await JSONResponse({"size": size})(scope, receive, send)


def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
    routed = Starlette(routes=[Route("/slow", slow), Route("/x/stream", slow)])

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await (raw_echo if scope["path"] == "/echo" else routed)(scope, receive, send)

    app = _Guard(inner, max_body=1000, timeout=0.2)

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_a_request_past_its_timeout_is_a_503_problem() -> None:
    fast = call("GET", "/slow", params={"s": "0"})
    assert fast.status_code == 200
    assert fast.headers["x-content-type-options"] == "nosniff"
    late = call("GET", "/slow", params={"s": "5"})
    assert late.status_code == 503
    assert late.headers["content-type"] == "application/problem+json"
    assert late.json()["code"] == "timeout"


def test_streams_are_not_cut_by_the_request_timeout() -> None:
    assert call("GET", "/x/stream", params={"s": "0.4"}).status_code == 200


def test_bodies_over_the_limit_are_413_declared_or_streamed() -> None:
    assert call("POST", "/echo", content=b"x" * 1000).json() == {"size": 1000}
    assert call("POST", "/echo", content=b"x" * 1001).status_code == 413

    async def chunks() -> Any:
        for _ in range(3):
            yield b"x" * 600

    assert call("POST", "/echo", content=chunks()).status_code == 413


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("key cra_0123456789abcdef_Zm9vYmFyYmF6cXV4LXNlY3JldA was refused", "Zm9vYmFyYmF6cXV4LXNlY3JldA"),
        ("Authorization: Bearer eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1In0.c2ln", "eyJzdWIiOiJ1In0"),
        ("headers={'x-api-key': 'hunter2hunter2'}", "hunter2hunter2"),
        ("customer layla@example.sa asked", "layla@example.sa"),
        ("IntegrityError [parameters: ('Layla', 'secret-amount')] (Background", "secret-amount"),
        ('[parameters: (\'{"name": "Jane] Doe", "ssn": "123-45-6789"}\',)]', "123-45-6789"),
        ("authorization: Bearer opaque-token-value", "opaque-token-value"),
    ],
)
def test_redaction_removes_keys_tokens_emails_and_sql_parameters(text: str, secret: str) -> None:
    assert secret not in redact(text)


def test_json_logs_are_one_redacted_object_per_line() -> None:
    stream = io.StringIO()
    config = log_config("info", "json")
    config["handlers"]["main"]["stream"] = stream
    logging.config.dictConfig(config)
    try:
        log = logging.getLogger("cra.test")
        log.info("refused key %s", "cra_0123456789abcdef_c2VjcmV0LXZhbHVlLWhlcmU")
        try:
            raise ValueError("boom for layla@example.sa")
        except ValueError:
            log.exception("it failed")
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["refused key cra_[REDACTED]", "it failed"]
    assert lines[0]["level"] == "info"
    assert "layla@example.sa" not in lines[1]["exception"]
    assert "ValueError" in lines[1]["exception"]

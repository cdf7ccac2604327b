"""Property-based fuzzing of the HTTP API with schemathesis, from the app's own OpenAPI document.

The app runs in-process over a booted data directory (the customer-support atlas
loaded, one session created); schemathesis fetches ``/openapi.json`` through ASGI
(``schemathesis.openapi.from_asgi``) and sends every operation generated requests,
as an admin key and as an agent key. Two properties hold for every answer:

- no 5xx, whatever the input (schemathesis' ``not_a_server_error``);
- every 4xx is an RFC 9457 ``application/problem+json`` document whose ``status``
  is the HTTP status.

The service's objects live on one event loop (SQLAlchemy's async engine, the ledger
sealer), while schemathesis drives ASGI apps from an event loop of its own in a
portal thread. So the app runs on a loop thread of this module, and schemathesis is
given :class:`_Bridge`, an ASGI app that hands each request over to that loop.

The routes read their bodies with CRA's strict JSON parser, through a dependency,
so the app's OpenAPI declares no request bodies. To fuzz bodies too, the loaded
schema gets a permissive JSON request body for each ``POST`` (the fields CRA reads,
extra ones allowed), and examples naming the real session and atlas for path
parameters. Streaming (``/v1/traces/{session_id}/stream``) is excluded: an SSE
response never completes under a buffering client.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tests.e2e._service import SUPPORT, SUPPORT_ID, carp

from cra.server.app import ServerSettings, create_app
from cra.server.auth import issue_key
from cra.server.boot import Booted, boot, load_atlas_dirs

pytestmark = pytest.mark.slow

AGENT = "support-bot"
PROBLEM = "application/problem+json"
STREAM = "/v1/traces/{session_id}/stream"
#: Upper bound for one request on the app's loop; generated requests are all small.
REQUEST_SECONDS = 30.0
EXAMPLES_PER_OPERATION = 25


# -- the app on a loop of its own --------------------------------------------


class _Loop:
    """An event loop running in a daemon thread; coroutines are submitted from other threads."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="cra-app-loop", daemon=True)
        self._thread.start()

    def submit(self, coro: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        return self.submit(coro).result(timeout=timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the app's event loop did not stop"
        self.loop.close()


@dataclass
class _Bridge:
    """An ASGI app that serves each HTTP request with ``app`` on ``loop`` and relays the answer.

    Lifespan events are acknowledged here: the service was started on its own loop.
    An exception the app raises after it sent its 500 (Starlette re-raises them) is
    kept in ``crashes`` so a failure report can show it.
    """

    app: ASGIApp
    loop: _Loop
    crashes: list[str] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "http", scope["type"]
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        answer = await asyncio.wrap_future(self.loop.submit(self._serve(dict(scope), b"".join(chunks))))
        for message in answer:
            await send(message)

    async def _serve(self, scope: Scope, body: bytes) -> list[Message]:
        sent: list[Message] = []
        delivered = False
        finished = asyncio.Event()

        async def app_receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        async def app_send(message: Message) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                finished.set()

        try:
            await asyncio.wait_for(self.app(scope, app_receive, app_send), REQUEST_SECONDS)
        except Exception as exc:
            self.crashes.append(f"{scope['method']} {scope['path']}: {type(exc).__name__}: {exc}")
            if not any(m["type"] == "http.response.start" for m in sent):
                raise
        return sent


# -- the world the requests land in -----------------------------------------


@dataclass
class World:
    booted: Booted
    bridge: _Bridge
    keys: dict[str, str]
    session_id: str


async def _populate(data_dir: Path) -> tuple[Booted, dict[str, str], str]:
    booted = await boot(data_dir)
    try:
        await booted.service.start()
        assert await load_atlas_dirs(booted.service, "default", [SUPPORT]) == [SUPPORT_ID]
        now = datetime.now(UTC)
        admin, _ = await issue_key(booted.state, tenant_id="default", role="admin", now=now)
        agent, _ = await issue_key(booted.state, tenant_id="default", role="agent", agent_id=AGENT, now=now)
        session = await booted.service.create_session(
            "default", agent_id=AGENT, goal="Help a customer with an order", roles=("agent",), atlas_ids=None
        )
        # Something in the trace and the ledger for the read endpoints to find.
        await booted.service.resolve("default", carp(AGENT, session.session_id))
    except BaseException:
        await booted.close()
        raise
    return booted, {"admin": admin, "agent": agent}, session.session_id


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    loop = _Loop()
    try:
        booted, keys, session_id = loop.run(_populate(tmp_path_factory.mktemp("schemathesis") / "data"))
        try:
            app = create_app(booted.service, booted.state, settings=ServerSettings(key_requests_per_second=0))
            yield World(booted, _Bridge(app, loop), keys, session_id)
        finally:
            loop.run(booted.close())
    finally:
        loop.close()


# -- the schema ------------------------------------------------------------------

_STR: dict[str, Any] = {"type": "string"}
_OBJ: dict[str, Any] = {"type": "object"}


def _obj(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required)}


def _bodies(session_id: str) -> dict[str, dict[str, Any]]:
    """Request bodies for the ``POST`` operations: the fields each route reads, as JSON Schema."""
    requester = _obj({"agent_id": {**_STR, "example": AGENT}, "session_id": {**_STR, "example": session_id}})
    carp_request = _obj(
        {
            "carp_version": {"type": "string", "enum": ["1.0"]},
            "request_id": {"type": "string", "format": "uuid"},
            "timestamp": {"type": "string", "format": "date-time"},
            "operation": {"type": "string", "enum": ["resolve", "execute"]},
            "requester": requester,
            "task": _obj({"goal": _STR, "context": _OBJ}),
            "execution": _obj({"resolution_id": _STR, "action_id": _STR, "parameters": _OBJ}),
        },
        ("carp_version", "request_id", "timestamp", "operation", "requester"),
    )
    example = carp(AGENT, session_id)
    example["request_id"] = str(uuid.UUID(int=1))
    return {
        "/v1/sessions": _obj(
            {
                "agent_id": {**_STR, "example": AGENT},
                "goal": _STR,
                "atlas_id": {**_STR, "example": SUPPORT_ID},
                "atlas_ids": {"type": "array", "items": _STR},
                "metadata": _OBJ,
            },
            ("agent_id", "goal"),
        ),
        "/v1/resolve": {**carp_request, "example": example},
        "/v1/execute": carp_request,
        "/v1/evaluate": _obj(
            {
                "action": {**_STR, "example": "refund.create"},
                "agent": {**_STR, "example": AGENT},
                "risk_tier": {"type": "string", "enum": ["low", "medium", "high", "critical"]},
                "params": _OBJ,
                "context": _OBJ,
                "atlas_id": {**_STR, "example": SUPPORT_ID},
                "explain": {"type": "boolean"},
            },
            ("action",),
        ),
        "/v1/atlases": _obj(
            {
                "atlas_version": {"type": "string", "enum": ["1.0"]},
                "atlas_id": _STR,
                "version": _STR,
                "name": _STR,
                "description": _STR,
                "actions": {"type": "array", "items": _obj({"action_id": _STR, "name": _STR, "description": _STR})},
                "policies": {"type": "array", "items": _obj({"policy_id": _STR, "type": _STR, "actions": _OBJ})},
                "manifest": _OBJ,
                "files": {"type": "object", "additionalProperties": _STR},
            }
        ),
        "/v1/evidence": _obj(
            {
                "session_id": {**_STR, "example": session_id},
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "media_type": {**_STR, "example": "text/plain"},
                "description": _STR,
                "size_bytes": {"type": "integer"},
            },
            ("session_id", "sha256", "media_type", "description"),
        ),
        "/v1/approvals/{approval_id}/approve": _obj({"comment": _STR}),
        "/v1/approvals/{approval_id}/deny": _obj({"comment": _STR}),
    }


def _augment(document: dict[str, Any], session_id: str) -> None:
    """Add request bodies, and examples for path parameters, to the app's OpenAPI document in place."""
    bodies = _bodies(session_id)
    examples = {"session_id": session_id, "atlas_id": SUPPORT_ID}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method == "post" and path in bodies:
                operation["requestBody"] = {
                    "required": not path.startswith("/v1/approvals/"),
                    "content": {"application/json": {"schema": bodies[path]}},
                }
            if method == "delete":
                continue  # ending the session or unloading the atlas would leave the rest less to work on
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] in examples:
                    parameter["example"] = examples[parameter["name"]]


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _valid_bodies(session_id: str) -> dict[str, Callable[[], dict[str, Any]]]:
    """A request each ``POST`` route accepts (a fresh request id and timestamp each time)."""
    return {
        "/v1/sessions": lambda: {"agent_id": AGENT, "goal": "Help a customer", "atlas_id": SUPPORT_ID},
        "/v1/resolve": lambda: carp(AGENT, session_id),
        "/v1/execute": lambda: carp(
            AGENT,
            session_id,
            "execute",
            execution={"resolution_id": "res-0", "action_id": "order.lookup", "parameters": {"order_id": "42"}},
        ),
        "/v1/evaluate": lambda: {
            "action": "refund.create",
            "agent": AGENT,
            "params": {"order_id": "42", "amount": 10, "currency": "SAR"},
            "explain": True,
        },
        "/v1/evidence": lambda: {
            "session_id": session_id,
            "sha256": uuid.uuid4().hex * 2,
            "media_type": "text/plain",
            "description": "a transcript",
            "size_bytes": 12,
        },
        "/v1/atlases": lambda: {
            "atlas_version": "1.0",
            "atlas_id": f"com.fuzz.a{uuid.uuid4().hex[:12]}",
            "version": "1.0.0",
            "name": "Fuzz",
            "description": "A one-action atlas",
            "actions": [{"action_id": "notes.read", "name": "Read notes", "description": "Read the notes"}],
            "policies": [{"policy_id": "allow-notes", "type": "allow", "actions": ["notes.read"]}],
        },
    }


def _pointers(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every member of ``value``'s objects and arrays, as key paths."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield (*prefix, key)
        yield from _pointers(item, (*prefix, key))


def _edit(body: dict[str, Any], edits: list[tuple[tuple[Any, ...], bool, Any]]) -> dict[str, Any]:
    """``body`` with members replaced by ``value`` (or deleted), or an unknown member added."""
    for path, delete, value in edits:
        parent: Any = body
        for key in path[:-1]:
            parent = parent[key] if isinstance(parent, dict | list) and _has(parent, key) else None
        if not isinstance(parent, dict | list) or not _has(parent, path[-1]):
            continue  # an earlier edit replaced or removed this member's parent
        if delete and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    return body


def _has(container: dict[str, Any] | list[Any], key: Any) -> bool:
    return key in container if isinstance(container, dict) else isinstance(key, int) and 0 <= key < len(container)


def _near_valid(operation: Any, make: Callable[[], dict[str, Any]]) -> st.SearchStrategy[Any]:
    """Valid bodies with a member or two replaced by arbitrary JSON, deleted, or added."""
    paths = [*_pointers(make()), ("unknown_field",)]
    edits = st.lists(st.tuples(st.sampled_from(paths), st.booleans(), _JSON), max_size=2)
    return st.builds(lambda changes: operation.Case(body=_edit(make(), changes), media_type="application/json"), edits)


_CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 20260101,
        "generation": {"mode": "all", "max-examples": EXAMPLES_PER_OPERATION},
        # The stateful phase needs links between operations, which this document does not declare.
        "phases": {"stateful": {"enabled": False}},
    }
)


@pytest.fixture(scope="module")
def api_schema(world: World) -> Any:
    schema = schemathesis.openapi.from_asgi("/openapi.json", world.bridge, config=_CONFIG)
    _augment(schema.raw_schema, world.session_id)
    return schema.exclude(path=STREAM)


# -- the checks ---------------------------------------------------------------------


def problem_json_for_client_errors(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 4xx answer is an RFC 9457 problem document for that status, with CRA's code."""
    if not 400 <= response.status_code < 500:
        return None
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith(PROBLEM), f"{response.status_code} answered as {content_type!r}"
    body = response.json()
    assert isinstance(body, dict), body
    assert body.get("status") == response.status_code, body
    for name in ("type", "title", "detail", "code"):
        assert isinstance(body.get(name), str), f"no {name} in {body}"
        assert body[name], f"an empty {name} in {body}"
    assert body["type"].startswith("https://cra.dev/problems/"), body
    assert body.get("error", {}).get("code") == body["code"], body
    return True


_SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    report_multiple_bugs=False,
)


def _fuzz_operation(strategy: st.SearchStrategy[Any], key: str, counts: Counter[int]) -> None:
    """One Hypothesis test of one operation: ``max_examples`` cases, each sent and checked."""

    @_SETTINGS
    @given(case=strategy)
    def check(case: Any) -> None:
        # The generated X-API-Key is replaced by a real key; a generated Authorization stays (X-API-Key wins).
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "x-api-key"}
        case.headers = {**headers, "X-API-Key": key}
        try:
            response = case.call_and_validate(checks=[not_a_server_error, problem_json_for_client_errors])
        except FailureGroup as failed:  # a BaseExceptionGroup: re-raised as a plain failure for Hypothesis
            raise AssertionError(str(failed)) from None
        counts[response.status_code] += 1

    check()


def _fuzz(api_schema: Any, world: World, role: str) -> None:
    """Every operation, positive, negative and near-valid cases mixed; failing operations are reported together.

    schemathesis' pytest integration for a schema built in a fixture (``from_fixture``)
    does not run under pytest 9.2 (it reads ``Node._nodeid``), so each operation gets its
    own Hypothesis test here, from schemathesis' strategies for it.
    """
    failures: list[str] = []
    seen: dict[str, Counter[int]] = {}
    valid = _valid_bodies(world.session_id)
    for result in api_schema.get_all_operations():
        operation = result.ok()
        strategies = [
            operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
            operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        ]
        if operation.method.lower() == "post" and operation.path in valid:
            strategies.append(_near_valid(operation, valid[operation.path]))
        crashes = len(world.bridge.crashes)
        try:
            _fuzz_operation(st.one_of(strategies), world.keys[role], seen.setdefault(operation.label, Counter()))
        except Exception as exc:  # noqa: BLE001 - every operation runs; all failures are reported below
            logged = "\n".join(dict.fromkeys(world.bridge.crashes[crashes:]))
            failures.append(f"== {operation.label} ==\n{exc}\n{logged}")
    assert len(seen) >= 25, f"only {len(seen)} operations in the schema"
    assert STREAM not in {label.split(" ", 1)[1] for label in seen}
    print(*(f"{label}: {dict(sorted(c.items()))}" for label, c in sorted(seen.items())), sep="\n")
    assert not failures, "\n\n".join(failures)


def test_admin_key_gets_no_server_errors_and_problems_for_bad_input(api_schema: Any, world: World) -> None:
    _fuzz(api_schema, world, "admin")


def test_agent_key_gets_no_server_errors_and_problems_for_bad_input(api_schema: Any, world: World) -> None:
    _fuzz(api_schema, world, "agent")

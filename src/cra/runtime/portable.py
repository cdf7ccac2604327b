"""The engine's portable entry points: ``evaluate`` and ``resolve`` as pure functions of JSON text.

Everything a decision depends on is in the input (the atlases, the requests,
the time, the seed of the ids), and the output is canonical JSON, so an answer
is the same bytes wherever the code runs. The same functions run natively and
inside the WebAssembly component ``cra build-wasm`` makes (CPython 3.14 on
wasm32), and the conformance vectors are checked to agree byte for byte.

``evaluate`` input::

    {"atlas": ATLAS, "now": "2025-01-01T00:00:00Z", "requests": [REQUEST, ...]}

where each ``REQUEST`` is an evaluation request (``EVALUATION_REQUEST_SCHEMA``),
decided in order against one engine, so rate limits and budgets carry from
one to the next. A request may also carry ``"at"``: the seconds after ``now``
at which it is decided (as in an atlas test's steps). Output: ``{"decisions": [{...decision, "steps": [...]}, ...]}``.

``resolve`` input::

    {"atlases": [ATLAS, ...], "roles": ["..."], "request": CARP, "seed": 0}

a CARP resolve run in a fresh session of the requester's agent, for the task's
goal and with ``roles``, on a clock stopped at the request's timestamp, with ids
drawn from ``seed``; the requester's session id is that session's. Output: ``{"resolution": ..., "trace": [...]}``.

An ``ATLAS`` is a manifest, or a whole package as text: ``{"package": {"atlas.json": "...",
"policies/a.json": "...", "context/a.md": "..."}}`` (its digest is the digest of those bytes).
Errors are ``{"error": {"code", "message", "path", "reason"}}``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from cra.errors import CRAError, ProtocolError, ValidationError, json_pointer
from cra.protocol.atlas import Atlas, parse_package
from cra.protocol.canonical import canonical_json, parse_json
from cra.protocol.carp import parse_timestamp
from cra.protocol.validation import compile_validator
from cra.runtime.atlas_files import load_atlas
from cra.runtime.clock import ManualClock
from cra.runtime.engine import Engine
from cra.runtime.ids import SeededIds
from cra.runtime.resolver import Resolver

__all__ = ["evaluate_json", "resolve_json"]

_ATLAS = {
    "oneOf": [
        {"type": "object", "required": ["atlas_version"]},
        {
            "type": "object",
            "required": ["package"],
            "additionalProperties": False,
            "properties": {"package": {"type": "object", "additionalProperties": {"type": "string"}}},
        },
    ]
}
_check_evaluate = compile_validator(
    {
        "type": "object",
        "required": ["atlas", "now", "requests"],
        "additionalProperties": False,
        "properties": {
            "atlas": _ATLAS,
            "now": {"type": "string"},
            "requests": {"type": "array", "items": {"type": "object"}, "minItems": 1},
        },
    }
)
_check_resolve = compile_validator(
    {
        "type": "object",
        "required": ["atlases", "request"],
        "additionalProperties": False,
        "properties": {
            "atlases": {"type": "array", "items": _ATLAS},
            "roles": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "request": {
                "type": "object",
                "required": ["timestamp", "requester", "task"],
                "properties": {
                    "timestamp": {"type": "string"},
                    "requester": {
                        "type": "object",
                        "required": ["agent_id"],
                        "properties": {"agent_id": {"type": "string", "minLength": 1}},
                    },
                    "task": {"type": "object", "required": ["goal"], "properties": {"goal": {"type": "string"}}},
                },
            },
            "seed": {"type": "integer", "minimum": 0},
        },
    }
)


def _error(exc: CRAError) -> str:
    error: dict[str, Any] = {"code": exc.code, "message": str(exc)}
    if isinstance(exc, ValidationError):
        error["path"], error["reason"] = exc.path, exc.reason
    return canonical_json({"error": error})


def _input(text: str, check: Callable[[object], None]) -> dict[str, Any]:
    value = parse_json(text, source=None, error=ProtocolError)
    check(value)
    assert isinstance(value, dict)
    return value


def _atlas(spec: dict[str, Any], path: str) -> Atlas:
    try:
        if "package" in spec:
            return parse_package({name: text.encode("utf-8") for name, text in spec["package"].items()})
        return load_atlas(spec)
    except ValidationError as exc:
        where = f"{path}/package" if "package" in spec else path
        raise type(exc)(where + exc.path, exc.reason, source=exc.source) from None


def evaluate_json(text: str) -> str:
    """Decide each request of the input in order; the answer, or the error, as canonical JSON."""
    try:
        value = _input(text, _check_evaluate)
        start = parse_timestamp(value["now"], "/now")
        clock = ManualClock(start)
        engine = Engine(_atlas(value["atlas"], "/atlas"), clock=clock)
        decisions = []
        for index, item in enumerate(value["requests"]):
            where = json_pointer(["requests", index])
            request = dict(item)
            at = request.pop("at", 0)
            if isinstance(at, bool) or not isinstance(at, (int, float)) or not 0 <= at <= 10**9:
                raise ProtocolError(f"{where}/at", "must be a number of seconds from 0 to 10**9")
            clock.set(start + timedelta(seconds=at))
            try:
                decision = engine.evaluate_request(request)
            except ValidationError as exc:
                raise ProtocolError(where + exc.path, exc.reason) from None
            out = decision.to_dict()
            out["steps"] = [
                {"policy_id": s.policy_id, "type": s.policy_type, "outcome": s.outcome, "detail": s.detail}
                for s in decision.steps
            ]
            decisions.append(out)
    except CRAError as exc:
        return _error(exc)
    return canonical_json({"decisions": decisions})


def resolve_json(text: str) -> str:
    """Run the input's CARP resolve in a fresh session; the resolution and trace, or the error, as canonical JSON."""
    try:
        value = _input(text, _check_resolve)
        request = dict(value["request"])
        clock = ManualClock(parse_timestamp(request["timestamp"], "/request/timestamp"))
        resolver = Resolver(clock=clock, ids=SeededIds(value.get("seed", 0), clock))
        for index, spec in enumerate(value["atlases"]):
            resolver.load_atlas(_atlas(spec, json_pointer(["atlases", index])))
        agent_id, goal = request["requester"]["agent_id"], request["task"]["goal"]
        session_id = resolver.create_session(agent_id, goal, roles=value.get("roles", ()))
        request["requester"] = {**request["requester"], "session_id": session_id}
        try:
            resolution = resolver.resolve(request)
        except ValidationError as exc:
            raise type(exc)("/request" + exc.path, exc.reason) from None
        trace = [event.to_dict() for event in resolver.get_trace(session_id)]
    except CRAError as exc:
        return _error(exc)
    return canonical_json({"resolution": resolution, "trace": trace})

"""Every message the runtime emits validates against the normative CRA/1.0 schemas.

The schemas are read from the vendored conformance data (``tests/vectors``, not the
package's copies), and each event payload is also checked against the payload definition
the trace schema gives for its event type.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastjsonschema
import pytest
import yaml

from cra import ManualClock, Resolver, SeededIds

PAYLOAD_DEFS = {
    "session.started": "SessionStartedPayload",
    "session.ended": "SessionEndedPayload",
    "carp.request.received": "CARPRequestPayload",
    "carp.resolution.completed": "CARPResolutionPayload",
    "action.requested": "ActionRequestedPayload",
    "action.executed": "ActionExecutedPayload",
    "action.denied": "ActionDeniedPayload",
    "action.failed": "ActionFailedPayload",
    "policy.evaluated": "PolicyEvaluatedPayload",
    "policy.violated": "PolicyViolatedPayload",
    "context.injected": "ContextInjectedPayload",
}

ATLAS: dict[str, Any] = {
    "atlas_version": "1.0",
    "atlas_id": "org.conformance.emitted",
    "version": "1.0.0",
    "name": "Emitted messages",
    "description": "Exercises every decision and event type the runtime produces",
    "context_packs": [{"pack_id": "contacts", "name": "Contacts", "files": ["contacts.md"], "always": True}],
    "actions": [
        {"action_id": "note.read", "name": "Read", "description": "Read a note"},
        {
            "action_id": "note.write",
            "name": "Write",
            "description": "Write a note",
            "parameters_schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
        },
        {"action_id": "note.delete", "name": "Delete", "description": "Delete a note"},
        {
            "action_id": "money.pay",
            "name": "Pay",
            "description": "Pay an amount",
            "parameters_schema": {
                "type": "object",
                "required": ["amount"],
                "properties": {"amount": {"type": "integer"}},
            },
        },
        {"action_id": "note.crash", "name": "Crash", "description": "An executor that fails"},
    ],
    "policies": [
        {"policy_id": "no-delete", "type": "deny", "actions": ["note.delete"], "parameters": {"reason": "Never"}},
        {
            "policy_id": "big-pay",
            "type": "require_approval",
            "actions": ["money.pay"],
            "conditions": {"params": {"amount": {"gt": 100}}},
        },
        {
            "policy_id": "write-limit",
            "type": "rate_limit",
            "actions": ["note.write"],
            "parameters": {"max_calls": 1, "window_seconds": 60},
        },
        {
            "policy_id": "pay-budget",
            "type": "budget",
            "actions": ["money.pay"],
            "parameters": {"param": "amount", "limit": 300, "window_seconds": 3600},
        },
        {"policy_id": "allow-all", "type": "allow", "actions": ["*"]},
    ],
}


def _compile(schema: dict[str, Any]) -> Callable[[Any], Any]:
    return fastjsonschema.compile(schema, use_default=False)


@pytest.fixture(scope="module")
def messages(cra10: Path) -> dict[str, Any]:
    """One session that produces every event type and every execute status."""
    clock = ManualClock(datetime(2025, 3, 2, 9, 0, tzinfo=UTC))
    r = Resolver(clock=clock, ids=SeededIds(5, clock))
    r.load_atlas(ATLAS, files={"contacts.md": "Escalate to ops@example.com or +966 11 234 5678."})
    r.register_executor("note.read", lambda p: {"text": "hello"})
    r.register_executor("note.write", lambda p: {"saved": True})
    r.register_executor("money.pay", lambda p: {"paid": p["amount"]})

    def crash(params: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("disk on fire")

    r.register_executor("note.crash", crash)
    sid = r.create_session("agent-1", "Keep the notes tidy", roles=["writer"], metadata={"ticket": "T-1"})
    counter = iter(range(1000))

    def req(operation: str, **extra: Any) -> dict[str, Any]:
        return {
            "carp_version": "1.0",
            "request_id": f"00000000-0000-7000-8000-{next(counter):012d}",
            "timestamp": "2025-03-02T09:00:00Z",
            "operation": operation,
            "requester": {"agent_id": "agent-1", "session_id": sid},
            "task": {"goal": "Keep the notes tidy"},
            **extra,
        }

    resolution = r.resolve(req("resolve"))
    rid = resolution["resolution_id"]

    def call(action: str, params: dict[str, Any], ticket: str | None = None) -> dict[str, Any]:
        body = req("execute", execution={"resolution_id": rid, "action_id": action, "parameters": params})
        return r.execute(body, approval_ticket=ticket)

    responses = [
        call("note.read", {}),
        call("note.write", {"text": "a"}),
        call("note.write", {"text": "b"}),  # rate limited
        call("note.write", {}),  # invalid parameters
        call("note.delete", {}),  # not in the resolution
        call("note.crash", {}),  # executor failure
        call("money.pay", {"amount": 150}),  # pending approval
    ]
    approval_id = responses[-1]["result"]["approval_id"]
    ticket = r.approve(approval_id, approver="boss", comment="fine")
    responses.append(call("money.pay", {"amount": 150}, ticket.token))
    responses.append(call("money.pay", {"amount": 90}))
    responses.append(call("money.pay", {"amount": 90}))  # budget exhausted
    pending = call("money.pay", {"amount": 120})
    responses.append(pending)
    r.deny(pending["result"]["approval_id"], approver="boss")
    r.end_session(sid)
    return {"resolution": resolution, "responses": responses, "events": [e.to_dict() for e in r.get_trace(sid)]}


def test_resolution_validates(messages: dict[str, Any], cra10: Path) -> None:
    schema = json.loads((cra10 / "schemas" / "carp-resolution.schema.json").read_text())
    _compile(schema)(messages["resolution"])
    assert messages["resolution"]["context_blocks"][0]["content"].count("[REDACTED:") == 2


def test_execute_responses_validate(messages: dict[str, Any], cra10: Path) -> None:
    api = yaml.safe_load((cra10 / "openapi.yaml").read_text())
    check = _compile({**api["components"]["schemas"]["ExecuteResponse"]})
    statuses = set()
    for response in messages["responses"]:
        check(response)
        statuses.add(response["status"])
    assert statuses == {"success", "error", "denied", "pending_approval"}


def test_events_validate(messages: dict[str, Any], cra10: Path) -> None:
    schema = json.loads((cra10 / "schemas" / "trace-event.schema.json").read_text())
    check_event = _compile(schema)
    payload_checks = {t: _compile({**schema["$defs"][d], "$defs": schema["$defs"]}) for t, d in PAYLOAD_DEFS.items()}
    # CRA's one documented extension (docs/protocol.md): an approval is not a denial, so
    # policy.evaluated also records result "requires_approval". Checked against the normative
    # definition with exactly that value added, and nothing else changed.
    extended = copy.deepcopy(schema["$defs"]["PolicyEvaluatedPayload"])
    extended["properties"]["result"]["enum"].append("requires_approval")
    payload_checks["policy.evaluated"] = _compile({**extended, "$defs": schema["$defs"]})
    seen = set()
    for event in messages["events"]:
        check_event(event)
        seen.add(event["event_type"])
        if event["event_type"] in payload_checks:
            payload_checks[event["event_type"]](event["payload"])
    expected = set(PAYLOAD_DEFS) | {"action.approved", "context.redacted"}
    assert expected <= seen, expected - seen

"""The in-process runtime: what execute checks, how approvals bind, what counters count."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from cra import (
    ApprovalError,
    AtlasError,
    Engine,
    ManualClock,
    NotFoundError,
    ProtocolError,
    ResolutionError,
    Resolver,
    SeededIds,
    SessionError,
    dumps_trace,
)
from cra.policy.compiler import compile_atlas
from cra.protocol.atlas import parse_atlas
from cra.protocol.carp import parse_carp_request
from cra.trace.replay import replay

T0 = datetime(2025, 5, 4, 8, 30, tzinfo=UTC)


def atlas(*policies: dict[str, Any]) -> dict[str, Any]:
    return {
        "atlas_version": "1.0",
        "atlas_id": "org.test.runtime",
        "version": "1.0.0",
        "name": "Runtime test atlas",
        "description": "Actions and policies for runtime tests",
        "actions": [
            {"action_id": "doc.read", "name": "Read", "description": "Read a document"},
            {
                "action_id": "doc.write",
                "name": "Write",
                "description": "Write a document",
                "parameters_schema": {
                    "type": "object",
                    "required": ["title"],
                    "properties": {"title": {"type": "string", "maxLength": 20}},
                },
            },
            {"action_id": "doc.delete", "name": "Delete", "description": "Delete a document"},
            {"action_id": "pay.send", "name": "Pay", "description": "Send money"},
        ],
        "policies": list(policies)
        or [
            {"policy_id": "no-delete", "type": "deny", "actions": ["doc.delete"]},
            {
                "policy_id": "big-payments",
                "type": "require_approval",
                "actions": ["pay.send"],
                "conditions": {"params": {"amount": {"gt": 100}}},
                "parameters": {"approver_roles": ["finance"], "ticket_ttl_seconds": 600},
            },
            {
                "policy_id": "write-rate",
                "type": "rate_limit",
                "actions": ["doc.write"],
                "parameters": {"max_calls": 2, "window_seconds": 60},
            },
            {
                "policy_id": "pay-budget",
                "type": "budget",
                "actions": ["pay.send"],
                "parameters": {"param": "amount", "limit": 500, "window_seconds": 3600, "scope": "session"},
            },
            {
                "policy_id": "allow-staff",
                "type": "allow",
                "actions": ["doc.*", "pay.*"],
                "conditions": {"roles": ["staff"]},
            },
        ],
    }


class Harness:
    """A resolver on a manual clock with deterministic ids, and request builders."""

    def __init__(
        self,
        manifest: dict[str, Any] | None = None,
        *,
        seed: int = 1,
        executors: tuple[str, ...] = ("doc.read", "doc.write", "doc.delete", "pay.send"),
    ) -> None:
        self.clock = ManualClock(T0)
        self.r = Resolver(clock=self.clock, ids=SeededIds(seed, self.clock))
        self.r.load_atlas(manifest or atlas())
        self.calls: list[dict[str, Any]] = []
        for action in executors:
            self.r.register_executor(action, self._record(action))
        self._n = itertools.count()

    def _record(self, action: str) -> Any:
        def run(params: dict[str, Any]) -> dict[str, Any]:
            self.calls.append({"action": action, **params})
            return {"ok": True}

        return run

    def session(self, agent: str = "bot", roles: tuple[str, ...] = ("staff",)) -> str:
        return self.r.create_session(agent, "Handle documents and payments", roles=roles)

    def request(self, sid: str, operation: str, agent: str = "bot", **extra: Any) -> dict[str, Any]:
        return {
            "carp_version": "1.0",
            "request_id": f"00000000-0000-7000-8000-{next(self._n):012d}",
            "timestamp": self.clock.now().isoformat().replace("+00:00", "Z"),
            "operation": operation,
            "requester": {"agent_id": agent, "session_id": sid},
            "task": {"goal": "Handle documents and payments"},
            **extra,
        }

    def resolve(self, sid: str, agent: str = "bot") -> str:
        return str(self.r.resolve(self.request(sid, "resolve", agent))["resolution_id"])

    def execute(
        self, sid: str, rid: str, action: str, params: dict[str, Any], *, ticket: str | None = None, agent: str = "bot"
    ) -> dict[str, Any]:
        execution = {"resolution_id": rid, "action_id": action, "parameters": params}
        return self.r.execute(self.request(sid, "execute", agent, execution=execution), approval_ticket=ticket)

    def types(self, sid: str) -> list[str]:
        return [e.event_type for e in self.r.get_trace(sid)]


def test_allowed_call_runs_its_executor_and_is_traced() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    response = h.execute(sid, rid, "doc.read", {})
    assert response["status"] == "success"
    assert response["result"] == {"ok": True}
    assert h.calls == [{"action": "doc.read"}]
    assert h.types(sid)[-3:] == ["action.requested", "policy.evaluated", "action.executed"]
    h.r.verify_chain(sid)


def test_action_denied_at_resolve_cannot_be_executed() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    response = h.execute(sid, rid, "doc.delete", {})
    assert response["status"] == "denied"
    assert response["error"]["code"] == "action_not_resolved"
    assert h.calls == []


def test_parameters_are_validated_against_the_action_schema() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    response = h.execute(sid, rid, "doc.write", {"title": "x" * 21})
    assert response["status"] == "error"
    assert response["error"]["code"] == "invalid_parameters"
    assert response["error"]["details"]["path"] == "/title"
    assert h.calls == []


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda h, sid, rid: h.execute(sid, "0193a3a0-0000-7000-8000-000000000000", "doc.read", {}), NotFoundError),
        (lambda h, sid, rid: h.execute(sid, rid, "doc.read", {}, agent="intruder"), SessionError),
    ],
)
def test_execute_refuses_foreign_or_unknown_references(mutate: Any, error: type[Exception]) -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    with pytest.raises(error):
        mutate(h, sid, rid)


def test_unknown_resolution_is_recorded_as_an_error_event() -> None:
    h = Harness()
    sid = h.session()
    h.resolve(sid)
    with pytest.raises(NotFoundError):
        h.execute(sid, "0193a3a0-0000-7000-8000-000000000000", "doc.read", {})
    assert h.types(sid)[-1] == "error.occurred"


def test_resolution_of_another_session_is_not_usable() -> None:
    h = Harness()
    first, second = h.session(), h.session()
    rid = h.resolve(first)
    with pytest.raises(NotFoundError):
        h.execute(second, rid, "doc.read", {})


def test_expired_resolution_is_refused() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    h.clock.advance(3600)
    with pytest.raises(ResolutionError, match="expired"):
        h.execute(sid, rid, "doc.read", {})


def test_request_ids_are_single_use_within_a_session() -> None:
    h = Harness()
    sid = h.session()
    body = h.request(sid, "resolve")
    h.r.resolve(body)
    with pytest.raises(ResolutionError, match="already used"):
        h.r.resolve(body)


def test_timestamps_beyond_five_minutes_of_skew_are_refused() -> None:
    h = Harness()
    sid = h.session()
    body = h.request(sid, "resolve")
    body["timestamp"] = (T0 - timedelta(seconds=301)).isoformat()
    with pytest.raises(ResolutionError, match="away from the runtime's clock"):
        h.r.resolve(body)
    body["timestamp"] = (T0 - timedelta(seconds=299)).isoformat()
    h.r.resolve(body)


def test_ended_sessions_accept_nothing() -> None:
    h = Harness()
    sid = h.session()
    h.r.end_session(sid)
    with pytest.raises(SessionError, match="ended"):
        h.resolve(sid)
    assert h.types(sid)[-1] == "session.ended"


def test_malformed_requests_name_the_json_path() -> None:
    h = Harness()
    sid = h.session()
    body = h.request(sid, "resolve")
    del body["task"]["goal"]
    with pytest.raises(ProtocolError) as info:
        h.r.resolve(body)
    assert info.value.path == "/task/goal"


def test_resolve_does_not_consume_rate_limits() -> None:
    h = Harness()
    sid = h.session()
    for _ in range(5):
        rid = h.resolve(sid)
    statuses = [h.execute(sid, rid, "doc.write", {"title": "t"})["status"] for _ in range(3)]
    assert statuses == ["success", "success", "denied"]


def test_rate_limits_count_per_agent_not_globally() -> None:
    h = Harness()
    alice, bob = h.session("alice"), h.session("bob")
    ra, rb = h.resolve(alice, "alice"), h.resolve(bob, "bob")
    for _ in range(2):
        assert h.execute(alice, ra, "doc.write", {"title": "a"}, agent="alice")["status"] == "success"
    denied = h.execute(alice, ra, "doc.write", {"title": "a"}, agent="alice")
    assert denied["error"]["code"] == "rate_limit_exceeded"
    assert denied["error"]["details"]["retry_after"] == 60
    assert h.execute(bob, rb, "doc.write", {"title": "b"}, agent="bob")["status"] == "success"


def test_rate_limit_window_slides() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    h.execute(sid, rid, "doc.write", {"title": "1"})
    h.clock.advance(30)
    h.execute(sid, rid, "doc.write", {"title": "2"})
    denied = h.execute(sid, rid, "doc.write", {"title": "3"})
    assert denied["error"]["details"]["retry_after"] == 30
    h.clock.advance(31)
    assert h.execute(sid, rid, "doc.write", {"title": "4"})["status"] == "success"


def test_a_denied_call_consumes_nothing() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    for amount in (100, 100, 100, 100, 50):
        assert h.execute(sid, rid, "pay.send", {"amount": amount})["status"] == "success"
    over = h.execute(sid, rid, "pay.send", {"amount": 100})
    assert over["error"]["code"] == "budget_exceeded"
    assert h.execute(sid, rid, "pay.send", {"amount": 50})["status"] == "success"
    assert h.execute(sid, rid, "pay.send", {"amount": 1})["error"]["code"] == "budget_exceeded"
    assert sum(c["amount"] for c in h.calls) == 500


def test_missing_executor_is_an_error_and_consumes_nothing() -> None:
    h = Harness(executors=("doc.read",))
    sid = h.session()
    rid = h.resolve(sid)
    for _ in range(3):
        assert h.execute(sid, rid, "doc.write", {"title": "t"})["error"]["code"] == "no_executor"
    h.r.register_executor("doc.write", lambda p: {"ok": True})
    assert h.execute(sid, rid, "doc.write", {"title": "t"})["status"] == "success"
    assert h.execute(sid, rid, "doc.write", {"title": "t"})["status"] == "success"
    assert h.execute(sid, rid, "doc.write", {"title": "t"})["error"]["code"] == "rate_limit_exceeded"


def test_executor_failures_are_recorded_not_raised() -> None:
    h = Harness()

    def broken(params: dict[str, Any]) -> dict[str, Any]:
        raise OSError("the document store is down")

    h.r.register_executor("doc.read", broken)
    h.r.register_executor("doc.write", lambda p: {"when": datetime.now(UTC)})
    sid = h.session()
    rid = h.resolve(sid)
    first = h.execute(sid, rid, "doc.read", {})
    assert first["status"] == "error"
    assert "document store is down" in first["error"]["message"]
    second = h.execute(sid, rid, "doc.write", {"title": "t"})
    assert second["error"]["code"] == "invalid_result"
    assert h.types(sid).count("action.failed") == 2
    h.r.verify_chain(sid)


def _pending(h: Harness, sid: str, rid: str, amount: int = 250) -> str:
    response = h.execute(sid, rid, "pay.send", {"amount": amount})
    assert response["status"] == "pending_approval", response
    return str(response["result"]["approval_id"])


def test_approval_ticket_is_single_use_and_bound_to_the_arguments() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    approval_id = _pending(h, sid, rid)
    ticket = h.r.approve(approval_id, approver="fatima", approver_roles=["finance"], comment="invoice 77")
    changed = h.execute(sid, rid, "pay.send", {"amount": 251}, ticket=ticket.token)
    assert changed["error"]["code"] == "invalid_approval"
    assert "arguments" in changed["error"]["message"]
    assert h.execute(sid, rid, "pay.send", {"amount": 250}, ticket=ticket.token)["status"] == "success"
    again = h.execute(sid, rid, "pay.send", {"amount": 250}, ticket=ticket.token)
    assert again["error"]["code"] == "invalid_approval"
    assert "already used" in again["error"]["message"]
    assert [c["amount"] for c in h.calls] == [250]


def test_approval_ticket_does_not_travel_to_another_session() -> None:
    h = Harness()
    first, second = h.session(), h.session()
    r1, r2 = h.resolve(first), h.resolve(second)
    ticket = h.r.approve(_pending(h, first, r1), approver="fatima", approver_roles=["finance"])
    other = h.execute(second, r2, "pay.send", {"amount": 250}, ticket=ticket.token)
    assert other["error"]["code"] == "invalid_approval"
    assert h.calls == []


def test_approval_ticket_expires() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    ticket = h.r.approve(_pending(h, sid, rid), approver="fatima", approver_roles=["finance"])
    h.clock.advance(601)
    late = h.execute(sid, rid, "pay.send", {"amount": 250}, ticket=ticket.token)
    assert "expired" in late["error"]["message"]


def test_tampered_ticket_is_refused() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    ticket = h.r.approve(_pending(h, sid, rid), approver="fatima", approver_roles=["finance"])
    body, signature = ticket.token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    for token in (f"{body}.{flipped}", f"{body[:-2]}xx.{signature}", "not-a-ticket", ""):
        response = h.execute(sid, rid, "pay.send", {"amount": 250}, ticket=token)
        assert response["error"]["code"] == "invalid_approval"
    assert h.calls == []


def test_approvers_need_the_required_role_and_cannot_be_the_agent() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    approval_id = _pending(h, sid, rid)
    with pytest.raises(ApprovalError, match="own approval"):
        h.r.approve(approval_id, approver="bot", approver_roles=["finance"])
    with pytest.raises(ApprovalError, match="needs one of the roles"):
        h.r.approve(approval_id, approver="omar", approver_roles=["staff"])
    assert h.r.get_approval(approval_id).status == "pending"


def test_denied_approval_cannot_be_approved_later() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    approval_id = _pending(h, sid, rid)
    h.r.deny(approval_id, approver="fatima", approver_roles=["finance"], comment="no invoice")
    with pytest.raises(ApprovalError, match="already denied"):
        h.r.approve(approval_id, approver="fatima", approver_roles=["finance"])
    assert h.types(sid)[-1] == "action.denied"


def test_repeated_request_reuses_the_pending_approval() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    assert _pending(h, sid, rid) == _pending(h, sid, rid)
    assert _pending(h, sid, rid, 300) != _pending(h, sid, rid)
    assert len(h.r.approvals(session_id=sid, status="pending")) == 2


def test_same_inputs_give_byte_identical_resolutions_and_traces() -> None:
    outputs = []
    for _ in range(2):
        h = Harness(seed=42)
        sid = h.session()
        resolution = h.r.resolve(h.request(sid, "resolve"))
        h.execute(sid, resolution["resolution_id"], "doc.write", {"title": "t"})
        outputs.append((resolution, dumps_trace(h.r.get_trace(sid))))
    assert outputs[0] == outputs[1]


def test_replay_reproduces_a_recorded_session_and_catches_a_changed_atlas() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    for _ in range(3):
        h.execute(sid, rid, "doc.write", {"title": "t"})
    ticket = h.r.approve(_pending(h, sid, rid), approver="fatima", approver_roles=["finance"])
    h.execute(sid, rid, "pay.send", {"amount": 250}, ticket=ticket.token)
    events = h.r.get_trace(sid)

    same = replay(events, [h.r.compiled("org.test.runtime")])
    assert same.identical, same.to_dict()
    assert len(same.items) == 4 + 5  # four actions at resolve, five calls

    changed = atlas(
        {"policy_id": "allow-staff", "type": "allow", "actions": ["doc.*", "pay.*"], "conditions": {"roles": ["staff"]}}
    )
    different = replay(events, [compile_atlas(parse_atlas(changed))])
    assert not different.identical
    assert {i.action_id for i in different.items if i.status == "different"} >= {"doc.delete", "doc.write"}


# -- what the review of the first version found -----------------------------------------------------------------------


def test_an_executor_gets_its_own_copy_of_the_arguments() -> None:
    h = Harness()

    def meddle(params: dict[str, Any]) -> dict[str, Any]:
        params["title"] += " (edited)"
        return {"ok": True}

    h.r.register_executor("doc.write", meddle)
    sid = h.session()
    rid = h.resolve(sid)
    h.execute(sid, rid, "doc.write", {"title": "t"})
    h.r.verify_chain(sid)
    requested = [e for e in h.r.get_trace(sid) if e.event_type == "action.requested"][-1]
    assert requested.payload["parameters"] == {"title": "t"}


def test_an_executor_may_call_back_into_the_runtime() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)

    def write_then_read(params: dict[str, Any]) -> dict[str, Any]:
        inner = h.execute(sid, rid, "doc.read", {})
        return {"inner": inner["status"]}

    h.r.register_executor("doc.write", write_then_read)
    assert h.execute(sid, rid, "doc.write", {"title": "t"})["result"] == {"inner": "success"}
    h.r.verify_chain(sid)
    assert h.types(sid).count("action.executed") == 2


def test_results_must_match_the_returns_schema() -> None:
    manifest = atlas()
    manifest["actions"][0]["returns_schema"] = {"type": "object", "required": ["text"]}
    h = Harness(manifest)
    sid = h.session()
    rid = h.resolve(sid)
    failed = h.execute(sid, rid, "doc.read", {})
    assert failed["error"]["code"] == "invalid_result"
    assert "returns_schema" in failed["error"]["message"]
    h.r.register_executor("doc.read", lambda p: {"text": "hello"})
    assert h.execute(sid, rid, "doc.read", {})["result"] == {"text": "hello"}


def test_an_idempotency_key_runs_the_call_once() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)

    def call(params: dict[str, Any]) -> dict[str, Any]:
        execution = {"resolution_id": rid, "action_id": "pay.send", "parameters": params, "idempotency_key": "k-1"}
        return h.r.execute(h.request(sid, "execute", execution=execution))

    first = call({"amount": 10})
    again = call({"amount": 10})
    assert again == first
    assert [c["amount"] for c in h.calls] == [10]
    clash = call({"amount": 11})
    assert clash["error"]["code"] == "idempotency_key_reused"
    assert [c["amount"] for c in h.calls] == [10]


def test_a_session_confined_to_atlases_cannot_resolve_others() -> None:
    h = Harness()
    other = {
        **atlas(),
        "atlas_id": "org.test.other",
        "actions": [{"action_id": "ops.deploy", "name": "d", "description": "d"}],
    }
    other["policies"] = [{"policy_id": "allow", "type": "allow", "actions": ["ops.*"]}]
    h.r.load_atlas(other)
    sid = h.r.create_session("bot", "Handle documents", roles=["staff"], atlas_ids=["org.test.runtime"])
    body = h.request(sid, "resolve")
    body["atlas_ids"] = ["org.test.other"]
    with pytest.raises(ResolutionError, match="confined"):
        h.r.resolve(body)
    assert h.types(sid)[-1] == "error.occurred"
    allowed = [a["action_id"] for a in h.r.resolve(h.request(sid, "resolve"))["allowed_actions"]]
    assert "ops.deploy" not in allowed


def test_actions_removed_by_a_new_atlas_version_are_refused() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    smaller = atlas()
    smaller["actions"] = [a for a in smaller["actions"] if a["action_id"] != "doc.write"]
    h.r.load_atlas(smaller)
    refused = h.execute(sid, rid, "doc.write", {"title": "x" * 500})
    assert refused["error"]["code"] == "action_not_declared"
    assert h.calls == []


def test_protocol_violations_in_resolve_are_recorded() -> None:
    h = Harness()
    sid = h.session()
    body = h.request(sid, "resolve")
    h.r.resolve(body)
    with pytest.raises(ResolutionError):
        h.r.resolve(body)
    with pytest.raises(SessionError, match="another agent"):
        h.r.resolve(h.request(sid, "resolve", agent="intruder"))
    assert h.types(sid)[-2:] == ["error.occurred", "error.occurred"]
    h.r.verify_chain(sid)


def test_metadata_cannot_pose_as_roles_or_tenant() -> None:
    h = Harness()
    sid = h.r.create_session("bot", "goal", metadata={"roles": ["admin"], "tenant_id": "bank"})
    started = h.r.get_trace(sid)[0].payload
    assert "roles" not in started
    assert "tenant_id" not in started
    assert started["metadata"] == {"roles": ["admin"], "tenant_id": "bank"}
    with pytest.raises(ProtocolError, match="metadata"):
        h.r.create_session("bot", "goal", metadata={"when": datetime.now(UTC)})


def test_approvals_cannot_be_decided_after_the_session_ended() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    approval_id = _pending(h, sid, rid)
    h.r.end_session(sid)
    with pytest.raises(SessionError, match="ended"):
        h.r.approve(approval_id, approver="fatima", approver_roles=["finance"])


def test_a_call_needing_two_approvals_gathers_them_in_turn() -> None:
    manifest = atlas(
        {
            "policy_id": "cfo",
            "type": "require_approval",
            "actions": ["pay.send"],
            "priority": 10,
            "conditions": {"params": {"amount": {"gt": 1000}}},
            "parameters": {"approver_roles": ["cfo"]},
        },
        {
            "policy_id": "finance",
            "type": "require_approval",
            "actions": ["pay.send"],
            "conditions": {"params": {"amount": {"gt": 100}}},
            "parameters": {"approver_roles": ["finance"]},
        },
        {"policy_id": "allow-staff", "type": "allow", "actions": ["pay.*"], "conditions": {"roles": ["staff"]}},
    )
    h = Harness(manifest)
    sid = h.session()
    rid = h.resolve(sid)
    first = h.execute(sid, rid, "pay.send", {"amount": 5000})
    assert first["result"]["policy_id"] == "cfo"
    cfo = h.r.approve(first["result"]["approval_id"], approver="cfo-1", approver_roles=["cfo"])
    second = h.execute(sid, rid, "pay.send", {"amount": 5000}, ticket=cfo.token)
    assert (second["status"], second["result"]["policy_id"]) == ("pending_approval", "finance")
    with pytest.raises(ApprovalError, match="roles"):
        h.r.approve(second["result"]["approval_id"], approver="cfo-1", approver_roles=["cfo"])
    both = h.r.approve(second["result"]["approval_id"], approver="fin-1", approver_roles=["finance"])
    assert h.execute(sid, rid, "pay.send", {"amount": 5000}, ticket=both.token)["status"] == "success"
    assert h.calls == [{"action": "pay.send", "amount": 5000}]


def test_a_typed_request_is_validated_like_a_dict() -> None:
    h = Harness()
    sid = h.session()
    typed = parse_carp_request(h.request(sid, "resolve"))
    with pytest.raises(ProtocolError) as info:
        h.r.resolve(replace(typed, goal=""))
    assert info.value.path == "/task/goal"
    assert h.r.resolve(typed)["request_id"] == typed.request_id


def test_arguments_that_are_not_json_are_refused() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    with pytest.raises(ProtocolError, match="not JSON"):
        h.execute(sid, rid, "pay.send", {"amount": float("inf")})


# -- what the second review found -------------------------------------------------------------------------------------


def two_approvals(ttl_first: int = 900) -> dict[str, Any]:
    return atlas(
        {
            "policy_id": "cfo",
            "type": "require_approval",
            "actions": ["pay.send"],
            "priority": 10,
            "parameters": {"approver_roles": ["cfo"], "ticket_ttl_seconds": ttl_first},
        },
        {
            "policy_id": "finance",
            "type": "require_approval",
            "actions": ["pay.send"],
            "conditions": {"params": {"amount": {"gt": 100}}},
            "parameters": {"approver_roles": ["finance"]},
        },
        {"policy_id": "allow-staff", "type": "allow", "actions": ["pay.*"], "conditions": {"roles": ["staff"]}},
    )


def chain_of_two(h: Harness, sid: str, rid: str, advance: float = 0) -> tuple[str, str]:
    first = h.execute(sid, rid, "pay.send", {"amount": 500})
    cfo = h.r.approve(first["result"]["approval_id"], approver="c", approver_roles=["cfo"])
    second = h.execute(sid, rid, "pay.send", {"amount": 500}, ticket=cfo.token)
    h.clock.advance(advance)
    both = h.r.approve(second["result"]["approval_id"], approver="f", approver_roles=["finance"])
    return cfo.token, both.token


def test_a_chained_ticket_spends_every_approval_it_carries() -> None:
    h = Harness(two_approvals())
    sid = h.session()
    rid = h.resolve(sid)
    cfo, both = chain_of_two(h, sid, rid)
    assert h.execute(sid, rid, "pay.send", {"amount": 500}, ticket=both)["status"] == "success"
    assert h.execute(sid, rid, "pay.send", {"amount": 500}, ticket=cfo)["error"]["code"] == "invalid_approval"
    assert len(h.calls) == 1
    report = replay(h.r.get_trace(sid), [h.r.compiled("org.test.runtime")])
    assert report.identical, report.to_dict()


def test_a_chained_ticket_expires_with_the_earliest_approval() -> None:
    h = Harness(two_approvals(ttl_first=60))
    sid = h.session()
    rid = h.resolve(sid)
    _, both = chain_of_two(h, sid, rid, advance=30)
    h.clock.advance(31)
    late = h.execute(sid, rid, "pay.send", {"amount": 500}, ticket=both)
    assert late["error"]["code"] == "invalid_approval"
    assert "expired" in late["error"]["message"]


def test_a_limit_denial_does_not_spend_the_ticket() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    for _ in range(5):
        h.execute(sid, rid, "pay.send", {"amount": 90})
    ticket = h.r.approve(_pending(h, sid, rid, amount=101), approver="f", approver_roles=["finance"])
    assert h.execute(sid, rid, "pay.send", {"amount": 101}, ticket=ticket.token)["error"]["code"] == "budget_exceeded"
    assert h.r.approvals(status="approved")[0].approval_id == ticket.approval_id


def test_agent_limits_are_counted_per_tenant() -> None:
    h = Harness()
    acme = h.r.create_session("bot", "goal", roles=["staff"], tenant_id="acme")
    globex = h.r.create_session("bot", "goal", roles=["staff"], tenant_id="globex")
    ra, rg = h.resolve(acme), h.resolve(globex)
    for _ in range(2):
        assert h.execute(acme, ra, "doc.write", {"title": "a"})["status"] == "success"
    assert h.execute(globex, rg, "doc.write", {"title": "g"})["status"] == "success"


def test_an_empty_atlas_list_confines_to_nothing() -> None:
    h = Harness()
    sid = h.r.create_session("bot", "goal", roles=["staff"], atlas_ids=[])
    resolution = h.r.resolve(h.request(sid, "resolve"))
    assert (resolution["decision"]["type"], resolution["allowed_actions"]) == ("deny", [])
    open_session = h.session()
    body = h.request(open_session, "resolve")
    body["atlas_ids"] = []
    assert h.r.resolve(body)["allowed_actions"] == []


def test_huge_numbers_are_decided_not_crashed_on() -> None:
    manifest = atlas()
    manifest["actions"][3]["parameters_schema"] = {"type": "object", "properties": {"amount": {"multipleOf": 0.5}}}
    h = Harness(manifest)
    sid = h.session()
    rid = h.resolve(sid)
    refused = h.execute(sid, rid, "pay.send", {"amount": 10**400})
    assert refused["error"]["code"] == "invalid_parameters"


def test_schemas_may_not_reach_outside_themselves() -> None:
    manifest = atlas()
    manifest["actions"][1]["parameters_schema"] = {"$ref": "file:///etc/passwd"}
    with pytest.raises(AtlasError) as info:
        Resolver().load_atlas(manifest)
    assert info.value.path == "/actions/1/parameters_schema"


def test_readers_and_sinks_get_copies() -> None:
    class Meddler:
        def emit(self, event: Any) -> None:
            event.payload["tampered"] = True

    clock = ManualClock(T0)
    r = Resolver(clock=clock, ids=SeededIds(3, clock), sinks=[Meddler()])
    r.load_atlas(atlas())
    metadata: dict[str, Any] = {"ticket": {"id": "T-1"}}
    sid = r.create_session("bot", "goal", roles=["staff"], metadata=metadata)
    metadata["ticket"]["id"] = "T-2"
    cast("dict[str, Any]", r.get_trace(sid)[0].payload)["agent_id"] = "someone else"  # tries to tamper with a copy
    r.verify_chain(sid)
    assert r.get_trace(sid)[0].payload["metadata"] == {"ticket": {"id": "T-1"}}


def test_a_failing_sink_is_logged_and_the_record_stands(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def emit(self, event: Any) -> None:
            raise OSError("disk full")

    r = Resolver(sinks=[Broken()])
    r.load_atlas(atlas())
    sid = r.create_session("bot", "goal")
    r.verify_chain(sid)
    assert "disk full" in caplog.text


def test_non_ascii_tickets_are_just_invalid() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    assert h.execute(sid, rid, "pay.send", {"amount": 250}, ticket="abc.\u00e9")["error"]["code"] == "invalid_approval"


def test_a_single_string_is_not_a_list_of_roles() -> None:
    h = Harness()
    with pytest.raises(ProtocolError, match="roles"):
        h.r.create_session("bot", "goal", roles="staff")
    with pytest.raises(ProtocolError, match="roles"):
        Engine.from_atlas(atlas()).evaluate(action="doc.read", agent="bot", roles="staff")


def test_an_aborting_executor_is_recorded_before_it_propagates() -> None:
    h = Harness()

    def abort(params: dict[str, Any]) -> dict[str, Any]:
        raise KeyboardInterrupt

    h.r.register_executor("doc.read", abort)
    sid = h.session()
    rid = h.resolve(sid)
    with pytest.raises(KeyboardInterrupt):
        h.execute(sid, rid, "doc.read", {})
    failed = h.r.get_trace(sid)[-1]
    assert (failed.event_type, failed.payload["error_code"]) == ("action.failed", "executor_aborted")
    h.r.end_session(sid)  # nothing is left running


def test_a_session_cannot_end_while_its_executor_runs() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)
    seen: list[str] = []

    def end_midway(params: dict[str, Any]) -> dict[str, Any]:
        try:
            h.r.end_session(sid)
        except SessionError as exc:
            seen.append(str(exc))
        return {}

    h.r.register_executor("doc.read", end_midway)
    assert h.execute(sid, rid, "doc.read", {})["status"] == "success"
    assert "still has calls running" in seen[0]
    h.r.end_session(sid)
    assert h.types(sid)[-2:] == ["action.executed", "session.ended"]


def test_an_idempotency_key_survives_an_approval_round() -> None:
    h = Harness()
    sid = h.session()
    rid = h.resolve(sid)

    def call(ticket: str | None = None) -> dict[str, Any]:
        execution = {
            "resolution_id": rid,
            "action_id": "pay.send",
            "parameters": {"amount": 250},
            "idempotency_key": "k",
        }
        return h.r.execute(h.request(sid, "execute", execution=execution), approval_ticket=ticket)

    pending = call()
    ticket = h.r.approve(pending["result"]["approval_id"], approver="f", approver_roles=["finance"])
    done = call(ticket.token)
    assert done["status"] == "success"
    assert call() == done
    assert len(h.calls) == 1


def test_a_default_deny_names_the_default_in_the_trace() -> None:
    manifest = atlas({"policy_id": "reads", "type": "allow", "actions": ["doc.read"]})
    manifest["policies"].append(
        {
            "policy_id": "writes",
            "type": "allow",
            "actions": ["doc.write"],
            "conditions": {"params": {"title": {"eq": "ok"}}},
        }
    )
    h = Harness(manifest)
    sid = h.session()
    rid = h.resolve(sid)
    assert h.execute(sid, rid, "doc.write", {"title": "no"})["error"]["code"] == "default_deny"
    assert h.r.get_trace(sid)[-1].payload["policy_id"] == "cra:default-deny"

"""The in-process Engine: decisions, dry runs, request validation, the clock."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cra import Effect, Engine, ManualClock, ProtocolError, Resolver, SeededIds

ATLAS: dict[str, Any] = {
    "atlas_version": "1.0",
    "atlas_id": "org.test.engine",
    "version": "2.1.0",
    "name": "Engine",
    "description": "Engine tests",
    "actions": [
        {"action_id": "refund.create", "name": "Refund", "description": "Refund", "risk_tier": "medium"},
        {"action_id": "deploy.prod", "name": "Deploy", "description": "Deploy"},
    ],
    "policies": [
        {
            "policy_id": "big-refunds",
            "type": "deny",
            "actions": ["refund.*"],
            "conditions": {"params": {"amount": {"gt": 1000}}},
        },
        {
            "policy_id": "night-freeze",
            "type": "deny",
            "actions": ["deploy.*"],
            "conditions": {"time_window": {"start": "22:00", "end": "06:00", "timezone": "Asia/Riyadh"}},
        },
        {
            "policy_id": "refund-rate",
            "type": "rate_limit",
            "actions": ["refund.create"],
            "parameters": {"max_calls": 1, "window_seconds": 60},
        },
        {"policy_id": "agents", "type": "allow", "actions": ["*"], "conditions": {"roles": ["agent"]}},
    ],
}


def test_decision_names_policy_reason_and_explains() -> None:
    engine = Engine.from_atlas(ATLAS)
    d = engine.evaluate(action="refund.create", agent="bot", roles=["agent"], params={"amount": 5000}, dry_run=True)
    assert (d.effect, d.policy_id, d.reason_code) == (Effect.DENY, "big-refunds", "policy_deny")
    text = d.explain()
    assert "big-refunds" in text
    assert "params.amount gt 1000: true" in text


@pytest.mark.parametrize(
    ("params", "agent", "code"),
    [
        ({}, "bot", "unknown_attribute"),
        ({"amount": "5000"}, "bot", "unknown_attribute"),
        ({"amount": 5}, "mallory", "default_deny"),
    ],
    ids=["amount-missing", "amount-as-string", "unknown-agent"],
)
def test_fail_closed_probes(params: dict[str, Any], agent: str, code: str) -> None:
    atlas = {
        **ATLAS,
        "policies": [*ATLAS["policies"][:-1], {**ATLAS["policies"][-1], "conditions": {"agents": ["bot"]}}],
    }
    engine = Engine.from_atlas(atlas)
    d = engine.evaluate(action="refund.create", agent=agent, roles=["agent"], params=params, dry_run=True)
    assert (d.effect, d.reason_code) == (Effect.DENY, code)
    assert engine.evaluate(action="refund.create", agent="bot", roles=["agent"], params={"amount": 5}).allowed


def test_dry_run_does_not_consume_and_real_calls_do() -> None:
    engine = Engine.from_atlas(ATLAS, clock=ManualClock(datetime(2025, 1, 1, tzinfo=UTC)))
    args: dict[str, Any] = {"action": "refund.create", "agent": "bot", "roles": ["agent"], "params": {"amount": 5}}
    for _ in range(3):
        assert engine.evaluate(**args, dry_run=True).effect is Effect.ALLOW
    assert engine.evaluate(**args).effect is Effect.ALLOW
    limited = engine.evaluate(**args)
    assert (limited.effect, limited.reason_code, limited.retry_after) == (Effect.DENY, "rate_limit_exceeded", 60)
    assert engine.evaluate(**args, dry_run=True).reason_code == "rate_limit_exceeded"
    assert engine.evaluate(**{**args, "agent": "other"}).effect is Effect.ALLOW


def test_time_windows_read_the_injected_clock() -> None:
    clock = ManualClock(datetime(2025, 1, 1, 20, 30, tzinfo=UTC))  # 23:30 in Riyadh (UTC+3)
    engine = Engine.from_atlas(ATLAS, clock=clock)
    assert engine.evaluate(action="deploy.prod", agent="bot", roles=["agent"]).policy_id == "night-freeze"
    clock.set(datetime(2025, 1, 1, 6, 0, tzinfo=UTC))  # 09:00 in Riyadh
    assert engine.evaluate(action="deploy.prod", agent="bot", roles=["agent"]).effect is Effect.ALLOW


def test_declared_risk_tier_cannot_be_lowered_by_the_request() -> None:
    engine = Engine.from_atlas(ATLAS)
    assert engine.compiled.effective_tier("refund.create", "low") == "medium"
    assert engine.compiled.effective_tier("refund.create", "critical") == "critical"
    assert engine.compiled.effective_tier("undeclared.action", None) is None
    with pytest.raises(ProtocolError, match="risk_tier"):
        engine.evaluate(action="refund.create", agent="bot", risk_tier="extreme")


@pytest.mark.parametrize(
    ("request_", "path"),
    [
        ({"action": "refund.create"}, "/agent"),
        ({"agent": "bot", "action": "refund.create", "params": []}, "/params"),
        ({"agent": "bot", "action": "refund.create", "roles": "agent"}, "/roles"),
        ({"agent": "bot", "action": "refund.create", "extra": 1}, "/extra"),
    ],
)
def test_json_requests_are_validated_with_paths(request_: dict[str, Any], path: str) -> None:
    with pytest.raises(ProtocolError) as info:
        Engine.from_atlas(ATLAS).evaluate_request(request_)
    assert info.value.path == path


def test_digest_names_the_policy_package() -> None:
    a, b = Engine.from_atlas(ATLAS), Engine.from_atlas(ATLAS)
    assert a.digest == b.digest
    assert a.digest.startswith("sha256:")
    changed = {**ATLAS, "policies": ATLAS["policies"][:-1]}
    assert Engine.from_atlas(changed).digest != a.digest


# -- arguments are checked against the action's parameters_schema, as execute checks them (issue #12, finding 3) --

SUPPORT = Path(__file__).resolve().parents[3] / "examples" / "atlases" / "customer-support"
GOOD_REFUND = {"order_id": "42", "amount": 2500, "currency": "SAR"}


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"order_id": "42", "amount": 2500}, "/currency"),
        ({**GOOD_REFUND, "order_id": 42}, "/order_id"),
        ({**GOOD_REFUND, "note": "extra"}, "/note"),
        ({**GOOD_REFUND, "amount": -1}, "/amount"),
        (None, "/order_id"),
    ],
    ids=["currency-missing", "order-id-wrong-type", "unknown-field", "amount-below-minimum", "no-arguments"],
)
def test_arguments_that_execute_would_refuse_are_denied_with_their_path(
    params: dict[str, Any] | None, path: str
) -> None:
    engine = Engine.from_atlas(SUPPORT)
    d = engine.evaluate(action="refund.create", agent="support-bot", roles=["agent"], params=params, dry_run=True)
    assert (d.effect, d.policy_id, d.reason_code) == (Effect.DENY, "cra:parameters_schema", "invalid_parameters")
    assert d.details == {"path": path}
    assert d.reason.startswith(f"{path}: ")
    assert "cra:parameters_schema: decides" in d.explain()

    # Execute refuses the same arguments at the same path.
    clock = ManualClock(datetime(2025, 1, 6, 10, tzinfo=UTC))
    resolver = Resolver(clock=clock, ids=SeededIds(1, clock))
    resolver.load_atlas(SUPPORT)
    sid = resolver.create_session(agent_id="support-bot", goal="Refund order 42", roles=["agent"])

    def carp(n: int, operation: str, **extra: Any) -> dict[str, Any]:
        return {
            "carp_version": "1.0",
            "request_id": f"00000000-0000-7000-8000-{n:012d}",
            "timestamp": "2025-01-06T10:00:00.000000Z",
            "operation": operation,
            "requester": {"agent_id": "support-bot", "session_id": sid},
            "task": {"goal": "Refund order 42"},
            **extra,
        }

    resolution = resolver.resolve(carp(1, "resolve"))
    execution = {"resolution_id": resolution["resolution_id"], "action_id": "refund.create"}
    refused = resolver.execute(carp(2, "execute", execution={**execution, "parameters": params or {}}))
    assert (refused["status"], refused["error"]["code"]) == ("error", "invalid_parameters")
    assert refused["error"]["details"]["path"] == path


def test_arguments_that_fit_the_schema_go_on_to_the_policies() -> None:
    engine = Engine.from_atlas(SUPPORT)
    d = engine.evaluate(action="refund.create", agent="support-bot", roles=["agent"], params=GOOD_REFUND, dry_run=True)
    assert d.policy_id != "cra:parameters_schema"
    assert d.effect is Effect.ALLOW

"""The in-process Engine: decisions, dry runs, request validation, the clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from cra import Effect, Engine, ManualClock, ProtocolError

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

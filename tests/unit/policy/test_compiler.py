"""The compiled policy engine: phase order, priorities, fail-closed inputs, resolve mode, limits and load errors."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cra.errors import PolicyError, ProtocolError
from cra.policy.compiler import CompiledPolicy, compile_atlas
from cra.policy.decision import Charge, Decision, Effect, EvalRequest, LimitBreach, limit_exceeded
from cra.policy.resolve import DEFAULT_DENY_ID, constraints_for, evaluate_actions, policy_event_payload, summarize
from cra.protocol.atlas import parse_atlas, parse_package

ACTIONS = ("refund.create", "refund.read", "deploy.prod", "report.read")


def manifest(policies: Sequence[Mapping[str, Any]], actions: Sequence[Any] = ACTIONS) -> dict[str, Any]:
    return {
        "atlas_version": "1.0",
        "atlas_id": "org.test.policy",
        "version": "1.0.0",
        "name": "Policy tests",
        "description": "Policies under test",
        "actions": [a if isinstance(a, dict) else {"action_id": a, "name": a, "description": a} for a in actions],
        "policies": list(policies),
    }


def engine(*policies: Mapping[str, Any], actions: Sequence[Any] = ACTIONS) -> CompiledPolicy:
    return compile_atlas(parse_atlas(manifest(policies, actions)))


def call(
    compiled: CompiledPolicy,
    action: str = "refund.create",
    *,
    agent: str = "support-bot",
    roles: Sequence[str] = ("agent",),
    params: Mapping[str, Any] | None = None,
    **rest: Any,
) -> Decision:
    """A real call: arguments are known (``{}`` unless given)."""
    request = EvalRequest(action, agent, frozenset(roles), params={} if params is None else params, **rest)
    return compiled.evaluate(request)


def resolve(compiled: CompiledPolicy, action: str = "refund.create", *, roles: Sequence[str] = ("agent",)) -> Decision:
    """Resolve time: the arguments are not known."""
    return compiled.evaluate(EvalRequest(action, "support-bot", frozenset(roles), params=None))


def policy(policy_id: str, type_: str, actions: Sequence[str] | None = ("*",), **rest: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"policy_id": policy_id, "type": type_, **rest}
    if actions is not None:
        out["actions"] = list(actions)
    return out


def outcome(d: Decision) -> tuple[Effect, str | None, str]:
    return d.effect, d.policy_id, d.reason_code


ALLOW_ALL = policy("allow-all", "allow")

# -- phase order -----------------------------------------------------------------------------------------------------


def test_deny_beats_a_higher_priority_allow() -> None:
    e = engine(policy("allow-first", "allow", priority=1000), policy("no-refunds", "deny", ["refund.*"]))
    assert outcome(call(e)) == (Effect.DENY, "no-refunds", "policy_deny")
    assert outcome(call(e, "report.read")) == (Effect.ALLOW, "allow-first", "policy_allow")


def test_deny_beats_approval() -> None:
    e = engine(policy("ask", "require_approval", priority=50), policy("no", "deny"), ALLOW_ALL)
    assert outcome(call(e)) == (Effect.DENY, "no", "policy_deny")


def test_approval_applies_only_to_what_an_allow_grants() -> None:
    ask = policy("ask", "require_approval", ["refund.*"], parameters={"approver_roles": ["finance"]})
    e = engine(ask, policy("allow-refunds", "allow", ["refund.create"]))
    d = call(e)
    assert outcome(d) == (Effect.REQUIRES_APPROVAL, "ask", "approval_required")
    assert d.approval is not None
    assert (d.approval.policy_id, d.approval.approver_roles, d.approval.ticket_ttl_seconds) == (
        "ask",
        ("finance",),
        900,
    )
    assert d.to_dict()["approval_policy_id"] == "ask"
    # nothing allows refund.read: it is denied outright rather than sent to an approver
    assert outcome(call(e, "refund.read")) == (Effect.DENY, None, "default_deny")


def test_a_valid_approval_satisfies_the_approval_phase() -> None:
    e = engine(policy("ask", "require_approval"), ALLOW_ALL)
    assert outcome(call(e, approved=frozenset({"ask"}))) == (Effect.ALLOW, "allow-all", "policy_allow")
    assert [s.outcome for s in call(e, approved=frozenset({"ask"})).steps][:1] == ["satisfied"]


def test_an_approval_satisfies_only_its_own_policy() -> None:
    e = engine(policy("ask", "require_approval"), policy("ask-too", "require_approval", priority=-1), ALLOW_ALL)
    assert outcome(call(e, approved=frozenset({"ask"}))) == (Effect.REQUIRES_APPROVAL, "ask-too", "approval_required")
    assert outcome(call(e, approved=frozenset({"other"}))) == (Effect.REQUIRES_APPROVAL, "ask", "approval_required")


def test_approval_beats_limits_and_limits_never_grant() -> None:
    limit = policy("rl", "rate_limit", parameters={"max_calls": 5, "window_seconds": 60})
    e = engine(limit, policy("ask", "require_approval"), ALLOW_ALL)
    d = call(e)
    assert outcome(d) == (Effect.REQUIRES_APPROVAL, "ask", "approval_required")
    assert d.charges == ()  # a call waiting for approval consumes nothing
    assert outcome(call(engine(limit))) == (Effect.DENY, None, "default_deny")


def test_a_limit_that_cannot_count_beats_allow() -> None:
    budget = policy("refund-budget", "budget", parameters={"param": "amount", "limit": 100, "window_seconds": 60})
    e = engine(ALLOW_ALL, budget)
    assert outcome(call(e, params={})) == (Effect.DENY, "refund-budget", "unknown_attribute")
    assert outcome(call(e, params={"amount": 5})) == (Effect.ALLOW, "allow-all", "policy_allow")


def test_default_deny_when_nothing_allows() -> None:
    d = call(engine(policy("allow-reports", "allow", ["report.*"])))
    assert outcome(d) == (Effect.DENY, None, "default_deny")
    assert "refund.create" in d.reason
    assert d.to_dict()["policy_id"] is None


def test_an_atlas_without_policies_is_refused() -> None:
    with pytest.raises(PolicyError) as info:
        engine()
    assert info.value.path == "/policies"


def test_a_policy_without_actions_covers_every_action_and_an_empty_list_none() -> None:
    assert call(engine(policy("all", "allow", actions=None)), "deploy.prod").effect is Effect.ALLOW
    assert call(engine(policy("none", "allow", actions=[])), "deploy.prod").effect is Effect.DENY


def test_patterns_are_whole_id_globs() -> None:
    e = engine(policy("refunds", "allow", ["refund*"]), policy("reports", "allow", ["report"]))
    assert call(e, "refund.read").policy_id == "refunds"
    assert call(e, "report.read").effect is Effect.DENY  # 'report' is not a prefix match


def test_an_atlas_with_actions_denies_any_other_action() -> None:
    e = engine(policy("allow-refunds", "allow", ["refund.*"]))
    assert outcome(call(e, "refund.partial.create")) == (Effect.DENY, None, "unknown_action")
    assert call(e, "refund.partial.create").steps[0].outcome == "decides"


def test_an_atlas_without_actions_is_governed_by_its_patterns() -> None:
    e = engine(policy("allow-refunds", "allow", ["refund.*"]), actions=())
    assert call(e, "refund.partial.create").policy_id == "allow-refunds"
    assert outcome(call(e, "payroll.run")) == (Effect.DENY, None, "default_deny")


def test_requires_confirmation_is_an_approval_that_any_approval_of_the_call_satisfies() -> None:
    actions = [{"action_id": "wire.send", "name": "w", "description": "w", "requires_confirmation": True}]
    e = engine(policy("ask", "require_approval", ["wire.*"], priority=-1), ALLOW_ALL, actions=actions)
    assert outcome(call(e, "wire.send")) == (
        Effect.REQUIRES_APPROVAL,
        "cra:confirmation:wire.send",
        "approval_required",
    )
    assert outcome(call(e, "wire.send", approved=frozenset({"ask"}))) == (Effect.ALLOW, "allow-all", "policy_allow")


# -- priorities ------------------------------------------------------------------------------------------------------


def test_higher_priority_goes_first_within_a_phase() -> None:
    e = engine(
        policy("low", "deny", priority=1, parameters={"reason": "low"}),
        policy("high", "deny", priority=10, parameters={"reason": "high"}),
    )
    assert (call(e).policy_id, call(e).reason) == ("high", "high")


def test_ties_keep_declaration_order() -> None:
    e = engine(policy("first", "allow", priority=5), policy("second", "allow", priority=5), policy("zero", "allow"))
    assert call(e).policy_id == "first"
    e = engine(policy("b-ask", "require_approval"), policy("a-ask", "require_approval"), ALLOW_ALL)
    assert call(e).policy_id == "b-ask"


def test_negative_priorities_order_too() -> None:
    e = engine(policy("late", "allow", priority=-5), policy("early", "allow", priority=-1))
    assert call(e).policy_id == "early"


# -- reasons ---------------------------------------------------------------------------------------------------------


def test_reasons_come_from_parameters_or_defaults() -> None:
    e = engine(policy("no-deploys", "deny", ["deploy.*"], parameters={"reason": "Change freeze"}), ALLOW_ALL)
    assert call(e, "deploy.prod").reason == "Change freeze"
    assert "allow-all" in call(e).reason
    assert "no-refunds" in call(engine(policy("no-refunds", "deny"))).reason


# -- fail closed -----------------------------------------------------------------------------------------------------

PROBE_ATLAS = (
    policy("big-refunds", "deny", ["refund.*"], conditions={"params": {"amount": {"gt": 1000}}}),
    policy("support-agents", "allow", ["refund.*"], conditions={"agents": ["support-*"], "roles": ["agent"]}),
)


@pytest.mark.parametrize(
    ("agent", "params", "expected"),
    [
        ("support-bot", {}, (Effect.DENY, "big-refunds", "unknown_attribute")),
        ("support-bot", {"amount": "5000"}, (Effect.DENY, "big-refunds", "unknown_attribute")),
        ("support-bot", {"amount": None}, (Effect.DENY, "big-refunds", "unknown_attribute")),
        ("support-bot", {"amount": True}, (Effect.DENY, "big-refunds", "unknown_attribute")),
        ("mallory", {"amount": 5}, (Effect.DENY, None, "default_deny")),
        ("support-bot", {"amount": 5000}, (Effect.DENY, "big-refunds", "policy_deny")),
        ("support-bot", {"amount": 5}, (Effect.ALLOW, "support-agents", "policy_allow")),
    ],
    ids=["amount-missing", "amount-string", "amount-null", "amount-bool", "unknown-agent", "too-big", "ok"],
)
def test_fail_closed_probes(agent: str, params: dict[str, Any], expected: tuple[Effect, str | None, str]) -> None:
    assert outcome(call(engine(*PROBE_ATLAS), agent=agent, params=params)) == expected


def test_unknown_never_grants() -> None:
    e = engine(policy("small-refunds", "allow", ["refund.*"], conditions={"params": {"amount": {"lte": 1000}}}))
    for params in ({}, {"amount": "5"}):
        d = call(e, params=params)
        assert outcome(d) == (Effect.DENY, None, "default_deny")
        assert "missing or of the wrong type" in d.reason
    assert call(e, params={"amount": 5}).effect is Effect.ALLOW


def test_unknown_always_restricts_approval() -> None:
    ask = policy("ask-eu", "require_approval", conditions={"context": {"region": {"eq": "eu"}}})
    e = engine(ask, ALLOW_ALL)
    assert call(e).effect is Effect.REQUIRES_APPROVAL
    assert call(e, context={"region": "sa"}).effect is Effect.ALLOW


def test_false_beats_unknown_inside_one_policy() -> None:
    deny = policy("big", "deny", conditions={"params": {"amount": {"gt": 1000}}, "not_roles": ["finance"]})
    e = engine(deny, ALLOW_ALL)
    assert call(e, roles=["finance"], params={}).effect is Effect.ALLOW
    assert call(e, roles=["agent"], params={}).reason_code == "unknown_attribute"


# -- resolve mode ----------------------------------------------------------------------------------------------------


def test_param_conditioned_deny_becomes_a_constraint_at_resolve() -> None:
    e = engine(*PROBE_ATLAS)
    d = resolve(e)
    assert outcome(d) == (Effect.ALLOW, "support-agents", "policy_allow")
    assert d.constraints == ("big-refunds",)
    assert d.to_dict()["constraints"] == ["big-refunds"]


def test_param_conditioned_allow_grants_conditionally_at_resolve() -> None:
    small = policy("small-refunds", "allow", ["refund.*"], conditions={"params": {"amount": {"lte": 1000}}})
    d = resolve(engine(small))
    assert outcome(d) == (Effect.ALLOW, "small-refunds", "policy_allow")
    assert d.constraints == ("small-refunds",)


def test_resolve_does_not_defer_what_is_already_false() -> None:
    small = policy("finance-refunds", "allow", conditions={"params": {"amount": {"lte": 1000}}, "roles": ["finance"]})
    assert resolve(engine(small), roles=["agent"]).effect is Effect.DENY


def test_param_conditioned_approval_becomes_a_constraint_at_resolve() -> None:
    ask = policy("ask-big", "require_approval", conditions={"params": {"amount": {"gt": 1000}}})
    e = engine(ask, ALLOW_ALL)
    d = resolve(e)
    assert outcome(d) == (Effect.ALLOW, "allow-all", "policy_allow")
    assert d.constraints == ("ask-big",)
    assert call(e, params={"amount": 5000}).effect is Effect.REQUIRES_APPROVAL
    assert call(e, params={"amount": 50}).effect is Effect.ALLOW


def test_limits_are_constraints_not_charges_at_resolve() -> None:
    limit = policy("rl", "rate_limit", parameters={"max_calls": 1, "window_seconds": 60})
    d = resolve(engine(limit, ALLOW_ALL))
    assert (d.effect, d.charges, d.constraints) == (Effect.ALLOW, (), ("rl",))


def test_resolution_helpers_over_every_declared_action() -> None:
    deny_big = policy(
        "big-refunds",
        "deny",
        ["refund.create"],
        conditions={"params": {"amount": {"gt": 10}}},
        parameters={"reason": "x"},
    )
    e = engine(deny_big, policy("no-deploys", "deny", ["deploy.*"]), policy("allow", "allow", ["refund.*", "deploy.*"]))
    verdicts = evaluate_actions(
        [e], agent="bot", roles=frozenset(), risk_tier=None, context={}, now=None, session_id=None, tenant_id=None
    )
    effects = {v.action.action_id: v.decision.effect for v in verdicts}
    assert effects == {
        "refund.create": Effect.ALLOW,
        "refund.read": Effect.ALLOW,
        "deploy.prod": Effect.DENY,
        "report.read": Effect.DENY,
    }
    assert summarize(verdicts) == ("partial", "Some actions are denied by policy")
    assert constraints_for(verdicts) == [
        {"constraint_id": "big-refunds", "type": "scope", "parameters": {"actions": ["refund.create"]}}
    ]
    payloads = [policy_event_payload(v.decision) for v in verdicts]
    assert payloads[2] == {"policy_id": "no-deploys", "result": "deny", "action_id": "deploy.prod"}
    assert payloads[3] == {"policy_id": DEFAULT_DENY_ID, "result": "deny", "action_id": "report.read"}


def verdicts_for(compiled: CompiledPolicy, capabilities: Sequence[str] = ()) -> list[Any]:
    return evaluate_actions(
        [compiled],
        agent="bot",
        roles=frozenset({"agent"}),
        risk_tier=None,
        context={},
        now=None,
        session_id="s",
        tenant_id=None,
        capabilities=capabilities,
    )


def test_resolution_over_required_capabilities_only() -> None:
    doc = manifest([ALLOW_ALL])
    doc["capabilities"] = [{"capability_id": "refunds", "name": "Refunds", "actions": ["refund.create", "refund.read"]}]
    compiled = compile_atlas(parse_atlas(doc))
    assert [v.action.action_id for v in verdicts_for(compiled, ["refunds"])] == ["refund.create", "refund.read"]
    assert verdicts_for(compiled, ["payroll"]) == []
    assert len(verdicts_for(compiled)) == len(ACTIONS)


def test_resolution_decision_types() -> None:
    assert summarize([])[0] == "deny"
    assert summarize(verdicts_for(engine(policy("nothing", "allow", []))))[0] == "deny"
    assert summarize(verdicts_for(engine(ALLOW_ALL)))[0] == "allow"
    assert summarize(verdicts_for(engine(ALLOW_ALL, policy("ask", "require_approval", ["deploy.*"]))))[0] == (
        "requires_approval"
    )


def test_limits_and_approvals_are_listed_as_constraints_with_their_parameters() -> None:
    e = engine(
        policy("rl", "rate_limit", ["refund.*"], parameters={"max_calls": 3, "window_seconds": 60, "scope": "session"}),
        policy("ask", "require_approval", ["deploy.*"], parameters={"approver_roles": ["sre"]}),
        policy("allow", "allow", ["refund.*", "deploy.*"]),
    )
    found = {c["constraint_id"]: c for c in constraints_for(verdicts_for(e))}
    assert set(found) == {"rl", "ask"}
    assert found["rl"]["type"] == "rate_limit"
    assert found["rl"]["parameters"]["actions"] == ["refund.create", "refund.read"]
    assert (found["rl"]["parameters"]["max_calls"], found["rl"]["parameters"]["scope"]) == (3, "session")
    assert found["ask"]["type"] == "require_approval"
    assert found["ask"]["parameters"]["actions"] == ["deploy.prod"]
    assert found["ask"]["parameters"]["approver_roles"] == ["sre"]


# -- rate limits and budgets -----------------------------------------------------------------------------------------


def rate_limit(scope: str | None = None, **extra: Any) -> dict[str, Any]:
    parameters: dict[str, Any] = {"max_calls": 3, "window_seconds": 60, **extra}
    if scope is not None:
        parameters["scope"] = scope
    return policy("rl", "rate_limit", ["refund.*"], parameters=parameters)


def charge(e: CompiledPolicy, action: str = "refund.create", **request: Any) -> Charge:
    d = call(e, action, **request)
    assert d.effect is Effect.ALLOW, d.reason
    (only,) = d.charges
    return only


def test_rate_limit_charge() -> None:
    c = charge(engine(rate_limit(), ALLOW_ALL))
    assert (c.policy_id, c.kind, c.amount, c.limit, c.window_seconds) == ("rl", "rate_limit", 1, 3, 60)


def test_agent_scope_counts_per_agent_and_per_action() -> None:
    e = engine(rate_limit(), ALLOW_ALL)
    key = charge(e, agent="a", session_id="s1").key
    assert charge(e, agent="a", session_id="s2").key == key
    assert charge(e, agent="b", session_id="s1").key != key
    assert charge(e, "refund.read", agent="a", session_id="s1").key != key


def test_session_scope_counts_per_session() -> None:
    e = engine(rate_limit("session"), ALLOW_ALL)
    key = charge(e, agent="a", session_id="s1").key
    assert charge(e, agent="b", session_id="s1").key == key
    assert charge(e, agent="a", session_id="s2").key != key
    assert charge(e, "refund.read", agent="a", session_id="s1").key != key


def test_tenant_scope_counts_per_tenant() -> None:
    e = engine(rate_limit("tenant"), ALLOW_ALL)
    key = charge(e, agent="a", session_id="s1", tenant_id="t1").key
    assert charge(e, agent="b", session_id="s2", tenant_id="t1").key == key
    assert charge(e, agent="a", session_id="s1", tenant_id="t2").key != key


def test_scopes_of_different_policies_never_share_a_counter() -> None:
    a = policy("a", "rate_limit", parameters={"max_calls": 1, "window_seconds": 60})
    b = policy("b", "rate_limit", parameters={"max_calls": 1, "window_seconds": 60})
    keys = {c.key for c in call(engine(a, b, ALLOW_ALL)).charges}
    assert len(keys) == 2


@pytest.mark.parametrize(("scope", "missing"), [("session", {"tenant_id": "t"}), ("tenant", {"session_id": "s"})])
def test_a_scope_the_call_does_not_carry_denies(scope: str, missing: dict[str, Any]) -> None:
    d = call(engine(rate_limit(scope), ALLOW_ALL), **missing)
    assert outcome(d) == (Effect.DENY, "rl", "unknown_attribute")


def budget(param: str = "amount", limit: float = 1000) -> dict[str, Any]:
    parameters = {"param": param, "limit": limit, "window_seconds": 3600}
    return policy("refund-budget", "budget", ["refund.*"], parameters=parameters)


@pytest.mark.parametrize("amount", [0, 250, 99.5, 5000])
def test_budget_charges_the_argument(amount: float) -> None:
    c = charge(engine(budget(), ALLOW_ALL), params={"amount": amount})
    assert (c.policy_id, c.kind, c.amount, c.limit, c.window_seconds) == ("refund-budget", "budget", amount, 1000, 3600)


def test_budget_reads_a_dotted_argument() -> None:
    c = charge(engine(budget("payment.amount"), ALLOW_ALL), params={"payment": {"amount": 42}})
    assert c.amount == 42


@pytest.mark.parametrize(
    "params",
    [{}, {"amount": -1}, {"amount": True}, {"amount": False}, {"amount": "100"}, {"amount": None}, {"amount": [5]}],
    ids=["missing", "negative", "true", "false", "string", "null", "array"],
)
def test_budget_amounts_that_are_not_non_negative_numbers_deny(params: dict[str, Any]) -> None:
    d = call(engine(budget(), ALLOW_ALL), params=params)
    assert outcome(d) == (Effect.DENY, "refund-budget", "unknown_attribute")


def test_a_limit_whose_conditions_are_false_does_not_charge() -> None:
    rl = policy(
        "agents-only", "rate_limit", conditions={"roles": ["agent"]}, parameters={"max_calls": 1, "window_seconds": 1}
    )
    e = engine(rl, ALLOW_ALL)
    assert len(call(e, roles=["agent"]).charges) == 1
    assert call(e, roles=["admin"]).charges == ()


def test_an_actions_own_rate_limit_is_a_builtin_policy() -> None:
    action = {
        "action_id": "refund.create",
        "name": "r",
        "description": "r",
        "rate_limit": {"max_calls": 2, "window_seconds": 9},
    }
    c = charge(engine(ALLOW_ALL, actions=[action]))
    assert (c.policy_id, c.limit, c.window_seconds) == ("cra:rate_limit:refund.create", 2, 9)


@pytest.mark.parametrize(("kind", "code"), [("rate_limit", "rate_limit_exceeded"), ("budget", "budget_exceeded")])
def test_limit_exceeded_turns_an_allow_into_a_deny(kind: str, code: str) -> None:
    allowed = call(engine(ALLOW_ALL))
    c = Charge("rl", kind, "k", 5, 10, 60)
    d = limit_exceeded(allowed, LimitBreach(c, used=10, retry_after=42))
    assert outcome(d) == (Effect.DENY, "rl", code)
    assert (d.retry_after, d.charges) == (42, ())
    assert d.details == {"used": 10, "limit": 10, "requested": 5, "window_seconds": 60, "retry_after": 42}
    assert d.to_dict()["retry_after"] == 42
    assert d.to_dict()["details"]["retry_after"] == 42
    assert "42" in d.reason
    last = d.steps[-1]
    assert (last.policy_id, last.policy_type, last.outcome) == ("rl", kind, "decides")
    assert d.explain().splitlines()[0].startswith(f"deny refund.create: {d.reason} ({code}, policy rl)")


# -- explanations ----------------------------------------------------------------------------------------------------


def test_explain_lists_the_policies_considered_in_order() -> None:
    e = engine(
        policy("allow-all", "allow"),
        policy("no-deploys", "deny", ["deploy.*"]),
        policy("big", "deny", ["refund.*"], conditions={"params": {"amount": {"gt": 1000}}}),
        policy("rl", "rate_limit", ["refund.*"], parameters={"max_calls": 3, "window_seconds": 60}),
        policy("ask", "require_approval", ["refund.*"], conditions={"roles": ["intern"]}),
    )
    d = call(e, params={"amount": 5})
    assert outcome(d) == (Effect.ALLOW, "allow-all", "policy_allow")
    steps = [(s.policy_id, s.policy_type, s.outcome) for s in d.steps]
    assert steps == [
        ("big", "deny", "not_applicable"),
        ("ask", "require_approval", "not_applicable"),
        ("rl", "rate_limit", "applies"),
        ("allow-all", "allow", "applies"),
    ]
    lines = d.explain().splitlines()
    assert lines[0] == "allow refund.create: Allowed by policy allow-all (policy_allow, policy allow-all)"
    assert [line.split("]")[1].split(":")[0].strip() for line in lines[1:]] == ["big", "ask", "rl", "allow-all"]
    assert "no-deploys" not in d.explain()


def test_explain_shows_condition_results_and_the_default() -> None:
    e = engine(policy("small", "allow", conditions={"params": {"amount": {"lte": 10}}}))
    d = call(e, params={"amount": "5"})
    assert [(s.policy_id, s.outcome) for s in d.steps] == [("small", "unknown"), ("(default)", "decides")]
    assert "unknown" in d.steps[0].detail
    assert d.explain().splitlines()[0].endswith("(default_deny)")


def test_explain_shows_limits_at_resolve_and_the_limit_that_cannot_count() -> None:
    rl = policy("rl", "rate_limit", parameters={"max_calls": 3, "window_seconds": 60, "scope": "session"})
    admins = policy(
        "admins", "rate_limit", conditions={"roles": ["admin"]}, parameters={"max_calls": 1, "window_seconds": 1}
    )
    e = engine(rl, admins, ALLOW_ALL)
    assert [(s.policy_id, s.outcome) for s in resolve(e).steps] == [
        ("rl", "applies"),
        ("admins", "not_applicable"),
        ("allow-all", "applies"),
    ]
    d = call(e)  # no session id: the session-scoped limit cannot count
    assert outcome(d) == (Effect.DENY, "rl", "unknown_attribute")
    assert [(s.policy_id, s.outcome) for s in d.steps] == [("rl", "decides")]


def test_a_decision_without_origin_explains_its_extra_steps_only() -> None:
    d = call(engine(ALLOW_ALL))._replace(origin=None)
    assert d.allowed
    assert d.steps == ()
    assert d.explain() == "allow refund.create: Allowed by policy allow-all (policy_allow, policy allow-all)"
    assert not call(engine(policy("nothing", "allow", []))).allowed


# -- risk tiers ------------------------------------------------------------------------------------------------------


def test_effective_tier_is_the_higher_of_requested_and_declared() -> None:
    actions = [{"action_id": "deploy.prod", "name": "d", "description": "d", "risk_tier": "high"}]
    e = engine(ALLOW_ALL, actions=actions)
    assert e.effective_tier("deploy.prod", "low") == "high"
    assert e.effective_tier("deploy.prod", "critical") == "critical"
    assert e.effective_tier("deploy.prod", None) == "high"
    assert e.effective_tier("undeclared.action", "medium") == "medium"
    assert e.effective_tier("undeclared.action", None) is None
    with pytest.raises(ProtocolError) as info:
        e.effective_tier("deploy.prod", "extreme")
    assert info.value.path == "/risk_tier"


# -- load errors -----------------------------------------------------------------------------------------------------


def load_error(*policies: Mapping[str, Any]) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        compile_atlas(parse_atlas(manifest([ALLOW_ALL, *policies]), source="atlas.json"))
    return info.value


def test_scope_policies_are_refused() -> None:
    error = load_error(policy("scoped", "scope"))
    assert error.path == "/policies/1/type"
    assert "scope" in error.reason


@pytest.mark.parametrize(
    ("bad", "path"),
    [
        (rate_limit(max_call=5), "/policies/1/parameters/max_call"),
        (policy("d", "deny", parameters={"reasons": "x"}), "/policies/1/parameters/reasons"),
        (policy("d", "deny", parameters={"why/not": "x"}), "/policies/1/parameters/why~1not"),
        (policy("a", "allow", parameters={"limit": 5}), "/policies/1/parameters/limit"),
        (policy("q", "require_approval", parameters={"approvers": ["x"]}), "/policies/1/parameters/approvers"),
        (
            policy("b", "budget", parameters={"param": "a", "limit": 1, "window_seconds": 1, "max_calls": 1}),
            "/policies/1/parameters/max_calls",
        ),
    ],
)
def test_unknown_parameters_are_refused(bad: dict[str, Any], path: str) -> None:
    error = load_error(bad)
    assert error.path == path
    assert str(error).startswith("atlas.json: ")


def test_a_compile_error_in_a_merged_policy_file_names_that_file() -> None:
    """Like schema errors, policy errors of ``policies/*.json`` point into the file, not the merged list."""
    package = {
        "atlas.json": json.dumps(manifest([ALLOW_ALL])).encode(),
        "policies/limits.json": json.dumps(
            [policy("ok", "deny"), policy("rl", "rate_limit", parameters={"max_call": 5, "window_seconds": 60})]
        ).encode(),
    }
    with pytest.raises(PolicyError) as info:
        compile_atlas(parse_package(package, source="atlases/support"))
    assert (info.value.source, info.value.path) == ("atlases/support/policies/limits.json", "/1/parameters/max_call")


def limit_with(**parameters: Any) -> dict[str, Any]:
    return policy("rl", "rate_limit", parameters=parameters)


def budget_with(**parameters: Any) -> dict[str, Any]:
    return policy("b", "budget", parameters=parameters)


def approval_with(**parameters: Any) -> dict[str, Any]:
    return policy("q", "require_approval", parameters=parameters)


@pytest.mark.parametrize(
    ("bad", "path"),
    [
        (limit_with(window_seconds=60), "/policies/1/parameters/max_calls"),
        (limit_with(max_calls=5), "/policies/1/parameters/window_seconds"),
        (limit_with(max_calls=0, window_seconds=60), "/policies/1/parameters/max_calls"),
        (limit_with(max_calls=2.5, window_seconds=60), "/policies/1/parameters/max_calls"),
        (limit_with(max_calls=True, window_seconds=60), "/policies/1/parameters/max_calls"),
        (limit_with(max_calls=5, window_seconds="60"), "/policies/1/parameters/window_seconds"),
        (limit_with(max_calls=5, window_seconds=0), "/policies/1/parameters/window_seconds"),
        (limit_with(max_calls=5, window_seconds=60, scope="global"), "/policies/1/parameters/scope"),
        (limit_with(max_calls=5, window_seconds=60, scope="user"), "/policies/1/parameters/scope"),
        (budget_with(limit=5, window_seconds=60), "/policies/1/parameters/param"),
        (budget_with(param="", limit=5, window_seconds=60), "/policies/1/parameters/param"),
        (budget_with(param="a..b", limit=5, window_seconds=60), "/policies/1/parameters/param"),
        (budget_with(param=["amount"], limit=5, window_seconds=60), "/policies/1/parameters/param"),
        (budget_with(param="amount", window_seconds=60), "/policies/1/parameters/limit"),
        (budget_with(param="amount", limit=0, window_seconds=60), "/policies/1/parameters/limit"),
        (budget_with(param="amount", limit=-5, window_seconds=60), "/policies/1/parameters/limit"),
        (budget_with(param="amount", limit=True, window_seconds=60), "/policies/1/parameters/limit"),
        (budget_with(param="amount", limit="100", window_seconds=60), "/policies/1/parameters/limit"),
        (budget_with(param="amount", limit=5), "/policies/1/parameters/window_seconds"),
        (budget_with(param="amount", limit=5, window_seconds=60, scope="global"), "/policies/1/parameters/scope"),
        (approval_with(ticket_ttl_seconds=0), "/policies/1/parameters/ticket_ttl_seconds"),
        (approval_with(ticket_ttl_seconds=86_401), "/policies/1/parameters/ticket_ttl_seconds"),
        (approval_with(ticket_ttl_seconds=True), "/policies/1/parameters/ticket_ttl_seconds"),
        (approval_with(ticket_ttl_seconds="900"), "/policies/1/parameters/ticket_ttl_seconds"),
        (approval_with(approver_roles="finance"), "/policies/1/parameters/approver_roles"),
        (approval_with(approver_roles=["finance", ""]), "/policies/1/parameters/approver_roles"),
        (approval_with(approver_roles=[1]), "/policies/1/parameters/approver_roles"),
        (policy("d", "deny", parameters={"reason": 5}), "/policies/1/parameters/reason"),
        (policy("d", "deny", ["refund.*", ""]), "/policies/1/actions/1"),
        (policy("d", "deny", conditions={"capabilities": ["payroll"]}), "/policies/1/conditions/capabilities/0"),
    ],
)
def test_bad_parameter_values_are_refused(bad: dict[str, Any], path: str) -> None:
    assert load_error(bad).path == path


def test_valid_boundary_parameters_load() -> None:
    engine(
        limit_with(max_calls=1, window_seconds=1, scope="tenant"),
        budget_with(param="a.b", limit=0.5, window_seconds=1, scope="session"),
        approval_with(ticket_ttl_seconds=86_400, approver_roles=[]),
        approval_with(ticket_ttl_seconds=1) | {"policy_id": "q2"},
    )


# -- property: the order of deny, approval and allow -----------------------------------------------------------------

T, F, U, D = "true", "false", "unknown", "deferred"
STRENGTH = {F: 0, U: 1, D: 2, T: 3}
PATTERNS = [None, [], ["*"], ["refund.*"], ["*.read"], ["refund.create"], ["deploy.*"], ["nothing.*"]]
PROP_ACTIONS = ["refund.create", "refund.read", "deploy.prod"]


@st.composite
def policy_sets(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(1, 7))):
        p: dict[str, Any] = {"policy_id": f"p{i}", "type": draw(st.sampled_from(["deny", "require_approval", "allow"]))}
        if draw(st.booleans()):
            p["priority"] = draw(st.integers(-2, 2))
        patterns = draw(st.sampled_from(PATTERNS))
        if patterns is not None:
            p["actions"] = patterns
        conditions: dict[str, Any] = {}
        if draw(st.booleans()):
            conditions["roles"] = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=2, unique=True))
        if draw(st.integers(0, 3)) == 0:
            conditions["context"] = {"k": {"eq": draw(st.sampled_from(["x", "y"]))}}
        if draw(st.integers(0, 3)) == 0:
            conditions["params"] = {"n": {"gt": draw(st.integers(0, 2))}}
        if conditions:
            p["conditions"] = conditions
        out.append(p)
    return out


def reference_condition(p: dict[str, Any], roles: frozenset[str], context: dict[str, Any], params: Any) -> str:
    results = []
    conditions = p.get("conditions", {})
    if "roles" in conditions:
        results.append(T if roles & set(conditions["roles"]) else F)
    if "context" in conditions:
        want, got = conditions["context"]["k"]["eq"], context.get("k")
        results.append(U if not isinstance(got, str) else T if got == want else F)
    if "params" in conditions:
        bound = conditions["params"]["n"]["gt"]
        if params is None:
            results.append(D)
        else:
            n = params.get("n")
            results.append(U if type(n) is not int else T if n > bound else F)
    return min(results, key=STRENGTH.__getitem__, default=T)


def reference_decision(
    policies: list[dict[str, Any]],
    action: str,
    roles: frozenset[str],
    context: dict[str, Any],
    params: Any,
    approved: frozenset[str],
) -> tuple[Effect, str | None, str]:
    """DESIGN §3 and docs/policies.md, written out plainly."""
    ordered = sorted(policies, key=lambda p: -p.get("priority", 0))  # a stable sort keeps declaration order

    def matching(kind: str) -> list[tuple[str, str]]:
        return [
            (p["policy_id"], reference_condition(p, roles, context, params))
            for p in ordered
            if p["type"] == kind and ("actions" not in p or any(fnmatchcase(action, g) for g in p["actions"]))
        ]

    for pid, result in matching("deny"):
        if result in (T, U):  # unknown restricts
            return Effect.DENY, pid, "policy_deny" if result == T else "unknown_attribute"
    approval = next(
        (pid for pid, result in matching("require_approval") if result in (T, U) and pid not in approved), None
    )
    allows = matching("allow")
    granted = next((pid for pid, r in allows if r == T), None) or next((pid for pid, r in allows if r == D), None)
    if granted is None:
        return Effect.DENY, None, "default_deny"
    if approval is not None:
        return Effect.REQUIRES_APPROVAL, approval, "approval_required"
    return Effect.ALLOW, granted, "policy_allow"


APPROVAL_SETS = [frozenset(), frozenset({"p0"}), frozenset({"p1", "p2"}), frozenset(f"p{i}" for i in range(8))]


@pytest.mark.slow
@settings(max_examples=600, derandomize=True, deadline=None)
@given(
    policies=policy_sets(),
    action=st.sampled_from(PROP_ACTIONS),
    roles=st.frozensets(st.sampled_from(["a", "b", "c"])),
    context=st.sampled_from([{}, {"k": "x"}, {"k": "y"}, {"k": 1}]),
    params=st.sampled_from([None, {}, {"n": 0}, {"n": 1}, {"n": 3}, {"n": "3"}]),
    approved=st.sampled_from(APPROVAL_SETS),
)
def test_engine_agrees_with_a_reference_evaluator(
    policies: list[dict[str, Any]],
    action: str,
    roles: frozenset[str],
    context: dict[str, Any],
    params: Any,
    approved: frozenset[str],
) -> None:
    compiled = engine(*policies, actions=PROP_ACTIONS)
    request = EvalRequest(action, "bot", roles, params=params, context=context, approved=approved)
    d = compiled.evaluate(request)
    assert outcome(d) == reference_decision(policies, action, roles, context, params, approved)
    # the explanation walks the applicable policies in evaluation order
    considered = [s.policy_id for s in d.steps if s.policy_id != "(default)"]
    rank = {"deny": 0, "require_approval": 1, "allow": 2}
    expected_order = [
        p["policy_id"]
        for p in sorted(policies, key=lambda p: (rank[p["type"]], -p.get("priority", 0)))
        if "actions" not in p or any(fnmatchcase(action, g) for g in p["actions"])
    ]
    assert considered == expected_order[: len(considered)]
    if d.policy_id is not None:
        assert d.policy_id in considered

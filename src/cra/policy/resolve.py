"""Resolve-time evaluation: every action an agent may attempt, and why.

At resolve time the call's arguments are not known, so conditions on ``params``
are deferred: an action is listed as allowed when some allow policy could grant
it, and every policy whose decision waits for the arguments is listed as a
constraint. The exact decision is taken again, with the arguments, at execute.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from cra.policy.compiler import CompiledPolicy
from cra.policy.decision import Decision, Effect, EvalRequest
from cra.protocol.atlas import ActionSpec

__all__ = [
    "DEFAULT_DENY_ID",
    "ActionVerdict",
    "constraints_for",
    "evaluate_actions",
    "policy_event_payload",
    "summarize",
]

#: The ``policy_id`` recorded in trace events when no policy decided (default deny).
DEFAULT_DENY_ID: Final = "cra:default-deny"

_CONSTRAINT_TYPE: Final = {
    "rate_limit": "rate_limit",
    "budget": "budget",
    "require_approval": "require_approval",
    "deny": "scope",
    "allow": "scope",
    "wasm": "scope",  # a module that may deny once the arguments are known
}


@dataclass(frozen=True, slots=True)
class ActionVerdict:
    """One action of a resolution, with the policy that decided it."""

    compiled: CompiledPolicy
    action: ActionSpec
    decision: Decision


def evaluate_actions(
    policies: Sequence[CompiledPolicy],
    *,
    agent: str,
    roles: frozenset[str],
    risk_tier: str | None,
    context: Mapping[str, Any],
    now: datetime | None,
    session_id: str | None,
    tenant_id: str | None,
    capabilities: Iterable[str] = (),
) -> list[ActionVerdict]:
    """Evaluate every declared action of ``policies``' atlases without arguments.

    With ``capabilities``, only the actions those capabilities list are
    considered (an unknown capability contributes no actions).
    """
    wanted = set(capabilities)
    out: list[ActionVerdict] = []
    for compiled in policies:
        scope: set[str] | None = None
        if wanted:
            scope = set()
            for cap in compiled.atlas.capabilities:
                if cap.capability_id in wanted:
                    scope.update(cap.actions)
        for action in compiled.atlas.actions:
            if scope is not None and action.action_id not in scope:
                continue
            req = EvalRequest(
                action=action.action_id,
                agent=agent,
                roles=roles,
                risk_tier=compiled.effective_tier(action.action_id, risk_tier),
                params=None,
                context=context,
                now=now,
                session_id=session_id,
                tenant_id=tenant_id,
            )
            out.append(ActionVerdict(compiled, action, compiled.evaluate(req)))
    return out


def summarize(verdicts: Sequence[ActionVerdict]) -> tuple[str, str]:
    """The resolution's decision type and reason."""
    denied = sum(v.decision.effect is Effect.DENY for v in verdicts)
    gated = sum(v.decision.effect is Effect.REQUIRES_APPROVAL for v in verdicts)
    if not verdicts:
        return "deny", "No actions are available for this request"
    if denied == len(verdicts):
        return "deny", "All actions are denied by policy"
    if denied:
        return "partial", "Some actions are denied by policy"
    if gated:
        return "requires_approval", "Some actions require human approval"
    return "allow", "All actions are allowed by policy"


def constraints_for(verdicts: Sequence[ActionVerdict]) -> list[dict[str, Any]]:
    """CARP constraints: each constraining policy once, with the actions it constrains."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for v in verdicts:
        if v.decision.effect is Effect.DENY:
            continue
        ids = list(v.decision.constraints)
        if v.decision.approval is not None:
            ids.append(v.decision.approval.policy_id)
        rules = {r.policy_id: r for r in v.compiled.rules_for(v.action.action_id)}
        for pid in ids:
            rule = rules[pid]
            key = (v.compiled.atlas.atlas_id, pid)
            if key not in found:
                params = {k: val for k, val in rule.parameters.items() if k != "reason"}
                if rule.type in ("rate_limit", "budget"):
                    params["scope"] = rule.scope
                found[key] = {
                    "constraint_id": pid,
                    "type": _CONSTRAINT_TYPE[rule.type],
                    "parameters": {**params, "actions": []},
                }
            found[key]["parameters"]["actions"].append(v.action.action_id)
    return list(found.values())


def policy_event_payload(decision: Decision) -> dict[str, str]:
    """The ``policy.evaluated`` payload for one decision: ``{policy_id, result, action_id}``."""
    return {
        "policy_id": decision.policy_id or DEFAULT_DENY_ID,
        "result": decision.effect.value,
        "action_id": decision.action,
    }

"""What a resolve decides, apart from ids, time and the goal, kept for reuse."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cra.policy.decision import Decision, Effect
from cra.policy.resolve import ActionVerdict, constraints_for, policy_event_payload, summarize
from cra.protocol.canonical import canonical_json

__all__ = ["ResolvePlan"]


@dataclass(frozen=True, slots=True)
class ResolvePlan:
    """The decisions of one resolve.

    It is a pure function of the atlases, the agent, its roles, the risk tier,
    the request context and the required capabilities (and of the clock when an
    atlas has time windows; such plans are not reused). Its pieces are copied
    into each resolution and trace, never handed out themselves.
    """

    policy_events: tuple[tuple[dict[str, Any], str], ...]  # payload and its canonical JSON
    allowed: tuple[dict[str, Any], ...]
    denied: tuple[dict[str, Any], ...]
    constraints: tuple[dict[str, Any], ...]
    decision_type: str
    reason: str
    actions: Mapping[str, str]  # allowed action id -> atlas id

    @classmethod
    def of(cls, verdicts: Sequence[ActionVerdict]) -> ResolvePlan:
        events = []
        for v in verdicts:
            payload = policy_event_payload(v.decision)
            events.append((payload, canonical_json(payload)))
        granted = [v for v in verdicts if v.decision.effect is not Effect.DENY]
        decision_type, reason = summarize(verdicts)
        return cls(
            policy_events=tuple(events),
            allowed=tuple(_allowed(v) for v in granted),
            denied=tuple(_denied(v.decision) for v in verdicts if v.decision.effect is Effect.DENY),
            constraints=tuple(constraints_for(verdicts)),
            decision_type=decision_type,
            reason=reason,
            actions={v.action.action_id: v.compiled.atlas.atlas_id for v in granted},
        )

    def resolution_lists(self) -> dict[str, list[dict[str, Any]]]:
        """Fresh copies of the resolution's action and constraint lists."""
        return {
            "allowed_actions": [dict(a) for a in self.allowed],
            "denied_actions": [dict(d) for d in self.denied],
            "constraints": [
                {**c, "parameters": {**c["parameters"], "actions": list(c["parameters"]["actions"])}}
                for c in self.constraints
            ],
        }


def _allowed(verdict: ActionVerdict) -> dict[str, Any]:
    out = verdict.action.to_allowed_action()
    if verdict.decision.effect is Effect.REQUIRES_APPROVAL:
        out["requires_confirmation"] = True
    return out


def _denied(decision: Decision) -> dict[str, Any]:
    out = {"action_id": decision.action, "reason": decision.reason}
    if decision.policy_id is not None:
        out["policy_id"] = decision.policy_id
    return out

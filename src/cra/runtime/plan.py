"""What a resolve decides, apart from ids, time and the goal, kept for reuse."""

from __future__ import annotations

import json
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
    atlas has time windows; such plans are not reused). Nothing of it is handed
    out: each resolution and trace gets fresh copies.
    """

    policy_events: tuple[tuple[dict[str, str], str], ...]  # each policy.evaluated payload and its canonical JSON
    lists_json: str  # allowed_actions, denied_actions and constraints of the resolution, as JSON
    allowed_count: int
    denied_count: int
    decision_type: str
    reason: str
    actions: Mapping[str, str]  # allowed action id -> atlas id

    @classmethod
    def of(cls, verdicts: Sequence[ActionVerdict]) -> ResolvePlan:
        granted = [v for v in verdicts if v.decision.effect is not Effect.DENY]
        denied = [v for v in verdicts if v.decision.effect is Effect.DENY]
        decision_type, reason = summarize(verdicts)
        lists = {
            "allowed_actions": [_allowed(v) for v in granted],
            "denied_actions": [_denied(v.decision) for v in denied],
            "constraints": constraints_for(verdicts),
        }
        return cls(
            policy_events=tuple((p, canonical_json(p)) for p in (policy_event_payload(v.decision) for v in verdicts)),
            lists_json=json.dumps(lists, separators=(",", ":")),
            allowed_count=len(granted),
            denied_count=len(denied),
            decision_type=decision_type,
            reason=reason,
            actions={v.action.action_id: v.compiled.atlas.atlas_id for v in granted},
        )

    def resolution_lists(self) -> dict[str, list[dict[str, Any]]]:
        """Fresh copies of the resolution's action and constraint lists."""
        lists: dict[str, list[dict[str, Any]]] = json.loads(self.lists_json)
        return lists

    def policy_payloads(self) -> list[tuple[dict[str, str], str]]:
        """Fresh ``policy.evaluated`` payloads (flat strings: a shallow copy is a whole copy) and their JSON."""
        return [(dict(payload), text) for payload, text in self.policy_events]


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

"""Replaying a recorded session against an atlas.

Every decision in a trace is recomputed from the inputs the trace itself
records: the agent, host roles and tenant (``session.started``), the resolve
request's inputs (``carp.request.received``), each call's arguments and
approval (``action.requested``), and the event's own timestamp as the clock.
Each ``policy.evaluated`` event is compared with the recomputed decision.

Rate limits and budgets depend on counters that may be shared with other
sessions. A recorded limit denial counts as reproduced when the recomputed
decision would be allowed and carries a charge for that same limit; the
counter state itself is taken from the trace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cra.errors import ProtocolError
from cra.policy.compiler import CompiledPolicy
from cra.policy.decision import Decision, Effect, EvalRequest
from cra.policy.resolve import DEFAULT_DENY_ID, evaluate_actions
from cra.protocol.carp import parse_timestamp
from cra.trace.chain import check_chain
from cra.trace.event import TraceEvent

__all__ = ["ReplayItem", "ReplayReport", "replay"]


@dataclass(frozen=True, slots=True)
class ReplayItem:
    """One recorded decision and its recomputation."""

    sequence: int
    action_id: str
    recorded_result: str
    recorded_policy: str
    replayed_result: str
    replayed_policy: str
    status: str  # identical | different
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "action_id": self.action_id,
            "recorded": {"result": self.recorded_result, "policy_id": self.recorded_policy},
            "replayed": {"result": self.replayed_result, "policy_id": self.replayed_policy},
            "status": self.status,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class ReplayReport:
    items: tuple[ReplayItem, ...]
    problems: tuple[str, ...]

    @property
    def identical(self) -> bool:
        """True when every recorded decision was recomputed identically and nothing was unreadable."""
        return not self.problems and all(i.status == "identical" for i in self.items)

    def to_dict(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "decisions": len(self.items),
            "different": sum(i.status != "identical" for i in self.items),
            "problems": list(self.problems),
            "items": [i.to_dict() for i in self.items],
        }


@dataclass(slots=True)
class _Session:
    agent: str = ""
    roles: frozenset[str] = frozenset()
    tenant: str = "default"
    session_id: str = ""


def _policy_id(decision: Decision) -> str:
    return decision.policy_id or DEFAULT_DENY_ID


def _compare(event: TraceEvent, decision: Decision, note: str = "") -> ReplayItem:
    p = event.payload
    recorded = (str(p.get("result")), str(p.get("policy_id")))
    replayed = (decision.effect.value, _policy_id(decision))
    return ReplayItem(
        event.sequence,
        str(p.get("action_id")),
        *recorded,
        *replayed,
        "identical" if recorded == replayed else "different",
        note,
    )


def replay(events: Sequence[TraceEvent], policies: Sequence[CompiledPolicy]) -> ReplayReport:
    """Recompute every decision in ``events`` with ``policies`` and compare.

    The chain is verified first: a trace that does not verify is never reported
    identical, whatever its decisions say.
    """
    by_atlas = {p.atlas.atlas_id: p for p in policies}
    owner: dict[str, CompiledPolicy] = {}
    for compiled_policy in policies:
        for declared in compiled_policy.atlas.actions:
            owner.setdefault(declared.action_id, compiled_policy)
    session = _Session()
    items: list[ReplayItem] = []
    problems: list[str] = []
    chain = check_chain(events)
    if not chain.valid:
        problems.append(f"the chain does not verify: {chain.error} at event {chain.index} ({chain.detail})")
    resolutions: dict[str, tuple[str | None, Mapping[str, Any]]] = {}
    approved: dict[str, tuple[str, ...]] = {}  # approval id -> the approval policies its ticket satisfies
    pending_resolve: list[Decision] = []
    resolve_inputs: tuple[str | None, Mapping[str, Any]] = (None, {})
    call: tuple[EvalRequest, CompiledPolicy] | None = None

    for i, event in enumerate(events):
        p = event.payload
        try:
            now: datetime | None = parse_timestamp(event.timestamp, f"/{i}/timestamp")
        except ProtocolError as exc:
            problems.append(str(exc))
            now = None
        kind = event.event_type
        if kind == "session.started":
            roles = p.get("roles") if isinstance(p.get("roles"), list) else []
            assert isinstance(roles, list)
            session = _Session(
                agent=str(p.get("agent_id", "")),
                roles=frozenset(r for r in roles if isinstance(r, str)),
                tenant=str(p.get("tenant_id", "default")),
                session_id=event.session_id,
            )
        elif kind == "carp.request.received" and p.get("operation") == "resolve":
            ids = p.get("atlas_ids") or list(by_atlas)
            missing = [a for a in ids if a not in by_atlas]
            if missing:
                problems.append(f"event {event.sequence}: atlas {', '.join(map(str, missing))} was not given to replay")
                pending_resolve = []
                continue
            tier = p.get("risk_tier")
            context = p.get("context") if isinstance(p.get("context"), dict) else {}
            assert isinstance(context, dict)
            resolve_inputs = (tier if isinstance(tier, str) else None, context)
            verdicts = evaluate_actions(
                [by_atlas[a] for a in ids],
                agent=session.agent,
                roles=session.roles,
                risk_tier=resolve_inputs[0],
                context=context,
                now=now,
                session_id=session.session_id,
                tenant_id=session.tenant,
                capabilities=p.get("required_capabilities") or (),
            )
            pending_resolve = [v.decision for v in verdicts]
        elif kind == "carp.resolution.completed":
            if pending_resolve:
                problems.append(
                    f"event {event.sequence}: the atlas decides {len(pending_resolve)} more actions than recorded"
                )
            pending_resolve = []
            resolutions[str(p.get("resolution_id"))] = resolve_inputs
        elif kind == "action.approved":
            satisfies = p.get("satisfies")
            names = satisfies if isinstance(satisfies, list) else [p.get("policy_id")]
            approved[str(p.get("approval_id"))] = tuple(str(x) for x in names)
        elif kind == "action.requested":
            action = str(p.get("action_id"))
            params = p.get("parameters")
            compiled = owner.get(action)
            if not isinstance(params, dict) or compiled is None:
                call = None
                if compiled is None:
                    problems.append(f"event {event.sequence}: no given atlas declares {action}")
                else:
                    problems.append(f"event {event.sequence}: the call's parameters are not recorded")
                continue
            tier, context = resolutions.get(str(p.get("resolution_id")), (None, {}))
            call = (
                EvalRequest(
                    action=action,
                    agent=session.agent,
                    roles=session.roles,
                    risk_tier=compiled.effective_tier(action, tier),
                    params=params,
                    context=context,
                    now=now,
                    session_id=session.session_id,
                    tenant_id=session.tenant,
                    approved=frozenset(approved.get(str(p.get("approval_id")), ())),
                ),
                compiled,
            )
        elif kind == "policy.evaluated":
            if pending_resolve:
                items.append(_compare(event, pending_resolve.pop(0)))
            elif call is not None:
                request, compiled = call
                call = None
                decision = compiled.evaluate(request)
                recorded_policy = p.get("policy_id")
                charged = any(c.policy_id == recorded_policy for c in decision.charges)
                if p.get("result") == "deny" and decision.effect is Effect.ALLOW and charged:
                    items.append(
                        ReplayItem(
                            event.sequence,
                            request.action,
                            "deny",
                            str(recorded_policy),
                            "deny",
                            str(recorded_policy),
                            "identical",
                            "limit reached; counter state as recorded",
                        )
                    )
                else:
                    items.append(_compare(event, decision))
            else:
                problems.append(f"event {event.sequence}: a policy decision with no request before it")
    if pending_resolve:
        problems.append("the trace ends in the middle of a resolution")
    return ReplayReport(tuple(items), tuple(problems))

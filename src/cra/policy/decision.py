r"""The values the policy engine takes and returns.

:class:`EvalRequest` and :class:`Decision` are built once per evaluation, on
the hot path, so they are ``NamedTuple``\ s: immutable like the frozen
dataclasses used elsewhere, and four times cheaper to construct (ADR 0001).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from cra.policy.compiler import CompiledPolicy

__all__ = [
    "EMPTY_MAPPING",
    "PARAMETERS_GUARD_ID",
    "ApprovalRequirement",
    "Charge",
    "Decision",
    "Effect",
    "EvalRequest",
    "LimitBreach",
    "Step",
    "invalid_parameters",
    "limit_exceeded",
]


#: A shared, read-only empty mapping: the default for absent params and context.
EMPTY_MAPPING: Mapping[str, Any] = MappingProxyType({})


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    REQUIRES_APPROVAL = "requires_approval"


class EvalRequest(NamedTuple):
    """One proposed call, as the engine sees it.

    ``roles`` come from the host (the caller in-process, the authenticated
    identity in the service), never from the agent. ``params`` of ``None`` means
    the call's arguments are not known yet (resolve time): conditions on them are
    deferred instead of failing. ``risk_tier`` is the effective tier: the higher
    of the requested tier and the action's declared tier, or ``None`` if neither
    is known. ``approved`` names the approval policies whose approval the host
    has verified for exactly this call; only those are satisfied.
    """

    action: str
    agent: str
    roles: frozenset[str] = frozenset()
    risk_tier: str | None = None
    params: Mapping[str, Any] | None = None
    context: Mapping[str, Any] = EMPTY_MAPPING
    now: datetime | None = None
    session_id: str | None = None
    tenant_id: str | None = None
    approved: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Step:
    """One line of an explanation: a policy considered and what came of it."""

    policy_id: str
    policy_type: str
    outcome: str  # applies | not_applicable | unknown | deferred | skipped | satisfied | decides
    detail: str

    def render(self) -> str:
        return f"[{self.policy_type}] {self.policy_id}: {self.outcome} - {self.detail}"


@dataclass(frozen=True, slots=True)
class Charge:
    """What a real call will consume from one rate limit or budget."""

    policy_id: str
    kind: str  # "rate_limit" | "budget"
    key: str
    amount: int | float
    limit: int | float
    window_seconds: int


@dataclass(frozen=True, slots=True)
class ApprovalRequirement:
    policy_id: str
    reason: str
    approver_roles: tuple[str, ...] = ()
    ticket_ttl_seconds: int = 900


class Decision(NamedTuple):
    """The engine's answer for one proposed call. It explains itself.

    ``policy_id`` names the policy that decided (``None`` for the default deny).
    ``charges`` are the rate limits and budgets a real call consumes.
    ``constraints`` are policies that still constrain the call: limits, and
    policies whose conditions on call arguments were deferred (resolve time).
    ``origin`` is what the explanation is recomputed from; ``extra_steps`` are
    steps added after the policy evaluation (counter checks).
    """

    effect: Effect
    action: str
    policy_id: str | None
    reason_code: str
    reason: str
    charges: tuple[Charge, ...] = ()
    approval: ApprovalRequirement | None = None
    constraints: tuple[str, ...] = ()
    retry_after: int | None = None
    details: Mapping[str, Any] | None = None
    origin: tuple[CompiledPolicy, EvalRequest] | None = None
    extra_steps: tuple[Step, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.effect is Effect.ALLOW

    @property
    def steps(self) -> tuple[Step, ...]:
        """Every policy considered, in evaluation order, and what came of it."""
        if self.origin is None:
            return self.extra_steps
        compiled, request = self.origin
        trace: list[Step] = []
        compiled.evaluate(request, trace)
        return (*trace, *self.extra_steps)

    def explain(self) -> str:
        """A readable account of how the decision was reached."""
        head = f"{self.effect.value} {self.action}: {self.reason} ({self.reason_code}"
        head += f", policy {self.policy_id})" if self.policy_id else ")"
        return "\n".join([head, *("  " + s.render() for s in self.steps)])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (without the explanation steps)."""
        out: dict[str, Any] = {
            "decision": self.effect.value,
            "action": self.action,
            "policy_id": self.policy_id,
            "reason_code": self.reason_code,
            "reason": self.reason,
        }
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        if self.approval is not None:
            out["approval_policy_id"] = self.approval.policy_id
        if self.constraints:
            out["constraints"] = list(self.constraints)
        if self.details:
            out["details"] = dict(self.details)
        return out


@dataclass(frozen=True, slots=True)
class LimitBreach:
    """A charge that a call cannot take: ``used`` of ``charge.limit`` is consumed."""

    charge: Charge
    used: int | float
    retry_after: int | None  # None: the charge alone exceeds the limit, so no wait helps


def limit_exceeded(decision: Decision, breach: LimitBreach) -> Decision:
    """Turn an allow into the deny a breached rate limit or budget calls for."""
    charge = breach.charge
    if charge.kind == "rate_limit":
        code, what = "rate_limit_exceeded", f"rate limit {charge.policy_id}: {breach.used} of {charge.limit} calls"
    else:
        code, what = (
            "budget_exceeded",
            f"budget {charge.policy_id}: {breach.used} of {charge.limit} used, {charge.amount} more asked",
        )
    if breach.retry_after is None:
        reason = f"{what} in {charge.window_seconds}s; the call alone exceeds the limit"
    else:
        reason = f"{what} in {charge.window_seconds}s; retry after {breach.retry_after}s"
    step = Step(charge.policy_id, charge.kind, "decides", reason)
    return decision._replace(
        effect=Effect.DENY,
        policy_id=charge.policy_id,
        reason_code=code,
        reason=reason,
        charges=(),
        retry_after=breach.retry_after,
        details={
            "used": breach.used,
            "limit": charge.limit,
            "requested": charge.amount,
            "window_seconds": charge.window_seconds,
            **({} if breach.retry_after is None else {"retry_after": breach.retry_after}),
        },
        extra_steps=(*decision.extra_steps, step),
    )


#: The guard that checks a call's arguments against its action's ``parameters_schema`` before any policy.
PARAMETERS_GUARD_ID = "cra:parameters_schema"


def invalid_parameters(action: str, path: str, reason: str) -> Decision:
    """The deny for arguments that break the action's ``parameters_schema``: no policy is asked."""
    what = f"{path or '/'}: {reason}"
    return Decision(
        effect=Effect.DENY,
        action=action,
        policy_id=PARAMETERS_GUARD_ID,
        reason_code="invalid_parameters",
        reason=what,
        details={"path": path},
        extra_steps=(Step(PARAMETERS_GUARD_ID, "parameters_schema", "decides", what),),
    )

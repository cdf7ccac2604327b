"""Compile an atlas's policies into an indexed decision structure and evaluate it.

Evaluation order (DESIGN §3): deny, then require_approval, then rate_limit,
then budget, then allow, then the default deny. Within a phase a higher
``priority`` goes first and ties keep declaration order. Rules are indexed by
action id, so one evaluation looks only at the policies whose patterns match.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cra.errors import PolicyError, ProtocolError, json_pointer
from cra.policy._glob import compile_glob
from cra.policy.conditions import (
    DEFERRED,
    FALSE,
    TRUE,
    UNKNOWN,
    Condition,
    combine,
    compile_conditions,
    lookup,
    tri_name,
)
from cra.policy.decision import ApprovalRequirement, Charge, Decision, Effect, EvalRequest, Step
from cra.policy.modules import (
    DEFAULT_DEADLINE_MS,
    DEFAULT_FUEL,
    DEFAULT_MEMORY_MB,
    MAX_DEADLINE_MS,
    MAX_FUEL,
    MAX_MEMORY_MB,
    ModuleEvaluator,
    ModuleLimits,
    ModuleLoader,
    module_request,
)
from cra.protocol.atlas import RISK_TIERS, ActionSpec, Atlas

__all__ = ["PHASES", "CompiledPolicy", "Rule", "compile_atlas"]

#: Policy types in evaluation order.
PHASES: Final = ("deny", "require_approval", "rate_limit", "budget", "allow")
_SCOPES: Final = ("agent", "session", "tenant")
_TIER_RANK: Final = {t: i for i, t in enumerate(RISK_TIERS)}
_INDEX_LIMIT: Final = 65_536

_ALLOWED_PARAMETERS: Final = {
    "allow": {"reason"},
    "deny": {"reason"},
    "require_approval": {"reason", "approver_roles", "ticket_ttl_seconds"},
    "rate_limit": {"reason", "max_calls", "window_seconds", "scope"},
    "budget": {"reason", "param", "limit", "window_seconds", "scope"},
    "wasm": {"reason", "module", "fuel", "memory_mb", "deadline_ms"},
}
#: The phase each policy type is evaluated in: a wasm policy may only deny.
_PHASE_OF: Final = {**{p: p for p in PHASES}, "wasm": "deny"}
# The limits of a wasm policy's module calls, (default, most): see cra.policy.modules.
_MODULE_FUEL: Final = (DEFAULT_FUEL, MAX_FUEL)
_MODULE_MEMORY_MB: Final = (DEFAULT_MEMORY_MB, MAX_MEMORY_MB)
_MODULE_DEADLINE_MS: Final = (DEFAULT_DEADLINE_MS, MAX_DEADLINE_MS)


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled policy."""

    policy_id: str
    type: str
    priority: int
    index: int
    patterns: tuple[str, ...] | None
    conditions: tuple[Condition, ...]
    reason: str
    parameters: Mapping[str, Any]
    approval: ApprovalRequirement | None = None
    max_amount: int | float = 0
    window_seconds: int = 0
    scope: str = "agent"
    param: str | None = None
    implicit: bool = False
    matchers: tuple[Callable[[str], bool], ...] = ()
    module: ModuleEvaluator | None = None

    def applies_to(self, action: str) -> bool:
        """Whether one of the rule's patterns matches ``action`` (no patterns: every action)."""
        return self.patterns is None or any(m(action) for m in self.matchers)

    def match(self, req: EvalRequest) -> int:
        conds = self.conditions
        if not conds:
            return TRUE
        if len(conds) == 1:
            return conds[0].test(req)
        return combine([c.test(req) for c in conds])

    def describe(self, req: EvalRequest) -> str:
        if not self.conditions:
            return "no conditions"
        return "; ".join(f"{c.text}: {tri_name(c.test(req))}" for c in self.conditions)

    def scope_key(self, req: EvalRequest) -> str | None:
        """The counter of this call: per tenant always, then per scope and per action."""
        value = {"agent": req.agent, "session": req.session_id, "tenant": req.tenant_id}[self.scope]
        if value is None:
            return None
        return f"{self.type}|{self.policy_id}|tenant={req.tenant_id or ''}|{self.scope}={value}|{req.action}"


@dataclass(frozen=True, slots=True)
class _ActionRules:
    deny: tuple[Rule, ...]
    approval: tuple[Rule, ...]
    limits: tuple[Rule, ...]
    allow: tuple[Rule, ...]


def _order(rules: list[Rule]) -> tuple[Rule, ...]:
    return tuple(sorted(rules, key=lambda r: (-r.priority, r.index)))


class CompiledPolicy:
    """An atlas's policies, compiled once and evaluated many times."""

    __slots__ = ("_index", "_tiers", "atlas", "rules", "uses_time")

    def __init__(self, atlas: Atlas, rules: tuple[Rule, ...]) -> None:
        self.atlas = atlas
        self.rules = rules
        #: Whether any decision depends on the clock (a ``time_window`` condition).
        self.uses_time = any(c.key == "time_window" for r in rules for c in r.conditions)
        self._tiers = {a.action_id: a.risk_tier for a in atlas.actions}
        self._index: dict[str, _ActionRules] = {}
        for a in atlas.actions:
            self._index[a.action_id] = self._build(a.action_id)

    def _build(self, action: str) -> _ActionRules:
        by: dict[str, list[Rule]] = {p: [] for p in PHASES}
        for rule in self.rules:
            if rule.applies_to(action):
                by[_PHASE_OF[rule.type]].append(rule)
        return _ActionRules(
            deny=_order(by["deny"]),
            approval=_order(by["require_approval"]),
            limits=(*_order(by["rate_limit"]), *_order(by["budget"])),
            allow=_order(by["allow"]),
        )

    def rules_for(self, action: str) -> tuple[Rule, ...]:
        """The rules that apply to ``action``, in evaluation order."""
        ar = self._rules_for(action)
        return (*ar.deny, *ar.approval, *ar.limits, *ar.allow)

    def _rules_for(self, action: str) -> _ActionRules:
        ar = self._index.get(action)
        if ar is None:
            ar = self._build(action)
            if len(self._index) < _INDEX_LIMIT:
                self._index[action] = ar
        return ar

    def effective_tier(self, action: str, requested: str | None) -> str | None:
        """The higher of the requested tier and the action's declared tier."""
        if requested is not None and requested not in _TIER_RANK:
            raise ProtocolError("/risk_tier", f"must be one of {', '.join(RISK_TIERS)}, not {requested!r}")
        declared = self._tiers.get(action)
        if declared is None:
            return requested
        if requested is None:
            return declared
        return requested if _TIER_RANK[requested] > _TIER_RANK[declared] else declared

    def evaluate(self, req: EvalRequest, steps: list[Step] | None = None) -> Decision:
        """Decide ``req``. With ``steps``, also record every policy considered.

        An atlas that declares actions knows all of them: any other action is
        denied (``unknown_action``). An atlas that declares none is governed by
        its policies' patterns alone.
        """
        ar = self._index.get(req.action)
        if ar is None:
            if self.atlas.actions:
                reason = f"{req.action} is not an action of atlas {self.atlas.atlas_id}"
                if steps is not None:
                    steps.append(Step("(unknown action)", "default", "decides", reason))
                return self._decision(req, Effect.DENY, None, "unknown_action", reason)
            ar = self._rules_for(req.action)
        resolving = req.params is None
        constraints: list[str] | None = None

        for rule in ar.deny:
            r = rule.match(req)
            if r == TRUE and rule.module is not None:
                if resolving:  # the module reads the arguments, which are not known yet
                    r = DEFERRED
                else:
                    answer = rule.module(module_request(req))
                    if not answer.allow:
                        if steps is not None:
                            steps.append(Step(rule.policy_id, "wasm", "decides", answer.reason))
                        code = "module_deny" if answer.failure is None else "module_failure"
                        return self._decision(req, Effect.DENY, rule.policy_id, code, answer.reason)
                    if steps is not None:
                        steps.append(
                            Step(rule.policy_id, "wasm", "not_applicable", f"the module allows: {answer.reason}")
                        )
                    continue
            if r == FALSE:
                if steps is not None:
                    steps.append(Step(rule.policy_id, rule.type, "not_applicable", rule.describe(req)))
            elif r == DEFERRED:
                constraints = _add(constraints, rule.policy_id)
                if steps is not None:
                    steps.append(Step(rule.policy_id, rule.type, "deferred", rule.describe(req)))
            else:
                if steps is not None:
                    steps.append(Step(rule.policy_id, rule.type, "decides", rule.describe(req)))
                if r == UNKNOWN:
                    return self._decision(
                        req,
                        Effect.DENY,
                        rule.policy_id,
                        "unknown_attribute",
                        f"{rule.reason} (applied because an attribute it reads is missing or of the wrong type)",
                    )
                return self._decision(req, Effect.DENY, rule.policy_id, "policy_deny", rule.reason)

        approval: Rule | None = None
        for rule in ar.approval:
            if rule.policy_id in req.approved or (rule.implicit and req.approved):
                # a requires_confirmation action is confirmed by any approval of this very call
                if steps is not None:
                    steps.append(Step(rule.policy_id, "require_approval", "satisfied", "the call carries its approval"))
                continue
            if approval is not None:
                if steps is not None:
                    steps.append(
                        Step(rule.policy_id, "require_approval", "skipped", f"{approval.policy_id} already applies")
                    )
                continue
            r = rule.match(req)
            if r == FALSE:
                if steps is not None:
                    steps.append(Step(rule.policy_id, "require_approval", "not_applicable", rule.describe(req)))
            elif r == DEFERRED:
                constraints = _add(constraints, rule.policy_id)
                if steps is not None:
                    steps.append(Step(rule.policy_id, "require_approval", "deferred", rule.describe(req)))
            else:
                approval = rule
                if steps is not None:
                    steps.append(Step(rule.policy_id, "require_approval", "applies", rule.describe(req)))

        charges: list[Charge] | None = None
        for rule in ar.limits:
            r = rule.match(req)
            if r == FALSE:
                if steps is not None:
                    steps.append(Step(rule.policy_id, rule.type, "not_applicable", rule.describe(req)))
                continue
            if resolving:
                constraints = _add(constraints, rule.policy_id)
                if steps is not None:
                    steps.append(Step(rule.policy_id, rule.type, "applies", "counted when the call is made"))
                continue
            charge = self._charge(rule, req)
            if isinstance(charge, str):
                if steps is not None:
                    steps.append(Step(rule.policy_id, rule.type, "decides", charge))
                return self._decision(req, Effect.DENY, rule.policy_id, "unknown_attribute", charge)
            if charges is None:
                charges = []
            charges.append(charge)
            if steps is not None:
                steps.append(
                    Step(
                        rule.policy_id,
                        rule.type,
                        "applies",
                        f"consumes {charge.amount} of {charge.limit} per {charge.window_seconds}s",
                    )
                )

        granted: Rule | None = None
        conditional: Rule | None = None
        unknown_allow = False
        for rule in ar.allow:
            r = rule.match(req)
            if r == TRUE:
                granted = rule
                if steps is not None:
                    steps.append(Step(rule.policy_id, "allow", "applies", rule.describe(req)))
                break
            if r == DEFERRED and conditional is None:
                conditional = rule
                if steps is not None:
                    steps.append(Step(rule.policy_id, "allow", "deferred", rule.describe(req)))
                continue
            unknown_allow = unknown_allow or r == UNKNOWN
            if steps is not None:
                steps.append(
                    Step(rule.policy_id, "allow", "unknown" if r == UNKNOWN else "not_applicable", rule.describe(req))
                )
        if granted is None and conditional is not None:
            granted = conditional
            constraints = _add(constraints, conditional.policy_id)

        if granted is None:
            reason = f"No policy allows {req.action}"
            if unknown_allow:
                reason += (
                    " (an allow policy could not match because an attribute it reads is missing or of the wrong type)"
                )
            if steps is not None:
                steps.append(Step("(default)", "default", "decides", "nothing allowed the action, so it is denied"))
            return self._decision(req, Effect.DENY, None, "default_deny", reason)

        frozen_constraints = tuple(constraints) if constraints else ()
        if approval is not None:
            requirement = approval.approval
            assert requirement is not None
            return Decision(
                Effect.REQUIRES_APPROVAL,
                req.action,
                approval.policy_id,
                "approval_required",
                approval.reason,
                (),
                requirement,
                frozen_constraints,
                None,
                None,
                (self, req),
            )
        return Decision(
            Effect.ALLOW,
            req.action,
            granted.policy_id,
            "policy_allow",
            granted.reason,
            tuple(charges) if charges else (),
            None,
            frozen_constraints,
            None,
            None,
            (self, req),
        )

    def _decision(self, req: EvalRequest, effect: Effect, policy_id: str | None, code: str, reason: str) -> Decision:
        return Decision(effect, req.action, policy_id, code, reason, (), None, (), None, None, (self, req))

    @staticmethod
    def _charge(rule: Rule, req: EvalRequest) -> Charge | str:
        key = rule.scope_key(req)
        if key is None:
            return f"{rule.type} {rule.policy_id} counts per {rule.scope}, but the call has no {rule.scope} id"
        if rule.type == "rate_limit":
            return Charge(rule.policy_id, "rate_limit", key, 1, rule.max_amount, rule.window_seconds)
        assert rule.param is not None
        assert req.params is not None
        amount = lookup(req.params, rule.param)
        if not isinstance(amount, int | float) or isinstance(amount, bool) or not (0 <= amount < float("inf")):
            return f"budget {rule.policy_id} needs params.{rule.param} as a non-negative number"
        return Charge(rule.policy_id, "budget", key, amount, rule.max_amount, rule.window_seconds)


def _add(items: list[str] | None, item: str) -> list[str]:
    if items is None:
        return [item]
    if item not in items:
        items.append(item)
    return items


def _param(
    params: Mapping[str, Any], key: str, check: Callable[[Any], bool], what: str, at: str, source: str | None
) -> Any:
    if key not in params:
        raise PolicyError(f"{at}/parameters/{key}", "is required", source=source)
    value = params[key]
    if not check(value):
        raise PolicyError(f"{at}/parameters/{key}", f"must be {what}", source=source)
    return value


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _compile_rule(
    atlas: Atlas, index: int, capabilities: Mapping[str, frozenset[str]], modules: ModuleLoader | None
) -> Rule:
    spec = atlas.policies[index]
    at = spec.path
    source = atlas.source
    if spec.type not in _ALLOWED_PARAMETERS:
        raise PolicyError(
            f"{at}/type",
            f"policy type {spec.type!r} is not supported (supported: {', '.join(_PHASE_OF)}); "
            "'scope' has no defined semantics in Atlas/1.0, so CRA refuses it rather than ignore it",
            source=source,
        )
    unknown = sorted(set(spec.parameters) - _ALLOWED_PARAMETERS[spec.type])
    if unknown:
        raise PolicyError(
            f"{at}/parameters" + json_pointer([unknown[0]]),
            f"is not a parameter of {spec.type} policies (known: {', '.join(sorted(_ALLOWED_PARAMETERS[spec.type]))})",
            source=source,
        )
    if spec.actions is not None:
        for i, pattern in enumerate(spec.actions):
            if not pattern:
                raise PolicyError(f"{at}/actions/{i}", "an action pattern cannot be empty", source=source)
    conditions = compile_conditions(spec.conditions, f"{at}/conditions", capabilities=capabilities, source=source)
    p = spec.parameters
    reason = p.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise PolicyError(f"{at}/parameters/reason", "must be a string", source=source)
    default_reason = {
        "allow": f"Allowed by policy {spec.policy_id}",
        "deny": f"Denied by policy {spec.policy_id}",
        "require_approval": f"Policy {spec.policy_id} requires a human approval",
        "rate_limit": f"Rate limit {spec.policy_id} exceeded",
        "budget": f"Budget {spec.policy_id} exhausted",
        "wasm": f"Denied by the module of policy {spec.policy_id}",
    }[spec.type]
    common: dict[str, Any] = {
        "policy_id": spec.policy_id,
        "type": spec.type,
        "priority": spec.priority,
        "index": spec.index,
        "patterns": spec.actions,
        "matchers": tuple(compile_glob(x) for x in spec.actions or ()),
        "conditions": conditions,
        "reason": reason or default_reason,
        "parameters": p,
    }
    if spec.type == "require_approval":
        roles = p.get("approver_roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
            raise PolicyError(f"{at}/parameters/approver_roles", "must be an array of role names", source=source)
        ttl = p.get("ticket_ttl_seconds", 900)
        if not _positive_int(ttl) or ttl > 86_400:
            raise PolicyError(
                f"{at}/parameters/ticket_ttl_seconds", "must be an integer from 1 to 86400", source=source
            )
        common["approval"] = ApprovalRequirement(spec.policy_id, common["reason"], tuple(roles), ttl)
    elif spec.type == "wasm":
        common["module"] = _load_module(atlas, spec.parameters, at, modules)
    elif spec.type in ("rate_limit", "budget"):
        scope = p.get("scope", "agent")
        if scope not in _SCOPES:
            raise PolicyError(f"{at}/parameters/scope", f"must be one of {', '.join(_SCOPES)}", source=source)
        common["scope"] = scope
        common["window_seconds"] = _param(p, "window_seconds", _positive_int, "an integer >= 1", at, source)
        if spec.type == "rate_limit":
            common["max_amount"] = _param(p, "max_calls", _positive_int, "an integer >= 1", at, source)
        else:
            common["param"] = _param(
                p,
                "param",
                lambda v: isinstance(v, str) and bool(v) and all(v.split(".")),
                "a dotted parameter name",
                at,
                source,
            )
            common["max_amount"] = _param(
                p,
                "limit",
                lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < float("inf"),
                "a positive number",
                at,
                source,
            )
    return Rule(**common)


def _load_module(atlas: Atlas, p: Mapping[str, Any], at: str, modules: ModuleLoader | None) -> ModuleEvaluator:
    source = atlas.source
    if modules is None:
        reason = "wasm policies need a host that runs WebAssembly modules (cra.sandbox); this engine has none"
        raise PolicyError(f"{at}/type", reason, source=source)
    fuel = p.get("fuel", _MODULE_FUEL[0])
    if not _positive_int(fuel) or fuel > _MODULE_FUEL[1]:
        raise PolicyError(f"{at}/parameters/fuel", f"must be an integer from 1 to {_MODULE_FUEL[1]}", source=source)
    memory_mb = p.get("memory_mb", _MODULE_MEMORY_MB[0])
    if not _positive_int(memory_mb) or memory_mb > _MODULE_MEMORY_MB[1]:
        reason = f"must be an integer from 1 to {_MODULE_MEMORY_MB[1]}"
        raise PolicyError(f"{at}/parameters/memory_mb", reason, source=source)
    deadline_ms = p.get("deadline_ms", _MODULE_DEADLINE_MS[0])
    if not _positive_int(deadline_ms) or deadline_ms > _MODULE_DEADLINE_MS[1]:
        reason = f"must be an integer from 1 to {_MODULE_DEADLINE_MS[1]} (milliseconds)"
        raise PolicyError(f"{at}/parameters/deadline_ms", reason, source=source)
    try:
        return modules(atlas.modules[p["module"]], ModuleLimits(fuel, memory_mb * 1024 * 1024, deadline_ms))
    except PolicyError as exc:
        raise PolicyError(f"{at}/parameters/module", f"{p['module']}: {exc.reason}", source=source) from None


def _implicit(
    atlas: Atlas, action: ActionSpec, policy_id: str, type_: str, reason: str, parameters: dict[str, Any], **extra: Any
) -> Rule:
    """A policy CRA adds for a property of one action (``requires_confirmation``, ``rate_limit``)."""
    return Rule(
        policy_id=policy_id,
        type=type_,
        priority=0,
        index=len(atlas.policies) + action.index,
        patterns=(action.action_id,),
        matchers=(action.action_id.__eq__,),
        conditions=(),
        reason=reason,
        parameters=parameters,
        implicit=True,
        **extra,
    )


def compile_atlas(atlas: Atlas, modules: ModuleLoader | None = None) -> CompiledPolicy:
    """Compile ``atlas``. Unknown policy types, condition keys, operators and
    parameters are :class:`~cra.errors.PolicyError`\\ s naming their JSON path.

    ``modules`` loads the WebAssembly modules of ``wasm`` policies (see
    :mod:`cra.policy.modules`); without it such an atlas is refused."""
    if not atlas.policies:
        raise atlas.locate(
            PolicyError("/policies", "an atlas without policies would deny everything; declare at least one policy")
        )
    capabilities = {c.capability_id: frozenset(c.actions) for c in atlas.capabilities}
    try:
        rules = [_compile_rule(atlas, i, capabilities, modules) for i in range(len(atlas.policies))]
    except PolicyError as exc:
        raise atlas.locate(exc) from None
    for action in atlas.actions:
        if action.requires_confirmation:
            reason = f"Action {action.action_id} requires a human's confirmation"
            policy_id = f"cra:confirmation:{action.action_id}"
            rules.append(
                _implicit(
                    atlas,
                    action,
                    policy_id,
                    "require_approval",
                    reason,
                    {},
                    approval=ApprovalRequirement(policy_id, reason),
                )
            )
        if action.rate_limit is not None:
            limit = action.rate_limit
            reason = f"Rate limit of action {action.action_id} exceeded"
            rules.append(
                _implicit(
                    atlas,
                    action,
                    f"cra:rate_limit:{action.action_id}",
                    "rate_limit",
                    reason,
                    dict(limit),
                    max_amount=limit["max_calls"],
                    window_seconds=limit["window_seconds"],
                )
            )
    return CompiledPolicy(atlas, tuple(rules))

"""The in-process policy engine: one compiled atlas, evaluated in microseconds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from cra.errors import ProtocolError
from cra.policy.compiler import CompiledPolicy, compile_atlas
from cra.policy.decision import EMPTY_MAPPING, Decision, Effect, EvalRequest, invalid_parameters, limit_exceeded
from cra.policy.modules import ModuleLoader
from cra.protocol.atlas import Atlas
from cra.protocol.validation import compile_validator
from cra.runtime.atlas_files import AtlasSource, load_atlas
from cra.runtime.clock import SystemClock
from cra.runtime.loaded import Check, parameter_checks, schema_violation
from cra.runtime.memory import MemoryCounters
from cra.runtime.ports import Clock, CounterStore

__all__ = ["EVALUATION_REQUEST_SCHEMA", "Engine"]

#: One proposed call as JSON: what ``cra evaluate --batch`` lines and atlas tests hold.
EVALUATION_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["agent", "action"],
    "additionalProperties": False,
    "properties": {
        "agent": {"type": "string", "minLength": 1, "maxLength": 255},
        "roles": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "action": {"type": "string", "minLength": 1, "maxLength": 255},
        "risk_tier": {"enum": ["low", "medium", "high", "critical"]},
        "params": {"type": "object"},
        "context": {"type": "object"},
        "session": {"type": "string", "minLength": 1},
        "tenant": {"type": "string", "minLength": 1},
        "approved": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "dry_run": {"type": "boolean"},
    },
}
_check_request = compile_validator(EVALUATION_REQUEST_SCHEMA)


class Engine:
    """Evaluate proposed calls against one atlas.

    >>> engine = Engine.from_atlas("examples/atlases/customer-support")
    >>> d = engine.evaluate(action="refund.create", agent="support-bot", roles=["agent"],
    ...                     risk_tier="low", params={"order_id": "42", "amount": 120, "currency": "SAR"})
    >>> d.effect, d.policy_id, d.reason, d.explain()

    A call that is allowed consumes its rate limits and budgets unless
    ``dry_run`` is set. Roles are the host's word about the caller, never the
    agent's.
    """

    __slots__ = ("_clock", "_compiled", "_counters", "_parameters", "tenant_id")

    def __init__(
        self,
        atlas: Atlas,
        *,
        counters: CounterStore | None = None,
        clock: Clock | None = None,
        tenant_id: str = "default",
        modules: ModuleLoader | None = None,
    ) -> None:
        self._compiled = compile_atlas(atlas, modules)
        self._parameters: dict[str, Check] = parameter_checks(atlas)
        self._counters: CounterStore = counters if counters is not None else MemoryCounters()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.tenant_id = tenant_id

    @classmethod
    def from_atlas(
        cls,
        source: AtlasSource,
        *,
        counters: CounterStore | None = None,
        clock: Clock | None = None,
        tenant_id: str = "default",
        modules: ModuleLoader | None = None,
    ) -> Engine:
        """Load and compile an atlas (a package directory, a JSON file, a dict or an :class:`Atlas`).

        ``modules`` loads the WebAssembly modules of ``wasm`` policies (``cra.sandbox.load_policy_module``)."""
        return cls(load_atlas(source), counters=counters, clock=clock, tenant_id=tenant_id, modules=modules)

    @property
    def atlas(self) -> Atlas:
        return self._compiled.atlas

    @property
    def compiled(self) -> CompiledPolicy:
        return self._compiled

    @property
    def digest(self) -> str:
        """The content digest of the policy package that makes every decision."""
        return self._compiled.atlas.digest

    def evaluate(
        self,
        action: str,
        agent: str,
        roles: Iterable[str] = (),
        risk_tier: str | None = None,
        params: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        *,
        session_id: str | None = None,
        tenant_id: str | None = None,
        verified_approvals: Iterable[str] = (),
        dry_run: bool = False,
        now: datetime | None = None,
    ) -> Decision:
        """Decide one proposed call.

        ``params`` are the call's arguments (none given means none: conditions
        on them then read missing attributes and fail closed). Arguments that
        break the action's ``parameters_schema`` are denied first, as execute
        refuses them (``invalid_parameters``, with the JSON path and reason).
        ``verified_approvals`` names the approval policies whose approval the
        host has verified for exactly this call (the resolver's signed tickets
        do this); only those policies are satisfied.
        """
        compiled = self._compiled
        if isinstance(roles, str) or isinstance(verified_approvals, str):
            raise ProtocolError("/roles", "roles and approvals are lists of names, not one string")
        check = self._parameters.get(action)
        invalid = None if check is None else schema_violation(check, {} if params is None else dict(params))
        if invalid is not None:
            return invalid_parameters(action, *invalid)
        if now is None and compiled.uses_time:
            now = self._clock.now()
        req = EvalRequest(
            action,
            agent,
            roles if isinstance(roles, frozenset) else frozenset(roles),
            compiled.effective_tier(action, risk_tier),
            EMPTY_MAPPING if params is None else params,
            EMPTY_MAPPING if context is None else context,
            now,
            session_id,
            self.tenant_id if tenant_id is None else tenant_id,
            frozenset(verified_approvals),
        )
        decision = compiled.evaluate(req)
        if decision.charges and decision.effect is Effect.ALLOW:
            moment = (now or self._clock.now()).timestamp()
            store = self._counters
            breach = store.check(decision.charges, moment) if dry_run else store.consume(decision.charges, moment)
            if breach is not None:
                return limit_exceeded(decision, breach)
        return decision

    def evaluate_request(self, request: Mapping[str, Any]) -> Decision:
        """Validate a JSON evaluation request (see :data:`EVALUATION_REQUEST_SCHEMA`) and decide it.

        Raises :class:`~cra.errors.ProtocolError` naming the JSON path of a bad field.
        """
        _check_request(request)
        return self.evaluate(
            action=request["action"],
            agent=request["agent"],
            roles=request.get("roles", ()),
            risk_tier=request.get("risk_tier"),
            params=request.get("params", {}),
            context=request.get("context", {}),
            session_id=request.get("session"),
            tenant_id=request.get("tenant"),
            verified_approvals=request.get("approved", ()),
            dry_run=request.get("dry_run", False),
        )

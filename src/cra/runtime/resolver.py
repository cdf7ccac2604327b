"""The in-process CARP runtime: sessions, resolve, execute, approvals and traces.

Every step becomes a TRACE/1.0 event in the session's hash chain. The resolver
reaches the world only through its ports (clock, ids, counters, stores, sinks,
signer); the defaults are in-memory, so ``Resolver()`` needs nothing else.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final

from cra.context.select import ContextBlock, ContextCatalog, compile_context
from cra.errors import (
    ApprovalError,
    AtlasError,
    NotFoundError,
    ProtocolError,
    ResolutionError,
    SessionError,
    ValidationError,
)
from cra.policy.compiler import CompiledPolicy, compile_atlas
from cra.policy.decision import Decision, Effect, EvalRequest, limit_exceeded
from cra.policy.resolve import (
    ActionVerdict,
    constraints_for,
    evaluate_actions,
    policy_event_payload,
    summarize,
)
from cra.protocol.atlas import Atlas
from cra.protocol.canonical import canonical_json, sha256_hex
from cra.protocol.carp import CARP_VERSION, CarpRequest, parse_carp_request, parse_timestamp
from cra.protocol.validation import compile_validator
from cra.runtime.approvals import Approval, ApprovalTicket, arguments_hash, issue_ticket, read_ticket
from cra.runtime.atlas_files import AtlasSource, load_atlas
from cra.runtime.clock import SystemClock
from cra.runtime.ids import SystemIds
from cra.runtime.memory import (
    HmacSigner,
    MemoryApprovals,
    MemoryCounters,
    MemoryEventStore,
    MemoryResolutions,
    MemorySessions,
)
from cra.runtime.ports import (
    ApprovalStore,
    Clock,
    CounterStore,
    EventStore,
    IdSource,
    ResolutionStore,
    SessionStore,
    Signer,
    TraceSink,
)
from cra.runtime.records import ResolutionRecord, Session
from cra.trace.chain import verify_chain
from cra.trace.event import TraceEvent, build_event, format_timestamp

__all__ = ["Executor", "Resolver"]

Executor = Callable[[dict[str, Any]], Any]

#: ``policy_id`` recorded when a call is refused before any atlas policy is consulted.
RESOLUTION_GUARD_ID: Final = "cra:resolution"
PARAMETERS_GUARD_ID: Final = "cra:parameters_schema"


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything a resolve decides that does not depend on ids, time or the goal.

    It is a pure function of the atlases, the agent, its roles, the risk tier, the
    request context and the required capabilities (and of the clock, when an atlas
    has time windows; such plans are not cached).
    """

    policy_events: tuple[tuple[dict[str, Any], str], ...]  # payload and its canonical JSON
    allowed: tuple[dict[str, Any], ...]
    denied: tuple[dict[str, Any], ...]
    constraints: tuple[dict[str, Any], ...]
    decision_type: str
    reason: str
    actions: Mapping[str, str]  # allowed action id -> atlas id

    @classmethod
    def of(cls, verdicts: Sequence[ActionVerdict]) -> _Plan:
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


_PLAN_CACHE_LIMIT: Final = 4096


@dataclass(frozen=True, slots=True)
class _Loaded:
    atlas: Atlas
    compiled: CompiledPolicy
    catalog: ContextCatalog
    validators: Mapping[str, Callable[[object], None]]


def _param_validators(atlas: Atlas) -> dict[str, Callable[[object], None]]:
    out: dict[str, Callable[[object], None]] = {}
    for action in atlas.actions:
        if action.parameters_schema is not None:
            try:
                out[action.action_id] = compile_validator(dict(action.parameters_schema), error=AtlasError)
            except ValidationError as exc:
                raise atlas.locate(AtlasError(f"/actions/{action.index}/parameters_schema", exc.reason)) from None
    return out


class Resolver:
    """Sessions, CARP resolve and execute, approvals, and the trace of it all.

    >>> r = Resolver()
    >>> r.load_atlas("examples/atlases/customer-support")
    >>> sid = r.create_session(agent_id="support-bot", goal="Refund order 42", roles=["agent"])
    >>> resolution = r.resolve(carp_request)
    >>> result = r.execute(carp_execute_request)
    >>> r.verify_chain(sid)
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        ids: IdSource | None = None,
        counters: CounterStore | None = None,
        events: EventStore | None = None,
        sessions: SessionStore | None = None,
        resolutions: ResolutionStore | None = None,
        approvals: ApprovalStore | None = None,
        signer: Signer | None = None,
        sinks: Iterable[TraceSink] = (),
        tenant_id: str = "default",
        resolution_ttl_seconds: int = 3600,
        max_clock_skew_seconds: int = 300,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._ids: IdSource = ids or SystemIds()
        self._counters: CounterStore = counters or MemoryCounters()
        self._events: EventStore = events or MemoryEventStore()
        self._sessions: SessionStore = sessions or MemorySessions()
        self._resolutions: ResolutionStore = resolutions or MemoryResolutions()
        self._approvals: ApprovalStore = approvals or MemoryApprovals()
        self._signer: Signer = signer or HmacSigner()
        self._sinks = tuple(sinks)
        self._tenant = tenant_id
        self._ttl = resolution_ttl_seconds
        self._skew = max_clock_skew_seconds
        self._loaded: dict[str, _Loaded] = {}
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self._executors: dict[str, Executor] = {}
        self._lock = threading.RLock()

    # -- atlases and executors -------------------------------------------------

    def load_atlas(self, source: AtlasSource, *, files: Mapping[str, str | bytes] | None = None) -> Atlas:
        """Load, validate and compile an atlas; a new version replaces the old one."""
        atlas = load_atlas(source, files=files)
        loaded = _Loaded(atlas, compile_atlas(atlas), compile_context(atlas), _param_validators(atlas))
        with self._lock:
            for other in self._loaded.values():
                if other.atlas.atlas_id == atlas.atlas_id:
                    continue
                for action in atlas.actions:
                    if other.atlas.action(action.action_id) is not None:
                        raise AtlasError(
                            f"/actions/{action.index}/action_id",
                            f"action {action.action_id!r} is already declared by loaded atlas {other.atlas.atlas_id!r}",
                            source=atlas.source,
                        )
            self._loaded[atlas.atlas_id] = loaded
            self._plans.clear()
        return atlas

    def unload_atlas(self, atlas_id: str) -> None:
        with self._lock:
            if self._loaded.pop(atlas_id, None) is None:
                raise NotFoundError("atlas", atlas_id)
            self._plans.clear()

    @property
    def atlases(self) -> tuple[Atlas, ...]:
        return tuple(loaded.atlas for loaded in self._loaded.values())

    def compiled(self, atlas_id: str) -> CompiledPolicy:
        """The compiled policies of a loaded atlas."""
        loaded = self._loaded.get(atlas_id)
        if loaded is None:
            raise NotFoundError("atlas", atlas_id)
        return loaded.compiled

    def register_executor(self, action_id: str, executor: Executor) -> None:
        """Run ``executor(parameters)`` when ``action_id`` is executed and allowed."""
        self._executors[action_id] = executor

    def executor(self, action_id: str) -> Callable[[Executor], Executor]:
        """Decorator form of :meth:`register_executor`."""

        def register(fn: Executor) -> Executor:
            self.register_executor(action_id, fn)
            return fn

        return register

    # -- sessions -------------------------------------------------------------

    def create_session(
        self,
        agent_id: str,
        goal: str,
        *,
        roles: Iterable[str] = (),
        tenant_id: str | None = None,
        atlas_ids: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Start a session and its trace. ``roles`` are the host's word about the agent."""
        if not isinstance(agent_id, str) or not 1 <= len(agent_id) <= 255:
            raise ProtocolError("/agent_id", "must be a string of 1 to 255 characters")
        if not isinstance(goal, str) or not 1 <= len(goal) <= 10_000:
            raise ProtocolError("/goal", "must be a string of 1 to 10000 characters")
        role_set = frozenset(roles)
        if not all(isinstance(r, str) and r for r in role_set):
            raise ProtocolError("/roles", "must be non-empty strings")
        with self._lock:
            for aid in atlas_ids or ():
                if aid not in self._loaded:
                    raise NotFoundError("atlas", aid)
            now = self._clock.now()
            session = Session(
                session_id=self._ids.new_id(),
                tenant_id=tenant_id or self._tenant,
                agent_id=agent_id,
                goal=goal,
                roles=role_set,
                trace_id=self._ids.new_id(),
                root_span_id=self._ids.new_id(),
                created_at=now,
                atlas_ids=tuple(atlas_ids) if atlas_ids else None,
                metadata=dict(metadata or {}),
            )
            self._sessions.put(session)
            payload: dict[str, Any] = {"agent_id": agent_id, "goal": goal}
            if session.atlas_ids:
                payload["atlas_ids"] = list(session.atlas_ids)
            extra: dict[str, Any] = dict(metadata or {})
            if role_set:
                extra["roles"] = sorted(role_set)
            if session.tenant_id != self._tenant or tenant_id is not None:
                extra["tenant_id"] = session.tenant_id
            if extra:
                payload["metadata"] = extra
            self._span(session, now, root=True).emit("session.started", payload)
            return session.session_id

    def get_session(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise NotFoundError("session", session_id)
        return session

    def sessions(self, tenant_id: str | None = None) -> list[Session]:
        return self._sessions.list(tenant_id)

    def end_session(self, session_id: str, reason: str = "completed") -> None:
        if reason not in ("completed", "timeout", "error", "cancelled"):
            raise ProtocolError("/reason", "must be completed, timeout, error or cancelled")
        with self._lock:
            session = self._active(session_id)
            now = self._clock.now()
            executed = sum(e.event_type == "action.executed" for e in self._events.events(session_id))
            duration = max(0, int((now - session.created_at) / timedelta(milliseconds=1)))
            self._span(session, now).emit(
                "session.ended", {"reason": reason, "duration_ms": duration, "action_count": executed}
            )
            self._sessions.put(replace(session, status="ended", ended_at=now))

    def get_trace(self, session_id: str) -> list[TraceEvent]:
        self.get_session(session_id)
        return self._events.events(session_id)

    def verify_chain(self, session_id: str) -> None:
        """Return only if the session's chain verifies; raise :class:`~cra.errors.ChainError` otherwise."""
        verify_chain(self.get_trace(session_id))

    # -- resolve --------------------------------------------------------------

    def resolve(self, request: Mapping[str, Any] | CarpRequest) -> dict[str, Any]:
        """Answer a CARP resolve request with a CARP resolution."""
        req = request if isinstance(request, CarpRequest) else parse_carp_request(request)
        if req.operation != "resolve":
            raise ProtocolError("/operation", f"resolve() takes a 'resolve' request, not {req.operation!r}")
        with self._lock:
            session = self._session_for(req)
            now = self._clock.now()
            self._admit(session, req, now)
            loaded = self._select_atlases(req.atlas_ids or session.atlas_ids)
            span = self._span(session, now)
            emit = span.emit

            received: dict[str, Any] = {
                "request_id": req.request_id,
                "operation": "resolve",
                "goal": req.goal,
                "atlas_ids": [x.atlas.atlas_id for x in loaded],
            }
            # Decision inputs beyond the protocol defaults, so that replay can recompute.
            if req.risk_tier not in (None, "low"):
                received["risk_tier"] = req.risk_tier
            if req.context_hints:
                received["context_hints"] = list(req.context_hints)
            if req.required_capabilities:
                received["required_capabilities"] = list(req.required_capabilities)
            if req.context:
                received["context"] = dict(req.context)
            emit("carp.request.received", received)

            plan = self._plan(loaded, session, req, now)
            for payload, payload_json in plan.policy_events:
                emit("policy.evaluated", payload, payload_json)
            blocks = self._context(loaded, session, req, now, span)
            resolution_id = self._ids.new_id()
            document: dict[str, Any] = {
                "carp_version": CARP_VERSION,
                "resolution_id": resolution_id,
                "request_id": req.request_id,
                "timestamp": span.stamp,
                "decision": {
                    "type": plan.decision_type,
                    "reason": plan.reason,
                    "approval_id": None,
                    "expires_at": None,
                },
                "context_blocks": [b.to_dict() for b in blocks],
                "allowed_actions": [dict(a) for a in plan.allowed],
                "denied_actions": [dict(d) for d in plan.denied],
                "constraints": [
                    {**c, "parameters": {**c["parameters"], "actions": list(c["parameters"]["actions"])}}
                    for c in plan.constraints
                ],
                "ttl_seconds": self._ttl,
                "trace_id": session.trace_id,
            }
            emit(
                "carp.resolution.completed",
                {
                    "resolution_id": resolution_id,
                    "request_id": req.request_id,
                    "decision_type": plan.decision_type,
                    "allowed_count": len(plan.allowed),
                    "denied_count": len(plan.denied),
                    "context_block_count": len(blocks),
                    "ttl_seconds": self._ttl,
                },
            )
            self._resolutions.put(
                ResolutionRecord(
                    resolution_id=resolution_id,
                    session_id=session.session_id,
                    request_id=req.request_id,
                    expires_at=now + timedelta(seconds=self._ttl),
                    actions=plan.actions,
                    risk_tier=req.risk_tier,
                    context=dict(req.context),
                    document=document,
                )
            )
            return document

    def _plan(self, loaded: Sequence[_Loaded], session: Session, req: CarpRequest, now: datetime) -> _Plan:
        """The resolve decisions for this request, memoised while the clock cannot matter."""
        cacheable = not any(x.compiled.uses_time for x in loaded)
        key: tuple[Any, ...] = ()
        if cacheable:
            try:
                context_key = canonical_json(req.context)
            except (TypeError, ValueError):
                context_key = None
            cacheable = context_key is not None
            key = (
                tuple(x.atlas.digest for x in loaded),
                session.agent_id,
                session.roles,
                req.risk_tier,
                context_key,
                req.required_capabilities,
            )
            plan = self._plans.get(key)
            if plan is not None:
                return plan
        verdicts = evaluate_actions(
            [x.compiled for x in loaded],
            agent=session.agent_id,
            roles=session.roles,
            risk_tier=req.risk_tier,
            context=req.context,
            now=now,
            session_id=session.session_id,
            tenant_id=session.tenant_id,
            capabilities=req.required_capabilities,
        )
        plan = _Plan.of(verdicts)
        if cacheable:
            if len(self._plans) >= _PLAN_CACHE_LIMIT:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _context(
        self,
        loaded: Sequence[_Loaded],
        session: Session,
        req: CarpRequest,
        now: datetime,
        span: _Span,
    ) -> list[ContextBlock]:
        probe = EvalRequest(
            action="",
            agent=session.agent_id,
            roles=session.roles,
            risk_tier=req.risk_tier or "low",
            params=None,
            context=req.context,
            now=now,
            session_id=session.session_id,
            tenant_id=session.tenant_id,
        )
        blocks: list[ContextBlock] = []
        for x in loaded:
            selection = x.catalog.select(
                probe, goal=req.goal, hints=req.context_hints, capabilities=req.required_capabilities
            )
            for red in selection.redactions:
                span.emit(
                    "context.redacted",
                    {
                        "block_id": red.block_id,
                        "source": red.source,
                        "redactions": dict(red.counts),
                        "count": sum(red.counts.values()),
                    },
                )
            blocks.extend(selection.blocks)
        blocks.sort(key=lambda b: -b.priority)
        for block in blocks:
            span.emit(
                "context.injected",
                {
                    "block_id": block.block_id,
                    "source": block.source,
                    "content_type": block.content_type,
                    "token_count": block.token_estimate,
                    "priority": block.priority,
                },
            )
        return blocks

    # -- execute --------------------------------------------------------------

    def execute(
        self, request: Mapping[str, Any] | CarpRequest, *, approval_ticket: str | None = None
    ) -> dict[str, Any]:
        """Execute one action a prior resolution allowed, if the policy allows it now.

        Returns a CARP execute response whose ``status`` is ``success``,
        ``error``, ``denied`` or ``pending_approval``. Requests that break the
        protocol (unknown session or resolution, replayed request id, clock skew)
        raise instead, and are recorded as ``error.occurred``.
        """
        req = request if isinstance(request, CarpRequest) else parse_carp_request(request)
        if req.operation != "execute" or req.execution is None:
            raise ProtocolError("/operation", f"execute() takes an 'execute' request, not {req.operation!r}")
        ex = req.execution
        with self._lock:
            session = self._session_for(req)
            now = self._clock.now()
            span = self._span(session, now)
            emit = span.emit

            try:
                self._admit(session, req, now)
                record = self._resolutions.get(ex.resolution_id)
                if record is None or record.session_id != session.session_id:
                    raise NotFoundError("resolution", ex.resolution_id)
                if now >= record.expires_at:
                    raise ResolutionError(
                        f"resolution {ex.resolution_id} expired at {format_timestamp(record.expires_at)}"
                    )
            except (ResolutionError, NotFoundError) as exc:
                emit("error.occurred", {"code": exc.code, "message": str(exc), "request_id": req.request_id})
                raise

            execution_id = self._ids.new_id()
            params = dict(ex.parameters)
            args_hash = arguments_hash(params)
            response = _Response(req, execution_id, session.trace_id, self._clock)
            requested: dict[str, Any] = {
                "action_id": ex.action_id,
                "resolution_id": ex.resolution_id,
                "parameters_hash": args_hash,
                "parameters": params,
            }
            approval: Approval | None = None
            if approval_ticket is not None:
                try:
                    approval = self._redeemable(approval_ticket, session, ex.action_id, args_hash, now)
                except ApprovalError as exc:
                    emit("action.requested", requested)
                    emit(
                        "action.denied",
                        {"action_id": ex.action_id, "reason": str(exc), "policy_id": RESOLUTION_GUARD_ID},
                    )
                    return response.done("denied", error={"code": "invalid_approval", "message": str(exc)})
                requested["approval_id"] = approval.approval_id
            emit("action.requested", requested)

            atlas_id = record.actions.get(ex.action_id)
            if atlas_id is None or atlas_id not in self._loaded:
                reason = f"action {ex.action_id} was not allowed by resolution {ex.resolution_id}"
                emit("action.denied", {"action_id": ex.action_id, "reason": reason, "policy_id": RESOLUTION_GUARD_ID})
                return response.done("denied", error={"code": "action_not_resolved", "message": reason})
            loaded = self._loaded[atlas_id]

            invalid = _check_parameters(loaded, ex.action_id, params)
            if invalid is not None:
                path, why = invalid
                emit(
                    "policy.violated",
                    {
                        "policy_id": PARAMETERS_GUARD_ID,
                        "violation_type": "invalid_parameters",
                        "details": {"path": path, "reason": why},
                        "action_id": ex.action_id,
                    },
                )
                return response.done(
                    "error",
                    error={"code": "invalid_parameters", "message": f"{path or '/'}: {why}", "details": {"path": path}},
                )

            decision = loaded.compiled.evaluate(
                EvalRequest(
                    action=ex.action_id,
                    agent=session.agent_id,
                    roles=session.roles,
                    risk_tier=loaded.compiled.effective_tier(ex.action_id, record.risk_tier),
                    params=params,
                    context=record.context,
                    now=now,
                    session_id=session.session_id,
                    tenant_id=session.tenant_id,
                    approved=approval is not None,
                )
            )
            executor = self._executors.get(ex.action_id)
            if decision.effect is Effect.ALLOW and decision.charges and executor is not None:
                breach = self._counters.consume(decision.charges, now.timestamp())
                if breach is not None:
                    decision = limit_exceeded(decision, breach)

            if decision.effect is Effect.REQUIRES_APPROVAL:
                pending = self._pending(session, ex.action_id, args_hash, params, decision, now)
                emit("policy.evaluated", {**policy_event_payload(decision), "approval_id": pending.approval_id})
                return response.done(
                    "pending_approval",
                    result={
                        "approval_id": pending.approval_id,
                        "policy_id": decision.policy_id,
                        "reason": decision.reason,
                    },
                )
            emit("policy.evaluated", policy_event_payload(decision))
            if decision.effect is Effect.DENY:
                if decision.details is not None and decision.policy_id is not None:
                    emit(
                        "policy.violated",
                        {
                            "policy_id": decision.policy_id,
                            "violation_type": "rate_limit"
                            if decision.reason_code == "rate_limit_exceeded"
                            else "budget",
                            "details": dict(decision.details),
                            "action_id": ex.action_id,
                        },
                    )
                denied: dict[str, Any] = {"action_id": ex.action_id, "reason": decision.reason}
                if decision.policy_id is not None:
                    denied["policy_id"] = decision.policy_id
                emit("action.denied", denied)
                details: dict[str, Any] = {"policy_id": decision.policy_id}
                if decision.retry_after is not None:
                    details["retry_after"] = decision.retry_after
                return response.done(
                    "denied", error={"code": decision.reason_code, "message": decision.reason, "details": details}
                )

            if executor is None:
                message = f"no executor is registered for {ex.action_id}"
                emit(
                    "action.failed",
                    {
                        "action_id": ex.action_id,
                        "execution_id": execution_id,
                        "error_code": "no_executor",
                        "error_message": message,
                        "duration_ms": 0,
                    },
                )
                return response.done("error", error={"code": "no_executor", "message": message})
            if approval is not None:
                self._approvals.put(approval.decided("used"))
            return self._run(executor, params, ex.action_id, execution_id, ex.resolution_id, response, span)

    def _run(
        self,
        executor: Executor,
        params: dict[str, Any],
        action_id: str,
        execution_id: str,
        resolution_id: str,
        response: _Response,
        span: _Span,
    ) -> dict[str, Any]:
        started = self._clock.now()
        failure: tuple[str, str] | None = None
        result: dict[str, Any] = {}
        result_hash = ""
        try:
            value = executor(dict(params))
        except Exception as exc:  # noqa: BLE001 - executors are the host's code; any failure is recorded, not raised
            failure = ("executor_error", f"{type(exc).__name__}: {exc}"[:1000])
        else:
            result = value if isinstance(value, dict) else {"value": value}
            try:
                result_hash = sha256_hex(canonical_json(result))
            except (TypeError, ValueError) as exc:
                failure = ("invalid_result", f"the executor returned something that is not JSON: {exc}"[:1000])
        duration = max(0, int((self._clock.now() - started) / timedelta(milliseconds=1)))
        if failure is not None:
            code, message = failure
            span.emit(
                "action.failed",
                {
                    "action_id": action_id,
                    "execution_id": execution_id,
                    "error_code": code,
                    "error_message": message,
                    "duration_ms": duration,
                },
            )
            return response.done("error", error={"code": code, "message": message})
        span.emit(
            "action.executed",
            {
                "action_id": action_id,
                "execution_id": execution_id,
                "resolution_id": resolution_id,
                "duration_ms": duration,
                "result_hash": result_hash,
            },
        )
        return response.done("success", result=result)

    # -- approvals ------------------------------------------------------------

    def _pending(
        self,
        session: Session,
        action_id: str,
        args_hash: str,
        params: dict[str, Any],
        decision: Decision,
        now: datetime,
    ) -> Approval:
        for existing in self._approvals.list(session_id=session.session_id, status="pending"):
            if existing.action_id == action_id and existing.arguments_hash == args_hash:
                return existing
        requirement = decision.approval
        assert requirement is not None
        approval = Approval(
            approval_id=self._ids.new_id(),
            tenant_id=session.tenant_id,
            session_id=session.session_id,
            agent_id=session.agent_id,
            action_id=action_id,
            arguments_hash=args_hash,
            parameters=params,
            policy_id=requirement.policy_id,
            reason=requirement.reason,
            approver_roles=requirement.approver_roles,
            ticket_ttl_seconds=requirement.ticket_ttl_seconds,
            requested_at=now,
        )
        self._approvals.put(approval)
        return approval

    def approvals(self, *, session_id: str | None = None, status: str | None = None) -> list[Approval]:
        return self._approvals.list(session_id=session_id, status=status)

    def get_approval(self, approval_id: str) -> Approval:
        approval = self._approvals.get(approval_id)
        if approval is None:
            raise NotFoundError("approval", approval_id)
        return approval

    def _decidable(self, approval_id: str, approver: str, approver_roles: Iterable[str]) -> tuple[Approval, Session]:
        approval = self.get_approval(approval_id)
        if approval.status != "pending":
            raise ApprovalError(f"approval {approval_id} is already {approval.status}")
        if not isinstance(approver, str) or not approver:
            raise ApprovalError("an approver identity is required")
        if approver == approval.agent_id:
            raise ApprovalError("an agent cannot decide its own approval request")
        if approval.approver_roles and not set(approver_roles) & set(approval.approver_roles):
            raise ApprovalError(
                f"approving {approval.action_id} needs one of the roles {list(approval.approver_roles)}"
            )
        return approval, self.get_session(approval.session_id)

    def approve(
        self, approval_id: str, *, approver: str, approver_roles: Iterable[str] = (), comment: str | None = None
    ) -> ApprovalTicket:
        """Grant a pending approval; returns the single-use ticket for exactly that call."""
        with self._lock:
            approval, session = self._decidable(approval_id, approver, approver_roles)
            now = self._clock.now()
            expires = now + timedelta(seconds=approval.ticket_ttl_seconds)
            approval = approval.decided(
                "approved", approver=approver, comment=comment, decided_at=now, expires_at=expires
            )
            self._approvals.put(approval)
            payload: dict[str, Any] = {
                "action_id": approval.action_id,
                "approval_id": approval_id,
                "policy_id": approval.policy_id,
                "approver": approver,
                "expires_at": format_timestamp(expires),
            }
            if comment:
                payload["comment"] = comment
            self._span(session, now).emit("action.approved", payload)
            return issue_ticket(self._signer, approval)

    def deny(
        self, approval_id: str, *, approver: str, approver_roles: Iterable[str] = (), comment: str | None = None
    ) -> Approval:
        """Refuse a pending approval. The call stays denied; the agent may not retry it with a ticket."""
        with self._lock:
            approval, session = self._decidable(approval_id, approver, approver_roles)
            now = self._clock.now()
            approval = approval.decided("denied", approver=approver, comment=comment, decided_at=now)
            self._approvals.put(approval)
            payload: dict[str, Any] = {
                "action_id": approval.action_id,
                "reason": f"approval refused by {approver}",
                "policy_id": approval.policy_id,
                "approval_id": approval_id,
                "approver": approver,
            }
            if comment:
                payload["comment"] = comment
            self._span(session, now).emit("action.denied", payload)
            return approval

    def _redeemable(self, token: str, session: Session, action_id: str, args_hash: str, now: datetime) -> Approval:
        claims = read_ticket(self._signer, token)
        approval = self._approvals.get(claims["aid"])
        if approval is None:
            raise ApprovalError("approval ticket names an unknown approval")
        if approval.status == "used":
            raise ApprovalError(f"approval {approval.approval_id} was already used")
        if approval.status != "approved":
            raise ApprovalError(f"approval {approval.approval_id} is {approval.status}")
        binding = {
            "tenant": session.tenant_id,
            "sid": session.session_id,
            "agent": session.agent_id,
            "action": action_id,
            "args": args_hash,
        }
        for key, value in binding.items():
            if claims[key] != value:
                what = "arguments" if key == "args" else {"sid": "session", "tenant": "tenant"}.get(key, key)
                raise ApprovalError(f"approval ticket was issued for a different {what}")
        if now.timestamp() >= claims["exp"]:
            raise ApprovalError(f"approval ticket expired at {format_timestamp(approval.expires_at or now)}")
        return approval

    # -- internals ------------------------------------------------------------

    def _span(self, session: Session, at: datetime, *, root: bool = False) -> _Span:
        """A recorder for one operation's events (call with the lock held)."""
        span_id = session.root_span_id if root else self._ids.new_id()
        return _Span(self, session, span_id, None if root else session.root_span_id, format_timestamp(at))

    def _active(self, session_id: str) -> Session:
        session = self.get_session(session_id)
        if session.status != "active":
            raise SessionError(f"session {session_id} has ended")
        return session

    def _session_for(self, req: CarpRequest) -> Session:
        session = self._active(req.session_id)
        if session.agent_id != req.agent_id:
            raise SessionError(f"session {req.session_id} belongs to another agent")
        return session

    def _admit(self, session: Session, req: CarpRequest, now: datetime) -> None:
        """Replay and freshness checks shared by resolve and execute."""
        sent = parse_timestamp(req.timestamp, "/timestamp")
        skew = abs((now - sent).total_seconds())
        if skew > self._skew:
            raise ResolutionError(
                f"request timestamp is {int(skew)}s away from the runtime's clock (limit {self._skew}s)"
            )
        if not self._sessions.claim_request_id(session.session_id, req.request_id):
            raise ResolutionError(f"request id {req.request_id} was already used in this session")

    def _select_atlases(self, atlas_ids: Sequence[str] | None) -> list[_Loaded]:
        if atlas_ids is None:
            if not self._loaded:
                raise ResolutionError("no atlas is loaded")
            return list(self._loaded.values())
        out = []
        for aid in atlas_ids:
            loaded = self._loaded.get(aid)
            if loaded is None:
                raise NotFoundError("atlas", aid)
            out.append(loaded)
        return out


class _Span:
    """Records the events of one operation: one span, one timestamp, consecutive in the chain.

    The resolver's lock is held for the whole operation, so the chain cannot
    move underneath it.
    """

    __slots__ = ("_parent", "_previous", "_resolver", "_session", "_span_id", "stamp")

    def __init__(self, resolver: Resolver, session: Session, span_id: str, parent: str | None, stamp: str) -> None:
        self._resolver = resolver
        self._session = session
        self._span_id = span_id
        self._parent = parent
        self.stamp = stamp
        self._previous = resolver._events.last(session.session_id)

    def emit(self, event_type: str, payload: Mapping[str, Any], payload_json: str | None = None) -> TraceEvent:
        """Append an event to the chain and hand it to the sinks.

        ``payload_json`` is the payload's canonical JSON when the caller has it.
        """
        r = self._resolver
        event = build_event(
            self._previous,
            event_id=r._ids.new_id(),
            trace_id=self._session.trace_id,
            span_id=self._span_id,
            parent_span_id=self._parent,
            session_id=self._session.session_id,
            timestamp=self.stamp,
            event_type=event_type,
            payload=payload,
            payload_json=payload_json,
        )
        r._events.append(event)
        for sink in r._sinks:
            sink.emit(event)
        self._previous = event
        return event


class _Response:
    """Builds CARP execute responses for one call."""

    def __init__(self, req: CarpRequest, execution_id: str, trace_id: str, clock: Clock) -> None:
        assert req.execution is not None
        self._base = {
            "carp_version": CARP_VERSION,
            "execution_id": execution_id,
            "request_id": req.request_id,
            "resolution_id": req.execution.resolution_id,
        }
        self._trace_id = trace_id
        self._clock = clock

    def done(
        self, status: str, *, result: dict[str, Any] | None = None, error: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {**self._base, "timestamp": format_timestamp(self._clock.now()), "status": status}
        if result is not None:
            out["result"] = result
        if error is not None:
            out["error"] = error
        out["trace_id"] = self._trace_id
        return out


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


def _check_parameters(loaded: _Loaded, action_id: str, params: dict[str, Any]) -> tuple[str, str] | None:
    validator = loaded.validators.get(action_id)
    if validator is None:
        return None
    try:
        validator(params)
    except ValidationError as exc:
        return exc.path, exc.reason
    return None

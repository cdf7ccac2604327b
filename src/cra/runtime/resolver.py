"""The in-process CARP runtime: sessions, resolve, execute, approvals and traces.

Every step becomes a TRACE/1.0 event in the session's hash chain. The resolver
reaches the world only through its ports (clock, ids, counters, stores, sinks,
signer); the defaults are in-memory, so ``Resolver()`` needs nothing else.

One lock guards the runtime's state. It is released while an executor runs, so
a slow tool does not stall other sessions and an executor may call back in.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Final

from cra.context.select import ContextBlock
from cra.errors import (
    ApprovalError,
    AtlasError,
    CRAError,
    LedgerError,
    NotFoundError,
    ProtocolError,
    ResolutionError,
    SessionError,
)
from cra.policy.compiler import CompiledPolicy
from cra.policy.decision import PARAMETERS_GUARD_ID, Decision, Effect, EvalRequest, limit_exceeded
from cra.policy.modules import ModuleLoader
from cra.policy.resolve import DEFAULT_DENY_ID, evaluate_actions, policy_event_payload
from cra.protocol.atlas import Atlas, AtlasRef
from cra.protocol.canonical import canonical_json, sha256_hex
from cra.protocol.carp import CARP_VERSION, CarpRequest, is_parsed, parse_carp_request, parse_timestamp
from cra.runtime.approvals import Approval, ApprovalTicket, issue_ticket, read_ticket
from cra.runtime.atlas_files import AtlasSource, load_atlas
from cra.runtime.clock import SystemClock
from cra.runtime.execution import Executor, Outcome, ResponseBuilder, invoke
from cra.runtime.ids import SystemIds
from cra.runtime.loaded import LoadedAtlas, prepare
from cra.runtime.memory import (
    HmacSigner,
    MemoryApprovals,
    MemoryCounters,
    MemoryEventStore,
    MemoryResolutions,
    MemorySessions,
)
from cra.runtime.plan import ResolvePlan
from cra.runtime.ports import (
    ApprovalStore,
    Clock,
    CounterStore,
    EventStore,
    IdSource,
    ResolutionStore,
    Sealer,
    SessionStore,
    Signer,
    TraceSink,
)
from cra.runtime.recorder import SpanRecorder
from cra.runtime.records import AttestationClaim, IdempotentCall, ResolutionRecord, RunningCall, Session
from cra.runtime.sealing import BackgroundSealer
from cra.trace.chain import verify_chain
from cra.trace.event import TraceEvent, format_timestamp
from cra.trace.jsonl import copy_event

__all__ = ["DEFAULT_TENANT", "Executor", "PendingCall", "Resolver"]

#: The tenant of sessions created without one; recorded in the trace only when different.
DEFAULT_TENANT: Final = "default"
#: ``policy_id`` recorded when a call is refused before any atlas policy is consulted.
RESOLUTION_GUARD_ID: Final = "cra:resolution"
_PLAN_CACHE_LIMIT: Final = 4096
_SHA256: Final = re.compile(r"[0-9a-f]{64}")
_MEDIA_TYPE: Final = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")

_log = logging.getLogger("cra.ledger")


class Resolver:
    """Sessions, CARP resolve and execute, approvals, and the trace of it all.

    >>> r = Resolver()
    >>> r.load_atlas("examples/atlases/customer-support")
    >>> sid = r.create_session(agent_id="support-bot", goal="Refund order 42", roles=["agent"])
    >>> resolution = r.resolve(carp_request)
    >>> result = r.execute(carp_execute_request)
    >>> r.verify_chain(sid)

    With a ``ledger``, every operation's events (and the attestations of its decisions) are
    sealed into it before the operation answers: one durable append per call. With
    ``seal_in_background``, an operation answers once its events are recorded, and a
    :class:`~cra.runtime.sealing.BackgroundSealer` appends them in batches off the call path;
    :meth:`flush` waits for it, and :meth:`close` stops it (see that module for what a crash
    can lose).
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
        ledger: Sealer | None = None,
        tenant_id: str = DEFAULT_TENANT,
        resolution_ttl_seconds: int = 3600,
        max_clock_skew_seconds: int = 300,
        modules: ModuleLoader | None = None,
        seal_in_background: bool = False,
    ) -> None:
        self._modules = modules
        self._clock: Clock = clock or SystemClock()
        self._ids: IdSource = ids or SystemIds()
        self._counters: CounterStore = counters or MemoryCounters()
        self._events: EventStore = events or MemoryEventStore()
        self._sessions: SessionStore = sessions or MemorySessions()
        self._resolutions: ResolutionStore = resolutions or MemoryResolutions()
        self._approvals: ApprovalStore = approvals or MemoryApprovals()
        self._signer: Signer = signer or HmacSigner()
        self._sinks = tuple(sinks)
        self.ledger = ledger
        self._sealer: Sealer | None = ledger
        self._background: BackgroundSealer | None = None
        if ledger is not None and seal_in_background:
            self._sealer = self._background = BackgroundSealer(ledger)
        self._unsealed: list[TraceEvent] = []
        self._claims: list[AttestationClaim] = []
        self._tenant = tenant_id
        self._ttl = resolution_ttl_seconds
        self._skew = max_clock_skew_seconds
        self._loaded: dict[str, LoadedAtlas] = {}
        self._plans: dict[tuple[Any, ...], ResolvePlan] = {}
        self._executors: dict[str, Executor] = {}
        self._lock = threading.RLock()

    # -- atlases and executors -------------------------------------------------

    def load_atlas(self, source: AtlasSource, *, files: Mapping[str, str | bytes] | None = None) -> Atlas:
        """Load, validate and compile an atlas; a new version replaces the old one."""
        atlas = load_atlas(source, files=files)
        loaded = prepare(atlas, self._modules)
        with self._lock:
            for other in self._loaded.values():
                if other.atlas.atlas_id == atlas.atlas_id:
                    continue
                for action in atlas.actions:
                    if other.atlas.action(action.action_id) is not None:
                        reason = f"action {action.action_id!r} is already declared by atlas {other.atlas.atlas_id!r}"
                        raise atlas.locate(AtlasError(f"/actions/{action.index}/action_id", reason))
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
        with self._lock:
            return tuple(loaded.atlas for loaded in self._loaded.values())

    def compiled(self, atlas_id: str) -> CompiledPolicy:
        """The compiled policies of a loaded atlas."""
        loaded = self._loaded.get(atlas_id)
        if loaded is None:
            raise NotFoundError("atlas", atlas_id)
        return loaded.compiled

    def register_executor(self, action_id: str, executor: Executor) -> None:
        """Run ``executor(arguments)`` when ``action_id`` is executed and allowed.

        The executor gets its own copy of the arguments and must return JSON (an
        object, or a value reported as ``{"value": ...}``). It runs without the
        runtime's lock held.
        """
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
        """Start a session and its trace. ``roles`` are the host's word about the agent.

        ``atlas_ids`` confines the session to those atlases (an empty list: to none).
        """
        if not isinstance(agent_id, str) or not 1 <= len(agent_id) <= 255:
            raise ProtocolError("/agent_id", "must be a string of 1 to 255 characters")
        if not isinstance(goal, str) or not 1 <= len(goal) <= 10_000:
            raise ProtocolError("/goal", "must be a string of 1 to 10000 characters")
        role_set = frozenset(_names(roles, "/roles"))
        if tenant_id is not None and (not isinstance(tenant_id, str) or not tenant_id):
            raise ProtocolError("/tenant_id", "must be a non-empty string")
        confined = None if atlas_ids is None else tuple(_names(atlas_ids, "/atlas_ids"))
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ProtocolError("/metadata", "must be an object")
        tenant = tenant_id or self._tenant
        # roles and tenant sit beside the host's metadata, never inside it, so that
        # metadata cannot forge what replay reads as the host's word.
        payload: dict[str, Any] = {"agent_id": agent_id, "goal": goal}
        if confined is not None:
            payload["atlas_ids"] = list(confined)
        if role_set:
            payload["roles"] = sorted(role_set)
        if tenant != DEFAULT_TENANT:
            payload["tenant_id"] = tenant
        try:
            own_metadata = json.loads(canonical_json(dict(metadata or {})))  # a private deep copy
        except (TypeError, ValueError, RecursionError) as exc:
            raise ProtocolError("/metadata", f"must be JSON: {exc}") from None
        if own_metadata:
            payload["metadata"] = own_metadata
        with self._sealing():
            for aid in confined or ():
                if aid not in self._loaded:
                    raise NotFoundError("atlas", aid)
            now = self._clock.now()
            session = Session(
                session_id=self._ids.new_id(),
                tenant_id=tenant,
                agent_id=agent_id,
                goal=goal,
                roles=role_set,
                trace_id=self._ids.new_id(),
                root_span_id=self._ids.new_id(),
                created_at=now,
                atlas_ids=confined,
                metadata=json.loads(canonical_json(own_metadata)),
            )
            self._sessions.put(session)
            self._span(session, now, root=True).emit("session.started", payload)
            return session.session_id

    def get_session(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise NotFoundError("session", session_id)
        return session

    def sessions(self, tenant_id: str | None = None) -> list[Session]:
        with self._lock:
            return self._sessions.list(tenant_id)

    def end_session(self, session_id: str, reason: str = "completed") -> None:
        if reason not in ("completed", "timeout", "error", "cancelled"):
            raise ProtocolError("/reason", "must be completed, timeout, error or cancelled")
        with self._sealing():
            session = self._active(session_id)
            if self._sessions.running_calls(session_id):
                raise SessionError(f"session {session_id} still has calls running; end it when they are done")
            now = self._clock.now()
            executed = sum(e.event_type == "action.executed" for e in self._events.events(session_id))
            duration = max(0, int((now - session.created_at) / timedelta(milliseconds=1)))
            self._span(session, now).emit(
                "session.ended", {"reason": reason, "duration_ms": duration, "action_count": executed}
            )
            self._sessions.put(replace(session, status="ended", ended_at=now))
        if self._sealer is not None:
            self._sealer.checkpoint()

    def flush(self) -> None:
        """With ``seal_in_background``, wait until every event answered so far is in the ledger
        (:meth:`~cra.runtime.sealing.BackgroundSealer.flush`); otherwise there is nothing to wait for."""
        if self._background is not None:
            self._background.flush()

    def close(self) -> None:
        """Seal what is queued and stop the background sealer; the ledger itself stays open."""
        if self._background is not None:
            self._background.close()

    def get_trace(self, session_id: str) -> list[TraceEvent]:
        """The session's events, each with its own copy of the payload."""
        with self._lock:
            self.get_session(session_id)
            events = self._events.events(session_id)
        return [copy_event(e) for e in events]

    def verify_chain(self, session_id: str) -> None:
        """Return only if the session's chain verifies; raise :class:`~cra.errors.ChainError` otherwise."""
        verify_chain(self.get_trace(session_id))

    def attach_evidence(
        self,
        session_id: str,
        *,
        sha256: str,
        media_type: str,
        description: str,
        attached_by: str,
        size_bytes: int | None = None,
    ) -> TraceEvent:
        """Record external evidence (a file's digest, type and description) in an active session's trace.

        TRACE/1.0 has no evidence event type, so it is a ``context.injected`` event
        whose ``block_id`` is ``evidence:sha256:<digest>`` and whose payload carries
        an ``evidence`` object. The file itself is not stored.
        """
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise ProtocolError("/sha256", "must be 64 lowercase hexadecimal digits")
        if not isinstance(media_type, str) or len(media_type) > 255 or not _MEDIA_TYPE.fullmatch(media_type):
            raise ProtocolError("/media_type", "must be a media type such as application/pdf")
        if not isinstance(description, str) or not 1 <= len(description) <= 2000:
            raise ProtocolError("/description", "must be a string of 1 to 2000 characters")
        if size_bytes is not None and (type(size_bytes) is not int or not 0 <= size_bytes < 2**63):
            raise ProtocolError("/size_bytes", "must be a non-negative integer")
        if not isinstance(attached_by, str) or not attached_by:
            raise ProtocolError("/attached_by", "an identity is required")
        evidence: dict[str, Any] = {
            "sha256": sha256,
            "media_type": media_type,
            "description": description,
            "attached_by": attached_by,
        }
        if size_bytes is not None:
            evidence["size_bytes"] = size_bytes
        with self._sealing():
            session = self._active(session_id)
            event = self._span(session, self._clock.now()).emit(
                "context.injected",
                {
                    "block_id": f"evidence:sha256:{sha256}",
                    "source": "evidence",
                    "content_type": media_type,
                    "token_count": 0,
                    "priority": 0,
                    "evidence": evidence,
                },
            )
        return copy_event(event)

    # -- resolve --------------------------------------------------------------

    def resolve(self, request: Mapping[str, Any] | CarpRequest) -> dict[str, Any]:
        """Answer a CARP resolve request with a CARP resolution.

        Protocol violations (another agent's session, a replayed request id,
        clock skew, atlases outside the session's) raise, and are recorded in
        the session's trace as ``error.occurred``.
        """
        req = _parse(request, "resolve")
        with self._sealing():
            session, now = self._admit(req)
            try:
                loaded = self._select_atlases(session, req)
            except (ResolutionError, NotFoundError) as exc:
                self._record_error(session, now, req, exc)
                raise
            span = self._span(session, now)
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
                received["context"] = json.loads(canonical_json(req.context))
            span.emit("carp.request.received", received)

            plan = self._plan(loaded, session, req, now)
            for payload, payload_json in plan.policy_payloads():
                span.emit("policy.evaluated", payload, payload_json)
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
                **plan.resolution_lists(),
                "ttl_seconds": self._ttl,
                "trace_id": session.trace_id,
            }
            completed = span.emit(
                "carp.resolution.completed",
                {
                    "resolution_id": resolution_id,
                    "request_id": req.request_id,
                    "decision_type": plan.decision_type,
                    "allowed_count": plan.allowed_count,
                    "denied_count": plan.denied_count,
                    "context_block_count": len(blocks),
                    "ttl_seconds": self._ttl,
                },
            )
            self._attest(completed, plan.decision_type, None, req, loaded)
            self._resolutions.put(
                ResolutionRecord(
                    resolution_id=resolution_id,
                    session_id=session.session_id,
                    request_id=req.request_id,
                    expires_at=now + timedelta(seconds=self._ttl),
                    actions=plan.actions,
                    risk_tier=req.risk_tier,
                    context=received.get("context", {}),
                    document=document,
                )
            )
            return document

    def _plan(self, loaded: Sequence[LoadedAtlas], session: Session, req: CarpRequest, now: datetime) -> ResolvePlan:
        """The resolve decisions for this request, memoised while the clock cannot matter."""
        key: tuple[Any, ...] | None = None
        if not any(x.compiled.uses_time for x in loaded):
            key = (
                tuple(x.atlas.digest for x in loaded),
                session.agent_id,
                session.roles,
                req.risk_tier,
                canonical_json(req.context),
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
        plan = ResolvePlan.of(verdicts)
        if key is not None:
            if len(self._plans) >= _PLAN_CACHE_LIMIT:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _context(
        self,
        loaded: Sequence[LoadedAtlas],
        session: Session,
        req: CarpRequest,
        now: datetime,
        span: SpanRecorder,
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
        self,
        request: Mapping[str, Any] | CarpRequest,
        *,
        approval_ticket: str | None = None,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        """Execute one action a prior resolution allowed, if the policy allows it now.

        Returns a CARP execute response whose ``status`` is ``success``,
        ``error``, ``denied`` or ``pending_approval``. Requests that break the
        protocol (unknown session or resolution, another agent's session, a
        replayed request id, clock skew) raise instead, recorded as
        ``error.occurred`` when the session exists.

        ``requested_by`` is the host's identity of the caller. An approval the call asks
        for records it, and that identity may not decide the approval.
        """
        started = self.begin_execute(request, approval_ticket=approval_ticket, requested_by=requested_by)
        if not isinstance(started, PendingCall):
            return started
        try:
            outcome = started.run()  # without the lock
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: record the abandoned call, then let it go
            self.finish_execute(started, Outcome(0, error_code="executor_aborted", error_message=type(exc).__name__))
            raise
        return self.finish_execute(started, outcome)

    def begin_execute(
        self,
        request: Mapping[str, Any] | CarpRequest,
        *,
        approval_ticket: str | None = None,
        requested_by: str | None = None,
    ) -> dict[str, Any] | PendingCall:
        """Everything :meth:`execute` does before the executor runs.

        Returns the response when the call stops there (denied, waiting for approval,
        a repeat of an idempotent call, no executor), else the authorised
        :class:`PendingCall`: run it, then give its outcome to :meth:`finish_execute`.
        A host that keeps state elsewhere commits what this recorded before it runs
        the executor, so that a retried commit never runs a tool twice.
        """
        req = _parse(request, "execute")
        ex = req.execution
        assert ex is not None
        with self._sealing():
            session, now = self._admit(req)
            try:
                record = self._resolutions.get(ex.resolution_id)
                if record is None or record.session_id != session.session_id:
                    raise NotFoundError("resolution", ex.resolution_id)
                if now >= record.expires_at:
                    expired = format_timestamp(record.expires_at)
                    raise ResolutionError(f"resolution {ex.resolution_id} expired at {expired}")
            except (ResolutionError, NotFoundError) as exc:
                self._record_error(session, now, req, exc)
                raise
            span = self._span(session, now)
            call = _Call(req, session, record, now, span, self._ids.new_id(), self._clock, requested_by)
            key = ex.idempotency_key
            if key is not None:
                call.requested["idempotency_key"] = key
                first = self._sessions.claim_idempotency_key(
                    session.session_id, key, IdempotentCall(ex.action_id, call.args_hash, call.execution_id)
                )
                if first is not None:
                    return self._repeat(first, call)
            try:
                stopped, executor, loaded = self._authorise(call, approval_ticket)
            except BaseException:
                if key is not None:
                    self._sessions.release_idempotency_key(session.session_id, key)
                raise
            if stopped is not None:
                # Only an executor's outcome is final for an idempotency key: after a
                # denial or an approval request, the same key may be tried again.
                if key is not None:
                    self._sessions.release_idempotency_key(session.session_id, key)
                return stopped
            assert executor is not None
            assert loaded is not None
            self._sessions.start_call(RunningCall(session.session_id, call.execution_id, ex.action_id, now, key))
            return PendingCall(call, executor, loaded, self._clock)

    def abandon_call(self, call: RunningCall, reason: str) -> None:
        """Record a running call whose process stopped before it reported an outcome as failed
        (``executor_lost``), and release its idempotency key so that the caller may try again."""
        with self._sealing():
            session = self.get_session(call.session_id)
            now = self._clock.now()
            self._span(session, now).emit(
                "action.failed",
                {
                    "action_id": call.action_id,
                    "execution_id": call.execution_id,
                    "error_code": "executor_lost",
                    "error_message": reason,
                    "duration_ms": max(0, int((now - call.started_at) / timedelta(milliseconds=1))),
                },
            )
            if call.idempotency_key is not None:
                self._sessions.release_idempotency_key(call.session_id, call.idempotency_key)
            self._sessions.finish_call(call.session_id, call.execution_id)

    def finish_execute(self, pending: PendingCall, outcome: Outcome) -> dict[str, Any]:
        """Record the outcome of a call :meth:`begin_execute` authorised, and answer with it."""
        with self._sealing():
            pending.call.span = pending.call.span.moved(
                self._events, self._unsealed if self.ledger is not None else None
            )
            return self._settle(pending.call, outcome)

    def _authorise(
        self, call: _Call, ticket: str | None
    ) -> tuple[dict[str, Any] | None, Executor | None, LoadedAtlas | None]:
        """Everything before the executor runs. Returns the response when the call stops here."""
        ex = call.execution
        refusal = self._pre_checks(call, ticket)
        if refusal is not None:
            return call.response.done(refusal[0], error=refusal[1]), None, None
        approval = self._approvals.get(call.requested["approval_id"]) if "approval_id" in call.requested else None
        loaded = self._loaded[call.record.actions[ex.action_id]]
        decision = loaded.compiled.evaluate(
            EvalRequest(
                action=ex.action_id,
                agent=call.session.agent_id,
                roles=call.session.roles,
                risk_tier=loaded.compiled.effective_tier(ex.action_id, call.record.risk_tier),
                params=call.requested["parameters"],
                context=call.record.context,
                now=call.now,
                session_id=call.session.session_id,
                tenant_id=call.session.tenant_id,
                approved=frozenset(approval.satisfies) if approval is not None else frozenset(),
            )
        )
        executor = self._executors.get(ex.action_id)
        if decision.effect is Effect.ALLOW and executor is not None:
            moment = call.now.timestamp()
            # Limits are taken before a ticket is spent: a call the limits refuse keeps its
            # approval, and a counter store that cannot answer raises before anything is redeemed.
            breach = self._counters.consume(decision.charges, moment) if decision.charges else None
            if breach is None and approval is not None:
                used = [a for a in (approval.approval_id, *approval.carries) if not self._approvals.redeem(a)]
                if used:
                    if decision.charges:  # a refused call consumes nothing
                        self._counters.release(decision.charges, moment)
                    return self._refuse(call, "invalid_approval", f"approval {used[0]} was already used"), None, None
            if breach is not None:
                decision = limit_exceeded(decision, breach)
        stopped = self._decided(call, decision, loaded, approval)
        if stopped is not None:
            return stopped, None, None
        if executor is None:
            message = f"no executor is registered for {ex.action_id}"
            call.span.emit(
                "action.failed",
                {
                    "action_id": ex.action_id,
                    "execution_id": call.execution_id,
                    "error_code": "no_executor",
                    "error_message": message,
                    "duration_ms": 0,
                },
            )
            return call.response.done("error", error={"code": "no_executor", "message": message}), None, None
        return None, executor, loaded

    def _settle(self, call: _Call, outcome: Outcome) -> dict[str, Any]:
        """Record an executor's outcome (with the lock held) and answer with it."""
        ex = call.execution
        sid = call.session.session_id
        self._sessions.finish_call(sid, call.execution_id)
        call.span.stamp = format_timestamp(self._clock.now())
        if outcome.error_code is not None:
            call.span.emit(
                "action.failed",
                {
                    "action_id": ex.action_id,
                    "execution_id": call.execution_id,
                    "error_code": outcome.error_code,
                    "error_message": outcome.error_message,
                    "duration_ms": outcome.duration_ms,
                },
            )
            done = call.response.done("error", error={"code": outcome.error_code, "message": outcome.error_message})
        else:
            call.span.emit(
                "action.executed",
                {
                    "action_id": ex.action_id,
                    "execution_id": call.execution_id,
                    "resolution_id": ex.resolution_id,
                    "duration_ms": outcome.duration_ms,
                    "result_hash": outcome.result_hash,
                    **outcome.trace,
                },
            )
            done = call.response.done("success", result=outcome.result)
        if ex.idempotency_key is not None:
            self._sessions.complete_idempotency_key(sid, ex.idempotency_key, json.loads(json.dumps(done)))
        return done

    def _refuse(self, call: _Call, code: str, reason: str) -> dict[str, Any]:
        """Deny a call before any atlas policy decided it."""
        action_id = call.execution.action_id
        call.span.emit("action.denied", {"action_id": action_id, "reason": reason, "policy_id": RESOLUTION_GUARD_ID})
        return call.response.done("denied", error={"code": code, "message": reason})

    def _pre_checks(self, call: _Call, ticket: str | None) -> tuple[str, dict[str, Any]] | None:
        """Checks before any policy: the ticket, the resolution, the action, the arguments.

        Records ``action.requested`` (with the approval it carries) and, when a
        check fails, what failed; returns the response status and error then.
        """
        action_id = call.execution.action_id
        approval_error = None
        if ticket is not None:
            try:
                approval = self._redeemable(ticket, call.session, action_id, call.args_hash, call.now)
                call.requested["approval_id"] = approval.approval_id
            except ApprovalError as exc:
                approval_error = str(exc)
        call.span.emit("action.requested", call.requested)

        def refuse(code: str, reason: str) -> tuple[str, dict[str, Any]]:
            return "denied", self._refuse(call, code, reason)["error"]

        if approval_error is not None:
            return refuse("invalid_approval", approval_error)
        atlas_id = call.record.actions.get(action_id)
        loaded = self._loaded.get(atlas_id) if atlas_id is not None else None
        if loaded is None:
            return refuse(
                "action_not_resolved", f"action {action_id} was not allowed by resolution {call.record.resolution_id}"
            )
        if loaded.atlas.action(action_id) is None:
            return refuse("action_not_declared", f"atlas {loaded.atlas.atlas_id} no longer declares {action_id}")
        invalid = loaded.check_parameters(action_id, call.requested["parameters"])
        if invalid is not None:
            path, why = invalid
            call.span.emit(
                "policy.violated",
                {
                    "policy_id": PARAMETERS_GUARD_ID,
                    "violation_type": "invalid_parameters",
                    "details": {"path": path, "reason": why},
                    "action_id": action_id,
                },
            )
            return "error", {
                "code": "invalid_parameters",
                "message": f"{path or '/'}: {why}",
                "details": {"path": path},
            }
        return None

    def _decided(
        self, call: _Call, decision: Decision, loaded: LoadedAtlas, carried: Approval | None
    ) -> dict[str, Any] | None:
        """Record the decision; the response when the call stops here (approval or denial)."""
        span, action_id = call.span, decision.action
        if decision.effect is Effect.REQUIRES_APPROVAL:
            pending = self._pending(call, decision, loaded, carried)
            event = span.emit(
                "policy.evaluated", {**policy_event_payload(decision), "approval_id": pending.approval_id}
            )
            self._attest(event, decision.effect.value, action_id, call.request, [loaded])
            result = {"approval_id": pending.approval_id, "policy_id": decision.policy_id, "reason": decision.reason}
            return call.response.done("pending_approval", result=result)
        event = span.emit("policy.evaluated", policy_event_payload(decision))
        self._attest(event, decision.effect.value, action_id, call.request, [loaded])
        if decision.effect is Effect.ALLOW:
            return None
        if decision.details is not None and decision.policy_id is not None:
            violation = "rate_limit" if decision.reason_code == "rate_limit_exceeded" else "budget"
            span.emit(
                "policy.violated",
                {
                    "policy_id": decision.policy_id,
                    "violation_type": violation,
                    "details": dict(decision.details),
                    "action_id": action_id,
                },
            )
        span.emit(
            "action.denied",
            {"action_id": action_id, "reason": decision.reason, "policy_id": decision.policy_id or DEFAULT_DENY_ID},
        )
        details: dict[str, Any] = {"policy_id": decision.policy_id}
        if decision.retry_after is not None:
            details["retry_after"] = decision.retry_after
        error = {"code": decision.reason_code, "message": decision.reason, "details": details}
        return call.response.done("denied", error=error)

    def _repeat(self, first: IdempotentCall, call: _Call) -> dict[str, Any]:
        """A call that reuses an idempotency key: the first call's outcome, never a second run."""
        call.requested["duplicate_of"] = first.execution_id
        call.span.emit("action.requested", call.requested)
        if (first.action_id, first.arguments_hash) != (call.execution.action_id, call.args_hash):
            return self._refuse(call, "idempotency_key_reused", "the idempotency key was used for a different call")
        if first.response is None:
            message = "the first call with this idempotency key is still running"
            return call.response.done("error", error={"code": "idempotency_key_in_progress", "message": message})
        return dict(json.loads(json.dumps(first.response)))

    # -- approvals ------------------------------------------------------------

    def _pending(self, call: _Call, decision: Decision, loaded: LoadedAtlas, carried: Approval | None) -> Approval:
        """The pending approval for this call and policy (an existing one, or a new one).

        ``carried`` is the approval whose ticket the call presented: the new
        approval's ticket will satisfy its policies too, and redeem it with it.
        """
        requirement = decision.approval
        assert requirement is not None
        session, action_id, args_hash = call.session, call.execution.action_id, call.args_hash
        satisfies = (*(carried.satisfies if carried is not None else ()), requirement.policy_id)
        carries = (*carried.carries, carried.approval_id) if carried is not None else ()
        for existing in self._approvals.list(session_id=session.session_id, status="pending"):
            if (existing.action_id, existing.arguments_hash, existing.carries, existing.satisfies) == (
                action_id,
                args_hash,
                carries,
                satisfies,
            ) and existing.atlas_digest == loaded.atlas.digest:
                return existing
        approval = Approval(
            approval_id=self._ids.new_id(),
            tenant_id=session.tenant_id,
            session_id=session.session_id,
            agent_id=session.agent_id,
            action_id=action_id,
            arguments_hash=args_hash,
            parameters=json.loads(call.arguments_json),
            policy_id=requirement.policy_id,
            atlas_digest=loaded.atlas.digest,
            satisfies=satisfies,
            carries=carries,
            reason=requirement.reason,
            approver_roles=requirement.approver_roles,
            ticket_ttl_seconds=requirement.ticket_ttl_seconds,
            requested_at=call.now,
            requested_by=call.requested_by,
        )
        self._approvals.put(approval)
        return approval

    def approvals(self, *, session_id: str | None = None, status: str | None = None) -> list[Approval]:
        with self._lock:
            return self._approvals.list(session_id=session_id, status=status)

    def get_approval(self, approval_id: str) -> Approval:
        approval = self._approvals.get(approval_id)
        if approval is None:
            raise NotFoundError("approval", approval_id)
        return approval

    def _decidable(
        self, approval_id: str, approver: str, approver_roles: Iterable[str], comment: str | None
    ) -> tuple[Approval, Session]:
        if comment is not None and (not isinstance(comment, str) or len(comment) > 2000):
            raise ProtocolError("/comment", "must be a string of at most 2000 characters")
        approver_roles = _names(approver_roles, "/approver_roles")
        approval = self.get_approval(approval_id)
        if approval.status != "pending":
            raise ApprovalError(f"approval {approval_id} is already {approval.status}")
        if not isinstance(approver, str) or not approver:
            raise ApprovalError("an approver identity is required")
        if approver == approval.agent_id:
            raise ApprovalError("an agent cannot decide its own approval request")
        if approval.requested_by is not None and approver == approval.requested_by:
            raise ApprovalError("the caller that asked for this approval cannot decide it")
        if approval.approver_roles and not set(approver_roles) & set(approval.approver_roles):
            raise ApprovalError(
                f"approving {approval.action_id} needs one of the roles {list(approval.approver_roles)}"
            )
        return approval, self._active(approval.session_id)

    def approve(
        self, approval_id: str, *, approver: str, approver_roles: Iterable[str] = (), comment: str | None = None
    ) -> ApprovalTicket:
        """Grant a pending approval; returns the single-use ticket for exactly that call.

        A ticket whose approval was asked for while the call carried earlier
        approvals expires with the earliest of them.
        """
        with self._sealing():
            approval, session = self._decidable(approval_id, approver, approver_roles, comment)
            now = self._clock.now()
            expiries = [now + timedelta(seconds=approval.ticket_ttl_seconds)]
            for carried_id in approval.carries:
                carried = self._approvals.get(carried_id)
                if carried is None or carried.status != "approved" or carried.expires_at is None:
                    raise ApprovalError(f"approval {carried_id}, which this call carried, is no longer valid")
                expiries.append(carried.expires_at)
            expires = min(expiries)
            payload: dict[str, Any] = {
                "action_id": approval.action_id,
                "approval_id": approval_id,
                "policy_id": approval.policy_id,
                "satisfies": list(approval.satisfies),
                "approver": approver,
                "expires_at": format_timestamp(expires),
            }
            if comment:
                payload["comment"] = comment
            self._span(session, now).emit("action.approved", payload)
            approval = approval.decided(
                "approved", approver=approver, comment=comment, decided_at=now, expires_at=expires
            )
            self._approvals.put(approval)
            return issue_ticket(self._signer, approval)

    def deny(
        self, approval_id: str, *, approver: str, approver_roles: Iterable[str] = (), comment: str | None = None
    ) -> Approval:
        """Refuse a pending approval. The call stays denied; the agent may not retry it with a ticket."""
        with self._sealing():
            approval, session = self._decidable(approval_id, approver, approver_roles, comment)
            now = self._clock.now()
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
            approval = approval.decided("denied", approver=approver, comment=comment, decided_at=now)
            self._approvals.put(approval)
            return approval

    def _redeemable(self, token: str, session: Session, action_id: str, args_hash: str, now: datetime) -> Approval:
        """The approval a ticket presents, if it and every approval it carries is genuine,
        unused, unexpired and for exactly this call."""
        claims = read_ticket(self._signer, token)
        approval = self._approvals.get(claims["aid"])
        if approval is None:
            raise ApprovalError("approval ticket names an unknown approval")
        owner = next((x for x in self._loaded.values() if x.atlas.action(action_id) is not None), None)
        binding = {
            "tenant": session.tenant_id,
            "sid": session.session_id,
            "agent": session.agent_id,
            "action": action_id,
            "args": args_hash,
            "pol": list(approval.satisfies),
            "dig": owner.atlas.digest if owner is not None else None,
        }
        names = {"sid": "session", "args": "arguments", "pol": "approval policy", "dig": "version of the atlas"}
        for claim, value in binding.items():
            if claims[claim] != value:
                raise ApprovalError(f"approval ticket was issued for a different {names.get(claim, claim)}")
        if now.timestamp() >= claims["exp"]:
            raise ApprovalError(f"approval ticket expired at {format_timestamp(approval.expires_at or now)}")
        for aid in (approval.approval_id, *approval.carries):
            link = self._approvals.get(aid)
            if link is None or link.status == "used":
                raise ApprovalError(f"approval {aid} was already used")
            if link.status != "approved" or link.expires_at is None:
                raise ApprovalError(f"approval {aid} is {link.status}")
            if now >= link.expires_at:
                raise ApprovalError(f"approval {aid} expired at {format_timestamp(link.expires_at)}")
        return approval

    # -- internals ------------------------------------------------------------

    def _span(self, session: Session, at: datetime, *, root: bool = False) -> SpanRecorder:
        """A recorder for one operation's events (call with the lock held)."""
        return SpanRecorder(
            events=self._events,
            ids=self._ids,
            sinks=self._sinks,
            journal=self._unsealed if self.ledger is not None else None,
            session=session,
            span_id=session.root_span_id if root else self._ids.new_id(),
            parent=None if root else session.root_span_id,
            stamp=format_timestamp(at),
        )

    @contextmanager
    def _sealing(self) -> Iterator[None]:
        """Hold the runtime's lock for one operation, then seal its events into the ledger.

        The operation's events, and the attestations of its decisions, are
        appended to the ledger in one durable batch before the caller gets its
        answer. If the ledger fails, :class:`~cra.errors.LedgerError` is raised
        and the batch stays queued for the next operation to seal.
        """
        with self._lock:
            try:
                yield
            except BaseException:
                self._seal(quiet=True)
                raise
            self._seal(quiet=False)

    def _seal(self, *, quiet: bool) -> None:
        if self._sealer is None or not self._unsealed:
            return
        try:
            self._sealer.append(self._unsealed, self._claims)
        except (CRAError, OSError) as exc:
            if quiet:
                _log.exception("the ledger could not seal %d events; they stay queued", len(self._unsealed))
                return
            raise LedgerError(f"the ledger could not seal this operation's events: {exc}") from exc
        self._unsealed.clear()
        self._claims.clear()

    def _attest(
        self, event: TraceEvent, decision: str, action_id: str | None, req: CarpRequest, atlases: Iterable[LoadedAtlas]
    ) -> None:
        """Ask the ledger to attest a decision when the operation's events are sealed."""
        if self.ledger is None:
            return
        refs = tuple(AtlasRef(x.atlas.atlas_id, x.atlas.version, x.atlas.digest) for x in atlases)
        digest = "sha256:" + sha256_hex(canonical_json(req.to_dict()))
        self._claims.append(AttestationClaim(event, decision, action_id, digest, refs))

    def _record_error(self, session: Session, now: datetime, req: CarpRequest, exc: Exception) -> None:
        code = getattr(exc, "code", "error")
        self._span(session, now).emit(
            "error.occurred", {"code": code, "message": str(exc), "request_id": req.request_id}
        )

    def _active(self, session_id: str) -> Session:
        session = self.get_session(session_id)
        if session.status != "active":
            raise SessionError(f"session {session_id} has ended")
        return session

    def _admit(self, req: CarpRequest) -> tuple[Session, datetime]:
        """The session a request acts in, and now. Checks the agent, the request id and the clock."""
        session = self._active(req.session_id)
        now = self._clock.now()
        try:
            if session.agent_id != req.agent_id:
                raise SessionError(f"session {req.session_id} belongs to another agent")
            sent = parse_timestamp(req.timestamp, "/timestamp")
            skew = abs((now - sent).total_seconds())
            if skew > self._skew:
                raise ResolutionError(
                    f"request timestamp is {int(skew)}s away from the runtime's clock (limit {self._skew}s)"
                )
            if not self._sessions.claim_request_id(session.session_id, req.request_id):
                raise ResolutionError(f"request id {req.request_id} was already used in this session")
        except (SessionError, ResolutionError) as exc:
            self._record_error(session, now, req, exc)
            raise
        return session, now

    def _select_atlases(self, session: Session, req: CarpRequest) -> list[LoadedAtlas]:
        """The atlases a resolve consults: the request's, within the session's if it has any."""
        if req.atlas_ids is not None and session.atlas_ids is not None:
            outside = [a for a in req.atlas_ids if a not in session.atlas_ids]
            if outside:
                raise ResolutionError(f"the session is confined to {list(session.atlas_ids)}; not {outside}")
        wanted = req.atlas_ids if req.atlas_ids is not None else session.atlas_ids
        if wanted is None:
            if not self._loaded:
                raise ResolutionError("no atlas is loaded")
            return list(self._loaded.values())
        out = []
        for aid in wanted:
            loaded = self._loaded.get(aid)
            if loaded is None:
                raise NotFoundError("atlas", aid)
            out.append(loaded)
        return out


class _Call:
    """What execute knows about one call while deciding it."""

    __slots__ = (
        "args_hash",
        "arguments_json",
        "execution",
        "execution_id",
        "now",
        "record",
        "request",
        "requested",
        "requested_by",
        "response",
        "session",
        "span",
    )

    def __init__(
        self,
        req: CarpRequest,
        session: Session,
        record: ResolutionRecord,
        now: datetime,
        span: SpanRecorder,
        execution_id: str,
        clock: Clock,
        requested_by: str | None = None,
    ) -> None:
        assert req.execution is not None
        self.request = req
        #: Who made the call (the host's identity of the caller), when the host says.
        self.requested_by = requested_by
        self.execution = req.execution
        self.session = session
        self.record = record
        self.now = now
        self.span = span
        self.execution_id = execution_id
        self.arguments_json = canonical_json(req.execution.parameters)
        self.args_hash = sha256_hex(self.arguments_json)
        self.response = ResponseBuilder(
            request_id=req.request_id,
            resolution_id=req.execution.resolution_id,
            execution_id=execution_id,
            trace_id=session.trace_id,
            clock=clock,
        )
        #: The ``action.requested`` payload, with its own copy of the arguments.
        self.requested: dict[str, Any] = {
            "action_id": req.execution.action_id,
            "resolution_id": req.execution.resolution_id,
            "parameters_hash": self.args_hash,
            "parameters": json.loads(self.arguments_json),
        }


class PendingCall:
    """An authorised execute call whose executor is yet to run (see :meth:`Resolver.begin_execute`)."""

    __slots__ = ("call", "clock", "executor", "loaded")

    def __init__(self, call: _Call, executor: Executor, loaded: LoadedAtlas, clock: Clock) -> None:
        self.call = call
        self.executor = executor
        self.loaded = loaded
        self.clock = clock

    @property
    def action_id(self) -> str:
        return self.call.execution.action_id

    @property
    def execution_id(self) -> str:
        return self.call.execution_id

    def run(self) -> Outcome:
        """Run the executor on the call's own copy of the arguments (it may block; no lock is held)."""
        return invoke(self.executor, self.call.arguments_json, self.loaded, self.action_id, self.clock)


def _names(values: Iterable[str], path: str) -> list[str]:
    """A list of non-empty strings; one bare string is refused, not split into letters."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ProtocolError(path, "must be a list of strings, not a single value")
    items = list(values)
    if not all(isinstance(v, str) and v for v in items):
        raise ProtocolError(path, "must hold non-empty strings")
    return items


def _parse(request: Mapping[str, Any] | CarpRequest, operation: str) -> CarpRequest:
    """Validate a CARP request and check its operation. A typed request that
    :func:`~cra.protocol.carp.parse_carp_request` made is taken as it is (the edge parsed it
    once); one built by hand is validated like JSON."""
    if isinstance(request, CarpRequest):
        req = request if is_parsed(request) else parse_carp_request(request.to_dict())
    else:
        req = parse_carp_request(request)
    if req.operation != operation or (operation == "execute" and req.execution is None):
        raise ProtocolError("/operation", f"{operation}() takes a {operation!r} request, not {req.operation!r}")
    return req

"""Runtime records to and from the JSON text the service's tables keep."""

from __future__ import annotations

import json
from typing import Any, Literal

from cra.protocol.atlas import AtlasRef
from cra.protocol.canonical import canonical_json
from cra.protocol.carp import parse_timestamp
from cra.runtime.approvals import Approval
from cra.runtime.records import AttestationClaim, IdempotentCall, ResolutionRecord, Session
from cra.trace.event import TraceEvent, format_timestamp
from cra.trace.jsonl import event_from_dict

__all__ = [
    "approval_from",
    "approval_json",
    "claim_from",
    "claim_json",
    "event_from",
    "idempotent_from",
    "idempotent_json",
    "resolution_from",
    "resolution_json",
    "session_data",
    "session_from",
    "stamp",
    "when",
]


def stamp(moment: Any) -> str:
    return format_timestamp(moment)


def when(text: str) -> Any:
    return parse_timestamp(text, "/")


def session_data(s: Session) -> str:
    return canonical_json(
        {
            "goal": s.goal,
            "roles": sorted(s.roles),
            "trace_id": s.trace_id,
            "root_span_id": s.root_span_id,
            "atlas_ids": None if s.atlas_ids is None else list(s.atlas_ids),
            "metadata": dict(s.metadata),
        }
    )


def session_from(
    *, session_id: str, tenant_id: str, agent_id: str, status: str, created_at: str, ended_at: str | None, data: str
) -> Session:
    d = json.loads(data)
    return Session(
        session_id=session_id,
        tenant_id=tenant_id,
        agent_id=agent_id,
        goal=d["goal"],
        roles=frozenset(d["roles"]),
        trace_id=d["trace_id"],
        root_span_id=d["root_span_id"],
        created_at=when(created_at),
        atlas_ids=None if d["atlas_ids"] is None else tuple(d["atlas_ids"]),
        metadata=d["metadata"],
        status=_session_status(session_id, status),
        ended_at=None if ended_at is None else when(ended_at),
    )


def _session_status(session_id: str, status: str) -> Literal["active", "ended"]:
    if status == "active":
        return "active"
    if status == "ended":
        return "ended"
    raise ValueError(f"session {session_id} has an unknown status {status!r}")


def event_from(line: str) -> TraceEvent:
    """An event from its stored line (the exact text that was hashed)."""
    return event_from_dict(json.loads(line))


def resolution_json(r: ResolutionRecord) -> str:
    return canonical_json(
        {
            "request_id": r.request_id,
            "expires_at": stamp(r.expires_at),
            "actions": dict(r.actions),
            "risk_tier": r.risk_tier,
            "context": dict(r.context),
            "document": dict(r.document),
        }
    )


def resolution_from(resolution_id: str, session_id: str, data: str) -> ResolutionRecord:
    d = json.loads(data)
    return ResolutionRecord(
        resolution_id=resolution_id,
        session_id=session_id,
        request_id=d["request_id"],
        expires_at=when(d["expires_at"]),
        actions=d["actions"],
        risk_tier=d["risk_tier"],
        context=d["context"],
        document=d["document"],
    )


def approval_json(a: Approval) -> str:
    return canonical_json(
        {
            "arguments_hash": a.arguments_hash,
            "parameters": dict(a.parameters),
            "policy_id": a.policy_id,
            "atlas_digest": a.atlas_digest,
            "satisfies": list(a.satisfies),
            "carries": list(a.carries),
            "reason": a.reason,
            "approver_roles": list(a.approver_roles),
            "ticket_ttl_seconds": a.ticket_ttl_seconds,
            "approver": a.approver,
            "comment": a.comment,
            "requested_by": a.requested_by,
            "decided_at": None if a.decided_at is None else stamp(a.decided_at),
            "expires_at": None if a.expires_at is None else stamp(a.expires_at),
        }
    )


def approval_from(
    *,
    approval_id: str,
    tenant_id: str,
    session_id: str,
    agent_id: str,
    action_id: str,
    status: str,
    requested_at: str,
    data: str,
) -> Approval:
    d = json.loads(data)
    if status not in ("pending", "approved", "denied", "used"):
        raise ValueError(f"approval {approval_id} has an unknown status {status!r}")
    return Approval(
        approval_id=approval_id,
        tenant_id=tenant_id,
        session_id=session_id,
        agent_id=agent_id,
        action_id=action_id,
        arguments_hash=d["arguments_hash"],
        parameters=d["parameters"],
        policy_id=d["policy_id"],
        atlas_digest=d["atlas_digest"],
        satisfies=tuple(d["satisfies"]),
        carries=tuple(d["carries"]),
        reason=d["reason"],
        approver_roles=tuple(d["approver_roles"]),
        ticket_ttl_seconds=d["ticket_ttl_seconds"],
        requested_at=when(requested_at),
        status=status,  # type: ignore[arg-type]  # checked against the four statuses above
        approver=d["approver"],
        comment=d["comment"],
        decided_at=None if d["decided_at"] is None else when(d["decided_at"]),
        expires_at=None if d["expires_at"] is None else when(d["expires_at"]),
        requested_by=d.get("requested_by"),  # absent from approvals stored before it was recorded
    )


def idempotent_json(c: IdempotentCall) -> str:
    return canonical_json(
        {
            "action_id": c.action_id,
            "arguments_hash": c.arguments_hash,
            "execution_id": c.execution_id,
            "response": None if c.response is None else dict(c.response),
        }
    )


def idempotent_from(data: str) -> IdempotentCall:
    d = json.loads(data)
    return IdempotentCall(d["action_id"], d["arguments_hash"], d["execution_id"], d["response"])


def claim_json(c: AttestationClaim) -> str:
    return canonical_json(
        {
            "decision": c.decision,
            "action_id": c.action_id,
            "input_hash": c.input_hash,
            "atlases": [[a.atlas_id, a.version, a.digest] for a in c.atlases],
        }
    )


def claim_from(event: TraceEvent, data: str) -> AttestationClaim:
    d = json.loads(data)
    refs = tuple(AtlasRef(*ref) for ref in d["atlases"])
    return AttestationClaim(event, d["decision"], d["action_id"], d["input_hash"], refs)

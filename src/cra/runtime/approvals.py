"""Human approvals: pending requests, and the signed single-use tickets they yield.

A ticket is bound to the tenant, session, agent, action, the SHA-256 of the
call's canonical arguments, the approval policies it satisfies and the digest
of the atlas that asked for it, and it expires. A call that needs several
approvals gathers them one by one: each new approval is asked for while the
call carries the previous ticket, and its own ticket satisfies them all. It reads
``base64url(canonical claims) "." signature``; the signature comes from the
runtime's :class:`~cra.runtime.ports.Signer`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from cra.errors import ApprovalError
from cra.protocol.canonical import canonical_json
from cra.runtime.ports import Signer

__all__ = ["Approval", "ApprovalTicket", "issue_ticket", "read_ticket"]

ApprovalStatus = Literal["pending", "approved", "denied", "used"]


@dataclass(frozen=True, slots=True)
class Approval:
    """One approval request and what became of it."""

    approval_id: str
    tenant_id: str
    session_id: str
    agent_id: str
    action_id: str
    arguments_hash: str
    parameters: Mapping[str, Any]
    policy_id: str
    atlas_digest: str
    #: Every approval policy a ticket for this approval satisfies: those of the
    #: approvals the call already carried when it was asked for, then its own.
    satisfies: tuple[str, ...]
    #: The approvals the call carried when this one was asked for; redeemed with it.
    carries: tuple[str, ...]
    reason: str
    approver_roles: tuple[str, ...]
    ticket_ttl_seconds: int
    requested_at: datetime
    status: ApprovalStatus = "pending"
    approver: str | None = None
    comment: str | None = None
    decided_at: datetime | None = None
    expires_at: datetime | None = None
    #: Who made the call that asked for this approval, when the host said (it may not decide it).
    requested_by: str | None = None

    def decided(self, status: ApprovalStatus, **changes: Any) -> Approval:
        return replace(self, status=status, **changes)


@dataclass(frozen=True, slots=True)
class ApprovalTicket:
    token: str
    approval_id: str
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_ticket(signer: Signer, approval: Approval) -> ApprovalTicket:
    """Sign a ticket for an approved approval (``expires_at`` must be set)."""
    if approval.status != "approved" or approval.expires_at is None:
        raise ApprovalError(f"approval {approval.approval_id} is {approval.status}, not approved")
    claims = {
        "v": 1,
        "kid": signer.key_id,
        "aid": approval.approval_id,
        "tenant": approval.tenant_id,
        "sid": approval.session_id,
        "agent": approval.agent_id,
        "action": approval.action_id,
        "args": approval.arguments_hash,
        "pol": list(approval.satisfies),
        "dig": approval.atlas_digest,
        "exp": int(approval.expires_at.timestamp()),
    }
    body = canonical_json(claims).encode("utf-8")
    return ApprovalTicket(f"{_b64(body)}.{signer.sign(body)}", approval.approval_id, approval.expires_at)


def read_ticket(signer: Signer, token: str) -> dict[str, Any]:
    """The verified claims of ``token``; :class:`ApprovalError` if it is malformed or forged."""
    if not isinstance(token, str) or not token.isascii() or token.count(".") != 1 or len(token) > 4096:
        raise ApprovalError("approval ticket is malformed")
    encoded, signature = token.split(".")
    try:
        body = _unb64(encoded)
    except (binascii.Error, ValueError):
        raise ApprovalError("approval ticket is malformed") from None
    if not signer.verify(body, signature):
        raise ApprovalError("approval ticket signature does not verify")
    try:
        claims = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApprovalError("approval ticket is malformed") from None
    expected = {"v", "kid", "aid", "tenant", "sid", "agent", "action", "args", "pol", "dig", "exp"}
    if not isinstance(claims, dict) or set(claims) != expected or claims["v"] != 1:
        raise ApprovalError("approval ticket is malformed")
    return claims

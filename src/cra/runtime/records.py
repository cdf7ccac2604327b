"""What the runtime remembers between calls: sessions, resolutions, stored atlases."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

from cra.protocol.atlas import AtlasRef
from cra.trace.event import TraceEvent

__all__ = [
    "AtlasRecord",
    "AttestationClaim",
    "DecisionQuery",
    "DecisionRecord",
    "IdempotentCall",
    "ResolutionRecord",
    "RunningCall",
    "Session",
    "SnapshotKeys",
]


class AttestationClaim(NamedTuple):
    """What the runtime asks the ledger to attest about one decision event."""

    event: TraceEvent
    decision: str
    action_id: str | None
    input_hash: str
    atlases: tuple[AtlasRef, ...]


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    tenant_id: str
    agent_id: str
    goal: str
    roles: frozenset[str]
    trace_id: str
    root_span_id: str
    created_at: datetime
    atlas_ids: tuple[str, ...] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    status: Literal["active", "ended"] = "active"
    ended_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ResolutionRecord:
    """A resolution an execute call may cite, until it expires."""

    resolution_id: str
    session_id: str
    request_id: str
    expires_at: datetime
    actions: Mapping[str, str]  # allowed action id -> atlas id
    risk_tier: str | None
    context: Mapping[str, Any]
    document: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RunningCall:
    """A call whose executor was authorised to run and whose outcome is not recorded yet."""

    session_id: str
    execution_id: str
    action_id: str
    started_at: datetime
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class IdempotentCall:
    """The first call made with an idempotency key, and its response once known."""

    action_id: str
    arguments_hash: str
    execution_id: str
    response: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class SnapshotKeys:
    """What one operation may read."""

    tenant_id: str
    session_id: str | None = None
    whole_chain: bool = False
    resolution_id: str | None = None
    request_id: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class AtlasRecord:
    tenant_id: str
    atlas_id: str
    version: str
    digest: str
    source: str
    loaded_at: str


@dataclass(frozen=True, slots=True)
class DecisionQuery:
    """Which decision records to list: all filters are optional and combine with AND."""

    tenant_id: str
    agent_id: str | None = None
    action_id: str | None = None
    decision: str | None = None
    session_id: str | None = None
    #: RFC 3339 UTC bounds on the event timestamp: ``since`` inclusive, ``until`` exclusive.
    since: str | None = None
    until: str | None = None
    attested_only: bool = False
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One recorded decision: a policy evaluation, a resolution, or a limit violation."""

    event_id: str
    session_id: str
    agent_id: str | None
    event_type: str
    timestamp: str
    action_id: str | None
    decision: str
    policy_id: str | None
    #: The attestation id (the event id) when the ledger attests this decision.
    attestation_id: str | None
    sealed: bool

"""What the runtime remembers between calls: sessions and resolutions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

__all__ = ["ResolutionRecord", "Session"]


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

    def to_dict(self) -> dict[str, Any]:
        """The protocol's ``Session`` object (plus tenant and roles)."""
        out: dict[str, Any] = {
            "session_id": self.session_id,
            "agent_id": self.agent_id,
            "goal": self.goal,
            "status": self.status,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "tenant_id": self.tenant_id,
            "roles": sorted(self.roles),
        }
        if self.atlas_ids:
            out["atlas_id"] = self.atlas_ids[0]
        if self.ended_at is not None:
            out["ended_at"] = self.ended_at.isoformat().replace("+00:00", "Z")
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        return out


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

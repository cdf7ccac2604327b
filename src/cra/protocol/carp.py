"""CARP/1.0 requests as typed values, and the pieces of a resolution."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from cra.errors import ProtocolError
from cra.protocol.canonical import canonical_json
from cra.protocol.validation import validate

__all__ = ["CARP_VERSION", "CarpRequest", "Execution", "is_parsed", "parse_carp_request", "parse_timestamp"]

CARP_VERSION: Final = "1.0"


@dataclass(frozen=True, slots=True)
class Execution:
    resolution_id: str
    action_id: str
    parameters: Mapping[str, Any]
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True, weakref_slot=True)
class CarpRequest:
    """A validated CARP/1.0 request.

    :func:`parse_carp_request` makes it from JSON, and :func:`is_parsed` tells such an instance
    from one built by hand, so a layer below the edge can take the value as it is, without
    validating the request a second time.

    ``risk_tier`` is ``None`` when the request does not state one (the protocol
    default is ``low``; the engine also takes each action's declared tier).
    """

    request_id: str
    timestamp: str
    operation: str
    agent_id: str
    session_id: str
    goal: str
    risk_tier: str | None = None
    context_hints: tuple[str, ...] = ()
    required_capabilities: tuple[str, ...] = ()
    atlas_ids: tuple[str, ...] | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    parent_session_id: str | None = None
    execution: Execution | None = None

    def to_dict(self) -> dict[str, Any]:
        """The request as a CARP/1.0 JSON object."""
        requester: dict[str, Any] = {"agent_id": self.agent_id, "session_id": self.session_id}
        if self.parent_session_id is not None:
            requester["parent_session_id"] = self.parent_session_id
        task: dict[str, Any] = {"goal": self.goal}
        if self.risk_tier is not None:
            task["risk_tier"] = self.risk_tier
        if self.context_hints:
            task["context_hints"] = list(self.context_hints)
        if self.required_capabilities:
            task["required_capabilities"] = list(self.required_capabilities)
        out: dict[str, Any] = {
            "carp_version": CARP_VERSION,
            "request_id": self.request_id,
            "timestamp": self.timestamp,
            "operation": self.operation,
            "requester": requester,
            "task": task,
        }
        if self.execution is not None:
            execution: dict[str, Any] = {
                "resolution_id": self.execution.resolution_id,
                "action_id": self.execution.action_id,
                "parameters": dict(self.execution.parameters),
            }
            if self.execution.idempotency_key is not None:
                execution["idempotency_key"] = self.execution.idempotency_key
            out["execution"] = execution
        if self.atlas_ids is not None:
            out["atlas_ids"] = list(self.atlas_ids)
        if self.context:
            out["context"] = dict(self.context)
        return out


def parse_timestamp(value: str, path: str) -> datetime:
    """Parse an RFC 3339 timestamp with a time zone."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ProtocolError(path, f"{value!r} is not an RFC 3339 date-time") from None
    if moment.tzinfo is None:
        raise ProtocolError(path, "timestamp must carry a time zone")
    return moment


def parse_carp_request(data: object) -> CarpRequest:
    """Validate a CARP request object against the CARP/1.0 schema and type it.

    ``task`` is required by the schema for every operation; an execute request
    must also carry ``execution``.
    """
    validate("carp-request", data)
    assert isinstance(data, dict)
    try:
        canonical_json(data)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ProtocolError("", f"the request holds a value that is not JSON: {exc}") from None
    requester = data["requester"]
    task = data["task"]
    execution = None
    if "execution" in data:
        e = data["execution"]
        execution = Execution(e["resolution_id"], e["action_id"], e["parameters"], e.get("idempotency_key"))
    parse_timestamp(data["timestamp"], "/timestamp")
    request = CarpRequest(
        request_id=data["request_id"],
        timestamp=data["timestamp"],
        operation=data["operation"],
        agent_id=requester["agent_id"],
        session_id=requester["session_id"],
        parent_session_id=requester.get("parent_session_id"),
        goal=task["goal"],
        risk_tier=task.get("risk_tier"),
        context_hints=tuple(task.get("context_hints", ())),
        required_capabilities=tuple(task.get("required_capabilities", ())),
        atlas_ids=tuple(data["atlas_ids"]) if "atlas_ids" in data else None,
        context=data.get("context", {}),
        execution=execution,
    )
    key = id(request)
    _PARSED[key] = weakref.ref(request, lambda _, key=key: _PARSED.pop(key, None))  # type: ignore[misc]
    return request


#: The requests :func:`parse_carp_request` made, by identity, for as long as they live.
_PARSED: dict[int, weakref.ref[CarpRequest]] = {}


def is_parsed(request: CarpRequest) -> bool:
    """Whether ``request`` is an instance :func:`parse_carp_request` made (so it was validated)."""
    found = _PARSED.get(id(request))
    return found is not None and found() is request

"""The JSON bodies the routes take: one JSON Schema each, which both documents and checks them.

:func:`documented` puts a schema in the OpenAPI document as the route's request body;
:data:`check` validates a parsed body against it and raises a
:class:`~cra.errors.ProtocolError` naming the offending field's JSON Pointer. The CARP
bodies use the protocol's own schemas; the deeper checks (ids, clocks, policies) stay
with the runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from cra.errors import ProtocolError
from cra.protocol.validation import compile_validator, load_schema

__all__ = [
    "APPROVAL_DECISION",
    "ATLAS_UPLOAD",
    "CREATE_SESSION",
    "EVALUATE",
    "EVIDENCE",
    "JsonBody",
    "carp_request",
    "documented",
]


def documented(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` that declares ``schema`` as the route's JSON request body."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class JsonBody:
    """One route's body: its schema (for the OpenAPI document) and the check derived from it."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self._validate: Callable[[object], None] | None = None
        self.openapi = documented(schema)

    def check(self, body: Any) -> dict[str, Any]:
        """``body`` if it matches the schema; :class:`ProtocolError` at the offending field."""
        if self._validate is None:
            self._validate = compile_validator(self.schema, error=ProtocolError)
        self._validate(body)
        checked: dict[str, Any] = body
        return checked


def carp_request() -> dict[str, Any]:
    """The CARP/1.0 request schema, for documenting resolve and execute."""
    return load_schema("carp-request")


_NAME: Final = {"type": "string", "minLength": 1, "maxLength": 255}

CREATE_SESSION: Final = JsonBody(
    {
        "type": "object",
        "required": ["agent_id", "goal"],
        "additionalProperties": False,
        "properties": {
            "agent_id": _NAME,
            "goal": {"type": "string", "minLength": 1, "maxLength": 10_000},
            "atlas_id": _NAME,
            "atlas_ids": {"type": "array", "items": _NAME, "maxItems": 100},
            "metadata": {"type": "object"},
        },
    }
)

EVALUATE: Final = JsonBody(
    {
        "type": "object",
        "required": ["action"],
        "additionalProperties": False,
        "properties": {
            "action": _NAME,
            "agent": {**_NAME, "description": "defaults to the key's agent"},
            "risk_tier": {"enum": ["low", "medium", "high", "critical"]},
            "params": {"type": "object"},
            "context": {"type": "object"},
            "atlas_id": _NAME,
            "explain": {"type": "boolean"},
        },
    }
)

APPROVAL_DECISION: Final = JsonBody(
    {
        "type": "object",
        "additionalProperties": False,
        "properties": {"comment": {"type": "string", "maxLength": 2000}},
    }
)

EVIDENCE: Final = JsonBody(
    {
        "type": "object",
        "required": ["session_id", "sha256", "media_type", "description"],
        "additionalProperties": False,
        "properties": {
            "session_id": _NAME,
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "media_type": {"type": "string", "minLength": 3, "maxLength": 255},
            "description": {"type": "string", "minLength": 1, "maxLength": 2000},
            "size_bytes": {"type": "integer", "minimum": 0},
        },
    }
)

#: An atlas manifest, or ``{"manifest": ..., "files": {path: text}}`` with its context files.
ATLAS_UPLOAD: Final = JsonBody(
    {
        "type": "object",
        "required": ["manifest"],
        "additionalProperties": False,
        "properties": {
            "manifest": {"type": "object"},
            "files": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
)

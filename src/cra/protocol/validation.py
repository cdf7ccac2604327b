"""JSON Schema validation of protocol documents, with JSON-Pointer errors.

The schemas ship inside the package (``cra/protocol/schemas``). The CARP, TRACE
and Atlas 1.0 schemas are byte-identical copies of the normative files; the
``.cra`` atlas schema is CRA's superset with its extensions. Validation is the
boundary's job (CLI, files, HTTP): the policy engine's hot path never calls it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any, Literal

import fastjsonschema

from cra.errors import AtlasError, ProtocolError, ValidationError, json_pointer

__all__ = ["SCHEMA_FILES", "SchemaKind", "compile_validator", "load_schema", "validate"]

SchemaKind = Literal[
    "carp-request",
    "carp-resolution",
    "carp-execute-response",
    "trace-event",
    "atlas-manifest",
    "atlas-manifest.cra",
]

SCHEMA_FILES: dict[str, str] = {
    "carp-request": "carp-request.schema.json",
    "carp-resolution": "carp-resolution.schema.json",
    "carp-execute-response": "carp-execute-response.schema.json",
    "trace-event": "trace-event.schema.json",
    "atlas-manifest": "atlas-manifest.schema.json",
    "atlas-manifest.cra": "atlas-manifest.cra.schema.json",
}


@cache
def load_schema(kind: SchemaKind) -> dict[str, Any]:
    """Return the parsed JSON Schema of ``kind`` (shared, do not mutate)."""
    text = resources.files("cra.protocol").joinpath("schemas").joinpath(SCHEMA_FILES[kind]).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator(kind: SchemaKind) -> Callable[[Any], Any]:
    # use_default=False: validation must never write defaults into the caller's document.
    # fastjsonschema rewrites relative $refs in the schema it compiles: give it a copy.
    return fastjsonschema.compile(copy.deepcopy(load_schema(kind)), use_default=False)


def _segments(document: object, parts: list[str]) -> list[str]:
    """The real path segments: fastjsonschema joins names with dots, so a key that holds a
    dot (``context/tone.md``) arrives split; walk the document to join such pieces again."""
    out: list[str] = []
    node, i = document, 0
    while i < len(parts):
        if isinstance(node, dict):
            for j in range(i + 1, len(parts) + 1):
                key = ".".join(parts[i:j])
                if key in node:
                    out.append(key)
                    node, i = node[key], j
                    break
            else:
                return out + parts[i:]
        elif isinstance(node, list) and parts[i].isdigit() and int(parts[i]) < len(node):
            out.append(parts[i])
            node, i = node[int(parts[i])], i + 1
        else:
            return out + parts[i:]
    return out


def _pointer(exc: fastjsonschema.JsonSchemaValueException, document: object) -> tuple[str, str]:
    """Turn a fastjsonschema failure into (JSON Pointer, reason)."""
    parts = _segments(document, list(exc.path or [])[1:])  # drop the leading 'data'
    reason = exc.message
    prefix = exc.name or "data"
    if reason.startswith(prefix):
        reason = reason[len(prefix) :].strip()
    value = exc.value
    if exc.rule == "required" and isinstance(value, dict) and isinstance(exc.rule_definition, list):
        missing = [k for k in exc.rule_definition if k not in value]
        if missing:
            return json_pointer([*parts, missing[0]]), "is required"
    if exc.rule == "additionalProperties" and isinstance(value, dict) and isinstance(exc.definition, dict):
        known = set(exc.definition.get("properties", {}))
        extra = sorted(k for k in value if k not in known)
        if extra:
            return json_pointer([*parts, extra[0]]), "is not an allowed property here"
    return json_pointer(parts), reason


def validate(kind: SchemaKind, document: object, *, source: str | None = None) -> None:
    """Validate ``document`` against the schema ``kind``.

    Raises :class:`~cra.errors.AtlasError` for atlas kinds and
    :class:`~cra.errors.ProtocolError` for the others, naming the JSON Pointer of
    the first offending value and the reason.
    """
    error: type[ValidationError] = AtlasError if kind.startswith("atlas") else ProtocolError
    try:
        _validator(kind)(document)
    except fastjsonschema.JsonSchemaValueException as exc:
        path, reason = _pointer(exc, document)
        raise error(path, reason, source=source) from None
    except RecursionError:
        raise error("", "document is nested too deeply", source=source) from None


def _refuse_fetch(uri: str) -> Any:
    raise fastjsonschema.JsonSchemaDefinitionException(f"refusing to fetch {uri!r}")


_NO_FETCH: dict[str, Callable[[str], Any]] = dict.fromkeys(("http", "https", "file", "ftp", "data"), _refuse_fetch)


def _remote_reference(node: object, path: list[str | int]) -> str | None:
    """The JSON Pointer of the first ``$ref`` that leaves the schema, or of a nested ``$id``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and (not isinstance(value, str) or not value.startswith("#")):
                return json_pointer([*path, key])
            if key in ("$id", "id") and path and isinstance(value, str):
                return json_pointer([*path, key])
            found = _remote_reference(value, [*path, key])
            if found is not None:
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found = _remote_reference(value, [*path, i])
            if found is not None:
                return found
    return None


def compile_validator(
    schema: dict[str, Any], *, error: type[ValidationError] = ProtocolError, source: str | None = None
) -> Callable[[object], None]:
    """Compile a JSON Schema (for example an action's ``parameters_schema``).

    The returned function raises ``error`` with a JSON Pointer and a reason.
    A schema that cannot be compiled raises ``error`` at once.
    """
    try:
        remote = _remote_reference(schema, [])
        if remote is not None:
            raise error(remote, "only references inside the schema itself ('#...') are allowed", source=source)
        check = fastjsonschema.compile(copy.deepcopy(schema), handlers=_NO_FETCH, use_default=False)
    except (fastjsonschema.JsonSchemaDefinitionException, TypeError, ValueError, RecursionError) as exc:
        raise error("", f"not a usable JSON Schema: {exc}", source=source) from None

    def run(document: object) -> None:
        try:
            check(document)
        except fastjsonschema.JsonSchemaValueException as exc:
            path, reason = _pointer(exc, document)
            raise error(path, reason, source=source) from None
        except RecursionError:
            raise error("", "document is nested too deeply", source=source) from None
        except (OverflowError, ValueError, TypeError) as exc:  # e.g. multipleOf on a number too large for a float
            raise error("", f"cannot be checked: {exc}", source=source) from None

    return run

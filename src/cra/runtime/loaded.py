"""An atlas prepared for the runtime: compiled policies, context, and JSON Schema checks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cra.context.select import ContextCatalog, compile_context
from cra.errors import AtlasError, ValidationError
from cra.policy.compiler import CompiledPolicy, compile_atlas
from cra.policy.modules import ModuleLoader
from cra.protocol.atlas import Atlas
from cra.protocol.validation import compile_validator

__all__ = ["LoadedAtlas", "parameter_checks", "prepare", "schema_violation"]

Check = Callable[[object], None]


@dataclass(frozen=True, slots=True)
class LoadedAtlas:
    atlas: Atlas
    compiled: CompiledPolicy
    catalog: ContextCatalog
    parameters: Mapping[str, Check]
    results: Mapping[str, Check]

    def check_parameters(self, action_id: str, params: object) -> tuple[str, str] | None:
        """``(path, reason)`` when the arguments break the action's ``parameters_schema``."""
        return schema_violation(self.parameters.get(action_id), params)

    def check_result(self, action_id: str, result: object) -> tuple[str, str] | None:
        """``(path, reason)`` when an executor's result breaks the action's ``returns_schema``."""
        return schema_violation(self.results.get(action_id), result)


def schema_violation(check: Check | None, value: object) -> tuple[str, str] | None:
    """``(path, reason)`` when ``value`` fails ``check``; ``None`` when it passes or there is no check."""
    if check is None:
        return None
    try:
        check(value)
    except ValidationError as exc:
        return exc.path, exc.reason
    return None


def _schemas(atlas: Atlas, field: str, schema_of: Callable[[Any], Mapping[str, Any] | None]) -> dict[str, Check]:
    out: dict[str, Check] = {}
    for action in atlas.actions:
        schema = schema_of(action)
        if schema is not None:
            try:
                out[action.action_id] = compile_validator(dict(schema), error=AtlasError)
            except AtlasError as exc:
                raise atlas.locate(AtlasError(f"/actions/{action.index}/{field}", exc.reason)) from None
    return out


def parameter_checks(atlas: Atlas) -> dict[str, Check]:
    """A validator per action that declares a ``parameters_schema``, by action id."""
    return _schemas(atlas, "parameters_schema", lambda a: a.parameters_schema)


def prepare(atlas: Atlas, modules: ModuleLoader | None = None) -> LoadedAtlas:
    """Compile everything the runtime needs from ``atlas``; any problem is an AtlasError.

    ``modules`` loads the WebAssembly modules of ``wasm`` policies."""
    return LoadedAtlas(
        atlas=atlas,
        compiled=compile_atlas(atlas, modules),
        catalog=compile_context(atlas),
        parameters=parameter_checks(atlas),
        results=_schemas(atlas, "returns_schema", lambda a: a.returns_schema),
    )

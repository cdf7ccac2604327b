"""An atlas's own test cases (``tests/*.json``, ``*.yaml``), run like ``opa test``.

A test file holds ``cases``. A case is one request and its expectation, or a
sequence of ``steps`` that share counters (for rate limits and budgets)::

    cases:
      - name: small refunds are allowed
        request: {agent: support-bot, roles: [agent], action: refund.create, params: {amount: 50}}
        expect: {decision: allow, policy_id: allow-small-refunds}
      - name: three refunds a minute
        steps:
          - request: {agent: support-bot, roles: [agent], action: refund.create, params: {amount: 5}}
            expect: {decision: allow}
          - at: 30
            request: {agent: support-bot, roles: [agent], action: refund.create, params: {amount: 5}}
            expect: {decision: deny, reason_code: rate_limit_exceeded}

``request`` takes ``agent``, ``roles``, ``action``, ``risk_tier``, ``params``,
``context``, ``session``, ``tenant``, ``approved`` (the approval policies whose
approval the call carries) and ``dry_run``. ``at`` is
seconds after the case's ``now`` (default ``2025-01-06T10:00:00Z``, a Monday).
``expect`` takes ``decision`` and optionally ``policy_id``, ``reason_code`` and
``retry_after``. Every case starts with empty counters.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import yaml

from cra.errors import AtlasError, ProtocolError, ValidationError
from cra.policy.modules import ModuleLoader
from cra.protocol.atlas import Atlas
from cra.protocol.canonical import parse_json
from cra.protocol.carp import parse_timestamp
from cra.protocol.validation import compile_validator
from cra.runtime.clock import ManualClock
from cra.runtime.engine import EVALUATION_REQUEST_SCHEMA, Engine
from cra.runtime.memory import MemoryCounters

__all__ = ["AtlasTestCase", "CaseResult", "load_tests", "parse_tests", "run_tests"]

DEFAULT_NOW: Final = datetime(2025, 1, 6, 10, 0, tzinfo=UTC)

_EXPECT = {
    "type": "object",
    "required": ["decision"],
    "additionalProperties": False,
    "properties": {
        "decision": {"enum": ["allow", "deny", "requires_approval"]},
        "policy_id": {"type": ["string", "null"]},
        "reason_code": {"type": "string"},
        "retry_after": {"type": "integer"},
    },
}
_STEP = {
    "type": "object",
    "required": ["request", "expect"],
    "additionalProperties": False,
    "properties": {"at": {"type": "number", "minimum": 0}, "request": EVALUATION_REQUEST_SCHEMA, "expect": _EXPECT},
}
_FILE_SCHEMA = {
    "type": "object",
    "required": ["cases"],
    "additionalProperties": False,
    "properties": {
        "description": {"type": "string"},
        "cases": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "now": {"type": "string", "format": "date-time"},
                    "request": EVALUATION_REQUEST_SCHEMA,
                    "expect": _EXPECT,
                    "steps": {"type": "array", "minItems": 1, "items": _STEP},
                },
                "oneOf": [{"required": ["request", "expect"]}, {"required": ["steps"]}],
            },
        },
    },
}
_check_file = compile_validator(_FILE_SCHEMA, error=AtlasError)


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML that keeps timestamps as strings, as JSON would, and refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass(frozen=True, slots=True)
class AtlasTestCase:
    file: str
    name: str
    now: datetime
    steps: tuple[tuple[float, Mapping[str, Any], Mapping[str, Any]], ...]  # (at, request, expect)


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: AtlasTestCase
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


def parse_tests(file: str, document: Any) -> list[AtlasTestCase]:
    """Validate one test file's content and return its cases."""
    try:
        _check_file(document)
    except AtlasError as exc:
        raise AtlasError(exc.path, exc.reason, source=file) from None
    cases = []
    for i, raw in enumerate(document["cases"]):
        now = DEFAULT_NOW
        if "now" in raw:
            try:
                now = parse_timestamp(raw["now"], f"/cases/{i}/now")
            except ProtocolError as exc:
                raise AtlasError(exc.path, exc.reason, source=file) from None
        if "steps" in raw:
            steps = tuple((float(s.get("at", 0)), s["request"], s["expect"]) for s in raw["steps"])
        else:
            steps = ((0.0, raw["request"], raw["expect"]),)
        cases.append(AtlasTestCase(file, raw["name"], now, steps))
    return cases


def load_tests(package: str | os.PathLike[str]) -> list[AtlasTestCase]:
    """Every case in ``<package>/tests/*.json|yaml|yml``, files in name order."""
    folder = Path(package) / "tests"
    if not folder.is_dir():
        return []
    cases: list[AtlasTestCase] = []
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".json", ".yaml", ".yml") or not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix == ".json":
            document = parse_json(data, source=str(path), error=AtlasError)
        else:
            try:
                document = yaml.load(data.decode("utf-8"), Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass
            except UnicodeDecodeError as exc:
                raise AtlasError("", f"not UTF-8 text (byte {exc.start})", source=str(path)) from None
            except yaml.YAMLError as exc:
                raise AtlasError("", f"invalid YAML: {exc}", source=str(path)) from None
        cases.extend(parse_tests(str(path), document))
    return cases


def _run_case(atlas: Atlas, case: AtlasTestCase, modules: ModuleLoader | None) -> CaseResult:
    clock = ManualClock(case.now)
    engine = Engine(atlas, counters=MemoryCounters(), clock=clock, modules=modules)
    failures: list[str] = []
    for n, (at, request, expect) in enumerate(case.steps, start=1):
        clock.set(case.now + timedelta(seconds=at))
        where = f"step {n}: " if len(case.steps) > 1 else ""
        try:
            d = engine.evaluate_request(request)
        except ValidationError as exc:
            failures.append(f"{where}the request is invalid: {exc}")
            continue
        got = {
            "decision": d.effect.value,
            "policy_id": d.policy_id,
            "reason_code": d.reason_code,
            "retry_after": d.retry_after,
        }
        for key, want in expect.items():
            if got[key] != want:
                failures.append(f"{where}expected {key} {want!r}, got {got[key]!r} ({d.reason})")
    return CaseResult(case, tuple(failures))


def run_tests(atlas: Atlas, cases: Sequence[AtlasTestCase], modules: ModuleLoader | None = None) -> list[CaseResult]:
    """Run each case against a fresh engine for ``atlas`` (``modules`` runs its wasm policies)."""
    return [_run_case(atlas, case, modules) for case in cases]

"""Schema validation: JSON Pointer errors, no defaults written, and the shipped schemas against the normative ones."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastjsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cra.errors import AtlasError, ProtocolError
from cra.protocol.carp import parse_carp_request, parse_timestamp
from cra.protocol.validation import SCHEMA_FILES, compile_validator, load_schema, validate

REPO = Path(__file__).resolve().parents[3]
NORMATIVE_SCHEMAS = REPO / "tests" / "vectors" / "cra-1.0" / "schemas"
SHIPPED_SCHEMAS = REPO / "src" / "cra" / "protocol" / "schemas"
CRA_OWN = {"atlas-manifest.cra.schema.json", "carp-execute-response.schema.json"}
GOLDEN = NORMATIVE_SCHEMAS.parent / "conformance" / "golden" / "simple-resolve"

REQUEST: dict[str, Any] = {
    "carp_version": "1.0",
    "request_id": "00000000-0000-0000-0000-000000000001",
    "timestamp": "2024-12-28T12:00:00.000Z",
    "operation": "resolve",
    "requester": {"agent_id": "support-bot", "session_id": "00000000-0000-0000-0000-000000000100"},
    "task": {"goal": "Refund order 42"},
}
EXECUTION = {
    "resolution_id": "00000000-0000-0000-0000-000000000200",
    "action_id": "refund.create",
    "parameters": {"amount": 100},
}


def request(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(REQUEST)
    for key, value in changes.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    return doc


def protocol_error(doc: object) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_carp_request(doc)
    return info.value


# -- CARP requests ---------------------------------------------------------------------------------------------------


def test_a_valid_request_parses() -> None:
    r = parse_carp_request(request(context={"region": "sa"}, atlas_ids=["org.acme.support"]))
    assert (r.request_id, r.operation, r.agent_id, r.goal) == (
        "00000000-0000-0000-0000-000000000001",
        "resolve",
        "support-bot",
        "Refund order 42",
    )
    assert (r.risk_tier, r.atlas_ids, r.context, r.execution) == (None, ("org.acme.support",), {"region": "sa"}, None)


def test_the_golden_request_parses() -> None:
    r = parse_carp_request(json.loads((GOLDEN / "request.json").read_text("utf-8")))
    assert (r.agent_id, r.risk_tier, r.atlas_ids) == ("conformance-test-agent", "low", ("com.cra.conformance.simple",))


def test_an_execute_request_carries_its_execution() -> None:
    r = parse_carp_request(request(operation="execute", execution=EXECUTION))
    assert r.execution is not None
    assert (r.execution.action_id, r.execution.parameters, r.execution.idempotency_key) == (
        "refund.create",
        {"amount": 100},
        None,
    )


@pytest.mark.parametrize(
    ("doc", "path", "reason"),
    [
        (request(task=None), "/task", "is required"),
        (request(requester=None), "/requester", "is required"),
        (request(carp_version="2.0"), "/carp_version", ""),
        (request(carp_version=1.0), "/carp_version", ""),
        (request(operation="execute"), "/execution", "is required"),
        (request(operation="delete"), "/operation", ""),
        (request(extra=True), "/extra", "not an allowed property"),
        (request(task={"goal": "x", "priority": 1}), "/task/priority", "not an allowed property"),
        (request(task={"goal": ""}), "/task/goal", ""),
        (request(task={"goal": "x", "risk_tier": "extreme"}), "/task/risk_tier", ""),
        (request(task={"risk_tier": "low"}), "/task/goal", "is required"),
        (request(requester={"session_id": "00000000-0000-0000-0000-000000000100"}), "/requester/agent_id", "required"),
        (request(request_id="42"), "/request_id", ""),
        (request(timestamp="yesterday"), "/timestamp", ""),
        (request(atlas_ids=["Not An Id"]), "/atlas_ids/0", ""),
        (request(context=[]), "/context", ""),
        (request(operation="execute", execution={**EXECUTION, "action_id": "Refund"}), "/execution/action_id", ""),
        (
            request(operation="execute", execution={"resolution_id": EXECUTION["resolution_id"]}),
            "/execution/action_id",
            "",
        ),
    ],
    ids=[
        "missing-task",
        "missing-requester",
        "version",
        "version-number",
        "execute-without-execution",
        "operation",
        "extra-property",
        "nested-extra-property",
        "empty-goal",
        "risk-tier",
        "missing-goal",
        "missing-agent",
        "request-id",
        "timestamp",
        "atlas-id",
        "context-array",
        "action-id",
        "execution-fields",
    ],
)
def test_request_errors_name_the_json_pointer(doc: dict[str, Any], path: str, reason: str) -> None:
    error = protocol_error(doc)
    assert error.path == path
    assert reason in error.reason
    assert str(error) == f"{path}: {error.reason}"


def test_a_request_that_is_not_an_object() -> None:
    assert protocol_error([REQUEST]).path == ""


def test_a_timestamp_without_a_zone_is_refused() -> None:
    assert protocol_error(request(timestamp="2024-12-28T12:00:00")).path == "/timestamp"


def test_parse_timestamp() -> None:
    moment = parse_timestamp("2024-12-28T15:00:00+03:00", "/timestamp")
    assert moment.utcoffset() is not None
    assert moment.timestamp() == parse_timestamp("2024-12-28T12:00:00Z", "/timestamp").timestamp()
    for bad in ("yesterday", "2024-12-28T12:00:00"):
        with pytest.raises(ProtocolError) as info:
            parse_timestamp(bad, "/execution/at")
        assert info.value.path == "/execution/at"


def test_validation_never_writes_defaults_into_the_callers_document() -> None:
    doc = request()
    before = copy.deepcopy(doc)
    parse_carp_request(doc)
    validate("carp-request", doc)
    assert doc == before
    assert "risk_tier" not in doc["task"]


def test_atlas_validation_never_writes_defaults() -> None:
    manifest = json.loads((GOLDEN / "atlas.json").read_text("utf-8"))
    manifest["actions"].append({"action_id": "x.y", "name": "x", "description": "x"})
    manifest["policies"].append({"policy_id": "p", "type": "allow"})
    before = copy.deepcopy(manifest)
    validate("atlas-manifest.cra", manifest)
    validate("atlas-manifest", manifest)
    assert manifest == before


def test_compiled_parameter_schemas_never_write_defaults() -> None:
    check = compile_validator({"type": "object", "properties": {"limit": {"type": "integer", "default": 10}}})
    doc: dict[str, Any] = {}
    check(doc)
    assert doc == {}


def test_compiled_validators_name_the_pointer() -> None:
    check = compile_validator(
        {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "integer"}}}},
        error=AtlasError,
        source="actions/refund.json",
    )
    with pytest.raises(AtlasError) as info:
        check({"items": [1, "two"]})
    assert info.value.path == "/items/1"
    assert str(info.value).startswith("actions/refund.json: /items/1: ")


def test_an_unusable_schema_is_refused_at_once() -> None:
    with pytest.raises(ProtocolError) as info:
        compile_validator({"type": "no-such-type"})
    assert info.value.path == ""
    assert "not a usable JSON Schema" in info.value.reason


def test_atlas_kinds_raise_atlas_errors_and_others_protocol_errors() -> None:
    with pytest.raises(AtlasError):
        validate("atlas-manifest", {})
    with pytest.raises(AtlasError):
        validate("atlas-manifest.cra", {})
    for kind in ("carp-request", "carp-resolution", "trace-event"):
        with pytest.raises(ProtocolError) as info:
            validate(kind, {})
        assert not isinstance(info.value, AtlasError)


# -- the shipped schemas ---------------------------------------------------------------------------------------------


def test_normative_schemas_are_shipped_byte_identical() -> None:
    shipped = {p.name for p in SHIPPED_SCHEMAS.glob("*.json")} - CRA_OWN
    normative = {p.name for p in NORMATIVE_SCHEMAS.glob("*.json")}
    assert len(normative) == 4
    assert shipped == normative
    for name in sorted(normative):
        assert (SHIPPED_SCHEMAS / name).read_bytes() == (NORMATIVE_SCHEMAS / name).read_bytes(), name


def test_every_shipped_schema_is_registered() -> None:
    assert set(SCHEMA_FILES.values()) == {p.name for p in SHIPPED_SCHEMAS.glob("*.json")}


@pytest.mark.parametrize("kind", sorted(SCHEMA_FILES))
def test_load_schema_returns_the_shipped_schema_even_after_validating(kind: Any) -> None:
    """The schema is shared state: compiling a validator from it must not rewrite it (its ``$ref`` values, say)."""
    with pytest.raises((AtlasError, ProtocolError)):
        validate(kind, {"not": "valid"})
    assert load_schema(kind) == json.loads((SHIPPED_SCHEMAS / SCHEMA_FILES[kind]).read_text("utf-8"))


def test_compile_validator_leaves_the_schema_untouched() -> None:
    """An action's ``parameters_schema`` is served to agents as written; compiling it must not change it."""
    schema = {
        "$id": "https://example.com/refund.schema.json",
        "type": "object",
        "properties": {"amount": {"$ref": "#/$defs/Amount"}},
        "$defs": {"Amount": {"type": "integer", "minimum": 0}},
    }
    before = copy.deepcopy(schema)
    check = compile_validator(schema)
    check({"amount": 5})
    assert schema == before


def validator(schema_path: Path) -> Callable[[object], bool]:
    check = fastjsonschema.compile(json.loads(schema_path.read_text("utf-8")), use_default=False)

    def valid(doc: object) -> bool:
        try:
            check(copy.deepcopy(doc))
        except fastjsonschema.JsonSchemaValueException:
            return False
        return True

    return valid


NORMATIVE_VALID = validator(NORMATIVE_SCHEMAS / "atlas-manifest.schema.json")
OURS_VALID = validator(SHIPPED_SCHEMAS / "atlas-manifest.cra.schema.json")
BASE = {"atlas_version": "1.0", "atlas_id": "org.acme.test", "version": "1.2.3", "name": "T", "description": "d"}


def test_the_golden_atlas_is_valid_against_both_schemas() -> None:
    golden = json.loads((GOLDEN / "atlas.json").read_text("utf-8"))
    assert NORMATIVE_VALID(golden)
    assert OURS_VALID(golden)
    validate("atlas-manifest.cra", golden)


def test_extensions_are_valid_only_against_ours() -> None:
    """The superset property below is not vacuous: the two schemas do differ."""
    extended = {**BASE, "policies": [{"policy_id": "p", "type": "allow", "conditions": {"roles": ["agent"]}}]}
    assert OURS_VALID(extended)
    assert not NORMATIVE_VALID(extended)


def mostly(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` three times in four: most generated manifests should pass the normative schema."""
    return st.integers(0, 3).flatmap(lambda i: other if i == 3 else valid)


def with_extra(base: st.SearchStrategy[dict[str, Any]], **extra: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``base``, sometimes with keys the normative schema may not know."""
    return mostly(base, st.tuples(base, st.fixed_dictionaries({}, optional=extra)).map(lambda t: {**t[0], **t[1]}))


TIME_WINDOW = st.fixed_dictionaries(
    {},
    optional={
        "start": mostly(st.sampled_from(["09:00:00Z", "22:00:00+03:00"]), st.just("9am")),
        "end": st.just("17:00:00Z"),
        "timezone": st.sampled_from(["Asia/Riyadh", "UTC"]),
        "days": st.lists(mostly(st.sampled_from(["mon", "fri"]), st.just("funday")), max_size=2),
    },
)
CONDITIONS = with_extra(
    st.fixed_dictionaries(
        {},
        optional={
            "risk_tiers": st.lists(mostly(st.sampled_from(["low", "high"]), st.just("extreme")), max_size=2),
            "agents": mostly(st.lists(st.sampled_from(["bot-*", "*"]), max_size=2), st.just("bot")),
            "capabilities": st.lists(st.just("refunds"), max_size=1),
            "context_matches": st.dictionaries(st.sampled_from(["tenant", "env"]), mostly(st.just("a"), st.just(1))),
            "time_window": with_extra(TIME_WINDOW, extra=st.just(1)),
        },
    ),
    roles=st.just(["agent"]),
    params=st.just({"amount": {"gt": 1}}),
    unknown_key=st.just(True),
)
POLICIES = with_extra(
    st.fixed_dictionaries(
        {
            "policy_id": st.sampled_from(["p1", "p2"]),
            "type": mostly(st.sampled_from(["allow", "deny", "scope", "budget"]), st.just("permit")),
        },
        optional={
            "priority": mostly(st.integers(-5, 5), st.just("high")),
            "actions": st.lists(st.sampled_from(["refund.*", "*"]), max_size=2),
            "conditions": CONDITIONS,
            "parameters": st.dictionaries(
                st.sampled_from(["reason", "max_calls"]), st.integers(0, 3) | st.text(max_size=3)
            ),
            "name": st.just("Policy"),
        },
    ),
    effect=st.just("allow"),
)
ACTION_SPECS = with_extra(
    st.fixed_dictionaries(
        {
            "action_id": mostly(st.sampled_from(["refund.create", "a.b.c"]), st.just("Refund")),
            "name": st.just("n"),
            "description": st.just("d"),
        },
        optional={
            "risk_tier": mostly(st.sampled_from(["low", "critical"]), st.just("none")),
            "timeout_seconds": mostly(st.integers(1, 300), st.integers(-1, 400)),
            "rate_limit": st.fixed_dictionaries(
                {}, optional={"max_calls": st.integers(0, 3), "window_seconds": st.integers(1, 3)}
            ),
            "idempotent": mostly(st.booleans(), st.just("yes")),
            "examples": st.lists(st.fixed_dictionaries({"name": st.just("e"), "parameters": st.just({})}), max_size=1),
        },
    ),
    handler=st.just("x"),
)
PACKS = with_extra(
    st.fixed_dictionaries(
        {"pack_id": st.just("pack"), "name": st.just("Pack"), "files": st.lists(st.just("a.md"), max_size=1)},
        optional={
            "priority": mostly(st.integers(0, 1000), st.integers(-1, 1001)),
            "max_tokens": mostly(st.integers(0, 100), st.just(-1)),
            "conditions": CONDITIONS,
        },
    ),
    keywords=st.just(["refund"]),
    always=st.booleans(),
)
MANIFESTS = with_extra(
    st.fixed_dictionaries(
        {
            "atlas_version": mostly(st.just("1.0"), st.just("1.1")),
            "atlas_id": mostly(st.sampled_from(["org.acme.test", "com.example.customer-support"]), st.just("Acme")),
            "version": mostly(st.sampled_from(["1.0.0", "2.1.0-rc.1+build.5"]), st.just("1.0")),
            "name": mostly(st.just("Atlas"), st.just("")),
            "description": st.just("An atlas"),
        },
        optional={
            "authors": st.lists(st.just("someone"), max_size=2),
            "license": st.just("MIT"),
            "domains": st.lists(st.just("support"), max_size=2),
            "capabilities": st.lists(
                st.fixed_dictionaries(
                    {"capability_id": mostly(st.just("refunds"), st.just("Refunds")), "name": st.just("Refunds")},
                    optional={"actions": st.just(["refund.create"]), "context_packs": st.just(["pack"])},
                ),
                max_size=2,
            ),
            "context_packs": st.lists(PACKS, max_size=2),
            "policies": st.lists(POLICIES, max_size=3),
            "actions": st.lists(ACTION_SPECS, max_size=2),
            "adapters": st.just({"openai": {"enabled": True, "settings": {"x": 1}}}),
            "dependencies": st.just({"org.acme.base": "^1.0"}),
            "metadata": st.just({"anything": [1, 2]}),
            "homepage": st.just("https://example.com"),
        },
    ),
    redaction=st.just({"builtin": ["email"]}),
    owner=st.just("me"),
)


@pytest.mark.slow
@settings(max_examples=800, derandomize=True, deadline=None)
@given(manifest=MANIFESTS)
def test_every_manifest_valid_against_the_normative_schema_is_valid_against_ours(manifest: dict[str, Any]) -> None:
    if NORMATIVE_VALID(manifest):
        assert OURS_VALID(manifest)


def test_a_key_with_dots_is_named_whole_in_the_error_path() -> None:
    check = compile_validator({"type": "object", "additionalProperties": {"type": "object", "required": ["x"]}})
    with pytest.raises(ProtocolError) as raised:
        check({"ok": {"x": 1}, "context/tone.guide.md": {"y": 1}})
    assert raised.value.path == "/context~1tone.guide.md/x"

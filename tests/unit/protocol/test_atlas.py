"""Atlas/1.0 manifests and packages: parse errors with JSON Pointers, package merging, strict JSON, the digest."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from cra.errors import AtlasError
from cra.protocol.atlas import parse_atlas, parse_package

GOLDEN = Path(__file__).resolve().parents[2] / "vectors" / "cra-1.0" / "conformance" / "golden"


def manifest(**sections: Any) -> dict[str, Any]:
    return {
        "atlas_version": "1.0",
        "atlas_id": "org.test.atlas",
        "version": "1.0.0",
        "name": "Atlas",
        "description": "Atlas tests",
        **sections,
    }


def action(action_id: str, **rest: Any) -> dict[str, Any]:
    return {"action_id": action_id, "name": action_id, "description": action_id, **rest}


def atlas_error(doc: dict[str, Any], files: dict[str, Any] | None = None) -> AtlasError:
    with pytest.raises(AtlasError) as info:
        parse_atlas(doc, files, source="atlas.json")
    assert str(info.value).startswith("atlas.json: ")
    return info.value


def package_error(package: dict[str, bytes]) -> AtlasError:
    with pytest.raises(AtlasError) as info:
        parse_package(package)
    return info.value


def as_bytes(doc: Any) -> bytes:
    return json.dumps(doc).encode("utf-8")


# -- manifests -------------------------------------------------------------------------------------------------------


def test_the_golden_atlas_parses() -> None:
    doc = json.loads((GOLDEN / "simple-resolve" / "atlas.json").read_text("utf-8"))
    atlas = parse_atlas(doc, {"context/overview.md": "# Resources\n"})
    assert atlas.atlas_id == "com.cra.conformance.simple"
    assert [p.policy_id for p in atlas.policies] == ["allow-read", "allow-write", "deny-delete"]
    assert [a.action_id for a in atlas.actions] == [
        "resource.get",
        "resource.list",
        "resource.create",
        "resource.update",
        "resource.delete",
    ]
    assert atlas.files == {"context/overview.md": "# Resources\n"}
    assert atlas.action("resource.delete") is not None
    assert atlas.action("resource.delete").risk_tier == "high"  # type: ignore[union-attr]
    assert atlas.action("resource.nothing") is None


def test_actions_render_as_carp_allowed_actions() -> None:
    doc = json.loads((GOLDEN / "simple-resolve" / "atlas.json").read_text("utf-8"))
    doc["actions"][0]["rate_limit"] = {"max_calls": 5, "window_seconds": 60}
    atlas = parse_atlas(doc, {"context/overview.md": ""})
    get = atlas.actions[0].to_allowed_action()
    assert get == {
        "action_id": "resource.get",
        "name": "Get Resource",
        "description": "Retrieve a resource by ID",
        "parameters_schema": doc["actions"][0]["parameters_schema"],
        "returns_schema": doc["actions"][0]["returns_schema"],
        "risk_tier": "low",
        "requires_confirmation": False,
        "idempotent": True,
        "rate_limit": {"max_calls": 5, "window_seconds": 60},
    }
    bare = parse_atlas(manifest(actions=[action("a.b")])).actions[0].to_allowed_action()
    assert "parameters_schema" not in bare
    assert "rate_limit" not in bare


def test_the_redaction_settings_are_exposed() -> None:
    assert parse_atlas(manifest()).redaction is None
    assert parse_atlas(manifest(redaction={"builtin": ["email"]})).redaction == {"builtin": ["email"]}


def test_defaults_are_filled_in_the_values_not_the_callers_manifest() -> None:
    doc = manifest(
        actions=[action("a.b")],
        policies=[{"policy_id": "p", "type": "allow"}],
        context_packs=[{"pack_id": "k", "name": "K", "files": []}],
    )
    before = copy.deepcopy(doc)
    atlas = parse_atlas(doc)
    assert doc == before
    (a,) = atlas.actions
    assert (a.risk_tier, a.idempotent, a.requires_confirmation, a.timeout_seconds) == ("low", False, False, 30)
    assert (atlas.policies[0].priority, atlas.policies[0].actions) == (0, None)
    assert (atlas.context_packs[0].priority, atlas.context_packs[0].always) == (100, False)


def test_a_manifest_change_after_parsing_does_not_reach_the_atlas() -> None:
    doc = manifest(policies=[{"policy_id": "p", "type": "allow", "parameters": {"reason": "before"}}])
    atlas = parse_atlas(doc)
    doc["policies"][0]["parameters"]["reason"] = "after"
    assert atlas.policies[0].parameters["reason"] == "before"


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ({k: v for k, v in manifest().items() if k != "name"}, "/name"),
        (manifest(atlas_version="2.0"), "/atlas_version"),
        (manifest(atlas_id="Not.Valid"), "/atlas_id"),
        (manifest(version="1.0"), "/version"),
        (manifest(owner="me"), "/owner"),
        (manifest(actions=[action("refund")]), "/actions/0/action_id"),
        (manifest(actions=[action("a.b"), action("a.c", risk_tier="extreme")]), "/actions/1/risk_tier"),
        (manifest(actions=[action("a.b", timeout_seconds=0)]), "/actions/0/timeout_seconds"),
        (manifest(policies=[{"policy_id": "p", "type": "permit"}]), "/policies/0/type"),
        (manifest(policies=[{"policy_id": "p", "type": "allow", "priority": "high"}]), "/policies/0/priority"),
        (manifest(policies=[{"policy_id": "p", "type": "allow", "effect": "x"}]), "/policies/0/effect"),
        (
            manifest(policies=[{"policy_id": "p", "type": "allow", "conditions": {"role": []}}]),
            "/policies/0/conditions/role",
        ),
        (
            manifest(context_packs=[{"pack_id": "k", "name": "K", "files": [], "priority": 1001}]),
            "/context_packs/0/priority",
        ),
        (manifest(redaction={"builtin": ["passport"]}), "/redaction/builtin/0"),
    ],
)
def test_schema_errors_name_the_json_pointer(doc: dict[str, Any], path: str) -> None:
    assert atlas_error(doc).path == path


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1, 2}, b"bytes"], ids=["nan", "inf", "set", "bytes"])
def test_an_in_process_manifest_holding_non_json_values_is_an_atlas_error(value: Any) -> None:
    atlas_error(manifest(metadata={"x": value}))


@pytest.mark.parametrize(
    ("section", "key", "items"),
    [
        ("policies", "policy_id", [{"policy_id": p, "type": "allow"} for p in ("a", "b", "a")]),
        ("actions", "action_id", [action(a) for a in ("x.a", "x.b", "x.a")]),
        ("capabilities", "capability_id", [{"capability_id": c, "name": c} for c in ("r", "w", "r")]),
        ("context_packs", "pack_id", [{"pack_id": p, "name": p, "files": []} for p in ("o", "q", "o")]),
    ],
)
def test_duplicate_ids_name_the_second_declaration(section: str, key: str, items: list[dict[str, Any]]) -> None:
    error = atlas_error(manifest(**{section: items}))
    assert error.path == f"/{section}/2/{key}"
    assert f"/{section}/0" in error.reason


def test_the_reserved_prefix_is_refused() -> None:
    error = atlas_error(
        manifest(policies=[{"policy_id": "ok", "type": "allow"}, {"policy_id": "cra:x", "type": "deny"}])
    )
    assert error.path == "/policies/1/policy_id"


def test_a_capability_naming_an_undeclared_action_is_refused() -> None:
    caps = [
        {"capability_id": "read", "name": "Read", "actions": ["a.read"]},
        {"capability_id": "write", "name": "Write", "actions": ["a.read", "a.write"]},
    ]
    error = atlas_error(manifest(actions=[action("a.read")], capabilities=caps))
    assert error.path == "/capabilities/1/actions/1"
    assert "a.write" in error.reason


def test_a_capability_naming_an_undeclared_pack_is_refused() -> None:
    caps = [{"capability_id": "read", "name": "Read", "context_packs": ["nope"]}]
    assert atlas_error(manifest(capabilities=caps)).path == "/capabilities/0/context_packs/0"


PACKS = [
    {"pack_id": "first", "name": "First", "files": ["context/a.md"]},
    {"pack_id": "second", "name": "Second", "files": ["context/a.md", "context/b.md"]},
]


def test_a_missing_context_file_is_an_error_never_a_skip() -> None:
    error = atlas_error(manifest(context_packs=PACKS), {"context/a.md": "A"})
    assert error.path == "/context_packs/1/files/1"
    assert "context/b.md" in error.reason


def test_context_files_may_be_bytes_but_must_be_utf8() -> None:
    atlas = parse_atlas(manifest(context_packs=PACKS), {"context/a.md": "A", "context/b.md": "ب".encode()})
    assert atlas.files == {"context/a.md": "A", "context/b.md": "ب"}
    error = atlas_error(manifest(context_packs=PACKS), {"context/a.md": "A", "context/b.md": b"\xff\xfe"})
    assert error.path == "/context_packs/1/files/1"


@pytest.mark.parametrize(
    "path", ["../x.md", "/etc/passwd", "context/../../x.md", "context/../a.md", "./a.md", "a\\b.md", "", ".", "a//b.md"]
)
def test_unsafe_context_paths_are_refused_even_when_present(path: str) -> None:
    packs = [{"pack_id": "p", "name": "P", "files": ["ok.md", path]}]
    error = atlas_error(manifest(context_packs=packs), {"ok.md": "ok", path: "secret"})
    assert error.path == "/context_packs/0/files/1"


@pytest.mark.parametrize(
    ("rate_limit", "path"),
    [
        ({"max_calls": 5}, "/actions/0/rate_limit/window_seconds"),
        ({"window_seconds": 5}, "/actions/0/rate_limit/max_calls"),
        ({"max_calls": 5, "window_seconds": 5, "burst": 2}, "/actions/0/rate_limit/burst"),
        ({"max_calls": 0, "window_seconds": 5}, "/actions/0/rate_limit/max_calls"),
    ],
)
def test_an_actions_rate_limit_must_be_complete(rate_limit: dict[str, Any], path: str) -> None:
    assert atlas_error(manifest(actions=[action("a.b", rate_limit=rate_limit)])).path == path


# -- packages --------------------------------------------------------------------------------------------------------


def package() -> dict[str, bytes]:
    return {"atlas.json": as_bytes(manifest(policies=[{"policy_id": "m", "type": "allow"}], actions=[action("a.b")]))}


def test_policy_and_action_files_are_merged_in_file_name_order() -> None:
    pkg = package()
    pkg["policies/b.json"] = as_bytes([{"policy_id": "b1", "type": "deny"}, {"policy_id": "b2", "type": "allow"}])
    pkg["policies/a.json"] = as_bytes({"policy_id": "a1", "type": "allow"})
    pkg["policies/nested/c.json"] = as_bytes({"policy_id": "nested", "type": "allow"})
    pkg["policies/notes.txt"] = b"not json"
    pkg["actions/x.json"] = as_bytes([action("x.one"), action("x.two")])
    atlas = parse_package(pkg)
    assert [p.policy_id for p in atlas.policies] == ["m", "a1", "b1", "b2"]
    assert [p.index for p in atlas.policies] == [0, 1, 2, 3]
    assert [a.action_id for a in atlas.actions] == ["a.b", "x.one", "x.two"]


def test_an_error_in_a_policy_file_names_that_file_and_its_pointer() -> None:
    pkg = package()
    pkg["policies/a.json"] = as_bytes({"policy_id": "a1", "type": "allow"})
    pkg["policies/b.json"] = as_bytes(
        [{"policy_id": "b1", "type": "deny"}, {"policy_id": "b2", "type": "allow", "priorty": 1}]
    )
    with pytest.raises(AtlasError) as info:
        parse_package(pkg, source="atlases/support")
    assert (info.value.source, info.value.path) == ("atlases/support/policies/b.json", "/1/priorty")


def test_an_error_in_a_single_object_file_points_into_that_object() -> None:
    pkg = package()
    pkg["policies/a.json"] = as_bytes({"policy_id": "a1", "type": "grant"})
    error = package_error(pkg)
    assert (error.source, error.path) == ("policies/a.json", "/type")


def test_a_duplicate_across_files_names_the_later_file() -> None:
    pkg = package()
    pkg["policies/a.json"] = as_bytes({"policy_id": "m", "type": "deny"})
    error = package_error(pkg)
    assert (error.source, error.path) == ("policies/a.json", "/policy_id")


def test_an_action_file_error_names_the_file() -> None:
    pkg = package()
    pkg["actions/refunds.json"] = as_bytes([action("refund.create"), action("Refund")])
    error = package_error(pkg)
    assert (error.source, error.path) == ("actions/refunds.json", "/1/action_id")


def test_an_error_in_the_manifest_names_the_manifest() -> None:
    pkg = package()
    pkg["atlas.json"] = as_bytes(manifest(policies=[{"policy_id": "m", "type": "permit"}]))
    pkg["policies/a.json"] = as_bytes({"policy_id": "a1", "type": "allow"})
    error = package_error(pkg)
    assert (error.source, error.path) == ("atlas.json", "/policies/0/type")


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("atlas.json", b'{"atlas_version": NaN}', "NaN"),
        ("atlas.json", b'{"name": "a", "name": "b"}', "duplicate key 'name'"),
        ("atlas.json", b'{"name": "a",', "invalid JSON at line 1"),
        ("atlas.json", b"\xff\xfe{}", "not UTF-8"),
        ("atlas.json", b"[]", "must be a JSON object"),
        ("policies/p.json", b'{"policy_id": "p", "type": "allow", "priority": Infinity}', "Infinity"),
        ("policies/p.json", b'{"policy_id": "p", "policy_id": "q", "type": "allow"}', "duplicate key 'policy_id'"),
        ("policies/p.json", b'{"policy_id": "p",\n "type": }', "invalid JSON at line 2"),
        ("policies/p.json", b'["not an object"]', "must be an object"),
        ("actions/a.json", b"-Infinity", "Infinity"),
    ],
)
def test_package_json_is_strict_and_errors_name_the_file(name: str, content: bytes, needle: str) -> None:
    pkg = package()
    pkg[name] = content
    error = package_error(pkg)
    assert error.source == name
    assert needle in error.reason


def test_absurdly_nested_json_is_an_atlas_error() -> None:
    pkg = package()
    pkg["policies/deep.json"] = b"[" * 100_000 + b"]" * 100_000
    error = package_error(pkg)
    assert error.source == "policies/deep.json"


def test_a_package_needs_a_manifest() -> None:
    assert "atlas.json" in package_error({"policies/a.json": b"{}"}).reason


def test_merged_sections_must_be_arrays_in_the_manifest() -> None:
    pkg = package()
    pkg["atlas.json"] = as_bytes(manifest(policies={"policy_id": "m"}))
    pkg["policies/a.json"] = as_bytes({"policy_id": "a", "type": "allow"})
    error = package_error(pkg)
    assert (error.source, error.path) == ("atlas.json", "/policies")


def test_a_missing_context_file_in_a_package_names_its_pointer() -> None:
    pkg = package()
    pkg["atlas.json"] = as_bytes(manifest(context_packs=PACKS))
    pkg["context/a.md"] = b"A"
    error = package_error(pkg)
    assert (error.source, error.path) == ("atlas.json", "/context_packs/1/files/1")


# -- the digest ------------------------------------------------------------------------------------------------------


def digest(pkg: dict[str, bytes]) -> str:
    return parse_package(pkg).digest


def base_package() -> dict[str, bytes]:
    pkg = package()
    pkg["atlas.json"] = as_bytes(
        manifest(actions=[action("a.b")], context_packs=[{"pack_id": "k", "name": "K", "files": ["context/k.md"]}])
    )
    pkg["policies/p.json"] = as_bytes({"policy_id": "p", "type": "allow", "parameters": {"reason": "ok"}})
    pkg["context/k.md"] = b"# Knowledge\n"
    pkg["tests/basic.yaml"] = b"cases: []\n"
    return pkg


def test_the_digest_names_the_package() -> None:
    value = digest(base_package())
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", value)
    assert digest(base_package()) == value
    assert digest(dict(reversed(base_package().items()))) == value


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("policies/p.json", as_bytes({"policy_id": "p", "type": "allow", "parameters": {"reason": "changed"}})),
        ("policies/q.json", as_bytes({"policy_id": "q", "type": "deny"})),
        ("context/k.md", b"# Knowledge, edited\n"),
        ("actions/x.json", as_bytes(action("x.y"))),
    ],
)
def test_the_digest_changes_with_policies_actions_and_context(name: str, content: bytes) -> None:
    changed = base_package()
    changed[name] = content
    assert digest(changed) != digest(base_package())


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("tests/basic.yaml", b"cases: [{name: other}]\n"),
        ("tests/more.json", b"{}"),
        ("README.md", b"# About\n"),
        ("context/unused.md", b"not referenced by any pack"),
    ],
)
def test_the_digest_ignores_tests_and_unreferenced_files(name: str, content: bytes) -> None:
    changed = base_package()
    changed[name] = content
    assert digest(changed) == digest(base_package())

"""The engine compiled to WebAssembly answers the conformance vectors byte for byte as native CRA does.

The component is built by ``cra build-wasm`` (once per test run, see the
``engine_build`` fixture), loaded under wasmtime, and fed the golden resolve, the CONFORMANCE.md policy
and resolution cases, every example atlas's own test cases, and malformed
input. Each answer must be the same bytes as :mod:`cra.runtime.portable`'s
answer in this interpreter; the native answers are checked against the cases'
expectations too, so agreement is never agreement on something wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import EXAMPLES

from cra.runtime.portable import evaluate_json, resolve_json
from cra.sandbox.engine_component import EngineComponent

CONFORMANCE = yaml.safe_load((Path(__file__).parents[1] / "conformance" / "cases.yaml").read_text("utf-8"))
NOW = "2025-01-06T10:00:00Z"


@pytest.fixture(scope="module")
def engine_component(engine_build: dict[str, Any]) -> EngineComponent:
    """The component ``cra build-wasm`` built for this run, compiled once for this module."""
    assert engine_build["returncode"] == 0, engine_build["stderr"]
    built = json.loads(engine_build["stdout"])
    assert built["size_bytes"] > 1_000_000
    assert "cra.runtime.resolver" in built["modules"]
    assert not [m for m in built["modules"] if m.startswith(("cra.ledger", "cra.store", "cra.server"))]
    return EngineComponent(Path(built["path"]))


def _package(directory: Path) -> dict[str, Any]:
    files = {
        p.relative_to(directory).as_posix(): p.read_text("utf-8")
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.relative_to(directory).as_posix().startswith("tests/")
    }
    return {"package": files}


def _carp(goal: str, agent: str = "test-agent", **task: Any) -> dict[str, Any]:
    return {
        "carp_version": "1.0",
        "request_id": "01234567-89ab-7def-8123-456789abcdef",
        "timestamp": "2024-12-28T12:00:00.000Z",
        "operation": "resolve",
        "requester": {"agent_id": agent, "session_id": "01234567-89ab-7def-8123-456789abcdef"},
        "task": {"goal": goal, **task},
    }


def _same(component: EngineComponent, operation: str, value: Any) -> dict[str, Any]:
    text = value if isinstance(value, str) else json.dumps(value)
    native = (evaluate_json if operation == "evaluate" else resolve_json)(text)
    assert getattr(component, operation)(text) == native
    answer: dict[str, Any] = json.loads(native)
    return answer


@pytest.mark.parametrize("seed", [2024, 7])
def test_the_golden_resolve(engine_component: EngineComponent, cra10: Path, seed: int) -> None:
    golden = cra10 / "conformance" / "golden" / "simple-resolve"
    package = {
        "package": {
            "atlas.json": (golden / "atlas.json").read_text("utf-8"),
            "context/overview.md": "# Resource overview\n\nResources have an id and a name.\n",
        }
    }
    request = json.loads((golden / "request.json").read_text("utf-8"))
    answer = _same(engine_component, "resolve", {"atlases": [package], "request": request, "seed": seed})
    expected = json.loads((golden / "expected-resolution.json").read_text("utf-8"))
    got = answer["resolution"]
    assert [a["action_id"] for a in got["allowed_actions"]] == [a["action_id"] for a in expected["allowed_actions"]]
    assert [a["action_id"] for a in got["denied_actions"]] == [a["action_id"] for a in expected["denied_actions"]]
    assert answer["trace"][0]["event_type"] == "session.started"


@pytest.mark.parametrize("case", CONFORMANCE["policy"], ids=lambda c: c["test_id"])
def test_the_conformance_policy_cases(engine_component: EngineComponent, case: dict[str, Any]) -> None:
    atlas = {
        "atlas_version": "1.0",
        "atlas_id": "org.conformance.case",
        "version": "1.0.0",
        "name": "Conformance case",
        "description": "An atlas built from a CONFORMANCE.md case",
        "policies": case["policies"],
    }
    requests = [
        {"agent": "test-agent", "action": s["action"], **({"risk_tier": s["risk_tier"]} if "risk_tier" in s else {})}
        for s in case["steps"]
    ]
    answer = _same(engine_component, "evaluate", {"atlas": atlas, "now": NOW, "requests": requests})
    assert [d["decision"] for d in answer["decisions"]] == [s["expected"] for s in case["steps"]]


@pytest.mark.parametrize("case", CONFORMANCE["resolution"], ids=lambda c: c["test_id"])
def test_the_conformance_resolution_cases(engine_component: EngineComponent, case: dict[str, Any]) -> None:
    packs = case.get("context_packs", [])
    caps = case.get("capabilities", [])
    actions = sorted({a for c in caps for a in c["actions"]})
    manifest = {
        "atlas_version": "1.0",
        "atlas_id": "org.conformance.case",
        "version": "1.0.0",
        "name": "Conformance case",
        "description": "An atlas built from a CONFORMANCE.md case",
        "context_packs": packs,
        "capabilities": caps,
        "actions": [{"action_id": a, "name": a, "description": f"The {a} action"} for a in actions],
        "policies": [{"policy_id": "allow-all", "type": "allow", "actions": ["*"]}],
    }
    files = {f: f"# {p['pack_id']}\n" for p in packs for f in p["files"]}
    package = {"package": {"atlas.json": json.dumps(manifest), **files}}
    task = {"required_capabilities": case["required_capabilities"]} if "required_capabilities" in case else {}
    answer = _same(
        engine_component, "resolve", {"atlases": [package], "request": _carp(case["goal"], **task), "seed": 1}
    )
    resolution = answer["resolution"]
    if "expected_pack_order" in case:
        assert [b["metadata"]["pack_id"] for b in resolution["context_blocks"]] == case["expected_pack_order"]
    if "expected_allowed" in case:
        assert [a["action_id"] for a in resolution["allowed_actions"]] == case["expected_allowed"]


def _example_cases() -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for directory in sorted(p for p in EXAMPLES.iterdir() if p.is_dir()):
        for path in sorted((directory / "tests").glob("*.yaml")):
            for case in yaml.safe_load(path.read_text("utf-8"))["cases"]:
                found.append((directory.name, path.name, case))
    return found


@pytest.mark.parametrize(
    ("atlas", "source", "case"), _example_cases(), ids=lambda v: v["name"][:60] if isinstance(v, dict) else v
)
def test_every_example_atlas_case(
    engine_component: EngineComponent, atlas: str, source: str, case: dict[str, Any]
) -> None:
    steps = case.get("steps") or [{"request": case["request"], "expect": case["expect"]}]
    requests = [{**step["request"], "at": step.get("at", 0)} for step in steps]
    now = case.get("now", NOW)
    answer = _same(
        engine_component, "evaluate", {"atlas": _package(EXAMPLES / atlas), "now": now, "requests": requests}
    )
    assert [d["decision"] for d in answer["decisions"]] == [s["expect"]["decision"] for s in steps]


@pytest.mark.parametrize("atlas", sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()))
def test_a_resolve_over_each_example_atlas(engine_component: EngineComponent, atlas: str) -> None:
    request = _carp("Help a customer with a refund and check the deployment logs", agent="helper")
    answer = _same(
        engine_component, "resolve", {"atlases": [_package(EXAMPLES / atlas)], "request": request, "roles": ["agent"]}
    )
    assert "resolution" in answer, answer


@pytest.mark.parametrize(
    ("operation", "text"),
    [
        ("evaluate", "not json"),
        ("evaluate", '{"atlas": {}, "now": "2025-01-01T00:00:00Z", "requests": []}'),
        ("evaluate", '{"atlas": {"atlas_version": "1.0"}, "now": "2025-01-01T00:00:00Z", "requests": [{}]}'),
        ("evaluate", json.dumps({"atlas": {"package": {"atlas.json": "{"}}, "now": NOW, "requests": [{}]})),
        ("resolve", '{"atlases": [], "request": {"timestamp": "yesterday"}}'),
        ("resolve", json.dumps({"atlases": [], "request": {**_carp("x"), "carp_version": "2.0"}})),
        ("resolve", '{"atlases": [], "request": ' + json.dumps(_carp("x")) + ', "seed": -1}'),
        ("resolve", "[1, 2, 3]"),
        ("resolve", '{"a": ' * 300 + "1" + "}" * 300),
    ],
)
def test_malformed_input_gets_the_same_precise_error(
    engine_component: EngineComponent, operation: str, text: str
) -> None:
    answer = _same(engine_component, operation, text)
    assert set(answer) == {"error"}
    assert answer["error"]["code"] != "internal"

"""The golden simple-resolve case: resolution and trace, through the in-process runtime."""

from __future__ import annotations

import itertools
import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cra import AtlasError, ManualClock, Resolver, SeededIds, load_atlas

DYNAMIC = "$dynamic"
TRACE_AGENT = "test-agent"
TRACE_GOAL = "I need to read and manage data"


def match(actual: Any, expected: Any, path: str = "") -> list[str]:
    """Differences between ``actual`` and a golden value; ``$dynamic`` matches anything present."""
    if expected == DYNAMIC:
        return []
    if isinstance(expected, dict):
        expected = {k: v for k, v in expected.items() if k != "$comment"}
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        problems = [f"{path}/{k}: missing" for k in expected if k not in actual]
        problems += [f"{path}/{k}: unexpected" for k in actual if k not in expected]
        for k in expected:
            if k in actual:
                problems += match(actual[k], expected[k], f"{path}/{k}")
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: expected {len(expected)} items, got {actual!r}"]
        return [p for i, (a, e) in enumerate(zip(actual, expected, strict=True)) for p in match(a, e, f"{path}/{i}")]
    if type(actual) is not type(expected) or actual != expected:
        return [f"{path}: expected {expected!r}, got {actual!r}"]
    return []


@pytest.fixture
def golden(cra10: Path) -> Path:
    return cra10 / "conformance" / "golden" / "simple-resolve"


@pytest.fixture
def package(golden: Path, tmp_path: Path) -> Path:
    """The golden atlas as a package, with the context file its manifest references.

    The golden directory lacks ``context/overview.md``; CRA refuses such an
    atlas (see test_the_golden_atlas_alone_is_refused), so the test supplies one.
    """
    shutil.copy(golden / "atlas.json", tmp_path / "atlas.json")
    (tmp_path / "context").mkdir()
    (tmp_path / "context" / "overview.md").write_text("# Resource overview\n\nResources have an id and a name.\n")
    return tmp_path


def _run(package: Path, golden: Path, *, agent: str, goal: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    request = json.loads((golden / "request.json").read_text())
    clock = ManualClock(datetime.fromisoformat(request["timestamp"].replace("Z", "+00:00")))
    resolver = Resolver(clock=clock, ids=SeededIds(2024, clock))
    resolver.load_atlas(package)
    session_id = resolver.create_session(agent, goal)
    request["requester"] = {"agent_id": agent, "session_id": session_id}
    request["task"]["goal"] = goal
    resolution = resolver.resolve(request)
    resolver.verify_chain(session_id)
    return resolution, [e.to_dict() for e in resolver.get_trace(session_id)]


def test_the_golden_atlas_alone_is_refused(golden: Path) -> None:
    with pytest.raises(AtlasError) as info:
        load_atlas(golden / "atlas.json")
    assert info.value.path == "/context_packs/0/files/0"
    assert "context/overview.md" in info.value.reason


def test_golden_resolution(package: Path, golden: Path) -> None:
    request = json.loads((golden / "request.json").read_text())
    resolution, _ = _run(package, golden, agent=request["requester"]["agent_id"], goal=request["task"]["goal"])
    expected = json.loads((golden / "expected-resolution.json").read_text())
    assert match(resolution, expected) == []
    assert resolution["request_id"] == request["request_id"]


def test_golden_trace(package: Path, golden: Path) -> None:
    _, events = _run(package, golden, agent=TRACE_AGENT, goal=TRACE_GOAL)
    expected = [json.loads(line) for line in (golden / "expected-trace.jsonl").read_text().splitlines() if line]
    assert match(events, expected) == []
    for before, after in itertools.pairwise(events):
        assert after["previous_event_hash"] == before["event_hash"]


def test_golden_resolution_is_reproducible(package: Path, golden: Path) -> None:
    request = json.loads((golden / "request.json").read_text())
    first = _run(package, golden, agent=request["requester"]["agent_id"], goal=request["task"]["goal"])
    second = _run(package, golden, agent=request["requester"]["agent_id"], goal=request["task"]["goal"])
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_matcher_catches_differences() -> None:
    assert match({"a": 1, "b": DYNAMIC}, {"a": 1, "b": DYNAMIC}) == []
    assert match({"a": 2}, {"a": 1}) == ["/a: expected 1, got 2"]
    assert match({"a": 1, "x": 0}, {"a": 1}) == ["/x: unexpected"]
    assert match({}, {"b": DYNAMIC}) == ["/b: missing"]
    assert match([1], [1, 2]) != []
    assert match(True, 1) != []

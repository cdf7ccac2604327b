"""The CONFORMANCE.md cases, run as data (tests/conformance/cases.yaml)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from cra import Engine, ManualClock, Resolver, SeededIds
from cra.errors import ChainError, ValidationError
from cra.protocol.validation import validate
from cra.trace.chain import verify_chain
from cra.trace.diff import diff_traces
from cra.trace.event import TraceEvent, build_event, compute_event_hash

CASES = yaml.safe_load((Path(__file__).parent / "cases.yaml").read_text("utf-8"))
T0 = datetime(2024, 12, 28, 12, 0, tzinfo=UTC)


def _atlas(**sections: Any) -> dict[str, Any]:
    return {
        "atlas_version": "1.0",
        "atlas_id": "org.conformance.case",
        "version": "1.0.0",
        "name": "Conformance case",
        "description": "An atlas built from a CONFORMANCE.md case",
        **sections,
    }


@pytest.mark.parametrize("case", CASES["schema"], ids=lambda c: c["test_id"])
def test_schema_cases(case: dict[str, Any]) -> None:
    if case["expected"] == "VALID":
        validate(case["kind"], case["input"])
        return
    with pytest.raises(ValidationError) as info:
        validate(case["kind"], case["input"])
    assert info.value.path == case["error_path"]


@pytest.mark.parametrize("case", CASES["hash"], ids=lambda c: c["test_id"])
def test_hash_vector(case: dict[str, Any]) -> None:
    assert compute_event_hash(**case["input"]) == case["expected_hash"]


def _chain(length: int) -> list[TraceEvent]:
    return _events(
        [
            {"event_type": "session.started" if i == 0 else "policy.evaluated", "payload": {"n": i}}
            for i in range(length)
        ]
    )


@pytest.mark.parametrize("case", CASES["chain"], ids=lambda c: c["test_id"])
def test_chain_cases(case: dict[str, Any]) -> None:
    events = _chain(case["length"])
    if case["tamper"]:
        t = case["tamper"]
        events[t["index"]] = events[t["index"]]._replace(**{t["field"]: t["value"]})
    if case["expected"] == "VALID":
        verify_chain(events)
        return
    with pytest.raises(ChainError) as info:
        verify_chain(events)
    assert (info.value.kind, info.value.index) == (case["error"], case["error_at"])


@pytest.mark.parametrize("case", CASES["policy"], ids=lambda c: c["test_id"])
def test_policy_cases(case: dict[str, Any]) -> None:
    clock = ManualClock(T0)
    engine = Engine.from_atlas(_atlas(policies=case["policies"]), clock=clock)
    for step in case["steps"]:
        d = engine.evaluate(action=step["action"], agent="test-agent", risk_tier=step.get("risk_tier"), params={})
        assert d.effect.value == step["expected"], d.explain()
        if "policy_id" in step:
            assert d.policy_id == step["policy_id"]
        if "reason_code" in step:
            assert d.reason_code == step["reason_code"]
        clock.advance(1)


def _resolve(atlas: dict[str, Any], files: dict[str, str], goal: str, **task: Any) -> dict[str, Any]:
    clock = ManualClock(T0)
    r = Resolver(clock=clock, ids=SeededIds(1, clock))
    r.load_atlas(atlas, files=files)
    sid = r.create_session("test-agent", goal)
    return r.resolve(
        {
            "carp_version": "1.0",
            "request_id": "01234567-89ab-7def-8123-456789abcdef",
            "timestamp": "2024-12-28T12:00:00.000Z",
            "operation": "resolve",
            "requester": {"agent_id": "test-agent", "session_id": sid},
            "task": {"goal": goal, **task},
        }
    )


@pytest.mark.parametrize("case", CASES["resolution"], ids=lambda c: c["test_id"])
def test_resolution_cases(case: dict[str, Any]) -> None:
    packs = case.get("context_packs", [])
    caps = case.get("capabilities", [])
    actions = sorted({a for c in caps for a in c["actions"]})
    atlas = _atlas(
        context_packs=packs,
        capabilities=caps,
        actions=[{"action_id": a, "name": a, "description": f"The {a} action"} for a in actions],
        policies=[{"policy_id": "allow-all", "type": "allow", "actions": ["*"]}],
    )
    files = {f: f"# {p['pack_id']}\n" for p in packs for f in p["files"]}
    task = {"required_capabilities": case["required_capabilities"]} if "required_capabilities" in case else {}
    resolution = _resolve(atlas, files, case["goal"], **task)
    if "expected_pack_order" in case:
        assert [b["metadata"]["pack_id"] for b in resolution["context_blocks"]] == case["expected_pack_order"]
    if "expected_allowed" in case:
        assert [a["action_id"] for a in resolution["allowed_actions"]] == case["expected_allowed"]


def _events(specs: list[dict[str, Any]]) -> list[TraceEvent]:
    events: list[TraceEvent] = []
    for i, spec in enumerate(specs):
        events.append(
            build_event(
                events[-1] if events else None,
                event_id=f"00000000-0000-7000-8000-{i:012d}",
                trace_id="11111111-1111-7111-8111-111111111111",
                span_id="22222222-2222-7222-8222-222222222222",
                parent_span_id=None,
                session_id="33333333-3333-7333-8333-333333333333",
                timestamp="2024-12-28T12:00:00.000000Z",
                event_type=spec["event_type"],
                payload=spec["payload"],
            )
        )
    return events


@pytest.mark.parametrize("case", CASES["diff"], ids=lambda c: c["test_id"])
def test_diff_cases(case: dict[str, Any]) -> None:
    result = diff_traces(_events(case["trace_a"]), _events(case["trace_b"]))
    assert result.compatibility == case["expected_compatibility"]
    got = [{"path": d.path, "type": d.type, "significance": d.significance} for d in result.differences]
    assert got == case["expected_differences"]

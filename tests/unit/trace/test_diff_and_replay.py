"""Semantic trace diff, and replay's handling of traces it cannot fully recompute."""

from __future__ import annotations

from typing import Any

from cra.policy.compiler import compile_atlas
from cra.protocol.atlas import parse_atlas
from cra.trace.diff import diff_traces
from cra.trace.event import TraceEvent, build_event
from cra.trace.replay import replay


def chain(
    *specs: tuple[str, dict[str, Any]], session: str = "33333333-3333-7333-8333-333333333333"
) -> list[TraceEvent]:
    events: list[TraceEvent] = []
    for i, (event_type, payload) in enumerate(specs):
        events.append(
            build_event(
                events[-1] if events else None,
                event_id=f"00000000-0000-7000-8000-{i:012d}",
                trace_id="11111111-1111-7111-8111-111111111111",
                span_id=f"22222222-2222-7222-8222-{i:012d}",
                parent_span_id=None,
                session_id=session,
                timestamp=f"2025-01-01T00:00:{i:02d}.000000Z",
                event_type=event_type,
                payload=payload,
            )
        )
    return events


def test_ids_timestamps_and_hashes_never_count() -> None:
    a = chain(("policy.evaluated", {"policy_id": "p", "result": "allow", "action_id": "x.y", "request_id": "r1"}))
    b = chain(
        ("policy.evaluated", {"policy_id": "p", "result": "allow", "action_id": "x.y", "request_id": "r2"}),
        session="44444444-4444-7444-8444-444444444444",
    )
    assert diff_traces(a, b).compatibility == "identical"


def test_a_changed_decision_is_major() -> None:
    a = chain(("policy.evaluated", {"policy_id": "p", "result": "allow", "action_id": "x.y"}))
    b = chain(("policy.evaluated", {"policy_id": "p", "result": "deny", "action_id": "x.y"}))
    result = diff_traces(a, b)
    assert result.compatibility == "different"
    assert [(d.path, d.type, d.significance, d.a, d.b) for d in result.differences] == [
        ("/0/payload/result", "value_changed", "major", "allow", "deny")
    ]


def test_added_removed_and_nested_differences() -> None:
    base = ("action.executed", {"action_id": "x.y", "duration_ms": 3, "result_hash": "h"})
    a = chain(base, ("session.ended", {"reason": "completed", "duration_ms": 9}))
    b = chain(("action.executed", {"action_id": "x.y", "result_hash": "h", "extra": [1]}))
    got = {(d.path, d.type, d.significance) for d in diff_traces(a, b).differences}
    assert got == {
        ("/0/payload/duration_ms", "removed", "minor"),
        ("/0/payload/extra", "added", "major"),
        ("/1", "removed", "major"),
    }
    assert diff_traces(b, a).differences[-1].type == "added"


def test_type_changes_count_even_when_python_calls_them_equal() -> None:
    a = chain(("policy.violated", {"policy_id": "p", "violation_type": "budget", "details": {"used": 1}}))
    b = chain(("policy.violated", {"policy_id": "p", "violation_type": "budget", "details": {"used": True}}))
    assert diff_traces(a, b).compatibility == "different"


ATLAS = parse_atlas(
    {
        "atlas_version": "1.0",
        "atlas_id": "org.test.replay",
        "version": "1.0.0",
        "name": "Replay",
        "description": "Replay",
        "actions": [{"action_id": "x.y", "name": "X", "description": "X"}],
        "policies": [{"policy_id": "p", "type": "allow", "actions": ["x.y"]}],
    }
)


def test_replay_reports_what_it_cannot_recompute() -> None:
    events = chain(
        ("session.started", {"agent_id": "a", "goal": "g"}),
        ("carp.request.received", {"request_id": "r", "operation": "resolve", "goal": "g", "atlas_ids": ["org.other"]}),
        ("action.requested", {"action_id": "z.z", "resolution_id": "q", "parameters": {}}),
        ("policy.evaluated", {"policy_id": "p", "result": "allow", "action_id": "x.y"}),
        ("action.requested", {"action_id": "x.y", "resolution_id": "q"}),
    )
    report = replay(events, [compile_atlas(ATLAS)])
    assert not report.identical
    assert len(report.problems) == 4
    assert any("org.other" in p for p in report.problems)
    assert any("no given atlas declares z.z" in p for p in report.problems)
    assert any("parameters are not recorded" in p for p in report.problems)


def test_replay_notices_a_resolution_cut_short() -> None:
    events = chain(
        ("session.started", {"agent_id": "a", "goal": "g"}),
        (
            "carp.request.received",
            {"request_id": "r", "operation": "resolve", "goal": "g", "atlas_ids": ["org.test.replay"]},
        ),
    )
    report = replay(events, [compile_atlas(ATLAS)])
    assert report.problems == ("the trace ends in the middle of a resolution",)


def test_replay_never_calls_a_tampered_trace_identical() -> None:
    events = chain(
        ("session.started", {"agent_id": "a", "goal": "g"}),
        (
            "carp.request.received",
            {"request_id": "r", "operation": "resolve", "goal": "g", "atlas_ids": ["org.test.replay"]},
        ),
        ("policy.evaluated", {"policy_id": "p", "result": "allow", "action_id": "x.y"}),
        (
            "carp.resolution.completed",
            {"resolution_id": "q", "request_id": "r", "decision_type": "allow", "allowed_count": 1, "denied_count": 0},
        ),
    )
    assert replay(events, [compile_atlas(ATLAS)]).identical
    tampered = [*events[:1], events[1]._replace(payload={**events[1].payload, "goal": "other"}), *events[2:]]
    report = replay(tampered, [compile_atlas(ATLAS)])
    assert not report.identical
    assert report.problems[0].startswith("the chain does not verify: hash_mismatch at event 1")

"""The checks of the chaos stress run (``tools/chaos.py``, issue #12) fail on what they must: an
acknowledged write that is missing, a tampered chain, a call left without an outcome, leftover scratch,
a worker not replaced.

The run itself is a stage of ``.ci/run`` (``uv run python tools/chaos.py --seconds 30 --json``), which
prints its figures and fails CI on any finding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import chaos
from cra.trace.event import TraceEvent, build_event

SESSION = "01a23700-0000-7000-8000-000000000001"
RESOLUTION = "01a23700-0000-7000-8000-0000000000a1"
EXECUTION = "01a23700-0000-7000-8000-0000000000e1"
PARAMETERS = {"code": "print(42)", "limits": {"timeout_s": 1}}


def _trace(*, outcome: bool = True) -> list[TraceEvent]:
    """A session that resolved (deciding code.execute), then ran one code.execute call, with its outcome or not."""
    digest = chaos.parameters_hash(PARAMETERS)
    steps: list[tuple[str, dict[str, Any]]] = [
        ("session.started", {"agent_id": "coder", "goal": "Sum"}),
        ("carp.request.received", {"operation": "resolve"}),
        ("policy.evaluated", {"action_id": "code.execute", "result": "allow"}),
        ("carp.resolution.completed", {"resolution_id": RESOLUTION, "decision_type": "allow"}),
        ("carp.request.received", {"operation": "execute"}),
        ("action.requested", {"action_id": "code.execute", "execution_id": EXECUTION, "parameters_hash": digest}),
        ("policy.evaluated", {"action_id": "code.execute", "result": "allow"}),
    ]
    if outcome:
        steps.append(("action.executed", {"action_id": "code.execute", "execution_id": EXECUTION}))
    events: list[TraceEvent] = []
    for n, (event_type, payload) in enumerate(steps):
        previous = events[-1] if events else None
        events.append(
            build_event(
                previous,
                event_id=f"01a23700-0000-7000-8000-{n:012d}",
                trace_id="01a23700-0000-7000-8000-0000000000f1",
                span_id=f"01a23700-0000-7000-8000-0000000001{n:02d}",
                parent_span_id=None,
                session_id=SESSION,
                timestamp=f"2026-12-02T18:00:{n:02d}Z",
                event_type=event_type,
                payload=payload,
            )
        )
    return events


def _record() -> chaos.SessionRecord:
    """What the run acknowledged in that session: the resolution and the call's success."""
    call = chaos.Call("code.execute", chaos.parameters_hash(PARAMETERS), "success", EXECUTION)
    return chaos.SessionRecord("acme", "coder", SESSION, resolutions={RESOLUTION}, calls=[call])


def test_a_complete_record_and_chain_pass_every_check() -> None:
    events = _trace()
    assert chaos.check_acknowledged(_record(), events, "active", {}) == []
    assert chaos.check_chain(SESSION, events, {"valid": True, "event_count": len(events), "errors": []}) == []
    assert chaos.check_outcomes(SESSION, events, chaos.EXECUTOR_ACTIONS) == []
    assert chaos.verdict([])["ok"] is True


def test_a_missing_acknowledged_write_is_a_loss_and_fails_the_run() -> None:
    record = _record()
    missing_event = "01a23700-0000-7000-8000-00000000dead"
    record.evidence[missing_event] = (9, "cd")
    record.resolutions.add("01a23700-0000-7000-8000-0000000000a2")
    record.ended = True
    found = chaos.check_acknowledged(record, _trace(), "active", {})
    assert {f.invariant for f in found} == {chaos.LOSS}
    details = "\n".join(f.detail for f in found)
    assert missing_event in details
    assert "01a23700-0000-7000-8000-0000000000a2" in details
    assert "acknowledged end of the session is lost" in details
    verdict = chaos.verdict(found)
    assert verdict["ok"] is False
    assert verdict["failed"] == [chaos.LOSS]
    assert verdict["invariants"][chaos.LOSS] == {"held": False, "findings": len(found)}


def test_a_session_that_is_gone_and_an_approval_in_the_wrong_state_are_losses() -> None:
    record = _record()
    assert [f.invariant for f in chaos.check_acknowledged(record, None, None, {})] == [chaos.LOSS]
    record.approvals["ap-1"] = "approved"
    record.approvals["ap-2"] = "denied"
    found = chaos.check_acknowledged(record, _trace(), "active", {"ap-1": "pending", "ap-2": None})
    details = [f.detail for f in found]
    assert any("ap-1 is pending" in d for d in details), details
    assert any("ap-2 (denied) is not found" in d for d in details), details


def test_a_tampered_chain_fails_here_and_a_bad_server_verification_too() -> None:
    events = _trace()
    events[3] = events[3]._replace(payload={**events[3].payload, "decision_type": "deny"})
    (finding,) = chaos.check_chain(SESSION, events, None)
    assert finding.invariant == chaos.CHAIN
    assert "hash_mismatch at index 3" in finding.detail
    good = _trace()
    (finding,) = chaos.check_chain(SESSION, good, {"valid": False, "event_count": len(good), "errors": []})
    assert finding.invariant == chaos.CHAIN


def test_an_authorised_call_without_an_outcome_is_reported() -> None:
    (finding,) = chaos.check_outcomes(SESSION, _trace(outcome=False), chaos.EXECUTOR_ACTIONS)
    assert finding.invariant == chaos.OUTCOME
    assert "1 of 1 authorised code.execute calls" in finding.detail
    assert finding.count == 1
    # The resolve-time decision on code.execute is not a call: only the execute-time one counts.
    assert chaos.check_outcomes(SESSION, _trace()[:5], chaos.EXECUTOR_ACTIONS) == []


def test_an_acknowledged_outcome_missing_from_the_trace_is_a_loss() -> None:
    record = _record()
    found = chaos.check_acknowledged(record, _trace(outcome=False), "active", {})
    assert [f.invariant for f in found] == [chaos.LOSS]
    assert EXECUTION in found[0].detail


def test_a_decision_without_its_attestation_is_a_ledger_finding() -> None:
    events = _trace()
    decisions = [events[3].event_id, events[6].event_id]  # the resolution and the execute-time decision
    assert chaos.check_attested(SESSION, events, decisions) == []
    (finding,) = chaos.check_attested(SESSION, events, decisions[:1])
    assert finding.invariant == chaos.LEDGER
    assert finding.count == 1
    assert events[6].event_id in finding.detail


def test_leftover_scratch_folders_and_unreplaced_workers_are_findings(tmp_path: Path) -> None:
    (tmp_path / "cra-sandbox-abc123").mkdir()
    (tmp_path / "unrelated").mkdir()
    (finding,) = chaos.leftover_scratch(tmp_path)
    assert finding.invariant == chaos.SCRATCH
    assert "cra-sandbox-abc123" in finding.detail
    kills = [chaos.Kill(0.0, 11, replaced_by=12, started_after=0.2, ready_after=5.0), chaos.Kill(1.0, 13)]
    exits = [chaos.Exit(14, 5.4, served=False)]
    found = chaos.restart_findings(kills, exits)
    assert [f.invariant for f in found] == [chaos.RESTART, chaos.RESTART]
    assert "worker 14 went away 5.4 s after it appeared, before it served" in found[0].detail
    assert "worker 13 was killed and no replacement process appeared within" in found[1].detail

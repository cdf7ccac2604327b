"""A bundle proves that it holds whole sessions (issue #12, finding 12).

Every tampering below passed ``verify_bundle`` before bundles carried the log's signed
session statement: keeping the first 3 events of a session and none of its
attestations still verified. Each must now be refused with a reason that names what
is missing. The faulty-log cases sign a wrong statement with the log's own key: the
verifier must still refuse what the bundle itself contradicts.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import EXAMPLES

from cra.errors import LedgerError, ProofError
from cra.ledger.bundle import (
    FORMAT,
    SESSION_HEADER,
    Bundle,
    SessionStatement,
    decision_events,
    open_session_statement,
    parse_bundle,
    verify_bundle,
)
from cra.ledger.note import NoteSigner, sign_note
from cra.runtime.clock import ManualClock
from cra.runtime.ids import SeededIds
from cra.runtime.ledger import AuditLedger
from cra.runtime.memory import MemoryLedgerStore
from cra.runtime.ports import LedgerEntry
from cra.runtime.resolver import Resolver
from cra.trace.event import TraceEvent, build_event, format_timestamp
from cra.trace.jsonl import loads_trace

ORIGIN = "cra.test/log"
KEY = NoteSigner(ORIGIN, bytes(range(32)))
OTHER = NoteSigner(ORIGIN, bytes(range(1, 33)))
START = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


class Governed:
    """A resolver on a ledger, and helpers to run governed calls in one of its sessions."""

    def __init__(self, ledger: AuditLedger | None, seed: int) -> None:
        self.clock = ManualClock(START)
        self.ids = SeededIds(seed, self.clock)
        self.resolver = Resolver(clock=self.clock, ids=self.ids, ledger=ledger)
        self.resolver.load_atlas(EXAMPLES / "customer-support")

    def session(self) -> str:
        return self.resolver.create_session(agent_id="support-bot", goal="Refund order 42", roles=["agent"])

    def rounds(self, sid: str, count: int) -> None:
        """``count`` resolves, each followed by an execute: two attested decisions a round."""
        for _ in range(count):
            request = {
                "carp_version": "1.0",
                "request_id": self.ids.new_id(),
                "timestamp": format_timestamp(self.clock.now()),
                "operation": "resolve",
                "requester": {"agent_id": "support-bot", "session_id": sid},
                "task": {"goal": "Refund order 42", "risk_tier": "low"},
            }
            resolution = self.resolver.resolve(request)
            execute = {
                **request,
                "request_id": self.ids.new_id(),
                "operation": "execute",
                "execution": {
                    "resolution_id": resolution["resolution_id"],
                    "action_id": "order.lookup",
                    "parameters": {"order_id": "42"},
                },
            }
            self.resolver.execute(execute)


def _ledger() -> AuditLedger:
    return AuditLedger(MemoryLedgerStore(), [KEY], origin=ORIGIN, clock=ManualClock(START))


def _dict(bundle: Bundle) -> dict[str, Any]:
    return cast("dict[str, Any]", json.loads(json.dumps(bundle.to_dict())))


def _verify(data: dict[str, Any]) -> Any:
    return verify_bundle(parse_bundle(data), [KEY.verifier])


def _statement(data: dict[str, Any], i: int = 0) -> SessionStatement:
    return open_session_statement(data["sessions"][i], [KEY.verifier])


def _attested(note: str) -> str:
    return cast("str", json.loads(note.split("\n")[1])["attestation_id"])


@functools.cache
def _two_sessions() -> tuple[AuditLedger, str, str]:
    """A ledger holding two ended sessions of three rounds each (cached: hypothesis reuses it)."""
    ledger = _ledger()
    run = Governed(ledger, 3)
    first = run.session()
    run.rounds(first, 3)
    run.resolver.end_session(first)
    second = run.session()
    run.rounds(second, 1)
    run.resolver.end_session(second)
    return ledger, first, second


@functools.cache
def _exported() -> str:
    ledger, first, _ = _two_sessions()
    return json.dumps(ledger.export(first).to_dict())


def _first() -> dict[str, Any]:
    """A fresh copy of the first session's bundle, to tamper with."""
    return cast("dict[str, Any]", json.loads(_exported()))


# -- what verifies, and what it says ----------------------------------------------


def test_an_ended_session_is_proven_whole_with_every_attestation() -> None:
    ledger, first, _ = _two_sessions()
    data = _first()
    report = _verify(data)
    (coverage,) = report.sessions
    trace = [loads_trace(e["entry"])[0] for e in data["entries"]]
    assert coverage.session_id == first
    assert coverage.ended is True
    assert coverage.events == len(trace) == report.events
    assert (coverage.first_index, coverage.last_index) == (data["entries"][0]["index"], data["entries"][-1]["index"])
    assert trace[-1].event_type == "session.ended"
    decisions = decision_events(trace)
    assert len(decisions) == 6  # three resolutions and three execute decisions
    assert coverage.attestations == tuple(sorted(e.event_id for e in decisions))
    assert coverage.unattested_decisions == ()
    statement = _statement(data)
    assert (statement.tree_size, statement.events, statement.ended) == (ledger.size, len(trace), True)
    assert statement.last_event_hash == trace[-1].event_hash
    as_json = report.to_dict()
    assert as_json["format"] == FORMAT
    assert as_json["sessions"] == [
        {
            "session_id": first,
            "complete": True,
            "state": "ended",
            "events": len(trace),
            "first_sequence": 0,
            "last_sequence": len(trace) - 1,
            "first_index": coverage.first_index,
            "last_index": coverage.last_index,
            "attestations": list(coverage.attestations),
            "unattested_decisions": [],
        }
    ]


def test_an_open_session_is_proven_whole_up_to_the_checkpoint_and_then_ended() -> None:
    ledger = _ledger()
    run = Governed(ledger, 7)
    sid = run.session()
    run.rounds(sid, 2)
    early = _dict(ledger.export(sid))
    report = _verify(early)
    (coverage,) = report.sessions
    assert coverage.ended is False
    assert report.to_dict()["sessions"][0]["state"] == "open"
    assert coverage.events == len(run.resolver.get_trace(sid)) == _statement(early).events
    assert len(coverage.attestations) == 4

    run.rounds(sid, 1)
    run.resolver.end_session(sid)
    late = _dict(ledger.export(sid))
    (ended,) = _verify(late).sessions
    assert ended.ended is True
    assert ended.events == len(run.resolver.get_trace(sid)) > coverage.events

    # The open bundle's statement cannot vouch for the later checkpoint, nor the ended one for the earlier.
    swapped = {**late, "sessions": early["sessions"]}
    with pytest.raises(ProofError, match=r"/sessions/0: .* speaks of .* at tree size \d+, not of the bundle's"):
        _verify(swapped)
    claimed = {**early, "sessions": late["sessions"]}
    with pytest.raises(ProofError, match="speaks of"):
        _verify(claimed)


def test_a_trace_sealed_without_attestations_verifies_and_says_its_decisions_are_unattested() -> None:
    """As `cra ledger append` seals a trace file: the log never saw the requests, so it attested nothing."""
    run = Governed(None, 11)
    sid = run.session()
    run.rounds(sid, 2)
    run.resolver.end_session(sid)
    trace = run.resolver.get_trace(sid)
    ledger = _ledger()
    ledger.append(trace)
    data = _dict(ledger.export(sid))
    assert data["attestations"] == []
    (coverage,) = _verify(data).sessions
    assert coverage.ended is True
    assert coverage.attestations == ()
    assert coverage.unattested_decisions == tuple(e.event_id for e in decision_events(trace))
    assert len(coverage.unattested_decisions) == 4


def test_a_bundle_of_two_sessions_needs_the_statement_of_each() -> None:
    ledger, first, second = _two_sessions()
    a, b = _dict(ledger.export(first)), _dict(ledger.export(second))
    assert a["checkpoint"] == b["checkpoint"]
    both = {
        **a,
        "sessions": a["sessions"] + b["sessions"],
        "entries": a["entries"] + b["entries"],
        "attestations": a["attestations"] + b["attestations"],
    }
    report = _verify(both)
    assert {s.session_id for s in report.sessions} == {first, second}
    assert all(s.ended for s in report.sessions)
    with pytest.raises(ProofError, match=f"session {second}: the bundle holds no signed statement"):
        _verify({**both, "sessions": a["sessions"]})
    with pytest.raises(ProofError, match="a second statement"):
        _verify({**both, "sessions": [*both["sessions"], a["sessions"][0]]})


def test_export_states_only_what_lies_below_its_checkpoint_when_another_writer_races_it() -> None:
    """Another writer logs more of the session between the export's two reads of the store."""
    store = _RacingStore()
    ledger = AuditLedger(store, [KEY], origin=ORIGIN, clock=ManualClock(START))
    run = Governed(ledger, 13)
    sid = run.session()
    run.rounds(sid, 1)
    ledger.checkpoint()
    before = ledger.size
    other = AuditLedger(store, [KEY], origin=ORIGIN, clock=ManualClock(START), checkpoint_every=10_000)
    last = run.resolver.get_trace(sid)[-1]
    store.hook = lambda: other.append([_next_event(last, "context.injected")])
    data = _dict(ledger.export(sid))
    assert store.size() == before + 1
    (coverage,) = _verify(data).sessions
    assert _statement(data).tree_size == before
    assert coverage.events == len(run.resolver.get_trace(sid))
    assert coverage.ended is False


class _RacingStore(MemoryLedgerStore):
    """Runs ``hook`` once, right after the first read of a session's indexes."""

    def __init__(self) -> None:
        super().__init__()
        self.hook: Callable[[], object] | None = None

    def session(self, session_id: str) -> list[int]:
        found = super().session(session_id)
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return found


def _next_event(previous: TraceEvent, event_type: str, payload: dict[str, Any] | None = None) -> TraceEvent:
    return build_event(
        previous,
        event_id=f"{previous.event_id[:-4]}{(int(previous.event_id[-4:], 16) + 1) % 65536:04x}",
        trace_id=previous.trace_id,
        span_id=previous.span_id,
        parent_span_id=previous.parent_span_id,
        session_id=previous.session_id,
        timestamp=previous.timestamp,
        event_type=event_type,
        payload=payload if payload is not None else {"block_id": "b", "source": "s", "token_count": 0},
    )


# -- every tampering is refused, with its reason ------------------------------------


def _keep_first_3(data: dict[str, Any]) -> None:
    data["entries"] = data["entries"][:3]


def _keep_first_3_and_no_attestations(data: dict[str, Any]) -> None:
    """The finding as filed."""
    data["entries"] = data["entries"][:3]
    data["attestations"] = []


def _drop_last_event(data: dict[str, Any]) -> None:
    data["entries"].pop()


def _drop_middle_event(data: dict[str, Any]) -> None:
    del data["entries"][len(data["entries"]) // 2]


def _drop_first_event(data: dict[str, Any]) -> None:
    del data["entries"][0]


def _drop_all_attestations(data: dict[str, Any]) -> None:
    data["attestations"] = []


def _drop_one_attestation(data: dict[str, Any]) -> None:
    del data["attestations"][1]


def _duplicate_an_attestation(data: dict[str, Any]) -> None:
    data["attestations"].append(data["attestations"][0])


def _drop_the_statement(data: dict[str, Any]) -> None:
    data["sessions"] = []


def _drop_the_statement_and_the_tail(data: dict[str, Any]) -> None:
    data["sessions"] = []
    data["entries"] = data["entries"][:3]


def _swap_in_the_other_sessions_statement(data: dict[str, Any]) -> None:
    ledger, _, second = _two_sessions()
    data["sessions"] = _dict(ledger.export(second))["sessions"]


def _statement_resigned_by_an_unknown_key(data: dict[str, Any]) -> None:
    data["sessions"][0] = sign_note(data["sessions"][0].split("\n\n")[0] + "\n", [OTHER])


def _statement_edited_to_fewer_events(data: dict[str, Any]) -> None:
    """Edited without the key: its signature no longer verifies."""
    body = data["sessions"][0].split("\n\n")[0] + "\n"
    events = _statement(data).events
    data["sessions"][0] = data["sessions"][0].replace(f'"events":{events}', '"events":3', 1)
    assert data["sessions"][0].split("\n\n")[0] + "\n" != body


def _faulty_log_counts_fewer_events(data: dict[str, Any]) -> None:
    data["sessions"][0] = dataclasses.replace(_statement(data), events=3).sign([KEY])


def _faulty_log_names_another_last_event(data: dict[str, Any]) -> None:
    previous = loads_trace(data["entries"][-2]["entry"])[0]
    data["sessions"][0] = dataclasses.replace(
        _statement(data), last_event_id=previous.event_id, last_event_hash=previous.event_hash
    ).sign([KEY])


def _faulty_log_says_open_when_ended(data: dict[str, Any]) -> None:
    data["sessions"][0] = dataclasses.replace(_statement(data), ended=False).sign([KEY])


def _faulty_log_lists_no_attestations(data: dict[str, Any]) -> None:
    data["sessions"][0] = dataclasses.replace(_statement(data), attestations=()).sign([KEY])


def _faulty_log_lists_a_foreign_attestation(data: dict[str, Any]) -> None:
    ledger, _, second = _two_sessions()
    foreign = _attested(ledger.attestations(second)[0])
    statement = _statement(data)
    listed = tuple(sorted({*statement.attestations, foreign}))
    data["sessions"][0] = dataclasses.replace(statement, attestations=listed).sign([KEY])


def _old_format(data: dict[str, Any]) -> None:
    data["format"] = "cra.dev/trace-bundle/v1"
    del data["sessions"]


TAMPERINGS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "keep_first_3": (_keep_first_3, r"the bundle is truncated: it holds 3 of the \d+ events .* sequences 3 to \d+ are"),
    "keep_first_3_and_no_attestations": (_keep_first_3_and_no_attestations, "the bundle is truncated"),
    "drop_last_event": (_drop_last_event, r"holds (\d+) of the \d+ events .*; sequence \1 is missing"),
    "drop_middle_event": (_drop_middle_event, "the hash chain does not verify: sequence_gap"),
    "drop_first_event": (_drop_first_event, "sequence_gap at event 0: expected sequence 0, found 1"),
    "drop_all_attestations": (_drop_all_attestations, r"the attestation of decision event \S+ \(.*\) is missing"),
    "drop_one_attestation": (_drop_one_attestation, r"the attestation of decision event \S+ \(.*\) is missing"),
    "duplicate_an_attestation": (_duplicate_an_attestation, "a second attestation of event"),
    "drop_the_statement": (_drop_the_statement, "holds no signed statement of the session"),
    "drop_the_statement_and_the_tail": (_drop_the_statement_and_the_tail, "holds no signed statement"),
    "swap_in_the_other_sessions_statement": (
        _swap_in_the_other_sessions_statement,
        "holds a statement of session .* but none of its events",
    ),
    "statement_resigned_by_an_unknown_key": (_statement_resigned_by_an_unknown_key, "/sessions/0: no signature"),
    "statement_edited_to_fewer_events": (_statement_edited_to_fewer_events, "/sessions/0: the signature .* not verify"),
    "faulty_log_counts_fewer_events": (_faulty_log_counts_fewer_events, "the log's statement says it held 3"),
    "faulty_log_names_another_last_event": (_faulty_log_names_another_last_event, "the log's statement names"),
    "faulty_log_says_open_when_ended": (_faulty_log_says_open_when_ended, "says the session was still open"),
    "faulty_log_lists_no_attestations": (_faulty_log_lists_no_attestations, "lists no attestation of event"),
    "faulty_log_lists_a_foreign_attestation": (
        _faulty_log_lists_a_foreign_attestation,
        "lists an attestation of event .* which is not an event of the session",
    ),
    "old_format": (_old_format, "/format: a cra.dev/trace-bundle/v1 bundle cannot show that it holds whole sessions"),
}


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_every_incomplete_bundle_is_refused_with_its_reason(name: str) -> None:
    tamper, reason = TAMPERINGS[name]
    data = _first()
    tamper(data)
    with pytest.raises(ProofError, match=reason):
        _verify(data)


def test_a_missing_attestation_is_named_by_its_event() -> None:
    data = _first()
    dropped = data["attestations"].pop(2)
    event_id = _attested(dropped)
    with pytest.raises(ProofError, match=f"decision event {event_id} ") as raised:
        _verify(data)
    sequence = next(e["entry"] for e in data["entries"] if event_id in e["entry"])
    assert f"sequence {loads_trace(sequence)[0].sequence}," in str(raised.value)


def test_an_open_session_cannot_claim_to_be_ended() -> None:
    ledger = _ledger()
    run = Governed(ledger, 17)
    sid = run.session()
    run.rounds(sid, 1)
    data = _dict(ledger.export(sid))
    claim = dataclasses.replace(_statement(data), ended=True)
    data["sessions"][0] = claim.sign([OTHER])
    with pytest.raises(ProofError, match="/sessions/0: no signature by a trusted key"):
        _verify(data)
    data["sessions"][0] = claim.sign([KEY])  # even the log's own key cannot make it so
    with pytest.raises(ProofError, match="says the session ended, but its last event is"):
        _verify(data)


def test_events_logged_after_session_ended_are_refused() -> None:
    """A log that sealed more of a session after its session.ended event."""
    started = build_event(
        None,
        event_id="01900000-0000-7000-8000-000000000000",
        trace_id="01900000-0000-7000-8000-0000000000aa",
        span_id="01900000-0000-7000-8000-0000000000bb",
        parent_span_id=None,
        session_id="01900000-0000-7000-8000-0000000000cc",
        timestamp=format_timestamp(START),
        event_type="session.started",
        payload={"agent_id": "a", "goal": "g"},
    )
    ended = _next_event(started, "session.ended", {"reason": "completed", "duration_ms": 0, "action_count": 0})
    after = _next_event(ended, "error.occurred", {"code": "x", "message": "y"})
    ledger = _ledger()
    ledger.append([started, ended, after])
    data = _dict(ledger.export(started.session_id))
    assert _statement(data).ended is False
    with pytest.raises(ProofError, match=r"events follow its session.ended event \(sequence 1\)"):
        _verify(data)


# -- properties ------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(keep=st.integers(min_value=1, max_value=200))
def test_any_prefix_of_a_session_is_refused(keep: int) -> None:
    data = _first()
    total = len(data["entries"])
    data["entries"] = data["entries"][: 1 + keep % (total - 1)]
    with pytest.raises(ProofError, match="the bundle is truncated"):
        _verify(data)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_dropping_any_events_is_refused(data_strategy: st.DataObject) -> None:
    data = _first()
    total = len(data["entries"])
    dropped = data_strategy.draw(st.sets(st.integers(0, total - 1), min_size=1, max_size=total - 1))
    data["entries"] = [e for i, e in enumerate(data["entries"]) if i not in dropped]
    with pytest.raises(ProofError, match=r"truncated|does not verify"):
        _verify(data)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_dropping_any_attestations_is_refused_naming_one_of_them(data_strategy: st.DataObject) -> None:
    data = _first()
    notes = data["attestations"]
    dropped = data_strategy.draw(st.sets(st.integers(0, len(notes) - 1), min_size=1))
    data["attestations"] = [n for i, n in enumerate(notes) if i not in dropped]
    with pytest.raises(ProofError, match="is missing; the log attested it") as raised:
        _verify(data)
    assert any(_attested(notes[i]) in str(raised.value) for i in dropped)


# -- the statement's format -----------------------------------------------------------


def _body(**changes: Any) -> str:
    fields = json.loads(_first()["sessions"][0].split("\n")[1])
    fields.update(changes)
    return f"{SESSION_HEADER}\n{json.dumps(fields, sort_keys=True, separators=(',', ':'))}\n"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (lambda: "cra.dev/attestation/v1\n{}\n", "a session statement is the line"),
        (lambda: f"{SESSION_HEADER}\n{{not json\n", "not JSON"),
        (lambda: f"{SESSION_HEADER}\n[]\n", "exactly the fields"),
        (lambda: _body(extra=1), "exactly the fields"),
        (lambda: _body(ended="yes"), "/ended"),
        (lambda: _body(events=0), "/events"),
        (lambda: _body(events=-1), "/events"),
        (lambda: _body(tree_size=True), "/tree_size"),
        (lambda: _body(last_index=10**6), "/last_index"),
        (lambda: _body(last_event_hash="ab"), "/last_event_hash"),
        (lambda: _body(root="AA=="), "/root"),
        (lambda: _body(session_id=""), "/session_id"),
        (lambda: _body(attestations="x"), "/attestations"),
        (lambda: _body(attestations=["b", "a"]), "/attestations"),
        (lambda: _body(attestations=["a", "a"]), "/attestations"),
    ],
)
def test_a_malformed_statement_is_a_proof_error_even_when_signed(body: Callable[[], str], reason: str) -> None:
    with pytest.raises(ProofError, match=reason):
        open_session_statement(sign_note(body(), [KEY]), [KEY.verifier])


def test_the_statement_round_trips_and_the_log_never_signs_a_malformed_one() -> None:
    statement = _statement(_first())
    assert open_session_statement(statement.sign([KEY]), [KEY.verifier]) == statement
    with pytest.raises(ProofError, match="/attestations"):
        dataclasses.replace(statement, attestations=("b", "a")).sign([KEY])


@pytest.mark.parametrize(("value", "path"), [(None, "/sessions"), ([3], "/sessions/0")])
def test_malformed_sessions_name_their_json_path(value: Any, path: str) -> None:
    data = _first()
    data["sessions"] = value
    with pytest.raises(ProofError, match=path):
        parse_bundle(data)


def test_an_entry_of_the_log_that_is_no_event_cannot_be_stated() -> None:
    ledger = _ledger()
    ledger.append_entries([LedgerEntry("e1", "s1", b"not an event")])
    with pytest.raises(LedgerError, match="index 0 is not one TRACE event"):
        ledger.export("s1")

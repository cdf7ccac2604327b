"""TRACE/1.0 events: the hash, chain verification and JSON Lines."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cra.errors import ChainError, ProtocolError, TraceError
from cra.trace.chain import ChainReport, check_chain, verify_chain
from cra.trace.event import GENESIS_HASH, TraceEvent, build_event, compute_event_hash, format_timestamp
from cra.trace.jsonl import dumps_event, dumps_trace, event_from_dict, loads_trace

SESSION = "33333333-3333-3333-3333-333333333333"
CHECK_VECTOR = "f5b4945b0bb5f9adc249a7062a5bf1bbcf6f095edbd8fb1503bbc2d5a05d19c5"


def uuid(n: int, prefix: str = "0") -> str:
    digits = f"{prefix}{n:031x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def reference_hash(e: dict[str, Any], *, ensure_ascii: bool = True) -> str:
    """DESIGN §3, independently: concatenate, canonical JSON with ASCII escapes, SHA-256 of UTF-8."""
    material = "".join(
        [
            e["trace_version"],
            e["event_id"],
            e["trace_id"],
            e["span_id"],
            e["parent_span_id"] or "",
            e["session_id"],
            str(e["sequence"]),
            e["timestamp"],
            e["event_type"],
            json.dumps(e["payload"], sort_keys=True, separators=(",", ":"), ensure_ascii=ensure_ascii),
            e["previous_event_hash"],
        ]
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def check_vector_event() -> TraceEvent:
    return build_event(
        None,
        event_id="01234567-89ab-cdef-0123-456789abcdef",
        trace_id="11111111-1111-1111-1111-111111111111",
        span_id="22222222-2222-2222-2222-222222222222",
        parent_span_id=None,
        session_id=SESSION,
        timestamp="2024-12-28T12:00:00.000000Z",
        event_type="session.started",
        payload={"agent_id": "test-agent", "goal": "Test session"},
    )


def chain(payloads: list[dict[str, Any]], timestamps: list[str] | None = None) -> list[TraceEvent]:
    events: list[TraceEvent] = []
    for i, payload in enumerate(payloads):
        events.append(
            build_event(
                events[-1] if events else None,
                event_id=uuid(i, "e"),
                trace_id=uuid(1, "f"),
                span_id=uuid(i, "a"),
                parent_span_id=None if i == 0 else uuid(0, "a"),
                session_id=SESSION,
                timestamp=timestamps[i] if timestamps else f"2025-01-01T00:00:{i % 60:02d}.000000Z",
                event_type="session.started" if i == 0 else "policy.evaluated",
                payload=payload,
            )
        )
    return events


def chain_error(events: list[TraceEvent]) -> tuple[str, int]:
    with pytest.raises(ChainError) as info:
        verify_chain(events)
    return info.value.kind, info.value.index


# -- the hash --------------------------------------------------------------------------------------------------------


def test_check_vector() -> None:
    event = check_vector_event()
    assert event.event_hash == CHECK_VECTOR
    assert (event.sequence, event.previous_event_hash) == (0, "0" * 64)
    assert reference_hash(event.to_dict()) == CHECK_VECTOR  # the reference implementation agrees with the spec
    verify_chain([event])


def test_check_vector_read_from_json() -> None:
    line = json.dumps(check_vector_event().to_dict())
    (event,) = loads_trace(line)
    assert event.recompute_hash() == CHECK_VECTOR
    verify_chain([event])


def test_non_ascii_payloads_are_hashed_as_ascii_escapes() -> None:
    payload = {"goal": "استرداد المبلغ", "note": "café ☕", "emoji": "\U0001f600"}
    event = build_event(
        None,
        event_id=uuid(1),
        trace_id=uuid(2),
        span_id=uuid(3),
        parent_span_id=None,
        session_id=SESSION,
        timestamp="2025-01-01T00:00:00.000000Z",
        event_type="session.started",
        payload=payload,
    )
    assert event.event_hash == reference_hash(event.to_dict())
    assert "\\u0627" in json.dumps(payload, sort_keys=True, separators=(",", ":"))
    # hashing the raw UTF-8 rendering instead gives another digest, so the check above discriminates
    assert event.event_hash != reference_hash(event.to_dict(), ensure_ascii=False)


def test_compute_event_hash_treats_a_null_parent_as_empty() -> None:
    args: list[Any] = ["1.0", uuid(1), uuid(2), uuid(3), None, SESSION, 4, "2025-01-01T00:00:00.000000Z"]
    rest: list[Any] = ["policy.evaluated", {"b": 1, "a": [True, None]}, "ab" * 32]
    with_null = compute_event_hash(*args, *rest)
    nulled: list[Any] = [*args[:4], "", *args[5:], *rest]
    assert with_null == compute_event_hash(*nulled)
    fields = ["trace_version", "event_id", "trace_id", "span_id", "parent_span_id", "session_id", "sequence"]
    fields += ["timestamp", "event_type", "payload", "previous_event_hash"]
    assert with_null == reference_hash(dict(zip(fields, args + rest, strict=True)))


def test_build_event_links_to_the_previous_event() -> None:
    first, second, third = chain([{"n": 1}, {"n": 2}, {"n": 3}])
    assert (first.sequence, first.previous_event_hash) == (0, GENESIS_HASH)
    assert (second.sequence, second.previous_event_hash) == (1, first.event_hash)
    assert (third.sequence, third.previous_event_hash) == (2, second.event_hash)
    for e in (first, second, third):
        assert e.event_hash == reference_hash(e.to_dict())


def test_a_precomputed_payload_encoding_gives_the_same_hash() -> None:
    payload = {"b": [1, "ب"], "a": None}
    fields: dict[str, Any] = {
        "event_id": uuid(1),
        "trace_id": uuid(2),
        "span_id": uuid(3),
        "parent_span_id": None,
        "session_id": SESSION,
        "timestamp": "2025-01-01T00:00:00.000000Z",
        "event_type": "session.started",
        "payload": payload,
    }
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    assert build_event(None, **fields, payload_json=encoded) == build_event(None, **fields)


def test_the_timestamp_is_hashed_as_given() -> None:
    """The same instant written two ways gives two hashes: nothing is re-rendered."""
    a = chain([{}], ["2025-01-01T00:00:00.000000Z"])[0]
    b = chain([{}], ["2025-01-01T00:00:00Z"])[0]
    assert (a.timestamp, b.timestamp) == ("2025-01-01T00:00:00.000000Z", "2025-01-01T00:00:00Z")
    assert a.event_hash != b.event_hash
    assert b.event_hash == reference_hash(b.to_dict())


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"event_type": "session.paused"}, "/event_type"),
        ({"payload": {"x": float("nan")}}, "/payload"),
        ({"payload": {"x": float("inf")}}, "/payload"),
        ({"payload": {"x": {1, 2}}}, "/payload"),
    ],
)
def test_build_event_refuses_what_cannot_be_hashed(change: dict[str, Any], path: str) -> None:
    fields: dict[str, Any] = {
        "event_id": uuid(1),
        "trace_id": uuid(2),
        "span_id": uuid(3),
        "parent_span_id": None,
        "session_id": SESSION,
        "timestamp": "2025-01-01T00:00:00.000000Z",
        "event_type": "session.started",
        "payload": {},
        **change,
    }
    with pytest.raises(ProtocolError) as info:
        build_event(None, **fields)
    assert info.value.path == path


def test_build_event_refuses_to_continue_another_sessions_chain() -> None:
    (first,) = chain([{}])
    with pytest.raises(ProtocolError) as info:
        build_event(
            first,
            event_id=uuid(9),
            trace_id=uuid(9),
            span_id=uuid(9),
            parent_span_id=None,
            session_id=uuid(7),
            timestamp="2025-01-01T00:00:00.000000Z",
            event_type="session.ended",
            payload={},
        )
    assert info.value.path == "/session_id"


def test_format_timestamp() -> None:
    riyadh = timezone(timedelta(hours=3))
    assert format_timestamp(datetime(2024, 12, 28, 15, 0, tzinfo=riyadh)) == "2024-12-28T12:00:00.000000Z"
    assert format_timestamp(datetime(2024, 12, 28, 12, 0, 0, 7, tzinfo=UTC)) == "2024-12-28T12:00:00.000007Z"
    with pytest.raises(ValueError, match="timezone"):
        format_timestamp(datetime(2024, 12, 28, 12, 0))


# -- chain verification ----------------------------------------------------------------------------------------------


def test_a_valid_chain_verifies_and_reports() -> None:
    events = chain([{"n": i} for i in range(4)])
    verify_chain(events)
    assert check_chain(events) == ChainReport(True, 4)
    assert check_chain(events).to_dict() == {"valid": True, "error": None, "index": None}


def test_an_empty_trace_proves_nothing() -> None:
    assert chain_error([]) == ("empty", 0)
    assert check_chain([]).to_dict() == {"valid": False, "error": "empty", "index": 0}


def flip(hex_digest: str) -> str:
    return ("1" if hex_digest[0] != "1" else "2") + hex_digest[1:]


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda ev: [ev[0], ev[1]._replace(payload={"n": 99}), ev[2]], ("hash_mismatch", 1)),
        (lambda ev: [ev[0], ev[1], ev[2]._replace(event_hash=flip(ev[2].event_hash))], ("hash_mismatch", 2)),
        (lambda ev: [ev[0]._replace(previous_event_hash=flip(GENESIS_HASH)), ev[1], ev[2]], ("chain_broken", 0)),
        (lambda ev: [ev[0], ev[1]._replace(previous_event_hash=ev[0].previous_event_hash), ev[2]], ("chain_broken", 1)),
        (lambda ev: [ev[0], ev[1]._replace(sequence=2), ev[2]], ("sequence_gap", 1)),
        (lambda ev: [ev[0], ev[2]], ("sequence_gap", 1)),
        (lambda ev: [ev[1], ev[2]], ("sequence_gap", 0)),
        (lambda ev: [ev[0], ev[2], ev[1]], ("sequence_gap", 1)),
        (lambda ev: [ev[0], ev[1], ev[2]._replace(session_id=uuid(5))], ("session_mismatch", 2)),
    ],
    ids=[
        "payload",
        "event-hash",
        "genesis-link",
        "link",
        "sequence",
        "deleted-middle",
        "deleted-first",
        "swapped",
        "other-session",
    ],
)
def test_tampering_names_the_first_failure(
    tamper: Callable[[list[TraceEvent]], list[TraceEvent]], expected: tuple[str, int]
) -> None:
    events = tamper(chain([{"n": 0}, {"n": 1}, {"n": 2}]))
    assert chain_error(events) == expected
    report = check_chain(events)
    assert (report.valid, report.error, report.index, report.event_count) == (False, *expected, len(events))
    assert report.detail


def test_a_rewritten_and_rehashed_event_breaks_the_next_link() -> None:
    events = chain([{"n": 0}, {"n": 1}, {"n": 2}])
    forged = events[1]._replace(payload={"n": 100})
    forged = forged._replace(event_hash=forged.recompute_hash())
    assert chain_error([events[0], forged, events[2]]) == ("chain_broken", 2)


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
PAYLOADS = st.dictionaries(st.text(max_size=8), JSON_VALUES, min_size=1, max_size=4)
TIMESTAMPS = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)).map(
    format_timestamp
)


@st.composite
def chains(draw: st.DrawFn) -> list[TraceEvent]:
    size = draw(st.integers(1, 6))
    return chain(
        draw(st.lists(PAYLOADS, min_size=size, max_size=size)), draw(st.lists(TIMESTAMPS, min_size=size, max_size=size))
    )


def mutate(events: list[TraceEvent], kind: str, i: int, j: int) -> tuple[list[TraceEvent], tuple[str, int]] | None:
    """Apply one tampering to a chain; return the result and the failure it must produce (None: not applicable)."""
    ev = list(events)
    e = ev[i]
    if kind == "payload_value":
        key = sorted(e.payload)[0]
        ev[i] = e._replace(payload={**e.payload, key: [e.payload[key]]})
        return ev, ("hash_mismatch", i)
    if kind == "payload_key":
        ev[i] = e._replace(payload={**e.payload, "\x00injected": True})
        return ev, ("hash_mismatch", i)
    if kind == "timestamp":
        ev[i] = e._replace(timestamp=e.timestamp.replace("Z", "+00:00"))
        return ev, ("hash_mismatch", i)
    if kind in ("event_id", "trace_id", "span_id", "parent_span_id"):
        changed: dict[str, Any] = {kind: uuid(i + 77, "d")}
        ev[i] = e._replace(**changed)
        return ev, ("hash_mismatch", i)
    if kind == "event_type":
        ev[i] = e._replace(event_type="action.denied" if e.event_type != "action.denied" else "action.approved")
        return ev, ("hash_mismatch", i)
    if kind == "trace_version":
        ev[i] = e._replace(trace_version="1.1")
        return ev, ("hash_mismatch", i)
    if kind == "sequence":
        ev[i] = e._replace(sequence=e.sequence + 1 + j)
        return ev, ("sequence_gap", i)
    if kind == "previous_hash":
        ev[i] = e._replace(previous_event_hash=flip(e.previous_event_hash))
        return ev, ("chain_broken", i)
    if kind == "event_hash":
        ev[i] = e._replace(event_hash=flip(e.event_hash))
        return ev, ("hash_mismatch", i)
    if kind == "delete":
        if i == len(ev) - 1:
            return None  # dropping the tail leaves a valid, shorter chain; the ledger anchors the length
        del ev[i]
        return ev, ("sequence_gap", i)
    if kind == "swap":
        if i == j:
            return None
        lo, hi = sorted((i, j))
        ev[lo], ev[hi] = ev[hi], ev[lo]
        return ev, ("sequence_gap", lo)
    if kind == "session":
        ev[i] = e._replace(session_id=uuid(i, "5"))
        # the first event defines the session, and its session id is part of its hash
        return ev, ("hash_mismatch", 0) if i == 0 else ("session_mismatch", i)
    raise AssertionError(kind)


MUTATIONS = [
    "payload_value",
    "payload_key",
    "timestamp",
    "event_id",
    "trace_id",
    "span_id",
    "parent_span_id",
    "event_type",
    "trace_version",
    "sequence",
    "previous_hash",
    "event_hash",
    "delete",
    "swap",
    "session",
]


@pytest.mark.slow
@settings(max_examples=600, derandomize=True, deadline=None)
@given(events=chains(), kind=st.sampled_from(MUTATIONS), data=st.data())
def test_every_single_mutation_is_detected(events: list[TraceEvent], kind: str, data: st.DataObject) -> None:
    verify_chain(events)
    i = data.draw(st.integers(0, len(events) - 1), label="i")
    j = data.draw(st.integers(0, len(events) - 1), label="j")
    mutated = mutate(events, kind, i, j)
    if mutated is None:
        return
    tampered, expected = mutated
    assert chain_error(tampered) == expected


# -- JSON Lines ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@settings(max_examples=300, derandomize=True, deadline=None)
@given(events=chains())
@example(events=chain([{"note": "line\u2028separator"}]))
@example(events=chain([{"note": "next\x85line"}, {"استرداد": "مبلغ\u2029"}]))
def test_jsonl_round_trip_is_byte_identical(events: list[TraceEvent]) -> None:
    text = dumps_trace(events)
    assert text.endswith("\n")
    assert text.count("\n") == len(events)
    loaded = loads_trace(text)
    assert loaded == events
    assert dumps_trace(loaded) == text
    verify_chain(loaded)


def test_a_line_keeps_protocol_order_and_utf8() -> None:
    (event,) = chain([{"goal": "استرداد"}])
    line = dumps_event(event)
    assert list(json.loads(line)) == [
        "trace_version",
        "event_id",
        "trace_id",
        "span_id",
        "parent_span_id",
        "session_id",
        "sequence",
        "timestamp",
        "event_type",
        "payload",
        "event_hash",
        "previous_event_hash",
    ]
    assert "استرداد" in line
    assert ", " not in line
    assert ": " not in line


def test_blank_lines_are_ignored() -> None:
    events = chain([{"n": 1}, {"n": 2}])
    text = "\n" + dumps_event(events[0]) + "\n  \n" + dumps_event(events[1]) + "\n\n"
    assert loads_trace(text) == events


def test_absurdly_nested_json_is_a_trace_error() -> None:
    good = dumps_event(check_vector_event())
    with pytest.raises(TraceError) as info:
        loads_trace(good + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    assert info.value.line == 2


def test_a_missing_parent_span_reads_as_null() -> None:
    data = check_vector_event().to_dict()
    del data["parent_span_id"]
    assert event_from_dict(data).parent_span_id is None


def valid_line() -> dict[str, Any]:
    return check_vector_event().to_dict()


@pytest.mark.parametrize(
    ("line", "path", "reason"),
    [
        ('{"trace_version": "1.0",', "", "invalid JSON"),
        ("not json", "", "invalid JSON"),
        ('{"payload": {"x": NaN}}', "", "NaN"),
        ('{"payload": {"x": Infinity}}', "", "Infinity"),
        ('{"a": 1, "a": 2}', "", "duplicate key 'a'"),
        ("[]", "", ""),
        (json.dumps({k: v for k, v in valid_line().items() if k != "event_hash"}), "/event_hash", "required"),
        (json.dumps(valid_line() | {"sequence": -1}), "/sequence", ""),
        (json.dumps(valid_line() | {"sequence": "0"}), "/sequence", ""),
        (json.dumps(valid_line() | {"event_type": "session.paused"}), "/event_type", ""),
        (json.dumps(valid_line() | {"payload": [1]}), "/payload", ""),
        (json.dumps(valid_line() | {"event_hash": "F" * 64}), "/event_hash", ""),
        (json.dumps(valid_line() | {"trace_version": "2.0"}), "/trace_version", ""),
        (json.dumps(valid_line() | {"signature": "x"}), "/signature", "not an allowed property"),
    ],
    ids=[
        "truncated",
        "garbage",
        "nan",
        "infinity",
        "duplicate-key",
        "array",
        "missing-hash",
        "negative-sequence",
        "string-sequence",
        "event-type",
        "payload-array",
        "uppercase-hash",
        "version",
        "extra-property",
    ],
)
def test_loads_trace_errors_name_the_line_and_path(line: str, path: str, reason: str) -> None:
    good = dumps_event(check_vector_event())
    with pytest.raises(TraceError) as info:
        loads_trace(f"{good}\n\n{line}\n{good}\n")
    assert (info.value.line, info.value.path) == (3, path)
    assert reason in info.value.reason
    assert str(info.value).startswith(f"line 3: {path or '/'}: ")

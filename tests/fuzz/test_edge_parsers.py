"""Every parser at CRA's edge, fed arbitrary input: it answers, or it raises CRA's own documented error.

The harness (issue #12, "beyond the findings") drives each parser with hypothesis from
three sources: arbitrary bytes and text, JSON values of every shape, and mutations of a
valid example (a byte dropped, duplicated or flipped), which reach deep into the
formats. Any exception outside the documented tree (``CRAError`` and its subclasses)
is a failure: a ``KeyError``, ``TypeError``, ``IndexError``, ``UnicodeError`` or
``RecursionError`` escaping a parser would be a 500 at the service and a traceback at
the CLI. Examples are derandomized, so a run is repeatable; CI runs the default budget
and ``CRA_FUZZ_EXAMPLES`` raises it for a longer hunt.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cra.errors import AtlasError, CRAError, ProtocolError
from cra.ledger.bundle import open_session_statement, parse_bundle, parse_consistency, verify_bundle
from cra.ledger.checkpoint import parse_checkpoint
from cra.ledger.note import NoteSigner, NoteVerifier, parse_note, sign_note
from cra.ledger.tlog_proof import parse_tlog_proof, verify_tlog_proof
from cra.protocol.atlas import parse_atlas, parse_package
from cra.protocol.canonical import loads_strict, parse_json
from cra.protocol.carp import parse_carp_request
from cra.protocol.validation import SchemaKind, validate
from cra.runtime.clock import ManualClock
from cra.runtime.ids import SeededIds
from cra.runtime.ledger import AuditLedger
from cra.runtime.memory import MemoryLedgerStore
from cra.runtime.resolver import Resolver
from cra.trace.event import format_timestamp
from cra.trace.jsonl import dumps_trace, loads_trace
from tests.conftest import EXAMPLES

BUDGET = int(os.environ.get("CRA_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=BUDGET,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "cra-1.0"


def _logged() -> tuple[NoteVerifier, str, str, bytes, str, str]:
    """A real signed checkpoint, tlog-proof (with its entry), session bundle and trace, from a governed
    session in memory."""
    clock = ManualClock(datetime(2026, 11, 22, 12, 0, tzinfo=UTC))
    ledger = AuditLedger(MemoryLedgerStore(), [KEY], origin=KEY.name, clock=clock)
    ids = SeededIds(5, clock)
    r = Resolver(clock=clock, ids=ids, ledger=ledger)
    r.load_atlas(EXAMPLES / "customer-support")
    sid = r.create_session(agent_id="support-bot", goal="Look up order 42", roles=["agent"])
    r.resolve(
        {
            "carp_version": "1.0",
            "request_id": ids.new_id(),
            "timestamp": format_timestamp(clock.now()),
            "operation": "resolve",
            "requester": {"agent_id": "support-bot", "session_id": sid},
            "task": {"goal": "Look up order 42"},
        }
    )
    r.end_session(sid)
    event_id = r.get_trace(sid)[0].event_id
    note = ledger.checkpoint()
    bundle = json.dumps(ledger.export(sid).to_dict())
    return KEY.verifier, note, ledger.prove(event_id), ledger.entry(event_id), bundle, dumps_trace(r.get_trace(sid))


KEY = NoteSigner("cra.test/fuzz", bytes(range(32)))
VERIFIER, NOTE, TLOG_PROOF, ENTRY, BUNDLE, TRACE = _logged()
CHECKPOINT = NOTE.split("\n\n", 1)[0] + "\n"
STATEMENT = json.loads(BUNDLE)["sessions"][0].split("\n\n", 1)[0] + "\n"  # the log's statement of the session
GOLDEN_REQUEST = (VECTORS / "conformance" / "golden" / "simple-resolve" / "request.json").read_text("utf-8")
GOLDEN_ATLAS = (VECTORS / "conformance" / "golden" / "simple-resolve" / "atlas.json").read_text("utf-8")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def mutations(valid: str) -> st.SearchStrategy[str]:
    """``valid`` with one edit: a span dropped, duplicated, or replaced by other characters."""

    @st.composite
    def mutate(draw: st.DrawFn) -> str:
        i = draw(st.integers(0, len(valid)))
        j = draw(st.integers(i, min(len(valid), i + 16)))
        kind = draw(st.sampled_from(["drop", "repeat", "replace"]))
        if kind == "drop":
            return valid[:i] + valid[j:]
        if kind == "repeat":
            return valid[:j] + valid[i:j] + valid[j:]
        return valid[:i] + draw(st.text(max_size=8)) + valid[j:]

    return mutate()


def texts(valid: str) -> st.SearchStrategy[str]:
    return st.text(max_size=200) | mutations(valid)


def only_documented_errors(parse: Callable[[Any], object], value: Any) -> None:
    with contextlib.suppress(CRAError):
        parse(value)


def _carp(text: str) -> object:
    return parse_carp_request(parse_json(text, source=None, error=ProtocolError))


@FUZZ
@given(data=st.binary(max_size=200) | texts('{"a": [1, 2.5, "x\\u00e9"], "b": {"c": null}}').map(str.encode))
def test_strict_json(data: bytes) -> None:
    only_documented_errors(lambda d: parse_json(d, source=None, error=ProtocolError), data)


@FUZZ
@given(text=texts(GOLDEN_REQUEST))
def test_carp_requests_as_text(text: str) -> None:
    only_documented_errors(_carp, text)


@FUZZ
@given(value=json_values)
def test_carp_requests_as_values(value: Any) -> None:
    only_documented_errors(parse_carp_request, value)


@FUZZ
@given(text=texts(TRACE))
def test_trace_lines(text: str) -> None:
    only_documented_errors(loads_trace, text)


@FUZZ
@given(text=texts(GOLDEN_ATLAS))
def test_atlas_manifests(text: str) -> None:
    only_documented_errors(lambda t: parse_atlas(parse_json(t, source=None, error=AtlasError)), text)


@FUZZ
@given(
    files=st.dictionaries(
        st.sampled_from(["atlas.json", "policies/p.json", "context/a.md", "x"]), st.binary(max_size=80)
    )
)
def test_atlas_packages(files: dict[str, bytes]) -> None:
    only_documented_errors(parse_package, {"atlas.json": GOLDEN_ATLAS.encode(), **files})


@FUZZ
@given(value=json_values)
def test_schemas(value: Any) -> None:
    kinds: tuple[SchemaKind, ...] = ("carp-request", "carp-resolution", "trace-event", "atlas-manifest")
    for kind in kinds:
        only_documented_errors(functools.partial(validate, kind), value)


@FUZZ
@given(text=texts(CHECKPOINT))
def test_checkpoints(text: str) -> None:
    only_documented_errors(parse_checkpoint, text)


@FUZZ
@given(text=texts(NOTE))
def test_signed_notes(text: str) -> None:
    only_documented_errors(parse_note, text)


@FUZZ
@given(text=texts(TLOG_PROOF))
def test_tlog_proofs(text: str) -> None:
    only_documented_errors(parse_tlog_proof, text)


@FUZZ
@given(value=json_values)
def test_bundles_as_values(value: Any) -> None:
    only_documented_errors(parse_bundle, value)
    only_documented_errors(parse_consistency, value)


@FUZZ
@given(text=mutations(BUNDLE))
def test_bundles_parsed_and_verified(text: str) -> None:
    def check(t: str) -> None:
        verify_bundle(parse_bundle(parse_json(t, source=None, error=ProtocolError)), [VERIFIER])

    only_documented_errors(check, text)


@FUZZ
@given(text=mutations(STATEMENT))
def test_session_statements_signed_by_the_log(text: str) -> None:
    """A statement's body reaches its parser only under a trusted signature, so each mutation is signed."""
    only_documented_errors(lambda t: open_session_statement(sign_note(t, [KEY]), [VERIFIER]), text)


@FUZZ
@given(text=mutations(TLOG_PROOF))
def test_tlog_proofs_verified(text: str) -> None:
    only_documented_errors(lambda t: verify_tlog_proof(t, ENTRY, [VERIFIER]), text)


def test_the_seeds_are_valid_so_mutations_start_from_real_formats() -> None:
    """The unmutated artefacts parse and verify: the harness explores around real inputs."""
    verify_bundle(parse_bundle(parse_json(BUNDLE, source=None, error=ProtocolError)), [VERIFIER])
    parse_checkpoint(CHECKPOINT)
    open_session_statement(sign_note(STATEMENT, [KEY]), [VERIFIER])
    parse_note(NOTE)
    verify_tlog_proof(TLOG_PROOF, ENTRY, [VERIFIER])
    parse_carp_request(loads_strict(GOLDEN_REQUEST))
    assert len(loads_trace(TRACE)) > 1

"""Export bundles and attestations: what verifies, and every tampering that must not.

The rollback case (a bundle older than the previous checkpoint) is in tests/e2e/test_ledger_cli.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from tests.conftest import EXAMPLES

from cra.errors import ProofError
from cra.ledger.attestation import verify_attestation
from cra.ledger.bundle import Bundle, parse_bundle, parse_consistency, verify_bundle
from cra.ledger.checkpoint import Checkpoint, sign_checkpoint
from cra.ledger.merkle import leaf_hash
from cra.ledger.note import NoteSigner, sign_note
from cra.runtime.clock import ManualClock
from cra.runtime.ids import SeededIds
from cra.runtime.ledger import AuditLedger
from cra.runtime.memory import MemoryLedgerStore
from cra.runtime.resolver import Resolver
from cra.trace.event import format_timestamp

ORIGIN = "cra.test/log"
KEY = NoteSigner(ORIGIN, bytes(range(32)))
OTHER = NoteSigner(ORIGIN, bytes(range(1, 33)))


def _session(ledger: AuditLedger, clock: ManualClock, ids: SeededIds) -> str:
    r = Resolver(clock=clock, ids=ids, ledger=ledger)
    r.load_atlas(EXAMPLES / "customer-support")
    sid = r.create_session(agent_id="support-bot", goal="Refund order 42", roles=["agent"])
    request = {
        "carp_version": "1.0",
        "request_id": ids.new_id(),
        "timestamp": format_timestamp(clock.now()),
        "operation": "resolve",
        "requester": {"agent_id": "support-bot", "session_id": sid},
        "task": {"goal": "Refund order 42", "risk_tier": "low"},
    }
    resolution = r.resolve(request)
    execute = {
        **request,
        "request_id": ids.new_id(),
        "operation": "execute",
        "execution": {
            "resolution_id": resolution["resolution_id"],
            "action_id": "order.lookup",
            "parameters": {"order_id": "42"},
        },
    }
    r.execute(execute)
    r.end_session(sid)
    return sid


@pytest.fixture
def logged() -> tuple[AuditLedger, str, str]:
    """A ledger holding two sessions, and the id of the first and of the second."""
    clock = ManualClock(datetime(2026, 11, 22, 12, 0, tzinfo=UTC))
    ledger = AuditLedger(MemoryLedgerStore(), [KEY], origin=ORIGIN, clock=clock)
    ids = SeededIds(3, clock)
    first = _session(ledger, clock, ids)
    second = _session(ledger, clock, ids)
    return ledger, first, second


def _dict(bundle: Bundle) -> dict[str, Any]:
    return cast("dict[str, Any]", json.loads(json.dumps(bundle.to_dict())))


def test_a_session_bundle_verifies_and_round_trips(logged: tuple[AuditLedger, str, str]) -> None:
    ledger, first, _ = logged
    bundle = ledger.export(first)
    report = verify_bundle(parse_bundle(_dict(bundle)), [KEY.verifier])
    assert [s.session_id for s in report.sessions] == [first]
    assert report.events == len(bundle.entries) == len(ledger.export(first).entries)
    assert len(report.attestations) == 2  # the resolution and the execute decision
    assert report.to_dict()["tree_size"] == ledger.size
    (session,) = report.to_dict()["sessions"]
    assert session["state"] == "ended"
    assert (session["first_sequence"], session["last_sequence"]) == (0, report.events - 1)
    assert session["attestations"] == sorted(a.attestation_id for a in report.attestations)
    assert session["unattested_decisions"] == []


@pytest.mark.parametrize(
    "tamper",
    [
        "entry_byte",
        "entry_dropped",
        "entry_duplicated",
        "proof_node",
        "proof_truncated",
        "index",
        "checkpoint_root",
        "checkpoint_resigned_by_unknown_key",
        "attestation_swapped",
        "attestation_resigned_by_unknown_key",
        "order",
    ],
)
def test_every_tampering_of_a_bundle_is_rejected(logged: tuple[AuditLedger, str, str], tamper: str) -> None:
    ledger, first, second = logged
    data = _dict(ledger.export(first))
    entries = data["entries"]
    if tamper == "entry_byte":
        entries[2]["entry"] = entries[2]["entry"].replace('"sequence":2', '"sequence":3')
    elif tamper == "entry_dropped":
        del entries[1]
    elif tamper == "entry_duplicated":
        entries.append(entries[0])
    elif tamper == "proof_node":
        node = entries[0]["proof"][0]
        entries[0]["proof"][0] = ("A" if node[0] != "A" else "B") + node[1:]
    elif tamper == "proof_truncated":
        entries[0]["proof"].pop()
    elif tamper == "index":
        entries[0]["index"] += 1
    elif tamper == "checkpoint_root":
        lines = data["checkpoint"].split("\n")
        lines[2] = lines[2].replace(lines[2][0], "A" if lines[2][0] != "A" else "B", 1)
        data["checkpoint"] = "\n".join(lines)
    elif tamper == "checkpoint_resigned_by_unknown_key":
        data["checkpoint"] = sign_note(data["checkpoint"].split("\n\n")[0] + "\n", [OTHER])
    elif tamper == "attestation_swapped":
        data["attestations"][0] = ledger.attestations(second)[0]
    elif tamper == "attestation_resigned_by_unknown_key":
        data["attestations"][0] = sign_note(data["attestations"][0].split("\n\n")[0] + "\n", [OTHER])
    elif tamper == "order":
        entries[0], entries[1] = entries[1], entries[0]
        entries[0]["index"], entries[1]["index"] = entries[1]["index"], entries[0]["index"]
    with pytest.raises(ProofError):
        verify_bundle(parse_bundle(data), [KEY.verifier])


def test_the_previous_checkpoint_must_be_extended_not_rolled_back_or_forked() -> None:
    clock = ManualClock(datetime(2026, 11, 22, 12, 0, tzinfo=UTC))
    ledger = AuditLedger(MemoryLedgerStore(), [KEY], origin=ORIGIN, clock=clock)
    ids = SeededIds(5, clock)
    first = _session(ledger, clock, ids)
    old = ledger.checkpoint()
    second = _session(ledger, clock, ids)
    since = int(old.split("\n")[1])
    newer = ledger.export(second, since=since)
    report = verify_bundle(newer, [KEY.verifier], previous=old)
    assert report.previous is not None
    assert report.previous.size == since
    assert verify_bundle(newer, [KEY.verifier], previous=newer.checkpoint).previous is not None  # same size
    plain = ledger.export(second)
    with pytest.raises(ProofError, match="no consistency proof"):
        verify_bundle(plain, [KEY.verifier], previous=old)
    proof = ledger.consistency(since, int(plain.checkpoint.split("\n")[1]))
    assert verify_bundle(plain, [KEY.verifier], previous=old, consistency=[proof]).previous is not None
    nodes = proof.to_dict()["proof"]
    nodes[0] = ("A" if nodes[0][0] != "A" else "B") + nodes[0][1:]
    wrong = parse_consistency({**proof.to_dict(), "proof": nodes})
    with pytest.raises(ProofError):
        verify_bundle(plain, [KEY.verifier], previous=old, consistency=[wrong])
    forked = sign_note(f"{ORIGIN}\n{since}\n{'A' * 43}=\n", [KEY])
    with pytest.raises(ProofError):
        verify_bundle(ledger.export(first), [KEY.verifier], previous=forked)


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ([], "/"),
        ({"format": "x"}, "/"),
        (
            {"format": "other", "checkpoint": "", "sessions": [], "entries": [], "attestations": [], "consistency": []},
            "/format",
        ),
        (
            {
                "format": "cra.dev/trace-bundle/v2",
                "checkpoint": 1,
                "sessions": [],
                "entries": [],
                "attestations": [],
                "consistency": [],
            },
            "/checkpoint",
        ),
        (
            {
                "format": "cra.dev/trace-bundle/v2",
                "checkpoint": "",
                "sessions": [],
                "entries": [{"index": -1, "entry": "", "proof": []}],
                "attestations": [],
                "consistency": [],
            },
            "/entries/0/index",
        ),
        (
            {
                "format": "cra.dev/trace-bundle/v2",
                "checkpoint": "",
                "sessions": [],
                "entries": [{"index": 0, "entry": "", "proof": ["AA=="]}],
                "attestations": [],
                "consistency": [],
            },
            "/entries/0/proof/0",
        ),
        (
            {
                "format": "cra.dev/trace-bundle/v2",
                "checkpoint": "",
                "sessions": [],
                "entries": [],
                "attestations": [3],
                "consistency": [],
            },
            "/attestations/0",
        ),
    ],
)
def test_malformed_bundles_name_the_json_path(data: Any, path: str) -> None:
    with pytest.raises(ProofError, match=path):
        parse_bundle(data)


def test_an_attestation_verifies_with_its_entry_and_proof_and_nothing_else(
    logged: tuple[AuditLedger, str, str],
) -> None:
    ledger, first, second = logged
    note = ledger.attestations(first)[-1]
    attestation_id = json.loads(note.split("\n")[1])["attestation_id"]
    evidence = ledger.attestation(attestation_id)
    attestation, proof, checkpoint = verify_attestation(
        evidence.attestation, evidence.entry, evidence.proof, [KEY.verifier]
    )
    assert attestation.decision == "allow"
    assert attestation.action_id == "order.lookup"
    assert proof.index == attestation.log_index
    assert checkpoint.origin == ORIGIN
    other = ledger.attestation(json.loads(ledger.attestations(second)[-1].split("\n")[1])["attestation_id"])
    for bad in (
        (evidence.attestation, other.entry, evidence.proof),
        (evidence.attestation, evidence.entry, other.proof),
        (other.attestation, evidence.entry, evidence.proof),
        (evidence.attestation, evidence.entry.replace(b'"allow"', b'"deny"'), evidence.proof),
    ):
        with pytest.raises(ProofError):
            verify_attestation(*bad, [KEY.verifier])
    with pytest.raises(ProofError):
        verify_attestation(evidence.attestation, evidence.entry, evidence.proof, [OTHER.verifier])


@pytest.mark.parametrize(
    "entry",
    [
        lambda lines: lines[0] + "\n" + lines[1],  # two events in one entry
        lambda lines: "",  # an empty entry
        lambda lines: lines[0] + "\r",  # a stray line break
        lambda lines: "[1, 2]",  # JSON that is no event
    ],
)
def test_a_logged_entry_that_is_not_exactly_one_event_is_a_proof_error(
    logged: tuple[AuditLedger, str, str], entry: Any
) -> None:
    """Even when a (faulty or hostile) log really holds such bytes under a signed checkpoint."""
    ledger, first, _ = logged
    lines = [e["entry"] for e in _dict(ledger.export(first))["entries"]]
    text = entry(lines)
    checkpoint = sign_checkpoint(Checkpoint(ORIGIN, 1, leaf_hash(text.encode())), [KEY])
    bundle = {
        "format": "cra.dev/trace-bundle/v2",
        "checkpoint": checkpoint,
        "sessions": [],
        "entries": [{"index": 0, "entry": text, "proof": []}],
        "attestations": [],
        "consistency": [],
    }
    with pytest.raises(ProofError, match="/entries/0/entry"):
        verify_bundle(parse_bundle(bundle), [KEY.verifier])


def test_an_entry_with_no_utf8_encoding_is_a_proof_error(logged: tuple[AuditLedger, str, str]) -> None:
    ledger, first, _ = logged
    data = _dict(ledger.export(first))
    data["entries"][0]["entry"] = "\ud800"
    with pytest.raises(ProofError, match="/entries/0/entry"):
        parse_bundle(data)

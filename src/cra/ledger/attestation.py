"""Attestations: a signed statement of one decision, bound to its place in the log.

An attestation binds the SHA-256 of the request the decision answered, the atlas
versions and digests it was decided under, the decision, and the log index and
leaf hash of the TRACE event that records it. It is a C2SP signed note signed by
the log's keys, so the same verifier keys check checkpoints and attestations:

    cra.dev/attestation/v1
    {"action_id":…,"atlases":[…],"decision":…,…}          (canonical JSON, one line)

With the event's exact bytes and a tlog-proof for its index, anyone can check
offline that the decision was logged, unaltered, at that index
(:func:`verify_attestation`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cra.errors import ProofError
from cra.ledger._base64 import b64, unb64
from cra.ledger.checkpoint import Checkpoint
from cra.ledger.merkle import HASH_SIZE, leaf_hash
from cra.ledger.note import NoteSigner, NoteVerifier, open_note, sign_note
from cra.ledger.tlog_proof import TlogProof, verify_tlog_proof
from cra.protocol.atlas import AtlasRef

__all__ = ["HEADER", "AtlasRef", "Attestation", "open_attestation", "verify_attestation"]

HEADER = "cra.dev/attestation/v1"
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_DECISIONS = frozenset({"allow", "deny", "requires_approval", "partial"})


@dataclass(frozen=True, slots=True)
class Attestation:
    """One decision, as the log's keys attest it."""

    attestation_id: str
    """The id of the TRACE event that records the decision."""
    origin: str
    log_index: int
    leaf_hash: bytes
    session_id: str
    event_type: str
    decision: str
    action_id: str | None
    input_hash: str
    atlases: tuple[AtlasRef, ...]
    timestamp: str

    def body(self) -> str:
        """The note text: the header line and the statement as canonical JSON."""
        statement = {
            "action_id": self.action_id,
            "atlases": [{"atlas_id": a.atlas_id, "digest": a.digest, "version": a.version} for a in self.atlases],
            "attestation_id": self.attestation_id,
            "decision": self.decision,
            "event_type": self.event_type,
            "input_hash": self.input_hash,
            "leaf_hash": b64(self.leaf_hash),
            "log_index": self.log_index,
            "origin": self.origin,
            "session_id": self.session_id,
            "timestamp": self.timestamp,
        }
        line = json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return f"{HEADER}\n{line}\n"

    def sign(self, signers: Sequence[NoteSigner]) -> str:
        return sign_note(self.body(), signers)


_FIELDS = frozenset(
    {
        "action_id",
        "atlases",
        "attestation_id",
        "decision",
        "event_type",
        "input_hash",
        "leaf_hash",
        "log_index",
        "origin",
        "session_id",
        "timestamp",
    }
)


def _text(data: dict[str, object], name: str) -> str:
    value = data[name]
    if not isinstance(value, str) or not value:
        raise ProofError(f"/{name}: must be a non-empty string")
    return value


def _parse(text: str) -> Attestation:
    lines = text.split("\n")
    if len(lines) != 3 or lines[0] != HEADER or lines[2]:
        raise ProofError(f"an attestation is the line {HEADER!r} and one line of JSON")
    try:
        data = json.loads(lines[1])
    except ValueError as exc:
        raise ProofError(f"the attestation statement is not JSON: {exc}") from exc
    if not isinstance(data, dict) or set(data) != _FIELDS:
        raise ProofError(f"the attestation statement must be an object with exactly the fields {sorted(_FIELDS)}")
    index = data["log_index"]
    if type(index) is not int or index < 0:
        raise ProofError("/log_index: must be a non-negative integer")
    if data["decision"] not in _DECISIONS:
        raise ProofError(f"/decision: must be one of {sorted(_DECISIONS)}")
    if not _SHA256.fullmatch(_text(data, "input_hash")):
        raise ProofError("/input_hash: must be sha256: and 64 lowercase hex digits")
    leaf = unb64(_text(data, "leaf_hash"), "/leaf_hash")
    if len(leaf) != HASH_SIZE:
        raise ProofError(f"/leaf_hash: must be {HASH_SIZE} bytes")
    action = data["action_id"]
    if action is not None:
        action = _text(data, "action_id")
    atlases = data["atlases"]
    if not isinstance(atlases, list):
        raise ProofError("/atlases: must be an array")
    refs = []
    for i, item in enumerate(atlases):
        if not isinstance(item, dict) or set(item) != {"atlas_id", "digest", "version"}:
            raise ProofError(f"/atlases/{i}: must be an object of atlas_id, version and digest")
        refs.append(AtlasRef(*(_text(item, k) for k in ("atlas_id", "version", "digest"))))
    return Attestation(
        attestation_id=_text(data, "attestation_id"),
        origin=_text(data, "origin"),
        log_index=index,
        leaf_hash=leaf,
        session_id=_text(data, "session_id"),
        event_type=_text(data, "event_type"),
        decision=_text(data, "decision"),
        action_id=action,
        input_hash=_text(data, "input_hash"),
        atlases=tuple(refs),
        timestamp=_text(data, "timestamp"),
    )


def open_attestation(note: str | bytes, verifiers: Sequence[NoteVerifier]) -> Attestation:
    """The attestation in a signed note, once a trusted key's signature on it verified."""
    return _parse(open_note(note, verifiers).text)


def verify_attestation(
    note: str | bytes, entry: bytes, proof: str | bytes, verifiers: Sequence[NoteVerifier]
) -> tuple[Attestation, TlogProof, Checkpoint]:
    """Return only if the attestation is signed by a trusted key, ``entry`` is the event it
    names (its leaf hash and event id), and ``proof`` shows that entry at the attested
    index of the attested log under a checkpoint signed by a trusted key."""
    attestation = open_attestation(note, verifiers)
    if leaf_hash(entry) != attestation.leaf_hash:
        raise ProofError("the entry is not the event the attestation names: its leaf hash differs")
    try:
        event = json.loads(entry)
    except ValueError as exc:
        raise ProofError("the entry is not a JSON TRACE event") from exc
    if not isinstance(event, dict) or event.get("event_id") != attestation.attestation_id:
        raise ProofError("the entry's event id is not the attestation's")
    if event.get("session_id") != attestation.session_id or event.get("event_type") != attestation.event_type:
        raise ProofError("the entry's session or event type is not the attestation's")
    tlog_proof, checkpoint = verify_tlog_proof(proof, entry, verifiers, origin=attestation.origin)
    if tlog_proof.index != attestation.log_index:
        raise ProofError(
            f"the proof is for index {tlog_proof.index}, the attestation for index {attestation.log_index}"
        )
    return attestation, tlog_proof, checkpoint

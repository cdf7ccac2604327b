"""Trace export bundles: a session's events with the evidence that the log holds them.

A bundle is one JSON document::

    {
      "format": "cra.dev/trace-bundle/v1",
      "checkpoint": "<signed checkpoint note>",
      "entries": [{"index": 17, "entry": "<the event's exact JSON line>", "proof": ["<b64>", ...]}, ...],
      "attestations": ["<signed attestation note>", ...],
      "consistency": [{"size1": 10, "size2": 42, "proof": ["<b64>", ...]}, ...]
    }

:func:`verify_bundle` checks it offline with nothing but the log's verifier
keys: the checkpoint's signature, every entry's inclusion, every session's hash
chain, every attestation, and, given a checkpoint the auditor saw earlier, that
the log only grew since.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cra.errors import ChainError, ProofError, TraceError
from cra.ledger._base64 import b64, unb64
from cra.ledger.attestation import Attestation, open_attestation
from cra.ledger.checkpoint import Checkpoint, open_checkpoint
from cra.ledger.merkle import HASH_SIZE, leaf_hash, verify_consistency, verify_inclusion
from cra.ledger.note import NoteVerifier
from cra.trace.chain import verify_chain
from cra.trace.event import TraceEvent
from cra.trace.jsonl import loads_trace

__all__ = [
    "FORMAT",
    "Bundle",
    "BundleEntry",
    "BundleReport",
    "ConsistencyProof",
    "parse_bundle",
    "parse_consistency",
    "verify_bundle",
]

FORMAT = "cra.dev/trace-bundle/v1"


def _int(value: Any, path: str) -> int:
    if type(value) is not int or value < 0:
        raise ProofError(f"{path}: must be a non-negative integer")
    return value


def _hashes(value: Any, path: str) -> tuple[bytes, ...]:
    if not isinstance(value, list):
        raise ProofError(f"{path}: must be an array of base64 hashes")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ProofError(f"{path}/{i}: must be a base64 string")
        node = unb64(item, f"{path}/{i}")
        if len(node) != HASH_SIZE:
            raise ProofError(f"{path}/{i}: must be a {HASH_SIZE}-byte hash")
        out.append(node)
    return tuple(out)


def _object(value: Any, path: str, keys: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ProofError(f"{path or '/'}: must be an object")
    if set(value) != keys:
        raise ProofError(f"{path or '/'}: must have exactly the fields {sorted(keys)}")
    return value


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    """A consistency proof between two tree sizes (the shape of the RFC test vectors)."""

    size1: int
    size2: int
    proof: tuple[bytes, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"size1": self.size1, "size2": self.size2, "proof": [b64(n) for n in self.proof]}


def parse_consistency(data: Any, path: str = "") -> ConsistencyProof:
    obj = _object(data, path, {"size1", "size2", "proof"})
    return ConsistencyProof(
        _int(obj["size1"], f"{path}/size1"), _int(obj["size2"], f"{path}/size2"), _hashes(obj["proof"], f"{path}/proof")
    )


@dataclass(frozen=True, slots=True)
class BundleEntry:
    """One event: its log index, its exact bytes and its inclusion path."""

    index: int
    entry: bytes
    proof: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Bundle:
    checkpoint: str
    entries: tuple[BundleEntry, ...]
    attestations: tuple[str, ...] = ()
    consistency: tuple[ConsistencyProof, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "checkpoint": self.checkpoint,
            "entries": [
                {"index": e.index, "entry": e.entry.decode("utf-8"), "proof": [b64(n) for n in e.proof]}
                for e in self.entries
            ],
            "attestations": list(self.attestations),
            "consistency": [c.to_dict() for c in self.consistency],
        }


def parse_bundle(data: Any) -> Bundle:
    """A bundle from its parsed JSON; raises :class:`~cra.errors.ProofError` with the JSON path."""
    obj = _object(data, "", {"format", "checkpoint", "entries", "attestations", "consistency"})
    if obj["format"] != FORMAT:
        raise ProofError(f"/format: must be {FORMAT!r}")
    if not isinstance(obj["checkpoint"], str):
        raise ProofError("/checkpoint: must be a signed checkpoint note")
    for key in ("entries", "attestations", "consistency"):
        if not isinstance(obj[key], list):
            raise ProofError(f"/{key}: must be an array")
    entries = []
    for i, item in enumerate(obj["entries"]):
        path = f"/entries/{i}"
        e = _object(item, path, {"index", "entry", "proof"})
        if not isinstance(e["entry"], str):
            raise ProofError(f"{path}/entry: must be the event's JSON line")
        try:
            entry = e["entry"].encode("utf-8")
        except UnicodeEncodeError:
            raise ProofError(f"{path}/entry: is not valid Unicode") from None
        entries.append(BundleEntry(_int(e["index"], f"{path}/index"), entry, _hashes(e["proof"], f"{path}/proof")))
    for i, note in enumerate(obj["attestations"]):
        if not isinstance(note, str):
            raise ProofError(f"/attestations/{i}: must be a signed attestation note")
    consistency = tuple(parse_consistency(c, f"/consistency/{i}") for i, c in enumerate(obj["consistency"]))
    return Bundle(obj["checkpoint"], tuple(entries), tuple(obj["attestations"]), consistency)


@dataclass(frozen=True, slots=True)
class BundleReport:
    """What a verified bundle proved."""

    checkpoint: Checkpoint
    sessions: tuple[str, ...]
    events: int
    attestations: tuple[Attestation, ...]
    previous: Checkpoint | None

    def to_dict(self) -> dict[str, Any]:
        cp = self.checkpoint
        return {
            "verified": True,
            "origin": cp.origin,
            "tree_size": cp.size,
            "root": b64(cp.root),
            "sessions": list(self.sessions),
            "events": self.events,
            "attestations": [a.attestation_id for a in self.attestations],
            "consistent_with": None if self.previous is None else self.previous.size,
        }


def _events(bundle: Bundle) -> list[TraceEvent]:
    """Each entry as a TRACE event: exactly one JSON line, one event."""
    events = []
    for i, item in enumerate(bundle.entries):
        try:
            text = item.entry.decode("utf-8")
        except UnicodeDecodeError:
            raise ProofError(f"/entries/{i}/entry: is not UTF-8") from None
        if "\n" in text or "\r" in text:
            raise ProofError(f"/entries/{i}/entry: must be one JSON line, without line breaks")
        try:
            parsed = loads_trace(text)
        except TraceError as exc:
            raise ProofError(f"/entries/{i}/entry: is not a TRACE event: {exc}") from exc
        if len(parsed) != 1:
            raise ProofError(f"/entries/{i}/entry: must hold exactly one TRACE event")
        events.append(parsed[0])
    return events


def _check_previous(previous: Checkpoint, current: Checkpoint, proofs: Sequence[ConsistencyProof]) -> None:
    if previous.size > current.size:
        raise ProofError(
            f"the checkpoint rolls the log back: size {current.size} is older than the previous checkpoint's "
            f"{previous.size}"
        )
    if previous.size == current.size:
        if previous.root != current.root:
            raise ProofError(f"two checkpoints of size {current.size} disagree on the root: the log forked")
        return
    proof = next((p for p in proofs if (p.size1, p.size2) == (previous.size, current.size)), None)
    if proof is None:
        raise ProofError(f"no consistency proof from size {previous.size} to size {current.size} was given")
    verify_consistency(previous.size, current.size, previous.root, current.root, proof.proof)


def verify_bundle(
    bundle: Bundle,
    verifiers: Sequence[NoteVerifier],
    *,
    previous: str | bytes | None = None,
    consistency: Sequence[ConsistencyProof] = (),
) -> BundleReport:
    """Return what the bundle proves only if every check passes; raise
    :class:`~cra.errors.ProofError` naming the first that fails.

    ``previous`` is a signed checkpoint the auditor saw before; the bundle's
    checkpoint must then extend it, shown by a consistency proof in the bundle
    or in ``consistency``.
    """
    checkpoint = open_checkpoint(bundle.checkpoint, verifiers)
    if not bundle.entries:
        raise ProofError("the bundle holds no events")
    seen: set[int] = set()
    for i, item in enumerate(bundle.entries):
        if item.index in seen:
            raise ProofError(f"/entries/{i}: log index {item.index} appears twice")
        seen.add(item.index)
        try:
            verify_inclusion(item.index, checkpoint.size, leaf_hash(item.entry), item.proof, checkpoint.root)
        except ProofError as exc:
            raise ProofError(f"/entries/{i}: event at log index {item.index} is not in the log: {exc}") from exc
    events = _events(bundle)
    sessions: dict[str, list[tuple[int, TraceEvent]]] = {}
    for item, event in zip(bundle.entries, events, strict=True):
        sessions.setdefault(event.session_id, []).append((item.index, event))
    for session_id, logged in sessions.items():
        logged.sort(key=lambda pair: pair[1].sequence)
        try:
            verify_chain([event for _, event in logged])
        except ChainError as exc:
            raise ProofError(f"session {session_id}: the hash chain does not verify: {exc}") from exc
        indexes = [index for index, _ in logged]
        if indexes != sorted(indexes):
            raise ProofError(f"session {session_id}: the log holds its events out of chain order")
    by_id = {event.event_id: item for item, event in zip(bundle.entries, events, strict=True)}
    attestations = []
    for i, note in enumerate(bundle.attestations):
        try:
            att = open_attestation(note, verifiers)
        except ProofError as exc:
            raise ProofError(f"/attestations/{i}: {exc}") from exc
        named = by_id.get(att.attestation_id)
        if named is None:
            raise ProofError(f"/attestations/{i}: names event {att.attestation_id}, which the bundle does not hold")
        if (att.origin, att.log_index, att.leaf_hash) != (checkpoint.origin, named.index, leaf_hash(named.entry)):
            raise ProofError(f"/attestations/{i}: its log, index or leaf hash is not the event's")
        attestations.append(att)
    before = None
    if previous is not None:
        before = open_checkpoint(previous, verifiers, origin=checkpoint.origin)
        _check_previous(before, checkpoint, (*bundle.consistency, *consistency))
    return BundleReport(checkpoint, tuple(sessions), len(events), tuple(attestations), before)

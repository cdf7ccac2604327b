"""Trace export bundles: whole sessions with the evidence that the log holds them, all of them.

A bundle is one JSON document::

    {
      "format": "cra.dev/trace-bundle/v2",
      "checkpoint": "<signed checkpoint note>",
      "sessions": ["<signed session statement note>", ...],
      "entries": [{"index": 17, "entry": "<the event's exact JSON line>", "proof": ["<b64>", ...]}, ...],
      "attestations": ["<signed attestation note>", ...],
      "consistency": [{"size1": 10, "size2": 42, "proof": ["<b64>", ...]}, ...]
    }

Each session statement (:class:`SessionStatement`) is the log's signed word on one
session at the bundle's checkpoint: how many events of it the log held below that
tree size, which one was the last, whether it was ``session.ended``, and which of
its decisions the log attested. An offline verifier cannot prove from a Merkle log
alone that no further event of a session lies below a tree size (that would take
every entry of the log), so the log states it and signs it, as it signs
attestations, and a statement that later proves false is the log's own signed lie.

:func:`verify_bundle` checks a bundle offline with nothing but the log's verifier
keys: the checkpoint's signature, every entry's inclusion, every session's hash
chain from its first event, that the bundle holds every event and every
attestation its session statement names, and, given a checkpoint the auditor saw
earlier, that the log only grew since. Format ``v1`` bundles, which carried no
session statement and so could not show that they were complete, are refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cra.errors import ChainError, ProofError, TraceError
from cra.ledger._base64 import b64, unb64
from cra.ledger.attestation import Attestation, open_attestation
from cra.ledger.checkpoint import Checkpoint, open_checkpoint
from cra.ledger.merkle import HASH_SIZE, leaf_hash, verify_consistency, verify_inclusion
from cra.ledger.note import NoteSigner, NoteVerifier, open_note, sign_note
from cra.protocol.canonical import loads_strict
from cra.trace.chain import verify_chain
from cra.trace.event import TraceEvent
from cra.trace.jsonl import loads_trace

__all__ = [
    "FORMAT",
    "SESSION_HEADER",
    "Bundle",
    "BundleEntry",
    "BundleReport",
    "ConsistencyProof",
    "SessionCoverage",
    "SessionStatement",
    "decision_events",
    "open_session_statement",
    "parse_bundle",
    "parse_consistency",
    "verify_bundle",
]

FORMAT = "cra.dev/trace-bundle/v2"
SESSION_HEADER = "cra.dev/session-statement/v1"
_V1 = "cra.dev/trace-bundle/v1"
_EVENT_HASH = re.compile(r"[0-9a-f]{64}")


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


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ProofError(f"{path}: must be a non-empty string")
    return value


# -- the log's statement of a session ------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionStatement:
    """The log's signed statement of one session at one checkpoint: below tree size
    ``tree_size`` (whose root is ``root``) the log held exactly ``events`` events of
    ``session_id``, sequences 0 to ``events - 1``; the last is ``last_event_id`` (hash
    ``last_event_hash``) at log index ``last_index``; the session had ended (its last
    event is ``session.ended``) or not; and the log attested exactly the decisions
    ``attestations`` names (event ids, sorted)."""

    origin: str
    tree_size: int
    root: bytes
    session_id: str
    events: int
    last_index: int
    last_event_id: str
    last_event_hash: str
    ended: bool
    attestations: tuple[str, ...]

    def body(self) -> str:
        """The note text: the header line and the statement as canonical JSON."""
        statement = {
            "attestations": list(self.attestations),
            "ended": self.ended,
            "events": self.events,
            "last_event_hash": self.last_event_hash,
            "last_event_id": self.last_event_id,
            "last_index": self.last_index,
            "origin": self.origin,
            "root": b64(self.root),
            "session_id": self.session_id,
            "tree_size": self.tree_size,
        }
        line = json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return f"{SESSION_HEADER}\n{line}\n"

    def sign(self, signers: Sequence[NoteSigner]) -> str:
        """The statement as a signed note; checked first, so the log never signs one a verifier refuses."""
        _check_statement(self)
        return sign_note(self.body(), signers)


_STATEMENT_FIELDS = frozenset(
    {
        "attestations",
        "ended",
        "events",
        "last_event_hash",
        "last_event_id",
        "last_index",
        "origin",
        "root",
        "session_id",
        "tree_size",
    }
)


def _check_statement(s: SessionStatement) -> None:
    if s.events < 1:
        raise ProofError("/events: a session statement covers at least one event")
    if s.last_index >= s.tree_size:
        raise ProofError("/last_index: must be below the tree size")
    if s.events > s.last_index + 1:
        raise ProofError("/events: more events than log indexes up to the last one")
    if list(s.attestations) != sorted(set(s.attestations)):
        raise ProofError("/attestations: must be event ids, sorted and each once")


def _parse_statement(text: str) -> SessionStatement:
    lines = text.split("\n")
    if len(lines) != 3 or lines[0] != SESSION_HEADER or lines[2]:
        raise ProofError(f"a session statement is the line {SESSION_HEADER!r} and one line of JSON")
    try:
        data = loads_strict(lines[1])
    except (ValueError, RecursionError) as exc:  # StrictJSONError and JSONDecodeError are ValueErrors
        raise ProofError(f"the session statement is not JSON: {exc}") from None
    if not isinstance(data, dict) or set(data) != _STATEMENT_FIELDS:
        raise ProofError(f"the session statement must be an object with exactly the fields {sorted(_STATEMENT_FIELDS)}")
    root = unb64(_text(data["root"], "/root"), "/root")
    if len(root) != HASH_SIZE:
        raise ProofError(f"/root: must be {HASH_SIZE} bytes")
    if not isinstance(data["ended"], bool):
        raise ProofError("/ended: must be true or false")
    last_hash = _text(data["last_event_hash"], "/last_event_hash")
    if not _EVENT_HASH.fullmatch(last_hash):
        raise ProofError("/last_event_hash: must be 64 lowercase hex digits")
    attested = data["attestations"]
    if not isinstance(attested, list):
        raise ProofError("/attestations: must be an array of event ids")
    statement = SessionStatement(
        origin=_text(data["origin"], "/origin"),
        tree_size=_int(data["tree_size"], "/tree_size"),
        root=root,
        session_id=_text(data["session_id"], "/session_id"),
        events=_int(data["events"], "/events"),
        last_index=_int(data["last_index"], "/last_index"),
        last_event_id=_text(data["last_event_id"], "/last_event_id"),
        last_event_hash=last_hash,
        ended=data["ended"],
        attestations=tuple(_text(a, f"/attestations/{i}") for i, a in enumerate(attested)),
    )
    _check_statement(statement)
    return statement


def open_session_statement(note: str | bytes, verifiers: Sequence[NoteVerifier]) -> SessionStatement:
    """The session statement in a signed note, once a trusted key's signature on it verified."""
    return _parse_statement(open_note(note, verifiers).text)


# -- the bundle ------------------------------------------------------------------


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
    """The checkpoint, one signed statement per session, the sessions' events, their
    attestations, and optional consistency proofs."""

    checkpoint: str
    sessions: tuple[str, ...]
    entries: tuple[BundleEntry, ...]
    attestations: tuple[str, ...] = ()
    consistency: tuple[ConsistencyProof, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "checkpoint": self.checkpoint,
            "sessions": list(self.sessions),
            "entries": [
                {"index": e.index, "entry": e.entry.decode("utf-8"), "proof": [b64(n) for n in e.proof]}
                for e in self.entries
            ],
            "attestations": list(self.attestations),
            "consistency": [c.to_dict() for c in self.consistency],
        }


_FIELDS = {"format", "checkpoint", "sessions", "entries", "attestations", "consistency"}


def _notes(value: list[Any], key: str, what: str) -> tuple[str, ...]:
    for i, note in enumerate(value):
        if not isinstance(note, str):
            raise ProofError(f"/{key}/{i}: must be a signed {what} note")
    return tuple(value)


def parse_bundle(data: Any) -> Bundle:
    """A bundle from its parsed JSON; raises :class:`~cra.errors.ProofError` with the JSON path.

    A ``cra.dev/trace-bundle/v1`` bundle is refused: it holds no session statements, so
    nothing in it shows that it holds a whole session."""
    if isinstance(data, dict) and data.get("format") == _V1:
        raise ProofError(
            f"/format: a {_V1} bundle cannot show that it holds whole sessions (it carries no session "
            f"statements); export the session again for a {FORMAT} bundle"
        )
    obj = _object(data, "", _FIELDS)
    if obj["format"] != FORMAT:
        raise ProofError(f"/format: must be {FORMAT!r}")
    if not isinstance(obj["checkpoint"], str):
        raise ProofError("/checkpoint: must be a signed checkpoint note")
    for key in ("sessions", "entries", "attestations", "consistency"):
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
    sessions = _notes(obj["sessions"], "sessions", "session statement")
    attestations = _notes(obj["attestations"], "attestations", "attestation")
    consistency = tuple(parse_consistency(c, f"/consistency/{i}") for i, c in enumerate(obj["consistency"]))
    return Bundle(obj["checkpoint"], sessions, tuple(entries), attestations, consistency)


# -- what a verified bundle proves --------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionCoverage:
    """What a verified bundle proves of one session: it holds every event the log held
    of it below the checkpoint's size, sequences 0 to ``events - 1`` at log indexes
    ``first_index`` to ``last_index``; the session had ended there, or was still open;
    and every decision the log attested is here, verified. ``unattested_decisions`` are
    decision events the log sealed without an attestation (a trace appended with
    ``cra ledger append``, say)."""

    session_id: str
    events: int
    first_index: int
    last_index: int
    ended: bool
    attestations: tuple[str, ...]
    unattested_decisions: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "complete": True,
            "state": "ended" if self.ended else "open",
            "events": self.events,
            "first_sequence": 0,
            "last_sequence": self.events - 1,
            "first_index": self.first_index,
            "last_index": self.last_index,
            "attestations": list(self.attestations),
            "unattested_decisions": list(self.unattested_decisions),
        }


@dataclass(frozen=True, slots=True)
class BundleReport:
    """What a verified bundle proved."""

    checkpoint: Checkpoint
    sessions: tuple[SessionCoverage, ...]
    events: int
    attestations: tuple[Attestation, ...]
    previous: Checkpoint | None

    def to_dict(self) -> dict[str, Any]:
        cp = self.checkpoint
        return {
            "verified": True,
            "format": FORMAT,
            "origin": cp.origin,
            "tree_size": cp.size,
            "root": b64(cp.root),
            "sessions": [s.to_dict() for s in self.sessions],
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


def decision_events(events: Sequence[TraceEvent]) -> tuple[TraceEvent, ...]:
    """The events of one session that record a decision CRA's runtime attests: every
    ``carp.resolution.completed`` (a resolution), and every ``policy.evaluated`` of an
    execute call (one in a span that also holds an ``action.requested``; the
    ``policy.evaluated`` events of a resolve are part of its resolution)."""
    calls = {e.span_id for e in events if e.event_type == "action.requested"}
    return tuple(
        e
        for e in events
        if e.event_type == "carp.resolution.completed" or (e.event_type == "policy.evaluated" and e.span_id in calls)
    )


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


def _statements(
    bundle: Bundle, checkpoint: Checkpoint, verifiers: Sequence[NoteVerifier]
) -> dict[str, SessionStatement]:
    """Each session statement, opened and checked to speak of the bundle's checkpoint."""
    out: dict[str, SessionStatement] = {}
    for i, note in enumerate(bundle.sessions):
        try:
            statement = open_session_statement(note, verifiers)
        except ProofError as exc:
            raise ProofError(f"/sessions/{i}: {exc}") from exc
        if (statement.origin, statement.tree_size, statement.root) != (
            checkpoint.origin,
            checkpoint.size,
            checkpoint.root,
        ):
            other = " with another root" if statement.tree_size == checkpoint.size else ""
            raise ProofError(
                f"/sessions/{i}: the statement of session {statement.session_id} speaks of "
                f"{statement.origin} at tree size {statement.tree_size}{other}, not of the bundle's checkpoint "
                f"({checkpoint.origin} at tree size {checkpoint.size})"
            )
        if statement.session_id in out:
            raise ProofError(f"/sessions/{i}: a second statement of session {statement.session_id}")
        out[statement.session_id] = statement
    return out


def _whole(session_id: str, logged: Sequence[tuple[int, TraceEvent]], statement: SessionStatement) -> None:
    """Return only if ``logged`` (the bundle's events of the session, in chain order, their
    chain verified from sequence 0) are every event ``statement`` says the log held."""
    where = f"session {session_id}"
    held, stated = len(logged), statement.events
    if held < stated:
        missing = f"sequence {held} is" if stated - held == 1 else f"sequences {held} to {stated - 1} are"
        raise ProofError(
            f"{where}: the bundle is truncated: it holds {held} of the {stated} events the log held at tree size "
            f"{statement.tree_size}; {missing} missing"
        )
    if held > stated:
        raise ProofError(
            f"{where}: the bundle holds {held} events, but the log's statement says it held {stated} at tree size "
            f"{statement.tree_size}"
        )
    index, last = logged[-1]
    if (last.event_id, last.event_hash, index) != (
        statement.last_event_id,
        statement.last_event_hash,
        statement.last_index,
    ):
        raise ProofError(
            f"{where}: its last event is {last.event_id} at log index {index}, but the log's statement names "
            f"{statement.last_event_id} at log index {statement.last_index}"
        )
    for _, event in logged[:-1]:
        if event.event_type == "session.ended":
            raise ProofError(f"{where}: events follow its session.ended event (sequence {event.sequence})")
    ended = last.event_type == "session.ended"
    if statement.ended != ended:
        said = "ended" if statement.ended else "was still open"
        raise ProofError(
            f"{where}: the log's statement says the session {said}, but its last event is {last.event_type}"
        )


def verify_bundle(
    bundle: Bundle,
    verifiers: Sequence[NoteVerifier],
    *,
    previous: str | bytes | None = None,
    consistency: Sequence[ConsistencyProof] = (),
) -> BundleReport:
    """Return what the bundle proves only if every check passes; raise
    :class:`~cra.errors.ProofError` naming the first that fails.

    Checked: the checkpoint's signature; every entry's inclusion under it; every
    session's hash chain from sequence 0, in log order; one signed statement per
    session, of this checkpoint, and the bundle holding exactly the events it
    counts, ending with the event it names (``session.ended`` if it says the session
    ended); every attestation, and exactly the attestations each statement lists.

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
    statements = _statements(bundle, checkpoint, verifiers)
    strays = sorted(statements.keys() - sessions.keys())
    if strays:
        raise ProofError(f"/sessions: the bundle holds a statement of session {strays[0]} but none of its events")
    for session_id, logged in sessions.items():
        if session_id not in statements:
            raise ProofError(
                f"session {session_id}: the bundle holds no signed statement of the session, so nothing shows that "
                "it holds the whole session"
            )
        _whole(session_id, logged, statements[session_id])
    by_id = {event.event_id: (item, event) for item, event in zip(bundle.entries, events, strict=True)}
    attestations: list[Attestation] = []
    attested: dict[str, set[str]] = {}
    for i, note in enumerate(bundle.attestations):
        try:
            att = open_attestation(note, verifiers)
        except ProofError as exc:
            raise ProofError(f"/attestations/{i}: {exc}") from exc
        named = by_id.get(att.attestation_id)
        if named is None:
            raise ProofError(f"/attestations/{i}: names event {att.attestation_id}, which the bundle does not hold")
        item, event = named
        if (att.origin, att.log_index, att.leaf_hash) != (checkpoint.origin, item.index, leaf_hash(item.entry)):
            raise ProofError(f"/attestations/{i}: its log, index or leaf hash is not the event's")
        if (att.session_id, att.event_type) != (event.session_id, event.event_type):
            raise ProofError(f"/attestations/{i}: its session or event type is not the event's")
        listed = attested.setdefault(event.session_id, set())
        if att.attestation_id in listed:
            raise ProofError(f"/attestations/{i}: a second attestation of event {att.attestation_id}")
        if att.attestation_id not in statements[event.session_id].attestations:
            raise ProofError(
                f"/attestations/{i}: the log's statement of session {event.session_id} lists no attestation of "
                f"event {att.attestation_id}"
            )
        listed.add(att.attestation_id)
        attestations.append(att)
    coverage = []
    for session_id, logged in sessions.items():
        statement = statements[session_id]
        present = attested.get(session_id, set())
        held = {event.event_id: (index, event) for index, event in logged}
        for event_id in statement.attestations:
            if event_id not in held:
                raise ProofError(
                    f"session {session_id}: the log's statement lists an attestation of event {event_id}, "
                    "which is not an event of the session"
                )
            if event_id not in present:
                index, event = held[event_id]
                raise ProofError(
                    f"session {session_id}: the attestation of decision event {event_id} ({event.event_type}, "
                    f"sequence {event.sequence}, log index {index}) is missing; the log attested it"
                )
        in_chain = [event for _, event in logged]
        unattested = tuple(e.event_id for e in decision_events(in_chain) if e.event_id not in present)
        coverage.append(
            SessionCoverage(
                session_id,
                statement.events,
                logged[0][0],
                statement.last_index,
                statement.ended,
                statement.attestations,
                unattested,
            )
        )
    before = None
    if previous is not None:
        before = open_checkpoint(previous, verifiers, origin=checkpoint.origin)
        _check_previous(before, checkpoint, (*bundle.consistency, *consistency))
    return BundleReport(checkpoint, tuple(coverage), len(events), tuple(attestations), before)

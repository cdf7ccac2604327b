"""Go's independent implementation verifies what CRA's ledger core produces (DESIGN §4).

CRA builds real logs (``CompactRange`` appends, an in-test dict as the hash
store, proofs from ``inclusion_plan``/``consistency_plan`` + ``assemble``) and
signs C2SP checkpoints; ``golang.org/x/mod/sumdb/note`` opens the notes and
``golang.org/x/mod/sumdb/tlog`` checks the inclusion (``CheckRecord``) and
consistency (``CheckTree``) proofs, through the CLI in ``go/cra_go_verify``.
Every tampered input must be rejected by Go for the expected reason, and by
CRA's own verifiers too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from cra.errors import ProofError
from cra.ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from cra.ledger.merkle import (
    CompactRange,
    assemble,
    consistency_plan,
    inclusion_plan,
    leaf_hash,
    node_hash,
    verify_consistency,
)
from cra.ledger.note import NoteSigner, add_signatures, sign_note
from cra.ledger.tlog_proof import TlogProof, verify_tlog_proof

GoVerify = Callable[..., subprocess.CompletedProcess[str]]
ORIGIN = "cra.example/ledger/interop-v1"
SIZES = (1, 2, 7, 64, 1000)
EXHAUSTIVE_UP_TO = 17


def _signer(name: str, label: str) -> NoteSigner:
    return NoteSigner(name, hashlib.sha256(f"cra interop test key {label}".encode()).digest())


KEY_2025 = _signer("cra.example/ledger-2025", "2025")
KEY_2026 = _signer("cra.example/ledger-2026", "2026")
# Same name as the 2025 key, different key: Go must treat it as unknown, not as ours.
IMPOSTOR = _signer("cra.example/ledger-2025", "impostor")
ONE_KEY = (KEY_2025,)
TWO_KEYS = (KEY_2025, KEY_2026)  # a key rotation: the old and the new key both sign

# The example of Go's sumdb/note documentation (also in C2SP signed-note).
# Ed25519 signatures are deterministic, so CRA must produce this note byte for byte.
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_SIGNATURE = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
PETER_NOTE = f"{PETER_TEXT}\n\u2014 PeterNeumann {PETER_SIGNATURE}\n"

# What Go says when it rejects (golang.org/x/mod/sumdb/note and tlog error strings).
BAD_SIGNATURE = "invalid signature for key"
NO_TRUSTED_SIGNATURE = "note has no verifiable signatures"
PROOF_FAILED = "invalid transparency proof"


# --- a real log built with the CRA core ----------------------------------------------------------


def _event(seq: int) -> bytes:
    """One TRACE-like event as stored bytes: canonical JSON, some of it non-ASCII."""
    event = {
        "trace": "1.0",
        "session": f"sess-{seq // 50:04d}",
        "seq": seq,
        "kind": ("request", "decision", "tool_call", "response")[seq % 4],
        "decision": "deny" if seq % 7 == 3 else "allow",
        "input_sha256": hashlib.sha256(f"input {seq}".encode()).hexdigest(),
        "note": "Zugriff verweigert: Datenschutzprüfung für Ärztin" if seq % 11 == 5 else "ok",
        "ts": f"2025-03-{1 + seq % 28:02d}T12:{seq % 60:02d}:00Z",
    }
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def _reference_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH written out naively, independent of CompactRange."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_reference_root(leaves[:k]), _reference_root(leaves[k:]))


class Log:
    """A log grown one entry at a time; the dict plays the part of the hash store."""

    def __init__(self, entries: Sequence[bytes], origin: str = ORIGIN) -> None:
        self.origin = origin
        self.entries = list(entries)
        self.store: dict[int, bytes] = {}
        self.roots: dict[int, bytes] = {}
        tree = CompactRange()
        for entry in self.entries:
            for index, value in tree.append(leaf_hash(entry)):
                assert index not in self.store, "a log never rewrites a stored hash"
                self.store[index] = value
            self.roots[tree.size] = tree.root()

    def checkpoint(self, size: int, signers: Sequence[NoteSigner]) -> str:
        return sign_checkpoint(Checkpoint(self.origin, size, self.roots[size]), signers)

    def inclusion(self, index: int, size: int) -> list[bytes]:
        return assemble(inclusion_plan(index, size), self.store)

    def consistency(self, size1: int, size2: int) -> list[bytes]:
        return assemble(consistency_plan(size1, size2), self.store)

    def tlog_proof(self, index: int, size: int, signers: Sequence[NoteSigner]) -> TlogProof:
        return TlogProof(index, tuple(self.inclusion(index, size)), self.checkpoint(size, signers))


@pytest.fixture(scope="module")
def log() -> Log:
    built = Log([_event(seq) for seq in range(max(SIZES))])
    leaves = [leaf_hash(entry) for entry in built.entries]
    for size in SIZES:
        assert built.roots[size] == _reference_root(leaves[:size])
    return built


# --- helpers ----------------------------------------------------------------------------------------


class Files:
    """Writes test inputs as exact bytes into a test's temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def __call__(self, data: str | bytes, name: str = "input") -> Path:
        self.count += 1
        path = self.root / f"{self.count:04d}-{name}"
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def vkeys(*signers: NoteSigner) -> str:
    return ",".join(s.vkey for s in signers)


def accepted(result: subprocess.CompletedProcess[str]) -> str:
    """Go's stdout, after checking Go accepted."""
    assert result.returncode == 0, f"Go rejected CRA's output (exit {result.returncode}):\n{result.stderr}"
    return result.stdout


def rejected(result: subprocess.CompletedProcess[str], why: str) -> None:
    """Check Go rejected the input, for the reason ``why`` (a fragment of its message)."""
    assert result.returncode == 1, f"Go did not reject the input (exit {result.returncode}):\n{result.stdout}"
    assert why in result.stderr, f"Go rejected the input, but not because {why!r}:\n{result.stderr}"


def flip(data: bytes, at: int) -> bytes:
    """``data`` with one bit of byte ``at`` flipped."""
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def consistency_json(size1: int, size2: int, proof: Sequence[bytes]) -> str:
    return json.dumps({"size1": size1, "size2": size2, "proof": [b64(node) for node in proof]})


# --- signed notes and checkpoints -------------------------------------------------------------------


def test_go_verifies_the_peter_neumann_note_cra_signs(go_verify: GoVerify, files: Files) -> None:
    signer = NoteSigner.parse(PETER_SKEY)
    assert signer.vkey == PETER_VKEY
    note = sign_note(PETER_TEXT, [signer])
    assert note == PETER_NOTE, "CRA's signature differs from Go's documented one for the same key and text"
    path = files(note, "peter.note")
    out = accepted(go_verify("note", PETER_VKEY, path))
    assert out == f"{path}: verified PeterNeumann+c74f20a3\n"
    rejected(go_verify("note", PETER_VKEY, files(note.replace("answer", "Answer"), "edited.note")), BAD_SIGNATURE)


@pytest.mark.parametrize("size", SIZES)
def test_go_opens_a_checkpoint_signed_by_one_key(go_verify: GoVerify, files: Files, log: Log, size: int) -> None:
    path = files(log.checkpoint(size, ONE_KEY), "checkpoint.note")
    out = accepted(go_verify("note", KEY_2025.vkey, path))
    assert out == f"{path}: verified {KEY_2025.name}+{KEY_2025.key_id:08x}\n"


ROTATION_VERIFIERS = {
    "old-key-only": ((KEY_2025,), (KEY_2025,), (KEY_2026,)),
    "new-key-only": ((KEY_2026,), (KEY_2026,), (KEY_2025,)),
    "both-keys": ((KEY_2026, KEY_2025), (KEY_2025, KEY_2026), ()),
}


@pytest.mark.parametrize("how", ["signed-together", "cosigned-later"])
@pytest.mark.parametrize("verifiers", list(ROTATION_VERIFIERS))
@pytest.mark.parametrize("size", SIZES)
def test_go_opens_a_rotation_checkpoint_with_each_key(
    go_verify: GoVerify, files: Files, log: Log, size: int, verifiers: str, how: str
) -> None:
    trusted, verified, unverified = ROTATION_VERIFIERS[verifiers]
    if how == "signed-together":
        note = log.checkpoint(size, TWO_KEYS)
    else:
        note = add_signatures(log.checkpoint(size, [KEY_2025]), [KEY_2026])
    path = files(note, "checkpoint.note")
    out = accepted(go_verify("note", vkeys(*trusted), path))
    expected = [f"{path}: verified {k.name}+{k.key_id:08x}" for k in verified]
    expected += [f"{path}: unverified {k.name}+{k.key_id:08x}" for k in unverified]
    assert out.splitlines() == expected


def test_go_opens_several_checkpoints_in_one_call(go_verify: GoVerify, files: Files, log: Log) -> None:
    paths = [files(log.checkpoint(size, TWO_KEYS), f"checkpoint-{size}.note") for size in SIZES]
    out = accepted(go_verify("note", KEY_2026.vkey, *paths))
    assert out.count(": verified ") == len(SIZES)


def _edit_size(note: str) -> str:
    head, size, rest = note.split("\n", 2)
    return f"{head}\n{int(size) - 1}\n{rest}"


def _edit_root(note: str) -> str:
    head, size, root, rest = note.split("\n", 3)
    return f"{head}\n{size}\n{b64(flip(base64.b64decode(root), 31))}\n{rest}"


def _edit_origin(note: str) -> str:
    return note.replace(ORIGIN, ORIGIN + "-fork", 1)


def _add_extension(note: str) -> str:
    head, size, root, rest = note.split("\n", 3)
    return f"{head}\n{size}\n{root}\nextension line\n{rest}"


def _corrupt_last_signature(note: str) -> str:
    """``note`` with one bit of its last signature flipped (the key ID left intact)."""
    at = note.rindex(" ") + 1
    return note[:at] + b64(flip(base64.b64decode(note[at:]), 9)) + "\n"


def _malform_first_signature(note: str) -> str:
    return note.replace("ledger-2025 ", "ledger-2025 A", 1)


CHECKPOINT_TAMPERS: dict[str, tuple[Callable[[str], str], tuple[NoteSigner, ...], str]] = {
    "size-edited": (_edit_size, ONE_KEY, BAD_SIGNATURE),
    "root-edited": (_edit_root, ONE_KEY, BAD_SIGNATURE),
    "origin-edited": (_edit_origin, ONE_KEY, BAD_SIGNATURE),
    "extension-added": (_add_extension, TWO_KEYS, BAD_SIGNATURE),
    "new-key-signature-corrupted": (_corrupt_last_signature, TWO_KEYS, BAD_SIGNATURE),
    "signature-line-malformed": (_malform_first_signature, ONE_KEY, "malformed note"),
}


@pytest.mark.parametrize("tamper", list(CHECKPOINT_TAMPERS))
def test_go_rejects_an_edited_checkpoint(go_verify: GoVerify, files: Files, log: Log, tamper: str) -> None:
    edit, trusted, why = CHECKPOINT_TAMPERS[tamper]
    note = log.checkpoint(64, TWO_KEYS)
    accepted(go_verify("note", vkeys(*trusted), files(note, "original.note")))
    edited = edit(note)
    assert edited != note
    rejected(go_verify("note", vkeys(*trusted), files(edited, "edited.note")), why)
    with pytest.raises(ProofError):
        open_checkpoint(edited, [k.verifier for k in trusted], origin=ORIGIN)


def test_go_ignores_a_bad_signature_by_a_key_it_does_not_trust(go_verify: GoVerify, files: Files, log: Log) -> None:
    edited = _corrupt_last_signature(log.checkpoint(64, TWO_KEYS))  # the 2026 key's signature
    accepted(go_verify("note", KEY_2025.vkey, files(edited, "edited.note")))
    rejected(go_verify("note", KEY_2026.vkey, files(edited, "edited.note")), BAD_SIGNATURE)
    rejected(go_verify("note", vkeys(*TWO_KEYS), files(edited, "edited.note")), BAD_SIGNATURE)


@pytest.mark.parametrize(
    "signers",
    [(IMPOSTOR,), (_signer("attacker.example/log", "attacker"),)],
    ids=["same-name-other-key", "other-name"],
)
def test_go_rejects_a_checkpoint_signed_only_by_an_unknown_key(
    go_verify: GoVerify, files: Files, log: Log, signers: tuple[NoteSigner, ...]
) -> None:
    note = log.checkpoint(7, signers)
    accepted(go_verify("note", vkeys(*signers), files(note, "self-trusted.note")))
    rejected(go_verify("note", vkeys(*TWO_KEYS), files(note, "checkpoint.note")), NO_TRUSTED_SIGNATURE)


# --- inclusion proofs (C2SP tlog-proof, tlog.CheckRecord) -------------------------------------------

INCLUSION_CASES = [(size, index) for size in SIZES for index in sorted({0, size // 2, size - 1})]


@pytest.mark.parametrize("signers", [ONE_KEY, TWO_KEYS], ids=["one-key", "two-keys"])
@pytest.mark.parametrize(("size", "index"), INCLUSION_CASES, ids=[f"{i}-of-{n}" for n, i in INCLUSION_CASES])
def test_go_checks_an_inclusion_proof(
    go_verify: GoVerify, files: Files, log: Log, size: int, index: int, signers: tuple[NoteSigner, ...]
) -> None:
    proof = log.tlog_proof(index, size, signers).format()
    entry = log.entries[index]
    out = accepted(go_verify("proof", signers[-1].vkey, files(proof, "tlog-proof"), files(entry, "entry")))
    assert out == f"origin {ORIGIN}\nsize {size}\nindex {index}\nincluded\n"
    verify_tlog_proof(proof, entry, [s.verifier for s in signers], origin=ORIGIN)


def test_go_checks_a_tlog_proof_with_extra_data(go_verify: GoVerify, files: Files, log: Log) -> None:
    proof = replace(log.tlog_proof(3, 7, ONE_KEY), extra=b"attestation 01J8Z3")
    assert "\nextra " in proof.format()
    accepted(go_verify("proof", KEY_2025.vkey, files(proof.format(), "tlog-proof"), files(log.entries[3], "entry")))


def test_go_checks_every_inclusion_proof_in_small_trees(go_verify: GoVerify, files: Files, log: Log) -> None:
    failures = []
    for size in range(1, EXHAUSTIVE_UP_TO + 1):
        checkpoint = log.checkpoint(size, ONE_KEY)
        for index in range(size):
            proof = TlogProof(index, tuple(log.inclusion(index, size)), checkpoint).format()
            result = go_verify("proof", KEY_2025.vkey, files(proof, "tlog-proof"), files(log.entries[index], "entry"))
            if result.returncode != 0:
                failures.append(f"index {index} of size {size}: {result.stderr.strip()}")
    assert not failures, "Go rejected CRA inclusion proofs:\n" + "\n".join(failures)


@dataclass(frozen=True)
class Inclusion:
    entry: bytes
    proof: TlogProof


def _with_path(case: Inclusion, path: Sequence[bytes]) -> Inclusion:
    return replace(case, proof=replace(case.proof, path=tuple(path)))


def _flip_node(case: Inclusion, which: int) -> Inclusion:
    path = list(case.proof.path)
    path[which] = flip(path[which], 0)
    return _with_path(case, path)


def _size_of(case: Inclusion) -> int:
    return int(case.proof.checkpoint.split("\n")[1])


def _other_checkpoint(case: Inclusion, log: Log, signers: Sequence[NoteSigner], size: int | None = None) -> Inclusion:
    checkpoint = log.checkpoint(_size_of(case) if size is None else size, signers)
    return replace(case, proof=replace(case.proof, checkpoint=checkpoint))


INCLUSION_TAMPERS: dict[str, tuple[Callable[[Inclusion, Log], Inclusion], str]] = {
    "entry-byte-altered": (lambda c, _: replace(c, entry=flip(c.entry, 10)), PROOF_FAILED),
    "entry-truncated": (lambda c, _: replace(c, entry=c.entry[:-1]), PROOF_FAILED),
    "first-node-flipped": (lambda c, _: _flip_node(c, 0), PROOF_FAILED),
    "middle-node-flipped": (lambda c, _: _flip_node(c, len(c.proof.path) // 2), PROOF_FAILED),
    "last-node-flipped": (lambda c, _: _flip_node(c, -1), PROOF_FAILED),
    "node-dropped": (lambda c, _: _with_path(c, c.proof.path[:-1]), PROOF_FAILED),
    "node-added": (lambda c, _: _with_path(c, (*c.proof.path, c.proof.path[0])), PROOF_FAILED),
    "nodes-swapped": (lambda c, _: _with_path(c, (c.proof.path[1], c.proof.path[0], *c.proof.path[2:])), PROOF_FAILED),
    "index-plus-one": (lambda c, _: replace(c, proof=replace(c.proof, index=c.proof.index + 1)), PROOF_FAILED),
    "index-minus-one": (lambda c, _: replace(c, proof=replace(c.proof, index=c.proof.index - 1)), PROOF_FAILED),
    "index-past-the-tree": (
        lambda c, _: replace(c, proof=replace(c.proof, index=_size_of(c))),
        "invalid inputs in CheckRecord",
    ),
    "checkpoint-size-edited": (
        lambda c, _: replace(c, proof=replace(c.proof, checkpoint=_edit_size(c.proof.checkpoint))),
        BAD_SIGNATURE,
    ),
    "checkpoint-root-edited": (
        lambda c, _: replace(c, proof=replace(c.proof, checkpoint=_edit_root(c.proof.checkpoint))),
        BAD_SIGNATURE,
    ),
    "checkpoint-of-another-size": (
        lambda c, log: _other_checkpoint(c, log, ONE_KEY, _size_of(c) - 1),
        PROOF_FAILED,
    ),
    "checkpoint-by-unknown-key": (lambda c, log: _other_checkpoint(c, log, (IMPOSTOR,)), NO_TRUSTED_SIGNATURE),
}


@pytest.mark.parametrize(("size", "index"), [(1000, 500), (7, 3)], ids=["500-of-1000", "3-of-7"])
@pytest.mark.parametrize("tamper", list(INCLUSION_TAMPERS))
def test_go_rejects_a_tampered_inclusion_proof(
    go_verify: GoVerify, files: Files, log: Log, tamper: str, size: int, index: int
) -> None:
    edit, why = INCLUSION_TAMPERS[tamper]
    case = Inclusion(log.entries[index], log.tlog_proof(index, size, ONE_KEY))
    accepted(go_verify("proof", KEY_2025.vkey, files(case.proof.format(), "tlog-proof"), files(case.entry, "entry")))
    bad = edit(case, log)
    assert bad != case
    proof, entry = bad.proof.format(), bad.entry
    rejected(go_verify("proof", KEY_2025.vkey, files(proof, "tampered-tlog-proof"), files(entry, "entry")), why)
    with pytest.raises(ProofError):
        verify_tlog_proof(proof, entry, [KEY_2025.verifier], origin=ORIGIN)


# --- consistency proofs (tlog.CheckTree) ------------------------------------------------------------

CONSISTENCY_PAIRS = [
    (1, 1),
    (1, 2),
    (1, 7),
    (2, 7),
    (4, 7),
    (7, 7),
    (7, 64),
    (8, 64),
    (63, 64),
    (64, 65),
    (1, 1000),
    (7, 1000),
    (64, 1000),
    (65, 1000),
    (512, 1000),
    (999, 1000),
]


def _consistency_args(
    files: Files, old: str, new: str, size1: int, size2: int, proof: Sequence[bytes]
) -> tuple[Path, Path, Path]:
    return files(old, "old.note"), files(new, "new.note"), files(consistency_json(size1, size2, proof), "proof.json")


@pytest.mark.parametrize("signers", [ONE_KEY, TWO_KEYS], ids=["one-key", "two-keys"])
@pytest.mark.parametrize(("size1", "size2"), CONSISTENCY_PAIRS, ids=[f"{m}-to-{n}" for m, n in CONSISTENCY_PAIRS])
def test_go_checks_a_consistency_proof(
    go_verify: GoVerify, files: Files, log: Log, size1: int, size2: int, signers: tuple[NoteSigner, ...]
) -> None:
    proof = log.consistency(size1, size2)
    args = _consistency_args(files, log.checkpoint(size1, signers), log.checkpoint(size2, signers), size1, size2, proof)
    out = accepted(go_verify("consistency", vkeys(*signers), *args))
    assert out == f"origin {ORIGIN}\nsize1 {size1}\nsize2 {size2}\nconsistent\n"
    verify_consistency(size1, size2, log.roots[size1], log.roots[size2], proof)


def test_go_checks_every_consistency_proof_in_small_trees(go_verify: GoVerify, files: Files, log: Log) -> None:
    notes = {size: files(log.checkpoint(size, ONE_KEY), f"{size}.note") for size in range(1, EXHAUSTIVE_UP_TO + 1)}
    failures = []
    for size2 in notes:
        for size1 in range(1, size2 + 1):
            proof = files(consistency_json(size1, size2, log.consistency(size1, size2)), "proof.json")
            result = go_verify("consistency", KEY_2025.vkey, notes[size1], notes[size2], proof)
            if result.returncode != 0:
                failures.append(f"{size1} -> {size2}: {result.stderr.strip()}")
    assert not failures, "Go rejected CRA consistency proofs:\n" + "\n".join(failures)


@pytest.fixture(scope="module")
def fork(log: Log) -> Log:
    """The same log with entry 3 rewritten: a split view or a rewritten history."""
    entries = list(log.entries)
    entries[3] = entries[3].replace(b'"decision":"deny"', b'"decision":"allow"')
    assert entries[3] != log.entries[3]
    return Log(entries)


@dataclass(frozen=True)
class Consistency:
    """What a consistency check gets: two signed checkpoints and the proof JSON's sizes and nodes."""

    old: str
    new: str
    size1: int
    size2: int
    proof: tuple[bytes, ...]

    @classmethod
    def of(cls, log: Log, size1: int, size2: int) -> Consistency:
        proof = tuple(log.consistency(size1, size2))
        return cls(log.checkpoint(size1, ONE_KEY), log.checkpoint(size2, ONE_KEY), size1, size2, proof)

    def go_args(self, files: Files) -> tuple[Path, Path, Path]:
        return _consistency_args(files, self.old, self.new, self.size1, self.size2, self.proof)

    def cra_check(self) -> None:
        """CRA's own verifiers, bound to the checkpoints the same way the Go CLI binds them."""
        old = open_checkpoint(self.old, [KEY_2025.verifier], origin=ORIGIN)
        new = open_checkpoint(self.new, [KEY_2025.verifier], origin=ORIGIN)
        if (old.size, new.size) != (self.size1, self.size2):
            raise ProofError("the proof's sizes are not the checkpoints' sizes")
        verify_consistency(self.size1, self.size2, old.root, new.root, self.proof)


def _flip_tree_node(case: Consistency, which: int) -> Consistency:
    proof = list(case.proof)
    proof[which] = flip(proof[which], 31)
    return replace(case, proof=tuple(proof))


def _proof_for(case: Consistency, log: Log, size1: int, size2: int) -> Consistency:
    """``case`` carrying a genuine proof, but for other sizes than its checkpoints'."""
    return replace(case, proof=tuple(log.consistency(size1, size2)))


def _checkpoints_swapped(log: Log, m: int, n: int) -> Consistency:
    case = Consistency.of(log, m, n)
    return replace(case, old=case.new, new=case.old, size1=n, size2=m)


def _history_rewritten(log: Log, fork: Log, m: int, n: int) -> Consistency:
    """The fork's new checkpoint and proof, against the honest old checkpoint."""
    return replace(Consistency.of(fork, m, n), old=log.checkpoint(m, ONE_KEY))


def _new_checkpoint_from_fork(log: Log, fork: Log, m: int, n: int) -> Consistency:
    """The honest proof, but the fork's new checkpoint."""
    return replace(Consistency.of(log, m, n), new=fork.checkpoint(n, ONE_KEY))


CONSISTENCY_TAMPERS: dict[str, tuple[Callable[[Log, Log, int, int], Consistency], str]] = {
    "first-node-flipped": (lambda log, _, m, n: _flip_tree_node(Consistency.of(log, m, n), 0), PROOF_FAILED),
    "last-node-flipped": (lambda log, _, m, n: _flip_tree_node(Consistency.of(log, m, n), -1), PROOF_FAILED),
    "node-dropped": (
        lambda log, _, m, n: replace(Consistency.of(log, m, n), proof=tuple(log.consistency(m, n)[:-1])),
        PROOF_FAILED,
    ),
    "proof-for-a-larger-old-size": (
        lambda log, _, m, n: _proof_for(Consistency.of(log, m, n), log, m + 1, n),
        PROOF_FAILED,
    ),
    "proof-for-a-smaller-old-size": (
        lambda log, _, m, n: _proof_for(Consistency.of(log, m, n), log, m - 1, n),
        PROOF_FAILED,
    ),
    "proof-for-a-smaller-new-size": (
        lambda log, _, m, n: _proof_for(Consistency.of(log, m, n), log, m, n - 1),
        PROOF_FAILED,
    ),
    "sizes-not-the-checkpoints": (
        lambda log, _, m, n: replace(Consistency.of(log, m, n), size1=m + 1, proof=tuple(log.consistency(m + 1, n))),
        "the checkpoints have sizes",
    ),
    "checkpoints-swapped": (lambda log, _, m, n: _checkpoints_swapped(log, m, n), "invalid inputs in CheckTree"),
    "history-rewritten": (_history_rewritten, PROOF_FAILED),
    "new-checkpoint-from-a-fork": (_new_checkpoint_from_fork, PROOF_FAILED),
}


TAMPERED_PAIRS = [(7, 64), (64, 1000), (65, 1000)]


@pytest.mark.parametrize(("size1", "size2"), TAMPERED_PAIRS, ids=[f"{m}-to-{n}" for m, n in TAMPERED_PAIRS])
@pytest.mark.parametrize("tamper", list(CONSISTENCY_TAMPERS))
def test_go_rejects_a_tampered_consistency_proof(
    go_verify: GoVerify, files: Files, log: Log, fork: Log, tamper: str, size1: int, size2: int
) -> None:
    make, why = CONSISTENCY_TAMPERS[tamper]
    good = Consistency.of(log, size1, size2)
    accepted(go_verify("consistency", KEY_2025.vkey, *good.go_args(files)))
    good.cra_check()
    bad = make(log, fork, size1, size2)
    assert bad != good
    rejected(go_verify("consistency", KEY_2025.vkey, *bad.go_args(files)), why)
    with pytest.raises(ProofError):
        bad.cra_check()

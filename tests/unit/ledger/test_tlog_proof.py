"""C2SP tlog-proof (https://c2sp.org/tlog-proof), and tampered proofs from a real tree.

The tree, its paths and the proof texts are built here, with a small RFC 9162
reference and hand-written formatting; the code under test only parses and verifies.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cra.errors import ProofError
from cra.ledger.checkpoint import Checkpoint
from cra.ledger.note import NoteSigner, NoteVerifier
from cra.ledger.tlog_proof import HEADER, TlogProof, parse_tlog_proof, verify_tlog_proof

ORIGIN = "example.com/cra/audit"
SIZE = 37
ENTRIES = [b'{"event": %d, "decision": "allow"}' % i for i in range(SIZE + 1)]
LOG_SEED = hashlib.sha256(b"the audit log key").digest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mth(entries: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1."""
    if not entries:
        return _sha256(b"")
    if len(entries) == 1:
        return _sha256(b"\x00" + entries[0])
    k = 1
    while k * 2 < len(entries):
        k *= 2
    return _sha256(b"\x01" + mth(entries[:k]) + mth(entries[k:]))


def path(m: int, entries: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1, PATH(m, D[n])."""
    if len(entries) <= 1:
        return []
    k = 1
    while k * 2 < len(entries):
        k *= 2
    if m < k:
        return [*path(m, entries[:k]), mth(entries[k:])]
    return [*path(m - k, entries[k:]), mth(entries[:k])]


def signed_checkpoint(size: int, root: bytes, key_seed: bytes = LOG_SEED, name: str = ORIGIN) -> str:
    """A checkpoint signed with ``cryptography`` directly."""
    body = f"{ORIGIN}\n{size}\n{b64(root)}\n"
    private = Ed25519PrivateKey.from_private_bytes(key_seed)
    key_id = _sha256(name.encode() + b"\n\x01" + private.public_key().public_bytes_raw())[:4]
    return f"{body}\n\u2014 {name} {b64(key_id + private.sign(body.encode()))}\n"


def proof_text(index: int, nodes: list[bytes], checkpoint: str, extra: bytes | None = None) -> str:
    lines = ["c2sp.org/tlog-proof@v1"]
    if extra is not None:
        lines.append("extra " + b64(extra))
    lines.append(f"index {index}")
    lines.extend(b64(node) for node in nodes)
    return "".join(line + "\n" for line in lines) + "\n" + checkpoint


TREE = ENTRIES[:SIZE]
ROOT = mth(TREE)
CHECKPOINT = signed_checkpoint(SIZE, ROOT)


@pytest.fixture(scope="module")
def log_key() -> NoteVerifier:
    return NoteSigner(ORIGIN, LOG_SEED).verifier


def good(index: int = 11) -> str:
    return proof_text(index, path(index, TREE), CHECKPOINT)


def _rejects(text: str | bytes, entry: bytes, log_key: NoteVerifier) -> None:
    with pytest.raises(ProofError):
        verify_tlog_proof(text, entry, [log_key])


# --- the format ------------------------------------------------------------------


def test_the_header_is_the_spec_string() -> None:
    assert HEADER == "c2sp.org/tlog-proof@v1"


@pytest.mark.parametrize("extra", [None, b"", b"context", bytes(range(40))])
def test_format_and_parse_round_trip(extra: bytes | None) -> None:
    nodes = path(11, TREE)
    text = proof_text(11, nodes, CHECKPOINT, extra)
    proof = TlogProof(11, tuple(nodes), CHECKPOINT, extra)
    assert proof.format() == text
    assert parse_tlog_proof(text) == proof
    assert parse_tlog_proof(text.encode()) == proof


def test_a_tree_of_one_has_an_empty_path(log_key: NoteVerifier) -> None:
    checkpoint = signed_checkpoint(1, _sha256(b"\x00" + ENTRIES[0]))
    text = f"c2sp.org/tlog-proof@v1\nindex 0\n\n{checkpoint}"
    assert TlogProof(0, (), checkpoint).format() == text
    assert parse_tlog_proof(text) == TlogProof(0, (), checkpoint)
    _, head = verify_tlog_proof(text, ENTRIES[0], [log_key])
    assert head.size == 1
    _rejects(text, ENTRIES[1], log_key)


def test_the_spec_example_parses() -> None:
    nodes = [
        "gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=",
        "B95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=",
        "EKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=",
        "RoopEkOdqkYqMB4MJXrbt/hMjOxsVn0IrWjpz1ZMMes=",
        "AHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk=",
    ]
    extra = "YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ"
    checkpoint = (
        "example.com/fancylog\n109482\nsFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=\n\n"
        "\u2014 example.com/fancylog hI2DJw[...]1roloI=\n"
    )
    text = "c2sp.org/tlog-proof@v1\nextra " + extra + "\nindex 73894\n" + "\n".join(nodes) + "\n\n" + checkpoint
    proof = parse_tlog_proof(text)
    assert proof.index == 73894
    assert proof.path == tuple(base64.b64decode(node) for node in nodes)
    assert proof.extra == base64.b64decode(extra)
    assert proof.checkpoint == checkpoint


# --- verification --------------------------------------------------------------------


def test_every_entry_of_the_tree_verifies(log_key: NoteVerifier) -> None:
    want = Checkpoint(ORIGIN, SIZE, ROOT)
    for index in range(SIZE):
        text = good(index)
        proof, checkpoint = verify_tlog_proof(text, TREE[index], [log_key], origin=ORIGIN)
        assert checkpoint == want
        assert proof == TlogProof(index, tuple(path(index, TREE)), CHECKPOINT)


def test_extra_data_does_not_change_the_verdict(log_key: NoteVerifier) -> None:
    text = proof_text(5, path(5, TREE), CHECKPOINT, b"unauthenticated context")
    proof, _ = verify_tlog_proof(text, TREE[5], [log_key])
    assert proof.extra == b"unauthenticated context"
    _rejects(proof_text(5, path(5, TREE), CHECKPOINT, b"x"), TREE[6], log_key)


def test_the_origin_must_match(log_key: NoteVerifier) -> None:
    with pytest.raises(ProofError, match="log"):
        verify_tlog_proof(good(), TREE[11], [log_key], origin="example.com/another")


# --- tampering -------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 11, 31, 32, 36])
def test_an_altered_entry_is_rejected(log_key: NoteVerifier, index: int) -> None:
    entry = TREE[index]
    for altered in (entry + b" ", entry[:-1], entry.replace(b"allow", b"deny!"), b"", TREE[(index + 1) % SIZE]):
        _rejects(good(index), altered, log_key)
    # The leaf hash is not the entry.
    _rejects(good(index), _sha256(b"\x00" + entry), log_key)


def test_an_altered_root_resigned_by_an_unknown_key_is_rejected(log_key: NoteVerifier) -> None:
    forged_tree = [*TREE[:11], b'{"event": 11, "decision": "deny"}', *TREE[12:]]
    stranger = _sha256(b"a stranger's key")
    forged = proof_text(11, path(11, forged_tree), signed_checkpoint(SIZE, mth(forged_tree), stranger))
    # The forgery is a well-formed proof: it verifies for anyone trusting the stranger ...
    verify_tlog_proof(forged, forged_tree[11], [NoteSigner(ORIGIN, stranger).verifier])
    # ... and not for the log's own key.
    with pytest.raises(ProofError, match="trusted"):
        verify_tlog_proof(forged, forged_tree[11], [log_key])


def test_an_edited_checkpoint_body_is_rejected(log_key: NoteVerifier) -> None:
    forged_tree = [*TREE[:11], b'{"event": 11, "decision": "deny"}', *TREE[12:]]
    edited = CHECKPOINT.replace(b64(ROOT), b64(mth(forged_tree)), 1)
    assert edited != CHECKPOINT
    with pytest.raises(ProofError, match="does not verify"):
        verify_tlog_proof(proof_text(11, path(11, forged_tree), edited), forged_tree[11], [log_key])
    for old, new in [(f"\n{SIZE}\n", f"\n{SIZE + 1}\n"), (ORIGIN + "\n", ORIGIN + "x\n")]:
        with pytest.raises(ProofError, match="does not verify"):
            verify_tlog_proof(proof_text(11, path(11, TREE), CHECKPOINT.replace(old, new, 1)), TREE[11], [log_key])


def test_a_checkpoint_signed_by_the_wrong_key_is_rejected(log_key: NoteVerifier) -> None:
    # Same name, another key: its ID differs, so it is an unknown key.
    wrong = signed_checkpoint(SIZE, ROOT, key_seed=_sha256(b"wrong key"))
    with pytest.raises(ProofError, match="trusted"):
        verify_tlog_proof(proof_text(11, path(11, TREE), wrong), TREE[11], [log_key])
    # The right key under another name is also not the log's key.
    renamed = signed_checkpoint(SIZE, ROOT, name="example.com/cra/other")
    with pytest.raises(ProofError, match="trusted"):
        verify_tlog_proof(proof_text(11, path(11, TREE), renamed), TREE[11], [log_key])


@pytest.mark.parametrize("index", [0, 11, 32, 36])
def test_tampered_paths_are_rejected(log_key: NoteVerifier, index: int) -> None:
    nodes = path(index, TREE)
    assert proof_text(index, nodes, CHECKPOINT) == good(index)
    variants = [
        nodes[:-1],  # truncated
        nodes[1:],
        [],
        [*nodes, nodes[0]],  # extended
        [nodes[0], *nodes],
        [*nodes, ROOT],
    ]
    if len(nodes) >= 2:
        variants.append([nodes[1], nodes[0], *nodes[2:]])  # swapped
        variants.append([*nodes[:-2], nodes[-1], nodes[-2]])
        variants.append(list(reversed(nodes)))
    for at in range(len(nodes)):  # one flipped bit anywhere
        for bit in (0, 7, 255):
            node = bytearray(nodes[at])
            node[bit // 8] ^= 1 << (bit % 8)
            variants.append([*nodes[:at], bytes(node), *nodes[at + 1 :]])
    for variant in variants:
        _rejects(proof_text(index, variant, CHECKPOINT), TREE[index], log_key)


@pytest.mark.parametrize("index", [0, 11, 32, 36])
def test_a_changed_index_is_rejected(log_key: NoteVerifier, index: int) -> None:
    nodes = path(index, TREE)
    for other in {index - 1, index + 1, index ^ 1, index ^ 4, 36 - index, SIZE, SIZE + 1, 2**64, 10**19} - {index}:
        if other < 0:
            continue
        _rejects(proof_text(other, nodes, CHECKPOINT), TREE[index], log_key)
        if other < SIZE:  # nor with the entry that really is at the other index
            _rejects(proof_text(other, nodes, CHECKPOINT), TREE[other], log_key)


@pytest.mark.parametrize("other_size", [1, 11, 32, 36, 38])
def test_a_proof_against_a_checkpoint_of_another_size_is_rejected(log_key: NoteVerifier, other_size: int) -> None:
    # Genuine checkpoints of the same log at other sizes, signed by the log's key.
    other = signed_checkpoint(other_size, mth(ENTRIES[:other_size]))
    for index in {0, 11, 31, 36} & set(range(other_size)) or {0}:
        # This tree's path with the other checkpoint ...
        _rejects(proof_text(index, path(index, TREE), other), TREE[index], log_key)
        # ... and the other tree's path with this checkpoint.
        _rejects(proof_text(index, path(index, ENTRIES[:other_size]), CHECKPOINT), TREE[index], log_key)


# --- malformed proofs ------------------------------------------------------------------


def _bad_proofs() -> list[tuple[str, str | bytes]]:
    nodes = [b64(node) for node in path(11, TREE)]
    body = "\n".join(nodes)
    non_canonical = b64(bytes(32))[:-2] + "B="
    assert base64.b64decode(non_canonical) == bytes(32)
    return [
        ("wrong version", f"c2sp.org/tlog-proof@v2\nindex 11\n{body}\n\n{CHECKPOINT}"),
        ("header with a trailing space", f"c2sp.org/tlog-proof@v1 \nindex 11\n{body}\n\n{CHECKPOINT}"),
        ("no header", f"index 11\n{body}\n\n{CHECKPOINT}"),
        ("missing index", f"c2sp.org/tlog-proof@v1\n{body}\n\n{CHECKPOINT}"),
        ("header only", f"c2sp.org/tlog-proof@v1\n\n{CHECKPOINT}"),
        ("index with a leading zero", f"c2sp.org/tlog-proof@v1\nindex 011\n{body}\n\n{CHECKPOINT}"),
        ("negative index", f"c2sp.org/tlog-proof@v1\nindex -11\n{body}\n\n{CHECKPOINT}"),
        ("index with two spaces", f"c2sp.org/tlog-proof@v1\nindex  11\n{body}\n\n{CHECKPOINT}"),
        ("index without a number", f"c2sp.org/tlog-proof@v1\nindex\n{body}\n\n{CHECKPOINT}"),
        ("capitalised index", f"c2sp.org/tlog-proof@v1\nIndex 11\n{body}\n\n{CHECKPOINT}"),
        ("hex index", f"c2sp.org/tlog-proof@v1\nindex 0xb\n{body}\n\n{CHECKPOINT}"),
        ("extra after the index", f"c2sp.org/tlog-proof@v1\nindex 11\nextra AAAA\n{body}\n\n{CHECKPOINT}"),
        ("two extra lines", f"c2sp.org/tlog-proof@v1\nextra AAAA\nextra AAAA\nindex 11\n{body}\n\n{CHECKPOINT}"),
        ("extra not base64", f"c2sp.org/tlog-proof@v1\nextra !!!!\nindex 11\n{body}\n\n{CHECKPOINT}"),
        ("extra non-canonical", f"c2sp.org/tlog-proof@v1\nextra AAB=\nindex 11\n{body}\n\n{CHECKPOINT}"),
        ("31-byte node", f"c2sp.org/tlog-proof@v1\nindex 11\n{b64(bytes(31))}\n{body}\n\n{CHECKPOINT}"),
        ("33-byte node", f"c2sp.org/tlog-proof@v1\nindex 11\n{b64(bytes(33))}\n{body}\n\n{CHECKPOINT}"),
        ("hex node", f"c2sp.org/tlog-proof@v1\nindex 11\n{bytes(32).hex()}\n{body}\n\n{CHECKPOINT}"),
        ("node without padding", f"c2sp.org/tlog-proof@v1\nindex 11\n{nodes[0].rstrip('=')}\n\n{CHECKPOINT}"),
        ("non-canonical node", f"c2sp.org/tlog-proof@v1\nindex 11\n{non_canonical}\n{body}\n\n{CHECKPOINT}"),
        ("node with a trailing space", f"c2sp.org/tlog-proof@v1\nindex 11\n{nodes[0]} \n\n{CHECKPOINT}"),
        ("no blank line", f"c2sp.org/tlog-proof@v1\nindex 11\n{body}\n{CHECKPOINT}"),
        ("carriage returns", good().replace("\n", "\r\n")),
        ("invalid UTF-8", b"\xff" + good().encode()),
        ("invalid UTF-8 in the checkpoint", good().encode().replace(ORIGIN.encode(), b"\xc3(", 1)),
        ("empty", ""),
    ]


@pytest.mark.parametrize(("why", "text"), _bad_proofs(), ids=[why for why, _ in _bad_proofs()])
def test_malformed_proofs_are_rejected(log_key: NoteVerifier, why: str, text: str | bytes) -> None:
    _rejects(text, TREE[11], log_key)


def test_parse_alone_rejects_a_malformed_header() -> None:
    for _, text in _bad_proofs():
        with pytest.raises(ProofError):
            parse_tlog_proof(text)


def test_a_missing_checkpoint_is_rejected(log_key: NoteVerifier) -> None:
    text = proof_text(11, path(11, TREE), "")
    assert parse_tlog_proof(text).checkpoint == ""
    _rejects(text, TREE[11], log_key)
    _rejects(proof_text(11, path(11, TREE), CHECKPOINT + "trailing garbage\n"), TREE[11], log_key)

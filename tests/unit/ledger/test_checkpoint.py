"""C2SP checkpoints (https://c2sp.org/tlog-checkpoint): origin, size and root as a signed note."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from cra.errors import ProofError
from cra.ledger.checkpoint import Checkpoint, checkpoint_of, open_checkpoint, parse_checkpoint, sign_checkpoint
from cra.ledger.note import NoteSigner, NoteVerifier

ORIGIN = "example.com/cra/log"
ROOT = hashlib.sha256(b"a root").digest()
ROOT_B64 = base64.b64encode(ROOT).decode()
BODY = f"{ORIGIN}\n1234\n{ROOT_B64}\n"
SEED = hashlib.sha256(b"the log key").digest()
WITNESS_SEED = hashlib.sha256(b"witness").digest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ref_signed(body: str, name: str, key_seed: bytes) -> str:
    """The signed note, made with ``cryptography`` directly."""
    private = Ed25519PrivateKey.from_private_bytes(key_seed)
    public = private.public_key().public_bytes_raw()
    key_id = hashlib.sha256(name.encode() + b"\n\x01" + public).digest()[:4]
    return f"{body}\n\u2014 {name} {b64(key_id + private.sign(body.encode()))}\n"


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner(ORIGIN, SEED)


@pytest.fixture(scope="module")
def verifier(signer: NoteSigner) -> NoteVerifier:
    return signer.verifier


# --- round trips -------------------------------------------------------------------


def test_the_body_is_three_lines() -> None:
    assert Checkpoint(ORIGIN, 1234, ROOT).body() == BODY
    assert parse_checkpoint(BODY) == Checkpoint(ORIGIN, 1234, ROOT, ())


def test_extension_lines_follow_the_root() -> None:
    body = BODY + "ext one\n\u2014 ext two\n"
    checkpoint = Checkpoint(ORIGIN, 1234, ROOT, ("ext one", "\u2014 ext two"))
    assert checkpoint.body() == body
    assert parse_checkpoint(body) == checkpoint


def test_the_empty_tree_and_the_largest_size() -> None:
    empty = hashlib.sha256(b"").digest()
    assert parse_checkpoint(f"{ORIGIN}\n0\n{b64(empty)}\n") == Checkpoint(ORIGIN, 0, empty)
    largest = 2**64 - 1
    assert parse_checkpoint(f"{ORIGIN}\n18446744073709551615\n{ROOT_B64}\n").size == largest


ORIGINS = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=30)
EXTENSIONS = st.lists(ORIGINS, max_size=3)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    origin=ORIGINS,
    size=st.integers(min_value=0, max_value=2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=EXTENSIONS,
)
def test_round_trip(origin: str, size: int, root: bytes, extensions: list[str]) -> None:
    body = "".join(line + "\n" for line in [origin, str(size), b64(root), *extensions])
    checkpoint = Checkpoint(origin, size, root, tuple(extensions))
    assert checkpoint.body() == body
    assert parse_checkpoint(body) == checkpoint


def test_signed_checkpoints_round_trip(signer: NoteSigner, verifier: NoteVerifier) -> None:
    checkpoint = Checkpoint(ORIGIN, 1234, ROOT)
    signed = sign_checkpoint(checkpoint, [signer])
    assert signed == ref_signed(BODY, ORIGIN, SEED)
    assert open_checkpoint(signed, [verifier]) == checkpoint
    assert open_checkpoint(signed.encode(), [verifier], origin=ORIGIN) == checkpoint
    assert checkpoint_of(signed) == checkpoint


def test_a_cosigned_checkpoint_opens_with_either_key(signer: NoteSigner) -> None:
    witness = NoteSigner("witness.example/w1", WITNESS_SEED)
    signed = sign_checkpoint(Checkpoint(ORIGIN, 1234, ROOT), [signer, witness])
    witness_line = ref_signed(BODY, witness.name, WITNESS_SEED).removeprefix(BODY + "\n")
    assert signed == ref_signed(BODY, ORIGIN, SEED) + witness_line
    for verifiers in ([signer.verifier], [witness.verifier], [witness.verifier, signer.verifier]):
        assert open_checkpoint(signed, verifiers).root == ROOT


# --- rejections ----------------------------------------------------------------------

BAD_BODIES = [
    ("two lines", f"{ORIGIN}\n1234\n"),
    ("one line", f"{ORIGIN}\n"),
    ("nothing", ""),
    ("just a newline", "\n"),
    ("empty origin", f"\n1234\n{ROOT_B64}\n"),
    ("leading zero", f"{ORIGIN}\n01234\n{ROOT_B64}\n"),
    ("zero with a leading zero", f"{ORIGIN}\n00\n{ROOT_B64}\n"),
    ("negative size", f"{ORIGIN}\n-1\n{ROOT_B64}\n"),
    ("plus sign", f"{ORIGIN}\n+1234\n{ROOT_B64}\n"),
    ("spaces around the size", f"{ORIGIN}\n 1234\n{ROOT_B64}\n"),
    ("hex size", f"{ORIGIN}\n0x10\n{ROOT_B64}\n"),
    ("exponent", f"{ORIGIN}\n1e3\n{ROOT_B64}\n"),
    ("underscore", f"{ORIGIN}\n1_234\n{ROOT_B64}\n"),
    ("non-ASCII digits", f"{ORIGIN}\n\u0661\u0662\n{ROOT_B64}\n"),
    ("empty size", f"{ORIGIN}\n\n{ROOT_B64}\n"),
    ("size 2^64", f"{ORIGIN}\n18446744073709551616\n{ROOT_B64}\n"),
    ("huge size", f"{ORIGIN}\n{'9' * 40}\n{ROOT_B64}\n"),
    ("31-byte root", f"{ORIGIN}\n1234\n{b64(ROOT[:31])}\n"),
    ("33-byte root", f"{ORIGIN}\n1234\n{b64(ROOT + b'!')}\n"),
    ("empty root", f"{ORIGIN}\n1234\n\n"),
    ("hex root", f"{ORIGIN}\n1234\n{ROOT.hex()}\n"),
    ("root without padding", f"{ORIGIN}\n1234\n{ROOT_B64.rstrip('=')}\n"),
    ("url-safe root", f"{ORIGIN}\n1234\n{base64.urlsafe_b64encode(bytes([0xFF]) * 32).decode()}\n"),
    ("empty extension line", BODY + "\n"),
    ("empty extension line between others", BODY + "one\n\ntwo\n"),
    ("missing trailing newline", BODY[:-1]),
    ("missing trailing newline after an extension", BODY + "ext"),
]


def _non_canonical_root() -> str:
    # 32 bytes leave two unused bits in the last base64 digit: set one of them.
    root = bytes(32)
    text = b64(root)
    assert text.endswith("A=")
    mangled = text[:-2] + "B="
    assert base64.b64decode(mangled) == root
    return mangled


@pytest.mark.parametrize(("why", "body"), BAD_BODIES, ids=[why for why, _ in BAD_BODIES])
def test_malformed_bodies_are_rejected(why: str, body: str) -> None:
    with pytest.raises(ProofError):
        parse_checkpoint(body)


def test_a_non_canonical_root_is_rejected() -> None:
    with pytest.raises(ProofError, match="canonical"):
        parse_checkpoint(f"{ORIGIN}\n1234\n{_non_canonical_root()}\n")


SIGNABLE = [(why, body) for why, body in BAD_BODIES if body.endswith("\n")]  # a note text ends in a newline


@pytest.mark.parametrize(("why", "body"), SIGNABLE, ids=[why for why, _ in SIGNABLE])
def test_a_signed_malformed_body_is_still_rejected(verifier: NoteVerifier, why: str, body: str) -> None:
    # A valid signature by the trusted key does not make a malformed checkpoint acceptable.
    signed = ref_signed(body, ORIGIN, SEED)
    with pytest.raises(ProofError):
        open_checkpoint(signed, [verifier])
    with pytest.raises(ProofError):
        checkpoint_of(signed)


def test_open_checkpoint_checks_the_origin(verifier: NoteVerifier) -> None:
    signed = ref_signed(BODY, ORIGIN, SEED)
    for other in ("example.com/other", ORIGIN + "/", ORIGIN.upper(), ""):
        with pytest.raises(ProofError, match="log"):
            open_checkpoint(signed, [verifier], origin=other)


def test_open_checkpoint_needs_a_trusted_signature(verifier: NoteVerifier) -> None:
    stranger = hashlib.sha256(b"a stranger").digest()
    with pytest.raises(ProofError, match="trusted"):
        open_checkpoint(ref_signed(BODY, ORIGIN, stranger), [verifier])
    with pytest.raises(ProofError, match="trusted"):
        open_checkpoint(ref_signed(BODY, ORIGIN, SEED), [])
    # checkpoint_of does not verify: it is for display only.
    assert checkpoint_of(ref_signed(BODY, ORIGIN, stranger)) == Checkpoint(ORIGIN, 1234, ROOT)


def test_an_edited_body_is_rejected(verifier: NoteVerifier) -> None:
    signed = ref_signed(BODY, ORIGIN, SEED)
    for old, new in [
        ("1234", "1235"),
        (ROOT_B64, b64(hashlib.sha256(b"another root").digest())),
        (ORIGIN, ORIGIN + "2"),
    ]:
        with pytest.raises(ProofError, match="does not verify"):
            open_checkpoint(signed.replace(old, new, 1), [verifier])


def test_a_signed_non_checkpoint_is_rejected(verifier: NoteVerifier) -> None:
    with pytest.raises(ProofError):
        open_checkpoint(ref_signed("hello\n", ORIGIN, SEED), [verifier])

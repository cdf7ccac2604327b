"""C2SP signed notes with Ed25519 keys (https://c2sp.org/signed-note).

Published vectors: the key pair and signed note of Go's ``golang.org/x/mod/sumdb/note``
tests, and the example note of the C2SP specification (whose key is not published).
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from cra.errors import ProofError
from cra.ledger.note import (
    MAX_SIGNATURES,
    NoteSigner,
    NoteVerifier,
    add_signatures,
    key_id,
    open_note,
    parse_note,
    sign_note,
)

# golang.org/x/mod/sumdb/note, note_test.go
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_BLOB = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
GO_SIG_LINE = f"\u2014 PeterNeumann {GO_BLOB}\n"
GO_NOTE = GO_TEXT + "\n" + GO_SIG_LINE
GO_PUBLIC = base64.b64decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")[1:]
GO_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
GO_KEY_ID = 0xC74F20A3

# c2sp.org/signed-note, the example at the top of the specification
SPEC_TEXT = "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned è subito sera.\n"
SPEC_NAME = "quasimodo.example/salvatore"
SPEC_BLOB = "NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc="
SPEC_NOTE = f"{SPEC_TEXT}\n\u2014 {SPEC_NAME} {SPEC_BLOB}\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def seed(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def ref_key_id(name: str, public_key: bytes, alg: int = 1) -> int:
    return int.from_bytes(hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()[:4], "big")


def raw_public(key_seed: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(key_seed).public_key().public_bytes_raw()


def ref_sig_line(name: str, key_seed: bytes, text: str) -> str:
    """A signature line made with ``cryptography`` directly, not with the code under test."""
    signature = Ed25519PrivateKey.from_private_bytes(key_seed).sign(text.encode())
    blob = (ref_key_id(name, raw_public(key_seed))).to_bytes(4, "big") + signature
    return f"\u2014 {name} {b64(blob)}\n"


def ref_vkey(name: str, public_key: bytes, alg: int = 1) -> str:
    return f"{name}+{ref_key_id(name, public_key, alg):08x}+{b64(bytes([alg]) + public_key)}"


@pytest.fixture(scope="module")
def go_signer() -> NoteSigner:
    return NoteSigner.parse(GO_SKEY)


@pytest.fixture(scope="module")
def go_verifier() -> NoteVerifier:
    return NoteVerifier.parse(GO_VKEY)


SIXTEEN = [NoteSigner(f"witness{i}.example/log", seed(f"witness {i}")) for i in range(16)]


# --- the Go vector ---------------------------------------------------------------


def test_signing_reproduces_the_go_vector(go_signer: NoteSigner) -> None:
    assert sign_note(GO_TEXT, [go_signer]) == GO_NOTE


def test_the_go_keys_round_trip(go_signer: NoteSigner, go_verifier: NoteVerifier) -> None:
    assert go_signer.private_key_string() == GO_SKEY
    assert go_signer.vkey == GO_VKEY
    assert go_verifier.vkey == GO_VKEY
    assert go_signer.name == go_verifier.name == "PeterNeumann"
    assert go_signer.key_id == go_verifier.key_id == GO_KEY_ID
    assert go_verifier.public_key == GO_PUBLIC == raw_public(GO_SEED)
    assert NoteSigner("PeterNeumann", GO_SEED).private_key_string() == GO_SKEY
    assert NoteVerifier("PeterNeumann", GO_PUBLIC).vkey == GO_VKEY


def test_the_key_id_is_the_truncated_hash_of_name_type_and_key() -> None:
    digest = hashlib.sha256(b"PeterNeumann\n\x01" + GO_PUBLIC).digest()
    assert digest[:4] == bytes.fromhex("c74f20a3")
    assert key_id("PeterNeumann", GO_PUBLIC) == GO_KEY_ID
    assert key_id("PeterNeumann", GO_PUBLIC, alg=2) == ref_key_id("PeterNeumann", GO_PUBLIC, 2) != GO_KEY_ID


@pytest.mark.parametrize("as_bytes", [False, True])
def test_opening_the_go_vector_verifies(go_verifier: NoteVerifier, as_bytes: bool) -> None:
    note = open_note(GO_NOTE.encode() if as_bytes else GO_NOTE, [go_verifier])
    assert note.text == GO_TEXT
    assert len(note.signatures) == 1
    (signature,) = note.signatures
    assert signature.name == "PeterNeumann"
    assert signature.key_id == GO_KEY_ID
    assert signature.signature == base64.b64decode(GO_BLOB)[4:]
    assert note.format() == GO_NOTE
    # The signature is a plain Ed25519 signature over the text.
    Ed25519PublicKey.from_public_bytes(GO_PUBLIC).verify(signature.signature, GO_TEXT.encode())


# --- the specification's example -------------------------------------------------


def test_the_spec_example_parses_with_the_last_blank_line_as_separator() -> None:
    note = parse_note(SPEC_NOTE)
    assert note.text == SPEC_TEXT  # includes its own empty line
    assert "\n\n" in note.text
    (signature,) = note.signatures
    raw = base64.b64decode(SPEC_BLOB)
    assert signature.name == SPEC_NAME
    assert signature.key_id == int.from_bytes(raw[:4], "big")
    assert signature.signature == raw[4:]
    assert len(signature.signature) == 64
    assert note.format() == SPEC_NOTE


def test_the_spec_example_has_no_trusted_key(go_verifier: NoteVerifier) -> None:
    with pytest.raises(ProofError, match="trusted"):
        open_note(SPEC_NOTE, [go_verifier])
    with pytest.raises(ProofError, match="trusted"):
        open_note(SPEC_NOTE, [])
    # A key with the example's name but another public key has another ID: it is unknown.
    impostor = NoteSigner(SPEC_NAME, seed("not salvatore")).verifier
    with pytest.raises(ProofError, match="trusted"):
        open_note(SPEC_NOTE, [impostor])


# --- signing ----------------------------------------------------------------------

NOTE_TEXT = st.lists(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=40), min_size=1, max_size=6
).map(lambda lines: "\n".join(lines) + "\n")


@settings(max_examples=60, derandomize=True, deadline=None)
@given(text=NOTE_TEXT, which=st.integers(min_value=0, max_value=15))
def test_signed_notes_match_an_independent_signer(text: str, which: int) -> None:
    signer = SIXTEEN[which]
    key_seed = seed(f"witness {which}")
    signed = sign_note(text, [signer])
    assert signed == text + "\n" + ref_sig_line(signer.name, key_seed, text)
    note = open_note(signed, [signer.verifier])
    assert note.text == text


def test_sign_note_refuses_a_bad_text(go_signer: NoteSigner) -> None:
    for text in ["no final newline", "", "tab\there\n", "carriage\r\n", "nul\x00\n", "escape\x1b\n"]:
        with pytest.raises(ProofError):
            sign_note(text, [go_signer])
    with pytest.raises(ProofError, match="at least one"):
        sign_note(GO_TEXT, [])


# --- the verification rules ---------------------------------------------------------


def test_unknown_keys_are_ignored(go_signer: NoteSigner, go_verifier: NoteVerifier) -> None:
    other = SIXTEEN[0]
    for signers in ([other, go_signer], [go_signer, other]):
        note = open_note(sign_note(GO_TEXT, signers), [go_verifier])
        assert [(s.name, s.key_id) for s in note.signatures] == [("PeterNeumann", GO_KEY_ID)]


def test_a_key_sharing_only_the_name_or_only_the_id_is_unknown(go_verifier: NoteVerifier) -> None:
    garbage = bytes(64)
    same_name = f"\u2014 PeterNeumann {b64((GO_KEY_ID ^ 1).to_bytes(4, 'big') + garbage)}\n"
    same_id = f"\u2014 PeterNeumann2 {b64(GO_KEY_ID.to_bytes(4, 'big') + garbage)}\n"
    real_impostor = ref_sig_line("PeterNeumann", seed("impostor"), GO_TEXT)  # a genuine signature, other key
    for line in (same_name, same_id, real_impostor):
        for note in (GO_NOTE + line, GO_TEXT + "\n" + line + GO_SIG_LINE):
            assert len(open_note(note, [go_verifier]).signatures) == 1
        with pytest.raises(ProofError, match="trusted"):
            open_note(GO_TEXT + "\n" + line, [go_verifier])
    # Both name and ID of the known key: the signature must verify.
    both = f"\u2014 PeterNeumann {b64(GO_KEY_ID.to_bytes(4, 'big') + garbage)}\n"
    with pytest.raises(ProofError, match="does not verify"):
        open_note(GO_NOTE + both, [go_verifier])


def test_a_bad_signature_by_a_known_key_rejects_the_note() -> None:
    first, second = SIXTEEN[0], SIXTEEN[1]
    signed = sign_note(GO_TEXT, [first, second])
    lines = signed.split("\n")
    raw = bytearray(base64.b64decode(lines[-2].split(" ")[-1]))
    raw[10] ^= 0x01
    lines[-2] = f"\u2014 {second.name} {b64(bytes(raw))}"
    tampered = "\n".join(lines)
    with pytest.raises(ProofError, match="does not verify"):
        open_note(tampered, [first.verifier, second.verifier])
    with pytest.raises(ProofError, match="does not verify"):
        open_note(tampered, [second.verifier])
    # Without the second key the bad line is an unknown key's, and ignored.
    assert len(open_note(tampered, [first.verifier]).signatures) == 1


@pytest.mark.parametrize("length", [0, 1, 32, 63, 65, 128])
def test_a_known_keys_signature_of_the_wrong_length_rejects(go_verifier: NoteVerifier, length: int) -> None:
    signature = (base64.b64decode(GO_BLOB)[4:] * 3)[:length]
    line = f"\u2014 PeterNeumann {b64(GO_KEY_ID.to_bytes(4, 'big') + signature)}\n"
    if length == 0:  # four bytes cannot carry a key ID and a signature: malformed
        with pytest.raises(ProofError, match="too short"):
            open_note(GO_NOTE + line, [go_verifier])
        return
    with pytest.raises(ProofError, match="does not verify"):
        open_note(GO_NOTE + line, [go_verifier])


def test_the_text_is_what_is_signed(go_verifier: NoteVerifier) -> None:
    for text in [GO_TEXT.replace("problem", "Problem", 1), GO_TEXT + "\n", "\n" + GO_TEXT, GO_TEXT[:-1] + " \n"]:
        with pytest.raises(ProofError, match="does not verify"):
            open_note(text + "\n" + GO_SIG_LINE, [go_verifier])


def test_no_verified_known_key_rejects(go_verifier: NoteVerifier) -> None:
    only_unknown = sign_note(GO_TEXT, SIXTEEN[:3])
    with pytest.raises(ProofError, match="trusted"):
        open_note(only_unknown, [go_verifier])
    with pytest.raises(ProofError, match="trusted"):
        open_note(GO_NOTE, [])


def test_sixteen_signatures_are_accepted() -> None:
    signed = sign_note(GO_TEXT, SIXTEEN)
    assert signed == GO_TEXT + "\n" + "".join(
        ref_sig_line(s.name, seed(f"witness {i}"), GO_TEXT) for i, s in enumerate(SIXTEEN)
    )
    for signer in SIXTEEN:
        note = open_note(signed, [signer.verifier])
        assert [(s.name, s.key_id) for s in note.signatures] == [(signer.name, signer.key_id)]
    everyone = open_note(signed, [s.verifier for s in reversed(SIXTEEN)])
    assert [s.name for s in everyone.signatures] == [s.name for s in SIXTEEN]


def test_more_than_max_signatures_is_rejected(go_verifier: NoteVerifier) -> None:
    assert MAX_SIGNATURES >= 16  # the specification's floor
    at_limit = GO_TEXT + "\n" + GO_SIG_LINE * MAX_SIGNATURES
    assert len(open_note(at_limit, [go_verifier]).signatures) == 1
    over = GO_TEXT + "\n" + GO_SIG_LINE * (MAX_SIGNATURES + 1)
    with pytest.raises(ProofError, match="at most"):
        parse_note(over)
    with pytest.raises(ProofError):
        open_note(over, [go_verifier])


def test_duplicate_signatures_by_one_key_are_fine(go_verifier: NoteVerifier) -> None:
    note = open_note(GO_NOTE + GO_SIG_LINE + GO_SIG_LINE, [go_verifier])
    assert len(note.signatures) == 1
    assert note.text == GO_TEXT


def test_key_rotation_verifies_with_either_key() -> None:
    old = NoteSigner("example.com/log", seed("old key"))
    new = NoteSigner("example.com/log", seed("new key"))
    assert old.key_id != new.key_id
    text = "example.com/log\n42\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    before = sign_note(text, [old])
    assert before == text + "\n" + ref_sig_line(old.name, seed("old key"), text)
    during = add_signatures(before, [new])
    assert during == before + ref_sig_line(new.name, seed("new key"), text)
    assert add_signatures(during, [old, new]) == during  # no key signs twice
    for verifiers in ([old.verifier], [new.verifier], [old.verifier, new.verifier]):
        assert open_note(during, verifiers).text == text
    after = sign_note(text, [new])
    with pytest.raises(ProofError, match="trusted"):
        open_note(after, [old.verifier])


# --- malformed verifier and signer keys ------------------------------------------------


def _go_vkey_manglings() -> list[str]:
    # As Go's TestNewVerifier: every proper substring, and every single-byte increment.
    raw = GO_VKEY.encode()
    out = {
        raw[i:j].decode() for i in range(len(raw) + 1) for j in range(i + 1, len(raw) + 1) if (i, j) != (0, len(raw))
    }
    for i in range(len(raw)):
        out.add((raw[:i] + bytes([raw[i] + 1]) + raw[i + 1 :]).decode())
    return sorted(out)


def test_every_mangling_of_the_go_vkey_is_rejected() -> None:
    manglings = _go_vkey_manglings()
    assert len(manglings) > 2000
    accepted = []
    for vkey in manglings:
        try:
            NoteVerifier.parse(vkey)
        except ProofError:
            continue
        accepted.append(vkey)
    assert accepted == []


def _bad_vkeys() -> list[tuple[str, str]]:
    type2 = ref_vkey("PeterNeumann", GO_PUBLIC, alg=2)
    material = GO_VKEY.split("+", 2)[2]
    return [
        ("wrong key id", f"PeterNeumann+c74f20a4+{material}"),
        ("id of another name", f"PeterNeumann2+c74f20a3+{material}"),
        ("uppercase id", f"PeterNeumann+C74F20A3+{material}"),
        ("short id", f"PeterNeumann+74f20a3+{material}"),
        ("non-Ed25519 type byte", type2),
        ("bad base64", "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T!"),
        ("non-canonical base64 (padding)", GO_VKEY + "="),
        ("non-canonical base64 (more padding)", GO_VKEY + "=="),
        ("url-safe base64", ref_vkey("PeterNeumann", GO_PUBLIC).replace("/", "_")),
        ("31-byte key", ref_vkey("PeterNeumann", GO_PUBLIC[:31])),
        ("33-byte key", ref_vkey("PeterNeumann", GO_PUBLIC + b"\x00")),
        ("name with a space", ref_vkey("Peter Neumann", GO_PUBLIC)),
        ("name with a no-break space", ref_vkey("Peter\u00a0Neumann", GO_PUBLIC)),
        ("name with an em space", ref_vkey("Peter\u2003Neumann", GO_PUBLIC)),
        ("name with a plus", ref_vkey("Peter+Neumann", GO_PUBLIC)),
        ("empty name", ref_vkey("", GO_PUBLIC)),
        ("leading space", " " + GO_VKEY),
        ("trailing newline", GO_VKEY + "\n"),
        ("no material", "PeterNeumann+c74f20a3"),
        ("empty", ""),
    ]


@pytest.mark.parametrize(("why", "vkey"), _bad_vkeys(), ids=[why for why, _ in _bad_vkeys()])
def test_malformed_vkeys_are_rejected(why: str, vkey: str) -> None:
    with pytest.raises(ProofError):
        NoteVerifier.parse(vkey)


@pytest.mark.parametrize("name", ["", "Peter Neumann", "a+b", "tab\tname", "new\nline", "em\u2003space"])
def test_keys_with_invalid_names_cannot_be_made(name: str) -> None:
    with pytest.raises(ProofError, match="name"):
        NoteVerifier(name, GO_PUBLIC)
    with pytest.raises(ProofError, match="name"):
        NoteSigner(name, GO_SEED)


def test_malformed_skeys_are_rejected() -> None:
    material = GO_SKEY.rsplit("+", 1)[1]
    type2 = b64(bytes([2]) + GO_SEED)
    for skey in [
        f"PRIVATE+KEY+PeterNeumann+c74f20a4+{material}",
        f"private+key+PeterNeumann+c74f20a3+{material}",
        f"PUBLIC+KEY+PeterNeumann+c74f20a3+{material}",
        f"PRIVATE+KEY+PeterNeumann2+c74f20a3+{material}",
        f"PRIVATE+KEY+{GO_VKEY}",  # the public key is not a seed: the ID does not match
        f"PRIVATE+KEY+PeterNeumann+c74f20a3+{type2}",  # not an Ed25519 seed
        GO_SKEY + "=",
        GO_SKEY[:-1],
        GO_VKEY,
        "",
    ]:
        with pytest.raises(ProofError):
            NoteSigner.parse(skey)
    for bad_seed in (b"", GO_SEED[:31], GO_SEED + b"\x00"):
        with pytest.raises(ProofError, match="32 bytes"):
            NoteSigner("PeterNeumann", bad_seed)
    with pytest.raises(ProofError, match="32 bytes"):
        NoteVerifier("PeterNeumann", GO_PUBLIC[:31])


# --- malformed notes ----------------------------------------------------------------


def _bad_notes() -> list[tuple[str, str | bytes]]:
    blob = GO_BLOB
    return [
        ("no blank line", GO_TEXT + GO_SIG_LINE),
        ("no signature at all", GO_TEXT),
        ("empty signature block", GO_TEXT + "\n"),
        ("blank line after the signatures", GO_NOTE + "\n"),
        ("missing trailing newline", GO_NOTE[:-1]),
        ("control character in the text", "\x01" + GO_NOTE),
        ("tab in the text", GO_NOTE.replace("think", "\tthink")),
        ("carriage returns", GO_NOTE.replace("\n", "\r\n")),
        ("NUL in the signature line", GO_NOTE.replace("Neumann ", "Neumann\x00 ")),
        ("invalid UTF-8 byte", b"\xff" + GO_NOTE.encode()),
        ("truncated UTF-8 sequence", GO_TEXT.encode() + b"\n\xe2\x80 PeterNeumann " + blob.encode() + b"\n"),
        ("UTF-8 encoded surrogate", b"\xed\xa0\x80" + GO_NOTE.encode()),
        ("hyphen instead of em dash", GO_TEXT + f"\n- PeterNeumann {blob}\n"),
        ("en dash instead of em dash", GO_TEXT + f"\n\u2013 PeterNeumann {blob}\n"),
        ("no space after the dash", GO_TEXT + f"\n\u2014PeterNeumann {blob}\n"),
        ("empty key name", GO_TEXT + f"\n\u2014  {blob}\n"),
        ("no signature after the name", GO_TEXT + "\n\u2014 PeterNeumann\n"),
        ("empty signature", GO_TEXT + "\n\u2014 PeterNeumann \n"),
        ("two spaces before the signature", GO_TEXT + f"\n\u2014 PeterNeumann  {blob}\n"),
        ("base64 too short: 4 bytes", GO_TEXT + f"\n\u2014 PeterNeumann {b64(GO_KEY_ID.to_bytes(4, 'big'))}\n"),
        ("base64 too short: 1 byte", GO_TEXT + "\n\u2014 PeterNeumann AA==\n"),
        ("not base64", GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJ!uBS9UG==\n"),
        ("missing base64 padding", GO_TEXT + f"\n\u2014 PeterNeumann {blob.rstrip('=')}\n"),
        ("non-canonical base64", GO_TEXT + f"\n\u2014 PeterNeumann {blob[:-2]}N=\n"),
        ("url-safe base64", GO_TEXT + f"\n\u2014 PeterNeumann {blob.replace('/', '_')}\n"),
        ("a good line after a bad one", GO_TEXT + f"\n\u2014 PeterNeumann\n{GO_SIG_LINE}"),
        ("empty", ""),
    ]


@pytest.mark.parametrize(("why", "note"), _bad_notes(), ids=[why for why, _ in _bad_notes()])
def test_malformed_notes_are_rejected(go_verifier: NoteVerifier, why: str, note: str | bytes) -> None:
    with pytest.raises(ProofError):
        parse_note(note)
    with pytest.raises(ProofError):
        open_note(note, [go_verifier])


def test_the_non_canonical_signature_decodes_to_the_good_one() -> None:
    # The mangled spelling above is rejected for its spelling alone: it carries the very signature that verifies.
    assert base64.b64decode(GO_BLOB[:-2] + "N=") == base64.b64decode(GO_BLOB)


@pytest.mark.parametrize(
    "note",
    [
        "x\ud800\n\n" + GO_SIG_LINE,  # a lone surrogate in the text
        GO_TEXT + "\n\u2014 Peter\udc00Neumann " + GO_BLOB + "\n",  # and in a key name
    ],
    ids=["text", "key name"],
)
def test_a_str_that_is_not_valid_unicode_is_a_proof_error(go_verifier: NoteVerifier, note: str) -> None:
    # A note is UTF-8; a str holding a lone surrogate has no UTF-8 encoding, so it is
    # no note, and the verifier's one documented failure is ProofError.
    with pytest.raises(ProofError):
        parse_note(note)
    with pytest.raises(ProofError):
        open_note(note, [go_verifier])


def test_signing_a_str_that_is_not_valid_unicode_is_a_proof_error(go_signer: NoteSigner) -> None:
    with pytest.raises(ProofError):
        sign_note("x\ud800\n", [go_signer])


# --- secrets stay secret ------------------------------------------------------------


def test_the_signer_repr_hides_the_private_key(go_signer: NoteSigner) -> None:
    material = GO_SKEY.rsplit("+", 1)[1]
    for shown in (repr(go_signer), str(go_signer), f"{go_signer!r}", repr([go_signer])):
        assert GO_SKEY not in shown
        assert material not in shown
        assert b64(GO_SEED) not in shown
        assert GO_SEED.hex() not in shown
        assert repr(GO_SEED) not in shown
        assert "PeterNeumann" in shown
    assert not hasattr(go_signer, "__dict__")

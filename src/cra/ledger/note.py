"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys.

A note is UTF-8 text ending in a newline, a blank line, and one or more
signature lines ``— <key name> base64(key ID ‖ signature)``. The key ID is
``SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]``. Keys travel as strings:

- verifier key: ``<name>+<hex key ID>+base64(0x01 ‖ public key)``;
- signer key: ``PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 ‖ seed)``
  (the format of Go's ``golang.org/x/mod/sumdb/note``).

:func:`open_note` applies the specification's rules: signatures by unknown keys
are ignored, a bad signature by a known key rejects the note, and a note with no
verified signature by a known key is rejected.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cra.errors import ProofError
from cra.ledger._base64 import b64, unb64

__all__ = [
    "MAX_SIGNATURES",
    "Note",
    "NoteSigner",
    "NoteVerifier",
    "Signature",
    "add_signatures",
    "key_id",
    "open_note",
    "parse_note",
    "sign_note",
]

ED25519 = 0x01
MAX_SIGNATURES = 100
"""The most signature lines a note may carry (the specification asks for at least 16)."""

_DASH = "\u2014 "
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


def key_id(name: str, public_key: bytes, alg: int = ED25519) -> int:
    """The 32-bit key ID of a key: ``SHA-256(name ‖ 0x0A ‖ alg ‖ public key)[:4]``, big-endian."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _require_utf8(text: str, what: str) -> None:
    """Refuse a str with no UTF-8 encoding (a lone surrogate): notes are UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ProofError(f"{what} is not valid Unicode (position {exc.start})") from None


def _valid_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(c.isspace() for c in name) and not _CONTROL.search(name)


def _split_key(text: str, parts: int, what: str) -> list[str]:
    if not isinstance(text, str) or text != text.strip() or not text:
        raise ProofError(f"{what} must be a non-empty string with no surrounding space")
    fields = text.split("+", parts - 1)
    if len(fields) != parts:
        raise ProofError(f"{what} must have the form {'+'.join(['…'] * parts)}")
    return fields


def _parse_key(name: str, hex_id: str, material: str, what: str) -> tuple[int, bytes]:
    if not _valid_name(name):
        raise ProofError(f"{what} has an invalid key name {name!r}: it must be non-empty, without spaces or '+'")
    if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
        raise ProofError(f"{what} has an invalid key ID {hex_id!r}: it must be 8 lowercase hex digits")
    raw = unb64(material, f"the key material of {what}")
    if len(raw) != 33 or raw[0] != ED25519:
        raise ProofError(f"{what} is not an Ed25519 key (type 0x01 followed by 32 bytes)")
    return int(hex_id, 16), raw[1:]


class Signature(NamedTuple):
    """One signature line: the key name, the key ID and the signature bytes."""

    name: str
    key_id: int
    signature: bytes

    def line(self) -> str:
        blob = b64(self.key_id.to_bytes(4, "big") + self.signature)
        return f"{_DASH}{self.name} {blob}\n"


class NoteVerifier:
    """A public key that verifies signatures in notes."""

    __slots__ = ("_key", "key_id", "name", "public_key")

    def __init__(self, name: str, public_key: bytes) -> None:
        if not _valid_name(name):
            raise ProofError(f"invalid key name {name!r}: it must be non-empty, without spaces or '+'")
        if len(public_key) != 32:
            raise ProofError("an Ed25519 public key is 32 bytes")
        self.name = name
        self.public_key = public_key
        self.key_id = key_id(name, public_key)
        self._key = Ed25519PublicKey.from_public_bytes(public_key)

    @classmethod
    def parse(cls, vkey: str) -> NoteVerifier:
        """A verifier from its key string ``name+hexid+base64(0x01 ‖ key)``; the ID must match."""
        name, hex_id, material = _split_key(vkey, 3, "the verifier key")
        claimed, public = _parse_key(name, hex_id, material, "the verifier key")
        verifier = cls(name, public)
        if verifier.key_id != claimed:
            raise ProofError(f"the verifier key's ID {hex_id} does not match its name and public key")
        return verifier

    @property
    def vkey(self) -> str:
        """The verifier key string."""
        return f"{self.name}+{self.key_id:08x}+{b64(bytes([ED25519]) + self.public_key)}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"NoteVerifier({self.name}+{self.key_id:08x})"


class NoteSigner:
    """An Ed25519 private key that signs notes. Its ``repr`` never shows the key."""

    __slots__ = ("_key", "_seed", "verifier")

    def __init__(self, name: str, seed: bytes) -> None:
        if len(seed) != 32:
            raise ProofError("an Ed25519 private key seed is 32 bytes")
        self._seed = seed
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        public = self._key.public_key().public_bytes_raw()
        self.verifier = NoteVerifier(name, public)

    @classmethod
    def parse(cls, skey: str) -> NoteSigner:
        """A signer from its key string ``PRIVATE+KEY+name+hexid+base64(0x01 ‖ seed)``."""
        fields = _split_key(skey, 5, "the signer key")
        if fields[:2] != ["PRIVATE", "KEY"]:
            raise ProofError("the signer key must start with PRIVATE+KEY+")
        claimed, seed = _parse_key(fields[2], fields[3], fields[4], "the signer key")
        signer = cls(fields[2], seed)
        if signer.key_id != claimed:
            raise ProofError(f"the signer key's ID {fields[3]} does not match its name and key")
        return signer

    @property
    def name(self) -> str:
        return self.verifier.name

    @property
    def key_id(self) -> int:
        return self.verifier.key_id

    @property
    def vkey(self) -> str:
        return self.verifier.vkey

    def private_key_string(self) -> str:
        """The signer key string. Secret: store it with mode 0600 and never log it."""
        material = b64(bytes([ED25519]) + self._seed)
        return f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+{material}"

    def sign(self, text: str) -> Signature:
        return Signature(self.name, self.key_id, self._key.sign(text.encode()))

    def __repr__(self) -> str:
        return f"NoteSigner({self.name}+{self.key_id:08x})"


class Note(NamedTuple):
    """A parsed note: its text (with the final newline) and its signature lines."""

    text: str
    signatures: tuple[Signature, ...]

    def format(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)


def _check_text(text: str) -> None:
    _require_utf8(text, "the note text")
    if not text.endswith("\n"):
        raise ProofError("the note text must end with a newline")
    if _CONTROL.search(text):
        raise ProofError("the note text contains an ASCII control character other than newline")


def sign_note(text: str, signers: Iterable[NoteSigner]) -> str:
    """A signed note of ``text`` with a signature by each signer, in order."""
    _check_text(text)
    signatures = tuple(s.sign(text) for s in signers)
    if not signatures:
        raise ProofError("a note needs at least one signature")
    return Note(text, signatures).format()


def add_signatures(note: str, signers: Iterable[NoteSigner]) -> str:
    """``note`` with signatures by more keys (a cosignature, or a new key during rotation).
    A key that already signed it is not added twice."""
    parsed = parse_note(note)
    have = {(s.name, s.key_id) for s in parsed.signatures}
    extra = tuple(s.sign(parsed.text) for s in signers if (s.name, s.key_id) not in have)
    return Note(parsed.text, parsed.signatures + extra).format()


def parse_note(data: str | bytes) -> Note:
    """Split a note into its text and signature lines, checking the format only
    (no signature is verified). Raises :class:`~cra.errors.ProofError` saying what is wrong."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProofError("the note is not valid UTF-8") from exc
    _require_utf8(data, "the note")
    if _CONTROL.search(data):
        raise ProofError("the note contains an ASCII control character other than newline")
    split = data.rfind("\n\n")
    if split < 0:
        raise ProofError("the note has no blank line before its signatures")
    text, block = data[: split + 1], data[split + 2 :]
    if not block or not block.endswith("\n"):
        raise ProofError("the note's signature block is empty or does not end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise ProofError(f"the note has {len(lines)} signatures; at most {MAX_SIGNATURES} are read")
    signatures = []
    for number, line in enumerate(lines, 1):
        where = f"signature line {number}"
        if not line.startswith(_DASH):
            raise ProofError(f"{where} does not start with an em dash and a space")
        name, _, blob = line[len(_DASH) :].partition(" ")
        if not _valid_name(name):
            raise ProofError(f"{where} has an invalid key name {name!r}")
        raw = unb64(blob, where)
        if len(raw) < 5:
            raise ProofError(f"{where} is too short to hold a key ID and a signature")
        signatures.append(Signature(name, int.from_bytes(raw[:4], "big"), raw[4:]))
    return Note(text, tuple(signatures))


def open_note(data: str | bytes, verifiers: Sequence[NoteVerifier]) -> Note:
    """Return the note, with only its verified signatures, if at least one known key
    signed it and no known key's signature fails; raise :class:`~cra.errors.ProofError`
    otherwise. Signatures by keys not in ``verifiers`` are ignored."""
    note = parse_note(data)
    known = {(v.name, v.key_id): v for v in verifiers}
    message = note.text.encode()
    verified: dict[tuple[str, int], Signature] = {}
    for sig in note.signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            continue
        if not verifier.verify(message, sig.signature):
            raise ProofError(f"the signature by {sig.name}+{sig.key_id:08x} does not verify")
        verified.setdefault((sig.name, sig.key_id), sig)
    if not verified:
        names = ", ".join(f"{s.name}+{s.key_id:08x}" for s in note.signatures)
        raise ProofError(f"no signature by a trusted key (the note is signed by {names})")
    return Note(note.text, tuple(verified.values()))

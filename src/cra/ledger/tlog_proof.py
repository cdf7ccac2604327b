"""C2SP tlog-proof (https://c2sp.org/tlog-proof): an offline-verifiable proof that
one entry is in a log.

    c2sp.org/tlog-proof@v1
    [extra <base64>]
    index <n>
    <base64 inclusion proof node, leaf's sibling first>
    ...
    <blank line>
    <the signed checkpoint, verbatim>
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from cra.errors import ProofError
from cra.ledger._base64 import b64, unb64
from cra.ledger.checkpoint import Checkpoint, open_checkpoint
from cra.ledger.merkle import HASH_SIZE, leaf_hash, verify_inclusion
from cra.ledger.note import NoteVerifier

__all__ = ["HEADER", "TlogProof", "parse_tlog_proof", "verify_tlog_proof"]

HEADER = "c2sp.org/tlog-proof@v1"
_INDEX = re.compile(r"index (0|[1-9][0-9]{0,19})")


@dataclass(frozen=True, slots=True)
class TlogProof:
    """An entry's index, its inclusion path and the signed checkpoint the path leads to."""

    index: int
    path: tuple[bytes, ...]
    checkpoint: str
    extra: bytes | None = None

    def format(self) -> str:
        lines = [HEADER]
        if self.extra is not None:
            lines.append("extra " + b64(self.extra))
        lines.append(f"index {self.index}")
        lines.extend(b64(node) for node in self.path)
        return "\n".join(lines) + "\n\n" + self.checkpoint


def parse_tlog_proof(text: str | bytes) -> TlogProof:
    """Parse a tlog-proof; the checkpoint inside is returned verbatim, not yet verified."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProofError("the tlog-proof is not valid UTF-8") from exc
    head, sep, checkpoint = text.partition("\n\n")
    if not sep:
        raise ProofError("the tlog-proof has no blank line before its checkpoint")
    lines = head.split("\n")
    if lines[0] != HEADER:
        raise ProofError(f"tlog-proof line 1 must be {HEADER!r}")
    at = 1
    extra = None
    if at < len(lines) and lines[at].startswith("extra "):
        extra = unb64(lines[at][len("extra ") :], f"tlog-proof line {at + 1} (extra data)")
        at += 1
    match = _INDEX.fullmatch(lines[at]) if at < len(lines) else None
    if match is None:
        raise ProofError(f"tlog-proof line {at + 1} must be 'index <n>' in decimal without leading zeros")
    path = []
    for number, line in enumerate(lines[at + 1 :], at + 2):
        node = unb64(line, f"tlog-proof line {number}")
        if len(node) != HASH_SIZE:
            raise ProofError(f"tlog-proof line {number} is not a {HASH_SIZE}-byte hash")
        path.append(node)
    return TlogProof(int(match.group(1)), tuple(path), checkpoint, extra)


def verify_tlog_proof(
    text: str | bytes, entry: bytes, verifiers: Sequence[NoteVerifier], *, origin: str | None = None
) -> tuple[TlogProof, Checkpoint]:
    """Return the proof and its checkpoint only if a trusted key signed the checkpoint
    and the path shows ``entry`` at the proof's index in that tree."""
    proof = parse_tlog_proof(text)
    checkpoint = open_checkpoint(proof.checkpoint, verifiers, origin=origin)
    verify_inclusion(proof.index, checkpoint.size, leaf_hash(entry), proof.path, checkpoint.root)
    return proof, checkpoint

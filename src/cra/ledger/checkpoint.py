"""C2SP checkpoints (https://c2sp.org/tlog-checkpoint): a log's signed tree head.

The body is the note text: the log's origin, the tree size in decimal and the
base64 root hash, one per line, then optional extension lines.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from cra.errors import ProofError
from cra.ledger._base64 import b64, unb64
from cra.ledger.merkle import HASH_SIZE
from cra.ledger.note import NoteSigner, NoteVerifier, open_note, parse_note, sign_note

__all__ = ["Checkpoint", "checkpoint_of", "open_checkpoint", "parse_checkpoint", "sign_checkpoint"]

_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")


class Checkpoint(NamedTuple):
    """A tree head: which log, how many entries, and the root hash over them."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        """The checkpoint's note text."""
        lines = [self.origin, str(self.size), b64(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint body (the note text, not the signed note)."""
    if not text.endswith("\n"):
        raise ProofError("the checkpoint body must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise ProofError("a checkpoint has an origin line, a size line and a root hash line")
    origin, size, root, *extensions = lines
    if not origin:
        raise ProofError("checkpoint line 1: the origin is empty")
    if not _SIZE.fullmatch(size) or int(size) >= 1 << 64:
        raise ProofError(f"checkpoint line 2: {size!r} is not a tree size in decimal without leading zeros")
    raw = unb64(root, "checkpoint line 3 (the root hash)")
    if len(raw) != HASH_SIZE:
        raise ProofError(f"checkpoint line 3: the root hash must be {HASH_SIZE} bytes, not {len(raw)}")
    for number, line in enumerate(extensions, 4):
        if not line:
            raise ProofError(f"checkpoint line {number}: extension lines must not be empty")
    return Checkpoint(origin, int(size), raw, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signers: Sequence[NoteSigner]) -> str:
    """The checkpoint as a signed note, signed by every key in ``signers``."""
    return sign_note(checkpoint.body(), signers)


def open_checkpoint(note: str | bytes, verifiers: Sequence[NoteVerifier], *, origin: str | None = None) -> Checkpoint:
    """The checkpoint in a signed note, once its signature by a trusted key verified.

    With ``origin``, the checkpoint must also be for that log.
    """
    checkpoint = parse_checkpoint(open_note(note, verifiers).text)
    if origin is not None and checkpoint.origin != origin:
        raise ProofError(f"the checkpoint is for log {checkpoint.origin!r}, not {origin!r}")
    return checkpoint


def checkpoint_of(note: str | bytes) -> Checkpoint:
    """The checkpoint in a signed note, without verifying any signature (for display)."""
    return parse_checkpoint(parse_note(note).text)

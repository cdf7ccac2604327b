"""The audit ledger's pure core: RFC 6962 Merkle trees and proofs, C2SP signed
notes, checkpoints and tlog-proofs, attestations and export bundles.

Sans-I/O: stores live in adapters (:mod:`cra.store`), the append and checkpoint
policy in :mod:`cra.runtime.ledger`. Signing uses ``cryptography`` (Ed25519).
"""

from cra.ledger.checkpoint import Checkpoint, checkpoint_of, open_checkpoint, parse_checkpoint, sign_checkpoint
from cra.ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    leaf_hash,
    node_hash,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
)
from cra.ledger.note import Note, NoteSigner, NoteVerifier, add_signatures, open_note, parse_note, sign_note
from cra.ledger.tlog_proof import TlogProof, parse_tlog_proof, verify_tlog_proof

__all__ = [
    "EMPTY_ROOT",
    "Checkpoint",
    "CompactRange",
    "Note",
    "NoteSigner",
    "NoteVerifier",
    "TlogProof",
    "add_signatures",
    "checkpoint_of",
    "leaf_hash",
    "node_hash",
    "open_checkpoint",
    "open_note",
    "parse_checkpoint",
    "parse_note",
    "parse_tlog_proof",
    "root_from_inclusion",
    "sign_checkpoint",
    "sign_note",
    "verify_consistency",
    "verify_inclusion",
    "verify_tlog_proof",
]

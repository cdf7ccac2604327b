"""Strict base64 for the ledger's text formats."""

from __future__ import annotations

import base64
import binascii

from cra.errors import ProofError

__all__ = ["b64", "unb64"]


def b64(data: bytes) -> str:
    """Standard base64 (RFC 4648 §4) with padding."""
    return base64.b64encode(data).decode()


def unb64(text: str, what: str) -> bytes:
    """Decode standard base64, accepting only its canonical encoding, so that one
    value has exactly one spelling. ``what`` names the value in the error."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProofError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode() != text:
        raise ProofError(f"{what} is not canonical base64")
    return raw

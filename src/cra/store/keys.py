"""The ledger's signing keys on disk, and their rotation.

``keys/keyring.json`` names the log (its origin, which is also every key's
name) and lists each key's verifier string and role:

- ``primary``: signs every checkpoint and attestation;
- ``cosigning``: the previous primary, which keeps signing beside the new one
  after a rotation so that verifiers who know only the old key keep working;
- ``retired``: no longer signs; its private key is deleted, its verifier key
  stays listed so old checkpoints still verify.

Private keys are written with mode 0600 (created that way, never widened) and
are never printed or logged.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cra.errors import LedgerError, ProofError
from cra.ledger.note import NoteSigner, NoteVerifier

__all__ = ["KeyInfo", "Keyring", "KeyringWatch", "new_origin", "ticket_secret"]

_FILE = "keyring.json"


def new_origin() -> str:
    """A fresh, unique log origin for a new data directory."""
    return f"cra.local/log/{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    vkey: str
    role: str
    created_at: str

    @property
    def key_id(self) -> str:
        return self.vkey.split("+")[1]


class Keyring:
    """The keys in ``<data dir>/keys``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @property
    def exists(self) -> bool:
        return (self.directory / _FILE).is_file()

    def _read(self) -> dict[str, Any]:
        path = self.directory / _FILE
        try:
            data = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raise LedgerError(f"no signing key in {self.directory}: run 'cra keys generate'") from None
        except (OSError, ValueError) as exc:
            raise LedgerError(f"{path} is unreadable: {exc}") from exc
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("origin"), str)
            or not isinstance(data.get("keys"), list)
        ):
            raise LedgerError(f"{path} is not a CRA keyring")
        return data

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.directory / (_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", "utf-8")
        os.replace(tmp, self.directory / _FILE)

    @property
    def origin(self) -> str:
        return str(self._read()["origin"])

    def keys(self) -> list[KeyInfo]:
        return [KeyInfo(k["vkey"], k["role"], k["created_at"]) for k in self._read()["keys"]]

    def _new_key(self, origin: str) -> tuple[NoteSigner, dict[str, str]]:
        signer = NoteSigner(origin, secrets.token_bytes(32))
        path = self.directory / f"{signer.key_id:08x}.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(signer.private_key_string() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        info = {"vkey": signer.vkey, "role": "primary", "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
        return signer, info

    def generate(self, origin: str | None = None) -> NoteSigner:
        """Create the first key (and name the log). Refuses if a keyring exists."""
        if self.exists:
            raise LedgerError(f"{self.directory} already has keys; use 'cra keys rotate' to replace them")
        origin = origin or new_origin()
        if not origin or "+" in origin or any(c.isspace() for c in origin):
            raise LedgerError(f"invalid log origin {origin!r}: it must be non-empty, without spaces or '+'")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        signer, info = self._new_key(origin)
        self._write({"origin": origin, "keys": [info]})
        return signer

    def rotate(self, *, retire_previous: bool = False) -> NoteSigner:
        """Make a new primary key. The old primary co-signs until the next rotation
        (or is retired at once with ``retire_previous``); an older co-signer retires."""
        data = self._read()
        signer, info = self._new_key(data["origin"])
        for key in data["keys"]:
            if key["role"] == "cosigning" or (key["role"] == "primary" and retire_previous):
                self._retire(key)
            elif key["role"] == "primary":
                key["role"] = "cosigning"
        data["keys"].append(info)
        self._write(data)
        return signer

    def _retire(self, key: dict[str, str]) -> None:
        key["role"] = "retired"
        (self.directory / f"{key['vkey'].split('+')[1]}.key").unlink(missing_ok=True)

    def signers(self) -> list[NoteSigner]:
        """The keys that sign: the primary first, then any co-signer."""
        data = self._read()
        active = sorted(
            (k for k in data["keys"] if k["role"] in ("primary", "cosigning")), key=lambda k: k["role"] != "primary"
        )
        signers = []
        for key in active:
            path = self.directory / f"{key['vkey'].split('+')[1]}.key"
            try:
                mode = path.stat().st_mode & 0o777
                if mode & 0o077:
                    raise LedgerError(f"{path} is readable by others (mode {mode:o}); run chmod 600 on it")
                signer = NoteSigner.parse(path.read_text("utf-8").strip())
            except OSError as exc:
                raise LedgerError(f"the signing key {path} is unreadable: {exc}") from exc
            except ProofError as exc:
                raise LedgerError(f"the signing key {path} is malformed: {exc}") from exc
            if signer.vkey != key["vkey"]:
                raise LedgerError(f"the signing key {path} does not match the keyring")
            signers.append(signer)
        if not signers:
            raise LedgerError(f"no active signing key in {self.directory}")
        return signers

    def retired(self) -> list[NoteVerifier]:
        """The verifier keys of retired keys, which still check old checkpoints."""
        return [NoteVerifier.parse(k["vkey"]) for k in self._read()["keys"] if k["role"] == "retired"]


class KeyringWatch:
    """The :class:`~cra.runtime.ports.KeySource` of a keyring: notices when ``keyring.json`` is replaced,
    as ``cra keys rotate`` does, and then reads the keys again."""

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            info = (self._keyring.directory / _FILE).stat()
        except OSError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size

    def changed(self) -> tuple[list[NoteSigner], list[NoteVerifier]] | None:
        stamp = self._stamp()
        if stamp == self._seen:
            return None
        signers, retired = self._keyring.signers(), self._keyring.retired()  # raises on a broken keyring
        self._seen = stamp
        return signers, retired


def ticket_secret(directory: str | Path) -> bytes:
    """The secret that signs approval tickets (``tickets.key``, mode 0600), created on first use.

    Tickets must outlive a restart of the service, so the secret is kept with the keys.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / "tickets.key"
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise LedgerError(f"{path} is readable by others (mode {mode:o}); run chmod 600 on it")
        try:
            secret = bytes.fromhex(path.read_text("ascii").strip())
        except (ValueError, UnicodeDecodeError):
            raise LedgerError(f"the ticket key {path} is malformed") from None
        if len(secret) < 32:
            raise LedgerError(f"the ticket key {path} is too short")
        return secret
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secret.hex() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return secret

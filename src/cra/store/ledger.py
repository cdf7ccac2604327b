"""The embedded audit-log store: one SQLite file in WAL mode, fsync on every commit.

Why the standard library's ``sqlite3`` and not SQLAlchemy: the log is written by
the synchronous runtime on its hot path, one transaction per batch, and its
durability contract (acknowledged means on disk) is a property of SQLite's WAL
with ``synchronous=FULL``. ADR 0004 records the choice.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from cra.errors import LedgerConflict, LedgerError
from cra.ledger.merkle import stored_count
from cra.runtime.ports import LedgerEntry, StoredAttestation

__all__ = ["SqliteLedgerStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    session_id TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_session ON entries (session_id, idx);
CREATE TABLE IF NOT EXISTS hashes (id INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attestations (
    attestation_id TEXT PRIMARY KEY,
    idx INTEGER NOT NULL,
    session_id TEXT NOT NULL,
    note TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attestations_by_session ON attestations (session_id, idx);
"""

_SIZE = "SELECT coalesce(max(idx) + 1, 0) FROM entries"  # O(log n): idx is the rowid, written densely
_CHUNK = 500  # bound the number of parameters in one IN (...) query


class SqliteLedgerStore:
    """A :class:`~cra.runtime.ports.LedgerStore` in one SQLite file.

    Every ``append`` is one ``BEGIN IMMEDIATE`` transaction that checks the log
    still has the size the caller built on, so several processes can share the
    file; SQLite's WAL makes a crash at any moment leave the last committed state.
    """

    def __init__(self, path: str | Path, *, origin: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path} cannot be opened as a ledger database: {exc}") from exc
        self._lock = threading.Lock()
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._claim_origin(origin)
            self._check_shape()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise LedgerError(f"{self.path} is not a readable ledger database: {exc}") from exc

    def _claim_origin(self, origin: str) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta (key, value) VALUES ('origin', ?)", (origin,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        if row is not None and row[0] != origin:
            self._db.close()
            raise LedgerError(f"{self.path} holds the log {row[0]!r}, not {origin!r}")

    def _check_shape(self) -> None:
        size = self.size()
        (hashes,) = self._db.execute("SELECT coalesce(max(id) + 1, 0) FROM hashes").fetchone()
        if hashes != stored_count(size):
            self._db.close()
            raise LedgerError(f"{self.path} is inconsistent: {size} entries, {hashes} Merkle hashes")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def size(self) -> int:
        with self._lock:
            (n,) = self._db.execute(_SIZE).fetchone()
        return int(n)

    def append(
        self,
        start: int,
        entries: Sequence[LedgerEntry],
        hashes: Sequence[tuple[int, bytes]],
        attestations: Sequence[StoredAttestation] = (),
        checkpoint: tuple[int, str] | None = None,
    ) -> None:
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                (size,) = db.execute(_SIZE).fetchone()
                if size != start:
                    raise LedgerConflict(f"the log has {size} entries, not {start}")
                db.executemany(
                    "INSERT INTO entries (idx, event_id, session_id, data) VALUES (?, ?, ?, ?)",
                    [(start + i, e.event_id, e.session_id, e.data) for i, e in enumerate(entries)],
                )
                db.executemany("INSERT INTO hashes (id, hash) VALUES (?, ?)", hashes)
                db.executemany(
                    "INSERT INTO attestations (attestation_id, idx, session_id, note) VALUES (?, ?, ?, ?)",
                    attestations,
                )
                if checkpoint is not None:
                    db.execute("INSERT OR REPLACE INTO checkpoints (size, note) VALUES (?, ?)", checkpoint)
                db.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                self._rollback()
                raise LedgerConflict(f"the batch collides with logged data: {exc}") from exc
            except sqlite3.Error as exc:
                self._rollback()
                raise LedgerError(f"{self.path}: the batch was not stored: {exc}") from exc
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        """Undo the open transaction, if SQLite has not already ended it. A rollback that
        fails leaves nothing committed either; the caller reports the first error."""
        with contextlib.suppress(sqlite3.Error):
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def _select(self, sql: str, keys: Sequence[object]) -> list[tuple[object, ...]]:
        rows: list[tuple[object, ...]] = []
        with self._lock:
            for i in range(0, len(keys), _CHUNK):
                part = keys[i : i + _CHUNK]
                marks = ",".join("?" * len(part))
                rows.extend(self._db.execute(sql.format(marks=marks), tuple(part)).fetchall())
        return rows

    def hashes(self, indexes: Sequence[int]) -> dict[int, bytes]:
        rows = self._select("SELECT id, hash FROM hashes WHERE id IN ({marks})", indexes)
        return {int(i): bytes(h) for i, h in rows}  # type: ignore[call-overload]

    def entries(self, start: int, stop: int) -> list[LedgerEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, session_id, data FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (start, stop)
            ).fetchall()
        return [LedgerEntry(e, s, bytes(d)) for e, s, d in rows]

    def find(self, event_ids: Sequence[str]) -> dict[str, int]:
        rows = self._select("SELECT event_id, idx FROM entries WHERE event_id IN ({marks})", event_ids)
        return {str(e): int(i) for e, i in rows}  # type: ignore[call-overload]

    def session(self, session_id: str) -> list[int]:
        with self._lock:
            rows = self._db.execute("SELECT idx FROM entries WHERE session_id = ? ORDER BY idx", (session_id,))
            return [int(i) for (i,) in rows.fetchall()]

    def put_checkpoint(self, size: int, note: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO checkpoints (size, note) VALUES (?, ?)", (size, note))

    def checkpoint(self, size: int | None = None) -> tuple[int, str] | None:
        with self._lock:
            if size is None:
                row = self._db.execute("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
            else:
                row = self._db.execute("SELECT size, note FROM checkpoints WHERE size = ?", (size,)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def checkpoints(self) -> list[tuple[int, str]]:
        with self._lock:
            rows = self._db.execute("SELECT size, note FROM checkpoints ORDER BY size").fetchall()
        return [(int(s), str(n)) for s, n in rows]

    def attestation(self, attestation_id: str) -> StoredAttestation | None:
        with self._lock:
            row = self._db.execute(
                "SELECT attestation_id, idx, session_id, note FROM attestations WHERE attestation_id = ?",
                (attestation_id,),
            ).fetchone()
        return None if row is None else StoredAttestation(*row)

    def attestations(self, session_id: str) -> list[StoredAttestation]:
        with self._lock:
            rows = self._db.execute(
                "SELECT attestation_id, idx, session_id, note FROM attestations WHERE session_id = ? ORDER BY idx",
                (session_id,),
            ).fetchall()
        return [StoredAttestation(*row) for row in rows]

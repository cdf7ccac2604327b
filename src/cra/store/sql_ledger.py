"""The audit log in the service's database: SQLAlchemy 2.x Core, for PostgreSQL (and SQLite).

``cra serve --database-url postgresql+asyncpg://…`` keeps the ledger beside the
service's state, so every process and machine of a deployment appends to one
log. The runtime's ledger is synchronous, so this store uses a synchronous
engine on the same database (psycopg for PostgreSQL, pysqlite for SQLite). Its
tables come from the service's Alembic migrations (revision 0003), which
``open_state`` runs; this store checks that they are there.

Every ``append`` is one transaction that first takes the log's write lock
(``LOCK TABLE … IN EXCLUSIVE MODE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on
SQLite) and checks the log still has the size the caller built on, so writers
on any number of machines serialise and the loser reloads and retries; a
duplicate event id or index is a unique-constraint violation, a
:class:`~cra.errors.LedgerConflict`, with nothing stored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Engine, create_engine, delete, event, func, insert, inspect, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from cra.errors import LedgerConflict, LedgerError
from cra.ledger.merkle import stored_count
from cra.runtime.ports import LedgerEntry, StoredAttestation
from cra.store.tables import Base

__all__ = ["SqlLedgerStore", "sync_url"]

_TABLES = ("ledger_meta", "ledger_entries", "ledger_hashes", "ledger_checkpoints", "ledger_attestations")
_META, _ENTRIES, _HASHES, _CHECKPOINTS, _ATTESTATIONS = (Base.metadata.tables[t] for t in _TABLES)
_CHUNK = 500  # bound the parameters of one IN (...) query
_DRIVERS = {"postgresql": "postgresql+psycopg", "sqlite": "sqlite+pysqlite"}


def sync_url(url: str) -> str:
    """The same database with a synchronous driver: ``postgresql+asyncpg`` becomes ``postgresql+psycopg``."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend not in _DRIVERS:
        raise LedgerError(f"the ledger cannot be kept in a {backend} database (PostgreSQL or SQLite)")
    return parsed.set(drivername=_DRIVERS[backend]).render_as_string(hide_password=False)


def _engine(url: str) -> Engine:
    parsed = make_url(sync_url(url))
    if parsed.get_backend_name() == "postgresql":
        return create_engine(parsed, pool_pre_ping=True, pool_size=4, max_overflow=4)
    engine = create_engine(parsed, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" below starts every transaction
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextlib.contextmanager
def _database() -> Iterator[None]:
    """A database that fails is a :class:`~cra.errors.LedgerError`, never a driver's exception."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise LedgerError(f"the ledger database cannot answer: {getattr(exc, 'orig', None) or exc}") from exc


class SqlLedgerStore:
    """A :class:`~cra.runtime.ports.LedgerStore` in the tables of migration 0003. Every failure of
    the database is a :class:`~cra.errors.LedgerError` (a lost race, :class:`~cra.errors.LedgerConflict`)."""

    def __init__(self, url: str, *, origin: str) -> None:
        self._engine = _engine(url)
        self._postgres = self._engine.dialect.name == "postgresql"
        try:
            missing = [t for t in _TABLES if not inspect(self._engine).has_table(t)]
            if missing:
                raise LedgerError(
                    f"the database has no ledger tables ({', '.join(missing)}); run the service's migrations first"
                )
            self._claim_origin(origin)
            self._check_shape()
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise LedgerError(f"the ledger database cannot be used: {exc}") from exc
        except BaseException:
            self._engine.dispose()
            raise

    def _claim_origin(self, origin: str) -> None:
        with self._engine.begin() as conn:
            found = conn.execute(select(_META.c.value).where(_META.c.key == "origin")).scalar()
            if found is None:
                conn.execute(insert(_META).values(key="origin", value=origin))
        if found is not None and found != origin:
            raise LedgerError(f"the database holds the log {found!r}, not {origin!r}")

    def _check_shape(self) -> None:
        size = self.size()
        with self._engine.connect() as conn:
            hashes = conn.execute(select(func.coalesce(func.max(_HASHES.c.id) + 1, 0))).scalar_one()
        if hashes != stored_count(size):
            raise LedgerError(f"the ledger database is inconsistent: {size} entries, {hashes} Merkle hashes")

    def close(self) -> None:
        self._engine.dispose()

    @staticmethod
    def _size(conn: Connection) -> int:
        return int(conn.execute(select(func.coalesce(func.max(_ENTRIES.c.idx) + 1, 0))).scalar_one())

    def size(self) -> int:
        with _database(), self._engine.connect() as conn:
            return self._size(conn)

    def append(
        self,
        start: int,
        entries: Sequence[LedgerEntry],
        hashes: Sequence[tuple[int, bytes]],
        attestations: Sequence[StoredAttestation] = (),
        checkpoint: tuple[int, str] | None = None,
    ) -> None:
        try:
            with self._engine.begin() as conn:
                if self._postgres:
                    conn.execute(text("LOCK TABLE ledger_entries IN EXCLUSIVE MODE"))
                size = self._size(conn)
                if size != start:
                    raise LedgerConflict(f"the log has {size} entries, not {start}")
                if entries:
                    rows = [
                        {"idx": start + i, "event_id": e.event_id, "session_id": e.session_id, "data": e.data}
                        for i, e in enumerate(entries)
                    ]
                    conn.execute(insert(_ENTRIES), rows)
                if hashes:
                    conn.execute(insert(_HASHES), [{"id": i, "hash": h} for i, h in hashes])
                if attestations:
                    rows = [
                        {
                            "attestation_id": a.attestation_id,
                            "idx": a.log_index,
                            "session_id": a.session_id,
                            "note": a.note,
                        }
                        for a in attestations
                    ]
                    conn.execute(insert(_ATTESTATIONS), rows)
                if checkpoint is not None:
                    self._put_checkpoint(conn, *checkpoint)
        except IntegrityError as exc:
            raise LedgerConflict(f"the batch collides with logged data: {exc.orig}") from exc
        except DBAPIError as exc:
            raise LedgerError(f"the batch was not stored: {exc.orig}") from exc

    @staticmethod
    def _put_checkpoint(conn: Connection, size: int, note: str) -> None:
        conn.execute(delete(_CHECKPOINTS).where(_CHECKPOINTS.c.size == size))
        conn.execute(insert(_CHECKPOINTS).values(size=size, note=note))

    def _in(self, columns: Sequence[Any], key: Any, values: Sequence[Any]) -> list[Any]:
        rows: list[Any] = []
        with _database(), self._engine.connect() as conn:
            for i in range(0, len(values), _CHUNK):
                rows.extend(conn.execute(select(*columns).where(key.in_(values[i : i + _CHUNK]))).all())
        return rows

    def hashes(self, indexes: Sequence[int]) -> dict[int, bytes]:
        return {int(i): bytes(h) for i, h in self._in((_HASHES.c.id, _HASHES.c.hash), _HASHES.c.id, indexes)}

    def entries(self, start: int, stop: int) -> list[LedgerEntry]:
        query = (
            select(_ENTRIES.c.event_id, _ENTRIES.c.session_id, _ENTRIES.c.data)
            .where(_ENTRIES.c.idx >= start, _ENTRIES.c.idx < stop)
            .order_by(_ENTRIES.c.idx)
        )
        with _database(), self._engine.connect() as conn:
            return [LedgerEntry(e, s, bytes(d)) for e, s, d in conn.execute(query)]

    def find(self, event_ids: Sequence[str]) -> dict[str, int]:
        rows = self._in((_ENTRIES.c.event_id, _ENTRIES.c.idx), _ENTRIES.c.event_id, event_ids)
        return {str(e): int(i) for e, i in rows}

    def session(self, session_id: str) -> list[int]:
        query = select(_ENTRIES.c.idx).where(_ENTRIES.c.session_id == session_id).order_by(_ENTRIES.c.idx)
        with _database(), self._engine.connect() as conn:
            return [int(i) for i in conn.execute(query).scalars()]

    def put_checkpoint(self, size: int, note: str) -> None:
        with _database(), self._engine.begin() as conn:
            self._put_checkpoint(conn, size, note)

    def checkpoint(self, size: int | None = None) -> tuple[int, str] | None:
        query = select(_CHECKPOINTS.c.size, _CHECKPOINTS.c.note)
        if size is None:
            query = query.order_by(_CHECKPOINTS.c.size.desc()).limit(1)
        else:
            query = query.where(_CHECKPOINTS.c.size == size)
        with _database(), self._engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else (int(row[0]), str(row[1]))

    def checkpoints(self) -> list[tuple[int, str]]:
        query = select(_CHECKPOINTS.c.size, _CHECKPOINTS.c.note).order_by(_CHECKPOINTS.c.size)
        with _database(), self._engine.connect() as conn:
            return [(int(s), str(n)) for s, n in conn.execute(query)]

    def attestation(self, attestation_id: str) -> StoredAttestation | None:
        query = select(*_ATTESTATIONS.c).where(_ATTESTATIONS.c.attestation_id == attestation_id)
        with _database(), self._engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else StoredAttestation(row.attestation_id, row.idx, row.session_id, row.note)

    def attestations(self, session_id: str) -> list[StoredAttestation]:
        query = select(*_ATTESTATIONS.c).where(_ATTESTATIONS.c.session_id == session_id).order_by(_ATTESTATIONS.c.idx)
        with _database(), self._engine.connect() as conn:
            return [StoredAttestation(r.attestation_id, r.idx, r.session_id, r.note) for r in conn.execute(query)]

"""PostgreSQL for the tests: one migrated database per xdist worker, emptied before each test.

Creating a database costs about half a second on this server, and migrating
it a third more; emptying a migrated one costs milliseconds. So each worker
creates its own database once (named for the worker, so parallel workers never
share rows), and every test that asks for PostgreSQL gets it migrated to the
head revision with every table truncated. A test that needs a database with no
schema at all (the migrations' own tests) asks for :func:`blank` instead. The
database is dropped when the worker's session ends.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from cra.store.database import open_state
from cra.store.tables import Base


async def _admin(url: str, *statements: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


def worker_database(server_url: str, worker: str) -> Iterator[str]:
    """A database of this worker's own on the server of ``server_url`` (yields its URL once), dropped afterwards."""
    name = f"cra_test_{worker}_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _migrated_and_empty(url: str) -> None:
    state = await open_state(url)  # migrates to the head revision; a no-op when it is there already
    await state.close()
    tables = ", ".join(f'"{t.name}"' for t in reversed(Base.metadata.sorted_tables))
    await _admin(url, f"TRUNCATE {tables} RESTART IDENTITY CASCADE")


def emptied(url: str) -> str:
    """``url``'s database migrated to the head revision, with no rows in any table."""
    asyncio.run(_migrated_and_empty(url))
    return url


async def _without_schema(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    finally:
        await engine.dispose()


def blank(url: str) -> str:
    """``url``'s database with no CRA table at all, not even Alembic's (the next :func:`emptied` migrates it)."""
    asyncio.run(_without_schema(url))
    return url

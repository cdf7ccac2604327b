"""Fixtures for the integration suites: a fresh, empty service database per test.

``state_url`` runs a test twice: on a SQLite file in the test's temporary
directory, and on PostgreSQL when ``CRA_TEST_POSTGRES_URL`` names a server
(``postgresql+asyncpg://postgres@127.0.0.1:5432/test``). There each test gets a
database of its own, created from that URL and dropped afterwards, so tests
never see each other's rows and can run again and again. A role that may not
create databases gets the URL's own database instead, with every service table
and ``alembic_version`` dropped before and after the test.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from cra.store.database import sqlite_url
from cra.store.tables import Base

POSTGRES_ENV = "CRA_TEST_POSTGRES_URL"


async def _admin(url: str, *statements: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def _drop_service_tables(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    finally:
        await engine.dispose()


def postgres_database(base: str) -> Iterator[str]:
    """A fresh database on the server of ``base`` for one test (yields its URL once), dropped afterwards."""
    parsed = make_url(base)
    name = f"cra_test_{uuid.uuid4().hex}"
    try:
        asyncio.run(_admin(base, f'CREATE DATABASE "{name}"'))
    except DBAPIError as exc:
        if "permission denied" not in str(exc.orig).lower():
            raise
        # No CREATEDB: share the given database, emptied before and after.
        asyncio.run(_drop_service_tables(base))
        try:
            yield base
        finally:
            asyncio.run(_drop_service_tables(base))
        return
    try:
        yield parsed.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty service database (not yet migrated)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "state.sqlite3")
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set (e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test)")
    yield from postgres_database(base)

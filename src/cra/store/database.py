"""Opening the service's database: the URL, the driver settings, and the migrations.

SQLite (``sqlite+aiosqlite:///path``) is the embedded default; it runs in WAL
mode with ``synchronous=FULL``, so a committed operation survives a crash.
PostgreSQL (``postgresql+asyncpg://…``) is the scale-out option. The schema is
brought to the newest Alembic revision when the database is opened.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cra.store.state import SqlState

__all__ = ["MIGRATIONS", "alembic_config", "open_state", "sqlite_url"]

#: The Alembic migrations directory.
MIGRATIONS = Path(__file__).with_name("migrations")


def sqlite_url(path: str | Path) -> str:
    return f"sqlite+aiosqlite:///{Path(path).resolve()}"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 30}
        # Enough connections for a busy worker's concurrent requests, so none is opened per request.
        kwargs["pool_size"] = 16
        kwargs["max_overflow"] = 32
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_async_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


async def open_state(url: str, *, migrate: bool = True, call_lease_seconds: float = 30.0) -> SqlState:
    """The state store at ``url``, its schema migrated to the newest revision. Calls this process
    runs are leased for ``call_lease_seconds`` at a time (:class:`~cra.store.state.SqlState`)."""
    if migrate:
        # Alembic's environment runs its own event loop, so it gets a thread of its own.
        await asyncio.to_thread(command.upgrade, alembic_config(url), "head")
    return SqlState(_engine(url), call_lease_seconds=call_lease_seconds)

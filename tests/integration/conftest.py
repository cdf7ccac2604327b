"""Fixtures for the integration suites: an empty service database per test.

``state_url`` runs a test twice: on a SQLite file in the test's temporary
directory, and on PostgreSQL (``CRA_TEST_POSTGRES_URL``), in the worker's own
database with every table emptied (:mod:`tests.databases`). ``blank_state_url``
is the same with no schema at all, for the migrations' own tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.databases import blank

from cra.store.database import sqlite_url

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)]


@pytest.fixture(params=BACKENDS)
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a service database with no rows (on PostgreSQL already migrated; on SQLite not yet)."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "state.sqlite3")
    url: str = request.getfixturevalue("postgres_db")
    return url


@pytest.fixture(params=BACKENDS)
def blank_state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a service database with no tables at all."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "state.sqlite3")
    return blank(request.getfixturevalue("postgres_db"))

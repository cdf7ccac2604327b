"""Fixtures shared by every test suite, and the tiers' markers (see :mod:`tests.tiers`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests import tiers

if TYPE_CHECKING:
    from cra.sandbox import WasmSandbox

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "atlases"
#: Third-party conformance data, vendored with its licences (tests/vectors/README.md).
VECTORS = ROOT / "tests" / "vectors"
CRA10 = VECTORS / "cra-1.0"

#: Fixtures whose tests belong to a tier; a test that requests one, directly or not, carries its marker.
_TIER_FIXTURES = {
    "postgres_url": "services",
    "redis_url": "services",
    "wasm_sandbox": "wasm",
    "wasm_builds": "wasm",
    "engine_build": "wasm",
}
#: Folders whose every test belongs to a tier.
_TIER_FOLDERS = {"e2e": "e2e", "interop": "interop"}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests_dir = ROOT / "tests"
    for item in items:
        names = {_TIER_FOLDERS.get(item.path.relative_to(tests_dir).parts[0])}
        names |= {_TIER_FIXTURES.get(f) for f in getattr(item, "fixturenames", ())}
        for name in sorted(n for n in names if n is not None):
            item.add_marker(name)


@pytest.fixture(scope="session")
def cra10() -> Path:
    return CRA10


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL server of ``CRA_TEST_POSTGRES_URL``, checked to answer."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.ext.asyncio import create_async_engine

    url = tiers.service_url(tiers.POSTGRES_ENV)

    async def ping() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    try:
        asyncio.run(ping())
    except (OSError, SQLAlchemyError) as exc:
        tiers.unreachable(tiers.POSTGRES_ENV, url, exc)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis server of ``CRA_TEST_REDIS_URL``, checked to answer."""
    import redis

    url = tiers.service_url(tiers.REDIS_ENV)
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        tiers.unreachable(tiers.REDIS_ENV, url, exc)
    finally:
        client.close()
    return url


@pytest.fixture(scope="session")
def wasm_builds() -> None:
    """For tests that build a WebAssembly component from source (tens of seconds each): they run when
    ``CRA_TEST_WASM=1`` or ``CRA_REQUIRE_SERVICES=1`` asks for them, and skip otherwise."""
    if not tiers.wasm_builds():
        tiers.unavailable(
            f"this test builds a WebAssembly component from source (30 s or more): set {tiers.WASM_ENV}=1"
        )


@pytest.fixture(scope="session")
def engine_build(tmp_path_factory: pytest.TempPathFactory, worker_id: str, wasm_builds: None) -> dict[str, Any]:
    """``cra build-wasm --json`` run once for the whole test run: its exit code, output and the component's path.

    Building the engine component costs half a minute, so the xdist worker that asks first builds it into the
    run's shared temporary directory, under a lock, and the others read what it wrote."""
    import fcntl

    from tests.e2e._process import cra

    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent  # the run's directory, above each worker's own
    record = shared / "engine-build.json"
    with open(shared / "engine-build.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            out = shared / "engine-build" / "cra-engine.wasm"
            done = cra("build-wasm", "--out", out, "--json", timeout=900)
            made = {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr, "out": str(out)}
            record.write_text(json.dumps(made), "utf-8")
    built: dict[str, Any] = json.loads(record.read_text("utf-8"))
    return built


@pytest.fixture(scope="session")
def wasm_sandbox() -> WasmSandbox:
    """One real WebAssembly sandbox for the session, loaded from the user's cache.

    On a laptop where it was never built, its tests skip and say how to build it
    (`uv run cra sandbox build`, about 30 s once); ``CRA_TEST_WASM=1`` or
    ``CRA_REQUIRE_SERVICES=1`` builds it here instead."""
    from cra.sandbox import WasmSandbox

    sandbox = WasmSandbox()
    if not sandbox.built() and not tiers.wasm_builds():
        tiers.unavailable(
            "the WebAssembly sandbox is not built: `uv run cra sandbox build` builds it once (about 30 s), "
            f"or set {tiers.WASM_ENV}=1"
        )
    sandbox.prepare()
    return sandbox


@pytest.fixture(scope="session")
def postgres_worker_url(postgres_url: str, worker_id: str) -> Iterator[str]:
    """This xdist worker's own database on the PostgreSQL server (see :mod:`tests.databases`)."""
    from tests.databases import worker_database

    yield from worker_database(postgres_url, worker_id)


@pytest.fixture
def postgres_db(postgres_worker_url: str) -> str:
    """The URL of this worker's PostgreSQL database, migrated and with every table empty."""
    from tests.databases import emptied

    return emptied(postgres_worker_url)


_TIERS = ("services", "wasm", "interop", "e2e", "slow")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per reason that tests were skipped, with the tier they belong to and how many."""
    counts: dict[tuple[str, str], int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        if not isinstance(report.longrepr, tuple):
            continue
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        tier = next((t for t in _TIERS if t in report.keywords), "-")
        counts[(tier, reason)] = counts.get((tier, reason), 0) + 1
    if not counts:
        return
    terminalreporter.section("skipped tiers", sep="-")
    for (tier, reason), n in sorted(counts.items()):
        terminalreporter.write_line(f"{tier:<8} {n:>4} skipped: {reason}")
    terminalreporter.write_line(f"({tiers.REQUIRE_ENV}=1 turns every one of these into a failure, as CI does)")

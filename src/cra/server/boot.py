"""Turning a data directory (or a database URL) into a running service.

<data dir>/
  cra.sqlite3           the service's state (unless --database-url names another database)
  ledger.sqlite3        the audit log
  keys/                 the log's signing keys, and tickets.key for approval tickets
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis.asyncio

import cra
from cra.cache import RedisAtlasDigests, RedisCounters
from cra.errors import ConflictError
from cra.runtime.atlas_files import read_package
from cra.runtime.execution import Executor
from cra.runtime.ledger import AuditLedger
from cra.runtime.memory import HmacSigner
from cra.runtime.service import GovernanceService
from cra.sandbox import CODE_EXECUTE, CodeExecutor, WasmSandbox, load_policy_module
from cra.server.auth import issue_key
from cra.store.database import open_state, sqlite_url
from cra.store.datadir import open_ledger
from cra.store.keys import ticket_secret
from cra.store.state import SqlState

__all__ = ["DEMO_ATLASES", "Booted", "boot", "ensure_admin_key", "load_atlas_dirs"]


#: The example atlases ``cra serve`` loads into an empty data directory (from a source checkout).
DEMO_ATLASES = Path(cra.__file__).resolve().parents[2] / "examples" / "atlases"


@dataclass(slots=True)
class Booted:
    service: GovernanceService
    state: SqlState
    ledger: AuditLedger
    #: The shared tier, when a Redis URL was given: counters, the atlas-digest cache and its client.
    counters: RedisCounters | None = None
    digests: RedisAtlasDigests | None = None
    redis_client: redis.asyncio.Redis | None = None

    async def close(self) -> None:
        await self.service.close()
        self.ledger.close()
        if self.digests is not None:
            await self.digests.close()
        if self.redis_client is not None:
            await self.redis_client.aclose()
        if self.counters is not None:
            self.counters.close()


async def boot(
    data_dir: Path,
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    executors: Mapping[str, Executor] | None = None,
    sandbox: bool = False,
    seal_in_background: bool = False,
    executor_threads: int = 8,
    executor_queue: int = 32,
    call_lease_seconds: float = 30.0,
) -> Booted:
    """Open (creating if need be) the data directory's state, ledger and keys.

    With ``redis_url``, rate-limit and budget counters live in Redis, shared by every process,
    and the tenants' atlas digests are cached there and invalidated across processes.
    ``executors`` run allowed ``execute`` calls of their actions (when CRA is embedded). With
    ``sandbox``, ``code.execute`` runs in the WebAssembly sandbox, which is made ready (built on a
    machine's first use) in the background. With ``seal_in_background``, operations answer once
    committed and a background task seals them into the ledger in batches (``cra serve`` does this).
    Executors run on ``executor_threads`` threads of their own, with at most ``executor_queue`` calls
    waiting for one (:class:`~cra.runtime.service.GovernanceService`). A call whose process stops is
    recorded as failed by another process (or the next start) once its lease of ``call_lease_seconds``
    runs out.
    """
    if sandbox:
        executors = {**_sandbox_executors(), **(executors or {})}
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    state = await open_state(
        database_url or sqlite_url(data_dir / "cra.sqlite3"), call_lease_seconds=call_lease_seconds
    )
    try:
        ledger = open_ledger(data_dir, create=True, database_url=database_url)
    except BaseException:
        await state.close()
        raise
    signer = HmacSigner(ticket_secret(data_dir / "keys"))
    if not redis_url:
        service = GovernanceService(
            state,
            signer=signer,
            ledger=ledger,
            executors=executors,
            modules=load_policy_module,
            seal_in_background=seal_in_background,
            executor_threads=executor_threads,
            executor_queue=executor_queue,
        )
        return Booted(service, state, ledger)
    counters = RedisCounters.from_url(redis_url)
    client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    digests = RedisAtlasDigests(client)
    try:
        await digests.start()
    except BaseException:
        await client.aclose()
        counters.close()
        ledger.close()
        await state.close()
        raise
    service = GovernanceService(
        state,
        signer=signer,
        ledger=ledger,
        executors=executors,
        counters=counters,
        digests=digests,
        modules=load_policy_module,
        seal_in_background=seal_in_background,
        executor_threads=executor_threads,
        executor_queue=executor_queue,
    )
    return Booted(service, state, ledger, counters, digests, client)


def _sandbox_executors() -> dict[str, Executor]:
    sandbox = WasmSandbox()
    sandbox.prepare_in_background()
    return {CODE_EXECUTE: CodeExecutor(sandbox)}


async def ensure_admin_key(state: SqlState) -> str | None:
    """On a database with no API keys, create an admin key for tenant ``default``; returns its text."""
    if await state.count_keys():
        return None
    token, _ = await issue_key(
        state, tenant_id="default", role="admin", now=datetime.now(UTC), label="created by the first cra serve"
    )
    return token


async def load_atlas_dirs(service: GovernanceService, tenant_id: str, paths: Sequence[Path]) -> list[str]:
    """Load atlas package directories for a tenant, skipping those already loaded; returns the ids loaded."""
    loaded = []
    for path in paths:
        try:
            atlas = await service.load_atlas(tenant_id, read_package(path), source=str(path))
        except ConflictError:
            continue
        loaded.append(atlas.atlas_id)
    return loaded

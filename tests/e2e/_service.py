"""A real service over a temporary data directory, driven through httpx: shared by the HTTP tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from tests.conftest import EXAMPLES

from cra.runtime.execution import Executor
from cra.server.app import ServerSettings, create_app
from cra.server.auth import issue_key
from cra.server.boot import Booted, boot, load_atlas_dirs

SUPPORT = EXAMPLES / "customer-support"
SUPPORT_ID = "com.cra.examples.customer-support"
PROBLEM = "application/problem+json"


@dataclass
class Env:
    booted: Booted
    client: httpx.AsyncClient

    async def key(
        self, tenant: str, role: str, *, agent: str | None = None, policy_roles: tuple[str, ...] = ()
    ) -> dict[str, str]:
        token, _ = await issue_key(
            self.booted.state,
            tenant_id=tenant,
            role=role,
            agent_id=agent,
            policy_roles=policy_roles,
            now=datetime.now(UTC),
        )
        return {"X-API-Key": token}

    async def key_with_id(self, tenant: str, role: str, *, agent: str | None = None) -> tuple[dict[str, str], str]:
        token, record = await issue_key(
            self.booted.state, tenant_id=tenant, role=role, agent_id=agent, now=datetime.now(UTC)
        )
        return {"X-API-Key": token}, record.key_id

    async def support(self, tenant: str) -> None:
        assert await load_atlas_dirs(self.booted.service, tenant, [SUPPORT]) == [SUPPORT_ID]


@asynccontextmanager
async def served(
    data_dir: Path,
    settings: ServerSettings | None = None,
    executors: dict[str, Executor] | None = None,
    *,
    sandbox: bool = False,
) -> AsyncIterator[Env]:
    booted = await boot(data_dir, executors=executors, sandbox=sandbox)
    try:
        await booted.service.start()
        app = create_app(booted.service, booted.state, settings=settings)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cra.test") as client:
            yield Env(booted, client)
    finally:
        await booted.close()


def run(
    data_dir: Path,
    body: Callable[[Env], Awaitable[None]],
    settings: ServerSettings | None = None,
    executors: dict[str, Executor] | None = None,
) -> None:
    async def main() -> None:
        async with served(data_dir, settings, executors) as env:
            await body(env)

    asyncio.run(main())


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def carp(agent: str, session_id: str, operation: str = "resolve", **extra: Any) -> dict[str, Any]:
    """A CARP/1.0 request with a fresh request id and the current time."""
    return {
        "carp_version": "1.0",
        "request_id": str(uuid.uuid4()),
        "timestamp": now(),
        "operation": operation,
        "requester": {"agent_id": agent, "session_id": session_id},
        "task": {"goal": "Refund order 42"},
        **extra,
    }

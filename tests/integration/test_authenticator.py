"""The API-key cache: a record is trusted for its TTL, never longer; unknown keys are cached too."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cra.server.auth import Authenticator, AuthError, issue_key
from cra.store.database import open_state, sqlite_url


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_revocation_elsewhere_takes_effect_within_the_ttl(tmp_path: Path) -> None:
    async def body() -> None:
        state = await open_state(sqlite_url(tmp_path / "state.sqlite3"))
        try:
            clock = Clock()
            auth = Authenticator(state, ttl_seconds=5.0, clock=clock)
            token, record = await issue_key(
                state, tenant_id="acme", role="agent", agent_id="bot", now=datetime.now(UTC)
            )
            who = await auth.identity(token)
            assert (who.tenant_id, who.role, who.agent_id, who.policy_roles) == ("acme", "agent", "bot", ("agent",))
            assert await state.revoke_key(record.key_id, "2026-12-01T00:00:00.000000Z")
            clock.now += 4.9  # still within the TTL: the cached record answers
            assert (await auth.identity(token)).key_id == record.key_id
            clock.now += 0.2  # past it: the store is read again
            with pytest.raises(AuthError, match="revoked"):
                await auth.identity(token)
            # A wrong secret for a cached key id is refused as well.
            with pytest.raises(AuthError, match="not valid"):
                await auth.identity(token[:-2] + "xx")
        finally:
            await state.close()

    asyncio.run(body())


def test_invented_keys_neither_reach_the_store_each_time_nor_evict_real_keys(tmp_path: Path) -> None:
    async def body() -> None:
        state = await open_state(sqlite_url(tmp_path / "state.sqlite3"))
        try:
            clock = Clock()
            auth = Authenticator(state, ttl_seconds=60.0, clock=clock, max_entries=2, max_unknown=2)
            token, record = await issue_key(state, tenant_id="acme", role="admin", now=datetime.now(UTC))
            await auth.identity(token)
            reads: list[str] = []
            real_key = state.key

            async def counted(key_id: str) -> Any:
                reads.append(key_id)
                return await real_key(key_id)

            state.key = counted  # type: ignore[method-assign]
            with pytest.raises(AuthError, match="malformed"):
                await auth.identity("cra_not-hex-at-all_" + "s" * 43)
            for n in range(50):  # unknown ids: refused; each read once at most, into its own small cache
                with pytest.raises(AuthError, match="not valid"):
                    await auth.identity(f"cra_{n % 2:016x}_{'s' * 43}")
            assert reads == [f"{0:016x}", f"{1:016x}"]
            for n in range(2, 10):
                with pytest.raises(AuthError, match="not valid"):
                    await auth.identity(f"cra_{n:016x}_{'s' * 43}")
            reads.clear()
            assert (await auth.identity(token)).key_id == record.key_id  # still cached: no read
            assert reads == []
        finally:
            await state.close()

    asyncio.run(body())

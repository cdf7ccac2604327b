"""MemoryAtlasDigests: the in-process tier alone, for one serving process."""

from __future__ import annotations

import asyncio

import pytest

from cra.cache.atlas_digests import MemoryAtlasDigests


def test_put_get_invalidate_and_expiry() -> None:
    now = [0.0]
    cache = MemoryAtlasDigests(ttl_seconds=30.0, clock=lambda: now[0])

    async def scenario() -> None:
        await cache.start()
        assert await cache.get("t") is None
        digests = {"com.example.a": "sha256:aa"}
        await cache.put("t", digests)
        got = await cache.get("t")
        assert got == digests
        assert got is not None
        got["com.example.b"] = "sha256:bb"  # a copy: the cache is not changed through it
        assert await cache.get("t") == digests
        await cache.put("empty", {})
        assert await cache.get("empty") == {}
        await cache.invalidate("t")
        assert await cache.get("t") is None
        await cache.put("t", digests)
        now[0] += 30.0
        assert await cache.get("t") is None
        with pytest.raises(ValueError, match="empty"):
            await cache.put("t", {"": "x"})
        await cache.close()
        assert await cache.get("empty") is None

    asyncio.run(scenario())


def test_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        MemoryAtlasDigests(ttl_seconds=0)

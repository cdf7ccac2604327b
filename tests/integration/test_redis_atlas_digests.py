"""RedisAtlasDigests against a real Redis (``CRA_TEST_REDIS_URL``): two instances stand
for two processes sharing one Redis. The async API runs under ``asyncio.run``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import redis
import redis.asyncio

from cra.cache.atlas_digests import RedisAtlasDigests

DIGESTS = {"com.example.support": "sha256:aa", "org.acme.devops": "sha256:bb"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def two_processes(url: str, **kwargs: object) -> AsyncIterator[tuple[RedisAtlasDigests, RedisAtlasDigests]]:
    run_id = uuid.uuid4().hex
    prefix = f"cra-test:atlases:{run_id}:"
    clients = [
        redis.asyncio.Redis.from_url(url, socket_connect_timeout=5, client_name=f"cra-test-{run_id}-{n}") for n in "ab"
    ]
    caches = [RedisAtlasDigests(c, prefix=prefix, **kwargs) for c in clients]  # type: ignore[arg-type]
    try:
        yield caches[0], caches[1]
    finally:
        for cache in caches:
            await cache.close()
        keys = [k async for k in clients[0].scan_iter(match=f"{prefix}*")]
        if keys:
            await clients[0].delete(*keys)
        for c in clients:
            await c.aclose()


async def eventually(condition: Callable[[], bool], within: float = 1.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def test_a_put_in_one_process_is_a_get_in_another(redis_url: str) -> None:
    async def scenario() -> None:
        async with two_processes(redis_url) as (a, b):
            assert await b.get("t1") is None
            await a.put("t1", DIGESTS)
            assert await b.get("t1") == DIGESTS  # from Redis: b has no in-process entry, nor a listener
            assert not b.cached("t1")
            await a.put("empty", {})
            assert await b.get("empty") == {}  # a tenant with no atlases is cached too
            await b.start()
            assert await b.get("t1") == DIGESTS
            assert b.cached("t1")

    run(scenario)


def test_invalidate_in_one_process_drops_the_entry_in_the_other(redis_url: str) -> None:
    async def scenario() -> None:
        async with two_processes(redis_url) as (a, b):
            await a.start()
            await b.start()
            await a.put("t1", DIGESTS)
            await a.put("t2", DIGESTS)
            assert await b.get("t1") == DIGESTS
            assert await b.get("t2") == DIGESTS
            assert b.cached("t1")
            await a.invalidate("t1")
            assert await eventually(lambda: not b.cached("t1"), within=1.0)
            assert b.cached("t2")  # only the tenant named
            assert await b.get("t1") is None  # the Redis hash is gone too
            assert not a.cached("t1")

    run(scenario)


def test_a_put_that_raced_with_an_invalidate_is_dropped(redis_url: str) -> None:
    async def scenario() -> None:
        async with two_processes(redis_url) as (a, b):
            assert await b.get("t1") is None  # b misses, goes to read the state store...
            await a.invalidate("t1")  # ...meanwhile a changes the tenant's atlases
            await b.put("t1", {"com.example.old": "sha256:00"})  # what b read may be older
            assert await a.get("t1") is None
            assert await b.get("t1") is None
            await b.put("t1", DIGESTS)  # read after the change: stored
            assert await a.get("t1") == DIGESTS

    run(scenario)


def test_the_in_process_tier_expires(redis_url: str) -> None:
    async def scenario() -> None:
        clock = Clock()
        async with two_processes(redis_url, ttl_seconds=30.0, clock=clock) as (a, b):
            await b.start()
            await a.put("t1", DIGESTS)
            assert await b.get("t1") == DIGESTS
            assert b.cached("t1")
            clock.now += 29.9
            assert b.cached("t1")
            clock.now += 0.2
            assert not b.cached("t1")
            assert await b.get("t1") == DIGESTS  # Redis still has it

    run(scenario)


def test_close_stops_the_listener_cleanly(redis_url: str) -> None:
    async def scenario() -> None:
        async with two_processes(redis_url) as (a, b):
            await b.close()  # before start: nothing to do
            await b.start()
            await b.start()  # idempotent
            started: bool = b.listening
            assert started
            await b.close()
            await b.close()
            assert not b.listening
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            assert others == []
            await a.put("t1", DIGESTS)
            assert await b.get("t1") == DIGESTS  # still usable, through Redis
            assert not b.cached("t1")

    run(scenario)


def test_a_lost_subscription_empties_the_in_process_tier(redis_url: str) -> None:
    async def scenario() -> None:
        async with two_processes(redis_url) as (a, b):
            await b.start()
            await a.put("t1", DIGESTS)
            await b.get("t1")
            assert b.cached("t1")
            admin = redis.asyncio.Redis.from_url(redis_url)
            try:
                # b's subscriber connection: named after b's client, and subscribed
                mine = [
                    c["id"]
                    for c in await admin.client_list()
                    if c.get("name", "").endswith("-b")
                    and c.get("name", "").startswith("cra-test-")
                    and int(c.get("sub", 0)) > 0
                    and b.channel.split(":")[2] in c["name"]
                ]
                assert len(mine) == 1
                await admin.client_kill_filter(_id=mine[0])
            finally:
                await admin.aclose()
            assert await eventually(lambda: not b.cached("t1"), within=3.0)
            assert await eventually(lambda: b.listening, within=5.0)
            assert await b.get("t1") == DIGESTS
            await a.invalidate("t1")
            assert await eventually(lambda: not b.cached("t1"), within=1.0)  # subscribed again

    run(scenario)

"""A cache of each tenant's atlas digests (atlas id -> digest), invalidated across processes.

The service reads a tenant's atlas digests on every operation to know whether its
compiled resolver is still current. These caches answer that read without the
state store: first from an in-process tier (entries live ``ttl_seconds``), then,
for :class:`RedisAtlasDigests`, from a Redis hash shared by every process.
Loading or unloading an atlas calls :meth:`invalidate`, which deletes the Redis
hash and publishes the tenant id on ``<prefix>changed``; every process's listener
drops its in-process entry for that tenant.

``get`` returning ``None`` means "not cached": read the state store and ``put``
what it said. The state store stays the authority; the cache only saves reads:

- a ``put`` is dropped when the tenant was invalidated after the ``get`` that
  missed (a per-tenant generation, bumped by ``invalidate``), so a slow reader
  cannot write back digests older than a change it raced with;
- the in-process tier is used only while the listener is subscribed, and is
  emptied whenever it (re)subscribes, since messages published meanwhile are lost;
- the Redis hash also expires (``shared_ttl_seconds``), bounding what a process
  that died between its commit and its ``invalidate`` leaves behind;
- Redis failing makes ``get`` miss and ``put`` do nothing (logged); ``invalidate``
  raises :class:`AtlasCacheError` after dropping the local entry, since other
  processes may then serve their cached digests until ``ttl_seconds`` pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import redis
import redis.asyncio

from cra.errors import UnavailableError

__all__ = ["AtlasCacheError", "MemoryAtlasDigests", "RedisAtlasDigests"]

_log = logging.getLogger("cra.cache")

#: The hash field that marks a cached tenant (so that "no atlases" is cached too); never an atlas id.
_PRESENT: Final = ""

# KEYS: the tenant's hash, its generation. ARGV: the generation the reader saw ('*': do not check;
# '': none), the hash's lifetime in ms, then field, value, ... Returns 1 when written.
_PUT: Final = """
if ARGV[1] ~= '*' and (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class AtlasCacheError(UnavailableError):
    """The shared atlas-digest cache could not be told of a change."""

    code = "atlas_cache_unavailable"


class _Local:
    """The in-process tier: tenant -> (expiry, digests), with a change counter."""

    def __init__(self, ttl_seconds: float, clock: Callable[[], float]) -> None:
        if not ttl_seconds > 0:
            raise ValueError("ttl_seconds must be positive")
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: dict[str, tuple[float, dict[str, str]]] = {}
        #: Bumped by every drop: a value read before a drop is not stored after it.
        self.changes = 0

    def get(self, tenant_id: str) -> dict[str, str] | None:
        entry = self._entries.get(tenant_id)
        if entry is None:
            return None
        if self._clock() >= entry[0]:
            del self._entries[tenant_id]
            return None
        return dict(entry[1])

    def put(self, tenant_id: str, digests: Mapping[str, str], *, seen: int | None = None) -> None:
        if seen is None or seen == self.changes:
            self._entries[tenant_id] = (self._clock() + self._ttl, dict(digests))

    def drop(self, tenant_id: str) -> None:
        self.changes += 1
        self._entries.pop(tenant_id, None)

    def clear(self) -> None:
        self.changes += 1
        self._entries.clear()


def _check(digests: Mapping[str, str]) -> dict[str, str]:
    out = dict(digests)
    if _PRESENT in out:
        raise ValueError("an atlas id cannot be empty")
    return out


class MemoryAtlasDigests:
    """The in-process tier alone: for one serving process."""

    def __init__(self, *, ttl_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._local = _Local(ttl_seconds, clock)

    def cached(self, tenant_id: str) -> bool:
        """Whether the in-process tier holds the tenant (for tests and metrics)."""
        return self._local.get(tenant_id) is not None

    async def get(self, tenant_id: str) -> dict[str, str] | None:
        return self._local.get(tenant_id)

    async def put(self, tenant_id: str, digests: Mapping[str, str]) -> None:
        self._local.put(tenant_id, _check(digests))

    async def invalidate(self, tenant_id: str) -> None:
        self._local.drop(tenant_id)

    async def start(self) -> None:
        """Nothing to start."""

    async def close(self) -> None:
        self._local.clear()


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class RedisAtlasDigests:
    """Atlas digests in-process and in Redis, invalidated in every process through pub/sub.

    ``start`` subscribes and runs the listener; until then (and while it is
    reconnecting) every ``get`` goes to Redis. ``close`` stops the listener; the
    client belongs to the caller, who closes it.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "cra:atlases:",
        ttl_seconds: float = 30.0,
        shared_ttl_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        reconnect_seconds: float = 1.0,
    ) -> None:
        if not shared_ttl_seconds > 0:
            raise ValueError("shared_ttl_seconds must be positive")
        self._client = client
        self._prefix = prefix
        self._local = _Local(ttl_seconds, clock)
        self._shared_ms = max(1, int(shared_ttl_seconds * 1000))
        self._reconnect = reconnect_seconds
        self._put = client.register_script(_PUT)
        #: What the last missing ``get`` of each tenant saw: (generation, local changes).
        self._misses: dict[str, tuple[str, int]] = {}
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    @property
    def channel(self) -> str:
        return f"{self._prefix}changed"

    def keys(self, tenant_id: str) -> tuple[str, str]:
        """The Redis keys of a tenant: its digests (a hash) and its generation."""
        return f"{self._prefix}d:{tenant_id}", f"{self._prefix}g:{tenant_id}"

    def cached(self, tenant_id: str) -> bool:
        """Whether the in-process tier holds the tenant (for tests and metrics)."""
        return self._local.get(tenant_id) is not None

    @property
    def listening(self) -> bool:
        return self._subscribed.is_set()

    async def get(self, tenant_id: str) -> dict[str, str] | None:
        if self.listening:
            local = self._local.get(tenant_id)
            if local is not None:
                return local
        seen = self._local.changes
        digests_key, generation_key = self.keys(tenant_id)
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hgetall(digests_key)
                pipe.get(generation_key)
                fields, generation = await pipe.execute()
        except redis.RedisError as exc:
            _log.warning("the atlas-digest cache could not read tenant %s: %s", tenant_id, exc)
            self._misses.pop(tenant_id, None)
            return None
        digests = {_text(k): _text(v) for k, v in fields.items()}
        if _PRESENT not in digests:
            self._misses[tenant_id] = ("" if generation is None else _text(generation), seen)
            return None
        del digests[_PRESENT]
        if self.listening:
            self._local.put(tenant_id, digests, seen=seen)
        return digests

    async def put(self, tenant_id: str, digests: Mapping[str, str]) -> None:
        values = _check(digests)
        generation, seen = self._misses.pop(tenant_id, ("*", None))
        flat: list[str] = [_PRESENT, "1"]
        for atlas_id, digest in sorted(values.items()):
            flat += (atlas_id, digest)
        try:
            written = await self._put(keys=self.keys(tenant_id), args=[generation, self._shared_ms, *flat])
        except redis.RedisError as exc:
            _log.warning("the atlas-digest cache could not store tenant %s: %s", tenant_id, exc)
            return
        if int(written) and self.listening:
            self._local.put(tenant_id, values, seen=seen)

    async def invalidate(self, tenant_id: str) -> None:
        self._local.drop(tenant_id)
        self._misses.pop(tenant_id, None)
        digests_key, generation_key = self.keys(tenant_id)
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(digests_key)
                pipe.incr(generation_key)
                pipe.expire(generation_key, 7 * 86400)
                pipe.publish(self.channel, tenant_id)
                await pipe.execute()
        except redis.RedisError as exc:
            raise AtlasCacheError(f"the atlas-digest cache could not invalidate tenant {tenant_id}: {exc}") from exc
        finally:
            self._local.drop(tenant_id)

    async def start(self, *, timeout_seconds: float = 5.0) -> None:
        """Subscribe to the change channel and wait until the subscription is confirmed."""
        if self._task is not None:
            return
        self._pubsub = self._client.pubsub()
        try:
            await self._pubsub.subscribe(self.channel)
        except redis.RedisError as exc:
            await self._pubsub.aclose()
            self._pubsub = None
            raise AtlasCacheError(f"the atlas-digest cache could not subscribe to {self.channel}: {exc}") from exc
        self._task = asyncio.create_task(self._listen(), name=f"cra-atlas-digests:{self.channel}")
        try:
            async with asyncio.timeout(timeout_seconds):
                await self._subscribed.wait()
        except TimeoutError:
            await self.close()
            raise AtlasCacheError(
                f"the atlas-digest cache's subscription to {self.channel} was not confirmed"
            ) from None

    async def _listen(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        while True:
            try:
                message = await pubsub.get_message(timeout=None)
            except redis.RedisError as exc:
                if self.listening:
                    _log.warning("the atlas-digest cache lost its subscription: %s; retrying", exc)
                self._subscribed.clear()
                self._local.clear()
                await asyncio.sleep(self._reconnect)
                continue
            if message is None:
                continue
            kind = _text(message.get("type"))
            if kind == "subscribe":  # first, or again after a reconnection: anything may have changed
                self._local.clear()
                self._subscribed.set()
            elif kind == "message":
                self._local.drop(_text(message.get("data")))

    async def close(self) -> None:
        """Stop the listener and unsubscribe; the in-process tier is emptied."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # close() itself was cancelled
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(redis.RedisError):
                await pubsub.aclose()
        self._subscribed.clear()
        self._local.clear()

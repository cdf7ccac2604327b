"""Adapters to the shared cache tier (Redis): rate-limit and budget counters, atlas digests.

:class:`RedisCounters` is a :class:`~cra.runtime.ports.CounterStore` whose limits hold
across every process that shares one Redis; :class:`RedisAtlasDigests` caches each
tenant's atlas digests in-process and in Redis, and invalidates them everywhere
through a pub/sub channel. :class:`MemoryAtlasDigests` is the one-process stand-in.
"""

from __future__ import annotations

from cra.cache.atlas_digests import AtlasCacheError, MemoryAtlasDigests, RedisAtlasDigests
from cra.cache.redis_counters import CounterStoreError, RedisCounters

__all__ = ["AtlasCacheError", "CounterStoreError", "MemoryAtlasDigests", "RedisAtlasDigests", "RedisCounters"]

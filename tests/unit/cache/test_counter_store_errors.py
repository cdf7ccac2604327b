"""RedisCounters refuses what it cannot answer: never an allow by default."""

from __future__ import annotations

import socket

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cra.cache.redis_counters import CounterStoreError, RedisCounters
from cra.errors import CRAError
from cra.policy.decision import Charge


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


RATE = Charge("p", "rate_limit", "k", 1, 3, 10)


def test_an_unreachable_redis_raises_and_never_allows() -> None:
    port = _unused_port()
    stores = [
        RedisCounters.from_url(f"redis://127.0.0.1:{port}/0", timeout_seconds=0.5),
        RedisCounters(redis.Redis(port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))),
    ]
    for store in stores:
        for call in (store.check, store.consume):
            with pytest.raises(CounterStoreError, match="did not answer") as info:
                call([RATE], 0.0)
            assert isinstance(info.value, CRAError)
        store.close()


@pytest.mark.parametrize(
    "charge",
    [
        Charge("b", "budget", "k", float("nan"), 10, 60),
        Charge("b", "budget", "k", float("inf"), 10, 60),
        Charge("b", "budget", "k", 1, float("nan"), 60),
        Charge("b", "budget", "k", 1, float("inf"), 60),
        Charge("b", "budget", "k", 2**53 + 1, 2**60, 60),  # would be counted, and a double cannot hold it
    ],
)
def test_amounts_it_cannot_count_exactly_are_refused_before_redis(charge: Charge) -> None:
    store = RedisCounters(redis.Redis(port=_unused_port()))  # never reached
    with pytest.raises(CounterStoreError, match=r"not finite|not a finite number|exact range"):
        store.consume([RATE, charge], 0.0)
    store.close()


def test_an_empty_call_needs_no_redis() -> None:
    store = RedisCounters(redis.Redis(port=_unused_port()))
    assert store.check([], 0.0) is None
    assert store.consume([], 0.0) is None
    store.close()

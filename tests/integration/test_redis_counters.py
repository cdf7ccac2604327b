"""RedisCounters against a real Redis (``CRA_TEST_REDIS_URL``): MemoryCounters' exact
semantics, one limit across processes, keys that expire, errors that deny."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from cra.cache.redis_counters import CounterStoreError, RedisCounters
from cra.policy.decision import Charge, LimitBreach
from cra.runtime.memory import MemoryCounters


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def _drop(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = _client(redis_url)
    yield c
    c.close()


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    p = f"cra-test:counters:{uuid.uuid4().hex}:"
    yield p
    _drop(client, p)


def _same(got: LimitBreach | None, want: LimitBreach | None) -> None:
    assert got == want
    if got is not None and want is not None:
        assert type(got.used) is type(want.used), (got.used, want.used)  # ints stay ints


# -- the same answers as MemoryCounters -------------------------------------------------------

_amount = st.one_of(
    st.integers(0, 12),
    st.floats(0, 12, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.1, 0.2, 0.3, 1e-9, 10**30]),  # float rounding; an amount far beyond any limit
)
_limit = st.one_of(st.integers(1, 20), st.floats(0.25, 20), st.sampled_from([0.3, 0.6]))


@st.composite
def _charge(draw: st.DrawFn) -> Charge:
    key = draw(st.sampled_from(["a", "b", "c"]))
    window = draw(st.sampled_from([1, 2, 3, 5, 10, 30]))
    if draw(st.booleans()):
        return Charge("rl", "rate_limit", key, 1, draw(st.integers(1, 5)), window)
    return Charge("bu", "budget", key, draw(_amount), draw(_limit), window)


_step = st.tuples(
    st.sampled_from(["consume", "check", "release"]),  # release: give back the last successful consume
    st.one_of(st.integers(0, 4), st.floats(0, 4, allow_nan=False), st.sampled_from([0.1, 1.0 / 3])),  # time passing
    st.lists(_charge(), min_size=1, max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(start=st.sampled_from([0.0, 1_700_000_000.123456]), steps=st.lists(_step, min_size=1, max_size=25))
def test_redis_counters_answer_exactly_as_memory_counters(
    client: redis.Redis, start: float, steps: list[tuple[str, float, list[Charge]]]
) -> None:
    prefix = f"cra-test:counters:{uuid.uuid4().hex}:"
    shared, memory = RedisCounters(client, prefix=prefix), MemoryCounters()
    now = start
    taken: list[tuple[list[Charge], float]] = []
    try:
        for kind, gap, charges in steps:
            now += gap
            if kind == "consume":
                breach = memory.consume(charges, now)
                _same(shared.consume(charges, now), breach)
                if breach is None:
                    taken.append((charges, now))
            elif kind == "release" and taken:
                given, at = taken.pop()
                shared.release(given, at)
                memory.release(given, at)
            else:
                _same(shared.check(charges, now), memory.check(charges, now))
    finally:
        _drop(client, prefix)


def test_the_examples_of_the_memory_counter_tests(client: redis.Redis, prefix: str) -> None:
    c = RedisCounters(client, prefix=prefix)
    rate = Charge("p", "rate_limit", "k", 1, 3, 10)
    for t in (100.0, 104.0, 105.0):
        assert c.consume([rate], t) is None
    assert c.consume([rate], 106.0) == LimitBreach(rate, 3, 4)
    assert c.consume([rate], 110.0) is None
    # all or nothing: "a" is not taken by a call that "b" refuses
    one_a, one_b = Charge("p", "rate_limit", "a", 1, 1, 10), Charge("p", "rate_limit", "b", 1, 1, 10)
    assert c.consume([one_b], 0.0) is None
    breach = c.consume([one_a, one_b], 1.0)
    assert breach is not None
    assert breach.charge.key == "b"
    assert c.consume([one_a], 1.0) is None
    # a charge larger than its limit: no wait helps
    huge = Charge("b", "budget", "h", 10**40, 5, 60)
    assert c.consume([huge], 0.0) == LimitBreach(huge, 0, None)
    assert c.check([], 0.0) is None
    # floats written with an exponent stay floats
    tiny = Charge("b", "budget", "t", 1e-9, 1.5e-9, 60)
    assert c.consume([tiny], 0.0) is None
    _same(c.consume([tiny], 0.0), LimitBreach(tiny, 1e-9, 60))


def test_a_key_holding_something_else_is_an_error_not_an_allow(client: redis.Redis, prefix: str) -> None:
    c = RedisCounters(client, prefix=prefix)
    client.set(c.keys("k")[0], "not a sorted set")
    with pytest.raises(CounterStoreError, match="did not answer"):
        c.consume([Charge("p", "rate_limit", "k", 1, 3, 10)], 0.0)


# -- one limit across processes -----------------------------------------------------------------


def test_two_processes_never_exceed_one_limit_together(prefix: str, redis_url: str) -> None:
    clients = [_client(redis_url), _client(redis_url)]  # two clients with their own pools, as two processes have
    stores = [RedisCounters(c, prefix=prefix) for c in clients]
    rate_a = Charge("p", "rate_limit", "a", 1, 40, 3600)
    rate_b = Charge("q", "rate_limit", "b", 1, 25, 3600)
    spend = Charge("r", "budget", "c", 0.5, 10, 3600)  # 20 fit
    taken: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        store = stores[n % 2]
        start.wait()
        mine = 0
        for _ in range(15):
            if store.consume([rate_a, rate_b, spend], time.time()) is None:
                mine += 1
        with lock:
            taken.append(mine)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert len(taken) == 8
        assert sum(taken) == 20  # 120 tries; the budget admits exactly 20, and all or nothing
        hits, _ = stores[0].keys("a")
        assert clients[0].zcard(hits) == 20
        assert clients[0].zcard(stores[0].keys("b")[0]) == 20
        breach = stores[1].check([rate_a, rate_b, spend], time.time())
        assert breach == LimitBreach(spend, 10.0, breach.retry_after if breach else None)
    finally:
        for c in clients:
            c.close()


# -- idle keys disappear ------------------------------------------------------------------------


def test_keys_expire_a_second_after_their_window(client: redis.Redis, prefix: str) -> None:
    c = RedisCounters(client, prefix=prefix)
    hits, seq = c.keys("short")
    assert c.consume([Charge("p", "rate_limit", "short", 1, 5, 1)], time.time()) is None
    assert 0 < client.pttl(hits) <= 2000
    assert 0 < client.pttl(seq) <= 3000
    deadline = time.monotonic() + 5
    while client.exists(hits, seq) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.exists(hits, seq) == 0
    # a shorter window on the same key never shortens the expiry a longer one set
    c.consume([Charge("p", "rate_limit", "mixed", 1, 5, 60)], time.time())
    c.consume([Charge("p", "rate_limit", "mixed", 1, 5, 1)], time.time())
    assert client.pttl(c.keys("mixed")[0]) > 50_000

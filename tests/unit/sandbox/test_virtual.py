"""The virtual world a run sees: seeded randomness, bounded output, the virtual clock."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cra.sandbox.virtual import WALL_CLOCK_BASE_S, Capture, RunState, SeededRandom, StopRun

seeds = st.integers(min_value=0, max_value=2**64 - 1)


@given(seeds, st.lists(st.integers(min_value=0, max_value=200), max_size=20))
def test_the_stream_does_not_depend_on_how_it_is_read(seed: int, sizes: list[int]) -> None:
    whole = SeededRandom(seed).take(sum(sizes))
    pieces = SeededRandom(seed)
    assert b"".join(pieces.take(n) for n in sizes) == whole


@given(seeds)
def test_the_stream_is_sha256_in_counter_mode_over_the_seed(seed: int) -> None:
    key = hashlib.sha256(b"cra-sandbox-random/1\x00" + seed.to_bytes(8, "big")).digest()
    expected = b"".join(hashlib.sha256(key + i.to_bytes(8, "big")).digest() for i in range(3))
    assert SeededRandom(seed).take(96) == expected


@given(seeds, seeds)
def test_different_seeds_give_different_streams(a: int, b: int) -> None:
    if a != b:
        assert SeededRandom(a).take(32) != SeededRandom(b).take(32)


def test_one_huge_request_for_random_bytes_stops_the_run() -> None:
    with pytest.raises(StopRun) as stop:
        SeededRandom(1).take(10**9)
    assert stop.value.reason == "trap"
    assert "random bytes" in stop.value.message


def test_random_bytes_are_bounded_per_run() -> None:
    rng = SeededRandom(1)
    for _ in range(64):
        rng.take(1 << 20)
    with pytest.raises(StopRun):
        rng.take(1)


@given(st.integers(min_value=0, max_value=300), st.lists(st.binary(max_size=120), max_size=12))
def test_a_capture_keeps_a_prefix_of_at_most_its_limit(limit: int, writes: list[bytes]) -> None:
    capture = Capture(limit)
    for data in writes:
        capture.write(data)
    everything = b"".join(writes)
    assert capture.value() == everything[:limit]
    assert capture.truncated == (len(everything) > limit)


@given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=30).map(sorted))
def test_the_monotonic_clock_strictly_increases_with_fuel(fuel_used: list[int]) -> None:
    state = RunState(fuel=10**7, seed=0, sleep_budget_ns=10**9, output_bytes=10)
    readings = [state.monotonic_ns(10**7 - used) for used in fuel_used]
    assert all(a < b for a, b in itertools.pairwise(readings))


def test_sleep_moves_the_clock_by_exactly_its_length() -> None:
    state = RunState(fuel=1000, seed=0, sleep_budget_ns=10**10, output_bytes=10)
    before = state.monotonic_ns(1000)
    state.sleep(2_500_000_000)
    assert state.monotonic_ns(1000) - before == 2_500_000_000 + 1  # one more read


def test_the_wall_clock_starts_at_the_base() -> None:
    state = RunState(fuel=1000, seed=0, sleep_budget_ns=10, output_bytes=10)
    assert WALL_CLOCK_BASE_S * 10**9 < state.wall_ns(1000) < (WALL_CLOCK_BASE_S + 1) * 10**9


def test_sleeping_past_the_budget_is_a_timeout() -> None:
    state = RunState(fuel=1000, seed=0, sleep_budget_ns=5 * 10**9, output_bytes=10)
    state.sleep(5 * 10**9)
    with pytest.raises(StopRun) as stop:
        state.sleep(1)
    assert stop.value.reason == "timeout"

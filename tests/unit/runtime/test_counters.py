"""Sliding-window counters: exact limits, honest retry-after, all-or-nothing consumption."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cra.policy.decision import Charge
from cra.runtime.memory import MemoryCounters


def rate(key: str = "k", limit: int = 3, window: int = 10) -> Charge:
    return Charge("p", "rate_limit", key, 1, limit, window)


def test_limit_is_exact_and_retry_after_points_at_the_oldest_hit() -> None:
    c = MemoryCounters()
    assert c.consume([rate()], 100.0) is None
    assert c.consume([rate()], 104.0) is None
    assert c.consume([rate()], 105.0) is None
    breach = c.consume([rate()], 106.0)
    assert breach is not None
    assert (breach.used, breach.retry_after) == (3, 4)  # the hit at 100 leaves the window at 110
    assert c.consume([rate()], 110.0) is None


def test_check_never_consumes() -> None:
    c = MemoryCounters()
    for _ in range(10):
        assert c.check([rate(limit=1)], 0.0) is None
    assert c.consume([rate(limit=1)], 0.0) is None
    assert c.check([rate(limit=1)], 0.0) is not None


def test_consume_is_all_or_nothing() -> None:
    c = MemoryCounters()
    assert c.consume([rate("b", limit=1)], 0.0) is None
    breach = c.consume([rate("a", limit=1), rate("b", limit=1)], 1.0)
    assert breach is not None
    assert breach.charge.key == "b"
    assert c.consume([rate("a", limit=1)], 1.0) is None  # "a" was not taken by the failed call


def test_budget_sums_amounts() -> None:
    c = MemoryCounters()
    spend = Charge("b", "budget", "k", 70, 100, 60)
    assert c.consume([spend], 0.0) is None
    breach = c.consume([spend], 1.0)
    assert breach is not None
    assert breach.used == 70
    assert c.consume([Charge("b", "budget", "k", 30, 100, 60)], 1.0) is None


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 5),
    window=st.integers(1, 20),
    gaps=st.lists(st.integers(0, 7), min_size=1, max_size=60),
)
def test_no_window_ever_holds_more_than_the_limit(limit: int, window: int, gaps: list[int]) -> None:
    c = MemoryCounters()
    now, accepted = 0.0, []
    for gap in gaps:
        now += gap
        breach = c.consume([rate(limit=limit, window=window)], now)
        if breach is None:
            accepted.append(now)
        else:
            in_window = [t for t in accepted if t > now - window]
            assert len(in_window) == limit  # refused only when the window is really full
            assert breach.retry_after is not None
            assert now + breach.retry_after >= min(in_window) + window
    for t in accepted:
        assert sum(1 for u in accepted if t - window < u <= t) <= limit


def test_release_gives_back_exactly_what_one_consume_took() -> None:
    c = MemoryCounters()
    spend = Charge("b", "budget", "k", 70, 100, 60)
    other = Charge("r", "rate_limit", "r", 1, 1, 60)
    assert c.consume([spend, other], 5.0) is None
    assert c.consume([spend], 6.0) is not None  # 70 + 70 > 100
    c.release([spend, other], 5.0)
    assert c.consume([spend, other], 6.0) is None  # both fit again
    c.release([spend], 99.0)  # nothing was taken at 99: nothing changes
    assert c.check([spend], 7.0) is not None


def test_keys_whose_windows_emptied_are_swept_away() -> None:
    c = MemoryCounters(sweep_every=10)
    for n in range(50):  # 50 sessions, one call each, in a 10 s window
        assert c.consume([rate(f"session-{n}", limit=1, window=10)], float(n)) is None
    assert len(c) < 50  # the old sessions' keys went
    assert c.consume([rate("session-49", limit=1, window=10)], 50.0) is not None  # a live one is still counted
    for n in range(20):
        c.check([rate("other")], 1000.0 + n)
    assert len(c) == 1  # only the key just checked remains

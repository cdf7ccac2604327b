"""UUIDv7 ids: format, order, uniqueness, determinism."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from cra import ManualClock, SeededIds, SystemIds
from cra.runtime.ids import uuid7


@given(st.integers(0, 2**48 - 1), st.integers(0, 2**74 - 1))
def test_uuid7_layout(ms: int, rand: int) -> None:
    u = uuid.UUID(uuid7(ms, rand))
    assert (u.version, u.variant) == (7, uuid.RFC_4122)
    assert u.int >> 80 == ms
    assert (u.int >> 64) & 0xFFF == rand >> 62
    assert u.int & (2**62 - 1) == rand & (2**62 - 1)
    assert str(u) == uuid7(ms, rand)


def test_system_ids_are_valid_unique_and_sorted() -> None:
    ids = SystemIds()
    made = [ids.new_id() for _ in range(20_000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    for x in made[::997]:
        u = uuid.UUID(x)
        assert (str(u), u.version, u.variant) == (x, 7, uuid.RFC_4122)


def test_running_out_of_random_bits_borrows_the_next_millisecond() -> None:
    ids = SystemIds()
    first = ids.new_id()
    ids._rand = 2**74 - 2  # as if a whole millisecond's sequence had been used
    ids._ms = uuid.UUID(first).int >> 80
    after = ids.new_id()
    assert after > first
    assert uuid.UUID(after).int >> 80 >= (uuid.UUID(first).int >> 80) + 1


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    ids = SystemIds()
    ids.new_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.write(write, ids.new_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    parent = ids.new_id()
    assert child[-12:] != parent[-12:]


def test_seeded_ids_repeat_exactly() -> None:
    def run() -> list[str]:
        clock = ManualClock(datetime(2025, 1, 1, tzinfo=UTC))
        ids = SeededIds(7, clock)
        return [ids.new_id() for _ in range(5)]

    assert run() == run()
    assert len(set(run())) == 5

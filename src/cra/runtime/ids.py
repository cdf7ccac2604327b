"""UUIDv7 identifiers (RFC 9562) from an injectable source."""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Final

from cra.runtime.ports import Clock

__all__ = ["SeededIds", "SystemIds", "uuid7"]

_MASK48: Final = (1 << 48) - 1
_MASK62: Final = (1 << 62) - 1


def uuid7(unix_ms: int, rand: int) -> str:
    """A UUIDv7 from a Unix time in milliseconds and 74 random bits, in canonical form."""
    value = (unix_ms & _MASK48) << 80 | 0x7 << 76 | ((rand >> 62) & 0xFFF) << 64 | 0b10 << 62 | (rand & _MASK62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class SystemIds:
    """UUIDv7s from the system clock and the OS's CSPRNG, monotonic within a process.

    Within one millisecond, each id adds a random increment to the previous id's
    random bits (RFC 9562 §6.2, method 2), so ids sort in creation order and stay
    unguessable. Random bytes come from ``os.urandom`` in blocks; a forked child
    drops its parent's block so ids never repeat across processes.
    """

    _BLOCK: Final = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._pool = b""
        self._pos = 0
        self._ms = -1
        self._rand = 0
        self._prefix = ""

    def _bytes(self, n: int) -> int:
        if self._pos + n > len(self._pool):
            self._pool, self._pos = os.urandom(self._BLOCK), 0
        chunk = self._pool[self._pos : self._pos + n]
        self._pos += n
        return int.from_bytes(chunk, "big")

    def _start(self, ms: int) -> None:
        self._ms, self._rand = ms, self._bytes(10) >> 6
        h = f"{ms & _MASK48:012x}"
        self._prefix = f"{h[:8]}-{h[8:]}-7"

    def new_id(self) -> str:
        ms = time.time_ns() // 1_000_000
        with self._lock:
            if ms > self._ms:
                self._start(ms)
            else:  # the same millisecond (or the clock stepped back): continue the sequence
                self._rand += 1 + self._bytes(2)
                if self._rand >> 74:  # the random bits ran out: borrow the next millisecond
                    self._start(self._ms + 1)
            rand, prefix = self._rand, self._prefix
        low = 0x8000_0000_0000_0000 | (rand & _MASK62)
        return f"{prefix}{rand >> 62:03x}-{low >> 48:04x}-{low & 0xFFFF_FFFF_FFFF:012x}"


class SeededIds:
    """Deterministic UUIDv7s: the clock gives the time, a seeded PRNG the rest.

    With the same seed and the same clock readings it yields the same ids, which
    is what makes resolutions and traces reproducible byte for byte.
    """

    def __init__(self, seed: int, clock: Clock) -> None:
        self._rng = random.Random(seed)  # noqa: S311 - reproducible ids for tests and replays, not secrets
        self._clock = clock
        self._lock = threading.Lock()

    def new_id(self) -> str:
        with self._lock:
            bits = self._rng.getrandbits(74)
        return uuid7(int(self._clock.now().timestamp() * 1000), bits)

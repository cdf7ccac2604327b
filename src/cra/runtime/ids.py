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
    """UUIDv7s from the system clock and the OS's CSPRNG.

    Random bytes are drawn from ``os.urandom`` in blocks (one system call per 256
    ids); a forked child discards its parent's block so ids never repeat across
    processes.
    """

    _BLOCK: Final = 10 * 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._pos = 0
        self._pid = -1

    def new_id(self) -> str:
        with self._lock:
            if self._pos >= len(self._pool) or self._pid != os.getpid():
                self._pool, self._pos, self._pid = os.urandom(self._BLOCK), 0, os.getpid()
            chunk = self._pool[self._pos : self._pos + 10]
            self._pos += 10
        return uuid7(time.time_ns() // 1_000_000, int.from_bytes(chunk, "big") >> 6)


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

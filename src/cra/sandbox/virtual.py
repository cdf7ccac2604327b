"""What a run sees instead of the world: a virtual clock, seeded randomness, bounded output.

All of it is a function of the run's seed and of the fuel the code has used,
so a run's every observation repeats exactly when the run is repeated.
"""

from __future__ import annotations

import hashlib

__all__ = ["NS_PER_FUEL", "WALL_CLOCK_BASE_S", "Capture", "RunState", "SeededRandom", "StopRun"]

#: Virtual nanoseconds per unit of fuel: about what this machine's CPU spends per instruction.
NS_PER_FUEL = 0.2
_FUEL_PER_NS_DEN = 5  # NS_PER_FUEL == 1 / _FUEL_PER_NS_DEN, kept integral

#: The wall clock of every run starts at 2024-01-01T00:00:00Z.
WALL_CLOCK_BASE_S = 1_704_067_200

_RANDOM_PER_CALL = 1 << 20
_RANDOM_PER_RUN = 64 << 20


class StopRun(Exception):
    """Raised by a host function to end the run, with the reason the result reports."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(message)


class SeededRandom:
    """A deterministic byte stream: SHA-256 in counter mode over a key derived from the seed.

    Not a secret generator, and not meant to be one: the code inside the
    sandbox must be repeatable, and its seed is in the trace.
    """

    __slots__ = ("_counter", "_key", "_pool", "_taken")

    def __init__(self, seed: int) -> None:
        self._key = hashlib.sha256(b"cra-sandbox-random/1\x00" + seed.to_bytes(8, "big")).digest()
        self._counter = 0
        self._pool = b""
        self._taken = 0

    def take(self, n: int) -> bytes:
        if n > _RANDOM_PER_CALL:
            raise StopRun("trap", f"the code asked for {n} random bytes at once; the limit is {_RANDOM_PER_CALL}")
        self._taken += n
        if self._taken > _RANDOM_PER_RUN:
            raise StopRun("trap", f"the code asked for more than {_RANDOM_PER_RUN} random bytes in one run")
        chunks = [self._pool]
        have = len(self._pool)
        while have < n:
            block = hashlib.sha256(self._key + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
            chunks.append(block)
            have += len(block)
        joined = b"".join(chunks)
        self._pool = joined[n:]
        return joined[:n]


class Capture:
    """One output stream, kept up to ``limit`` bytes; the rest is counted and dropped."""

    __slots__ = ("_chunks", "_kept", "limit", "truncated")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self._kept = 0
        self.truncated = False

    def write(self, data: bytes) -> None:
        """The WASI stream's callback. It always claims every byte, so the guest never sees an error."""
        room = self.limit - self._kept
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        if data:
            self._chunks.append(data)
            self._kept += len(data)

    def value(self) -> bytes:
        return b"".join(self._chunks)


class RunState:
    """The state of one run that the host functions read and advance.

    The monotonic clock reads ``fuel used / 5 + time slept + reads`` nanoseconds:
    it moves as the code computes, jumps when it sleeps, and never repeats a
    value. The wall clock is that plus :data:`WALL_CLOCK_BASE_S`.
    """

    __slots__ = ("_fuel", "_reads", "_sleep_budget_ns", "_slept_ns", "random", "stderr", "stdout")

    def __init__(self, *, fuel: int, seed: int, sleep_budget_ns: int, output_bytes: int) -> None:
        self._fuel = fuel
        self._reads = 0
        self._slept_ns = 0
        self._sleep_budget_ns = sleep_budget_ns
        self.random = SeededRandom(seed)
        self.stdout = Capture(output_bytes)
        self.stderr = Capture(output_bytes)

    def monotonic_ns(self, fuel_left: int) -> int:
        self._reads += 1
        return (self._fuel - fuel_left) // _FUEL_PER_NS_DEN + self._slept_ns + self._reads

    def wall_ns(self, fuel_left: int) -> int:
        return WALL_CLOCK_BASE_S * 1_000_000_000 + self.monotonic_ns(fuel_left)

    def sleep(self, ns: int) -> None:
        self._slept_ns += ns
        if self._slept_ns > self._sleep_budget_ns:
            budget = self._sleep_budget_ns / 1e9
            raise StopRun("timeout", f"the code slept past its virtual sleep budget of {budget:g} s")

"""Sliding-window rate-limit and budget counters in Redis, shared by every process.

:class:`RedisCounters` has exactly the semantics of
:class:`~cra.runtime.memory.MemoryCounters` (exact windows, amounts summed, the
same retry-after, all-or-nothing consumption, a charge larger than its limit
refused with no retry-after), but each call is one Lua script run atomically by
Redis, so a limit holds across processes.

Each charge key is a sorted set ``<prefix>h:<key>`` of hits, scored by their
timestamp; a member is ``<16 hex digits of a per-key sequence>:<amount>``, so
hits with the same timestamp keep their insertion order (the order the amounts
are summed in) and ints stay ints. The sequence lives in ``<prefix>n:<key>``.
Both keys expire ``window_seconds + 1`` seconds (Redis's clock) after their
newest hit, so idle keys disappear.

Lua numbers are doubles: integer amounts and limits are exact up to 2**53, and
a larger one that would enter the arithmetic is refused with
:class:`CounterStoreError` (an amount larger than its limit never does). Float
amounts are summed left to right, in insertion order, as Python 3.11's ``sum``
does.

A counter store that cannot answer raises :class:`CounterStoreError`; it never
allows by default. The caller must treat that as a denial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cra.errors import UnavailableError
from cra.policy.decision import Charge, LimitBreach

__all__ = ["CounterStoreError", "RedisCounters"]

#: The largest integer a double (a Lua number) holds exactly.
_EXACT: Final = 2**53

# KEYS: per charge i, KEYS[2i-1] its hits (sorted set) and KEYS[2i] its sequence.
# ARGV: now, '1' to consume or '0' to check, then per charge: amount, limit,
# window_seconds, and '1' when the amount alone exceeds the limit (decided in Python, exactly).
# Returns {0} when nothing breaches, else {i, used, used_is_int, retry_after or -1}.
_SCRIPT: Final = """
local now = tonumber(ARGV[1])
local n = #KEYS / 2
for i = 1, n do
  local hits_key = KEYS[2 * i - 1]
  local a = 2 + 4 * (i - 1)
  local amount = tonumber(ARGV[a + 1])
  local limit = tonumber(ARGV[a + 2])
  local window = tonumber(ARGV[a + 3])
  redis.call('ZREMRANGEBYSCORE', hits_key, '-inf', string.format('%.17g', now - window))
  local hits = redis.call('ZRANGE', hits_key, 0, -1, 'WITHSCORES')
  local used, is_int = 0, 1
  for j = 1, #hits, 2 do
    local text = string.sub(hits[j], 18)
    if string.find(text, '[.eE]') then is_int = 0 end
    used = used + tonumber(text)
  end
  if ARGV[a + 4] == '1' then
    return {i, string.format('%.17g', used), is_int, -1}
  end
  if not (used + amount <= limit) then
    local freed, wait = 0, window
    for j = 1, #hits, 2 do
      freed = freed + tonumber(string.sub(hits[j], 18))
      if used - freed + amount <= limit then
        wait = tonumber(hits[j + 1]) + window - now
        break
      end
    end
    local retry = math.ceil(wait)
    if retry < 1 then retry = 1 end
    return {i, string.format('%.17g', used), is_int, retry}
  end
end
if ARGV[2] == '1' then
  for i = 1, n do
    local hits_key, seq_key = KEYS[2 * i - 1], KEYS[2 * i]
    local a = 2 + 4 * (i - 1)
    local seq = redis.call('INCR', seq_key)
    redis.call('ZADD', hits_key, ARGV[1], string.format('%016x', seq) .. ':' .. ARGV[a + 1])
    local ttl = (tonumber(ARGV[a + 3]) + 1) * 1000
    if redis.call('PTTL', hits_key) < ttl then redis.call('PEXPIRE', hits_key, ttl) end
    if redis.call('PTTL', seq_key) < ttl + 1000 then redis.call('PEXPIRE', seq_key, ttl + 1000) end
  end
end
return {0}
"""

# KEYS: per charge, its hits. ARGV: now, then per charge its amount as consume stored it.
# Removes, per charge, the newest hit at exactly ``now`` with that amount.
_RELEASE: Final = """
for i = 1, #KEYS do
  local hits = redis.call('ZRANGEBYSCORE', KEYS[i], ARGV[1], ARGV[1])
  for j = #hits, 1, -1 do
    if string.sub(hits[j], 18) == ARGV[i + 1] then
      redis.call('ZREM', KEYS[i], hits[j])
      break
    end
  end
end
return 0
"""


class CounterStoreError(UnavailableError):
    """The counter store could not answer (Redis unreachable or failing, or a charge it
    cannot represent). The call it was asked about must be denied."""

    code = "counter_store_unavailable"


def _number(value: int | float, what: str, charge: Charge) -> str:
    """The exact text of an amount or limit, as the script reads it."""
    if isinstance(value, int):  # bool included: it counts as 0 or 1, as in MemoryCounters
        if abs(value) > _EXACT:
            raise CounterStoreError(
                f"{charge.kind} {charge.policy_id}: the {what} {value} is beyond the counters' exact range (2**53)"
            )
        return str(int(value))
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    raise CounterStoreError(f"{charge.kind} {charge.policy_id}: the {what} {value!r} is not a finite number")


def _text(value: Any) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


class RedisCounters:
    """A :class:`~cra.runtime.ports.CounterStore` in Redis: one atomic script per call.

    ``client`` should not retry commands on timeouts (a retried ``consume`` that had
    in fact run would be charged twice); :meth:`from_url` builds one that does not.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "cra:counters:") -> None:
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(_SCRIPT)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "cra:counters:", timeout_seconds: float = 2.0) -> RedisCounters:
        """Counters on the Redis at ``url``, with socket timeouts and no command retries."""
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )
        return cls(client, prefix=prefix)

    @property
    def client(self) -> redis.Redis:
        return self._client

    def keys(self, key: str) -> tuple[str, str]:
        """The Redis keys of one charge key: its hits (a sorted set) and its sequence."""
        return f"{self._prefix}h:{key}", f"{self._prefix}n:{key}"

    def check(self, charges: Sequence[Charge], now: float) -> LimitBreach | None:
        return self._run(charges, now, consume=False)

    def consume(self, charges: Sequence[Charge], now: float) -> LimitBreach | None:
        return self._run(charges, now, consume=True)

    def release(self, charges: Sequence[Charge], now: float) -> None:
        taken = [c for c in charges if not c.amount > c.limit]  # consume never stores those
        if not taken:
            return
        keys = [self.keys(c.key)[0] for c in taken]
        args = [repr(float(now)), *(_number(c.amount, "amount", c) for c in taken)]
        try:
            self._release(keys=keys, args=args)
        except redis.RedisError as exc:
            raise CounterStoreError(f"the counter store (Redis) did not answer: {exc}") from exc

    def close(self) -> None:
        self._client.close()

    def _run(self, charges: Sequence[Charge], now: float, *, consume: bool) -> LimitBreach | None:
        if not charges:
            return None
        moment = float(now)
        if not math.isfinite(moment):
            raise CounterStoreError(f"the time {now!r} is not a finite number")
        keys: list[str] = []
        args: list[str] = [repr(moment), "1" if consume else "0"]
        for charge in charges:
            if isinstance(charge.amount, float) and not math.isfinite(charge.amount):
                raise CounterStoreError(f"{charge.kind} {charge.policy_id}: the amount {charge.amount!r} is not finite")
            keys.extend(self.keys(charge.key))
            window = str(int(charge.window_seconds))
            if charge.amount > charge.limit:  # decided here, exactly: the amount may be huge
                args.extend(("0", "0", window, "1"))
            else:
                args.extend(
                    (_number(charge.amount, "amount", charge), _number(charge.limit, "limit", charge), window, "0")
                )
        try:
            reply = self._script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise CounterStoreError(f"the counter store (Redis) did not answer: {exc}") from exc
        return _breach(charges, reply)


def _breach(charges: Sequence[Charge], reply: Any) -> LimitBreach | None:
    """The script's answer as a breach (or None)."""
    try:
        index = int(reply[0])
        if index == 0:
            return None
        text, is_int, retry = _text(reply[1]), int(reply[2]), int(reply[3])
        charge = charges[index - 1]
        used: int | float = int(text) if is_int else float(text)
    except (TypeError, ValueError, IndexError) as exc:
        raise CounterStoreError(f"the counter store gave an unexpected answer {reply!r}") from exc
    return LimitBreach(charge, used, None if retry < 0 else retry)

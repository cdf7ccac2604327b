"""Measure WebAssembly policy modules (``cra.sandbox.policy_module``) and print the figures as one JSON document.

Run it with::

    uv run python tools/bench_policy_module.py            # the full run
    uv run python tools/bench_policy_module.py --quick    # a few hundred calls, for CI smoke runs
    uv run python tools/bench_policy_module.py --seed 7 --out bench.json

Workloads, all on ``tests/fixtures/policy_modules/allow_small.wat`` unless said otherwise:

* ``policy-module-fast``: ``PolicyModule.evaluate`` on one ~250-byte request through the unchecked
  call path (the default), with the fuel each call used and an anchor (an empty Python call timed
  the same way) so the ratio survives a change of machine.
* ``policy-module-checked``: the same request through the public-API path (``checked=True``).
* ``policy-module-varied``: the fast path over requests of varying amounts and padding, so most
  answers differ and are judged afresh rather than found in the module's answer cache.
* ``policy-module-failure``: a call of ``trap.wat`` that traps, including the fresh instance every
  failure gets.
* ``policy-module-load``: ``PolicyModule.load`` from WAT text and from the wasm binary (compile,
  checks and the first instantiation).
* ``policy-module-fuel-rate``: how much fuel a millisecond burns in ``loop.wat``'s tight loop of
  plain instructions, under a deadline too long to matter; and so how long the most fuel a ``wasm``
  policy may set (``MAX_FUEL``) and the default (``DEFAULT_FUEL``) take here, against the longest
  and the default deadline. (Calls into the runtime, such as ``memory.grow``, burn fuel far more
  slowly: ``slow.wat``. The deadline, not fuel, bounds those.)
* ``policy-module-deadline``: ``loop.wat`` with the most fuel and the default deadline: how long a
  call takes to be denied (``deadline``), and how far past the deadline that is.
* ``policy-module-start-deadline``: loading a module whose start function loops, with the most
  fuel: how long until the load is refused.

The fast workload's anchors include the deadline machinery each call pays: entering and leaving
the epoch ticker, and setting the store's epoch deadline.

Latencies are wall-clock times of single calls taken with ``perf_counter_ns`` on either side, so
every sample also holds one timer read (``timer_overhead_p50_ns``). The garbage collector stays on.
Figures compare only between runs on the same machine; tests never assert them.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import wasmtime

from _bench import Target, attach_targets, call_anchors, emit, environment, latency_summary
from cra.errors import PolicyError
from cra.policy.modules import DEFAULT_DEADLINE_MS, DEFAULT_FUEL, MAX_DEADLINE_MS, MAX_FUEL
from cra.sandbox import policy_module
from cra.sandbox.policy_module import ModuleVerdict, PolicyModule
from cra.trace.event import format_timestamp

FORMAT: Final = "cra.bench_policy_module/1"
FIXTURES: Final = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "policy_modules"

#: The request of the fixed-request workloads: 250 bytes of compact JSON, its amount below 1000.
REQUEST: Final = json.dumps(
    {
        "action": "refund.create",
        "agent_id": "agent-042",
        "session_id": "01J9Z3V7Q8X4M2N6P5R1T0W9YB",
        "tenant": "acme-eu",
        "amount": 420,
        "currency": "EUR",
        "customer": "cus_8c1f2e7d",
        "roles": ["support", "finance-readonly"],
        "ticket": "TCK-2024-118734",
        "note": "duplicate charge",
    },
    separators=(",", ":"),
).encode()


@dataclass(frozen=True, slots=True)
class Counts:
    """How much work each workload does."""

    fast_calls: int
    warmup: int
    checked_calls: int
    varied_calls: int
    failure_calls: int
    loads: int
    anchor_calls: int
    rate_fuel: int
    rate_calls: int
    deadline_calls: int


FULL: Final = Counts(
    fast_calls=20_000,
    warmup=2_000,
    checked_calls=2_000,
    varied_calls=20_000,
    failure_calls=500,
    loads=20,
    anchor_calls=20_000,
    rate_fuel=MAX_FUEL,
    rate_calls=5,
    deadline_calls=10,
)
QUICK: Final = Counts(
    fast_calls=500,
    warmup=100,
    checked_calls=200,
    varied_calls=500,
    failure_calls=50,
    loads=5,
    anchor_calls=500,
    rate_fuel=MAX_FUEL // 10,
    rate_calls=2,
    deadline_calls=3,
)

TARGETS: Final[dict[str, dict[str, Target]]] = {
    "policy-module-fast": {"p50_us": Target(15.0)},
    # The most fuel must run out within the longest deadline, even at the slowest rate seen.
    "policy-module-fuel-rate": {"max_fuel_ms_at_slowest": Target(MAX_DEADLINE_MS)},
    "policy-module-deadline": {"overshoot_ms_p50": Target(10.0)},
}
#: A deadline too long to matter, for measuring how fast fuel burns.
_NO_DEADLINE_MS: Final = 3_600_000


def time_calls(
    call: Callable[[bytes], ModuleVerdict], requests: Sequence[bytes], warmup: int
) -> tuple[list[int], list[ModuleVerdict]]:
    """Nanoseconds of each call, one call at a time, after ``warmup`` untimed calls."""
    clock = time.perf_counter_ns
    for k in range(warmup):
        call(requests[k % len(requests)])
    gc.collect()
    samples: list[int] = []
    verdicts: list[ModuleVerdict] = []
    for request in requests:
        t0 = clock()
        verdict = call(request)
        t1 = clock()
        samples.append(t1 - t0)
        verdicts.append(verdict)
    return samples, verdicts


def fuel_summary(verdicts: Sequence[ModuleVerdict]) -> dict[str, Any]:
    fuel = [v.fuel_used for v in verdicts]
    return {"min": min(fuel), "median": statistics.median(fuel), "max": max(fuel), "distinct": len(set(fuel))}


def bench_fixed(module: PolicyModule, n: int, warmup: int, description: str) -> dict[str, Any]:
    samples, verdicts = time_calls(module.evaluate, [REQUEST] * n, warmup)
    latency = latency_summary(samples)
    first = verdicts[0]
    if any(v != first for v in verdicts):
        raise RuntimeError("the same request gave different verdicts or fuel")
    return {
        "description": description,
        "request_bytes": len(REQUEST),
        "calls": n,
        "warmup": warmup,
        "latency_us": latency,
        "ops_per_second": round(1e6 / latency["mean"]),
        "fuel_per_call": first.fuel_used,
        "verdict": {"allow": first.allow, "reason": first.reason, "failure": first.failure},
    }


def varied_requests(rng: random.Random, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        doc = json.loads(REQUEST)
        doc["amount"] = rng.randint(0, 2000)
        doc["note"] = "x" * rng.randint(0, 40)
        if rng.random() < 0.1:
            doc["action"] = "refund.small"
        out.append(json.dumps(doc, separators=(",", ":")).encode())
    return out


def bench_varied(module: PolicyModule, counts: Counts, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    requests = varied_requests(rng, counts.varied_calls)
    samples, verdicts = time_calls(module.evaluate, requests, counts.warmup)
    failures = [v for v in verdicts if v.failure is not None]
    if failures:
        raise RuntimeError(f"allow_small failed on a varied request: {failures[0]}")
    return {
        "description": "PolicyModule.evaluate over requests whose amount (0..2000) and padding vary, "
        "so most answers are new to the answer cache",
        "calls": len(requests),
        "request_bytes": {"min": min(map(len, requests)), "max": max(map(len, requests))},
        "latency_us": latency_summary(samples),
        "fuel": fuel_summary(verdicts),
        "decision_mix": dict(sorted(Counter("allow" if v.allow else "deny" for v in verdicts).items())),
        "distinct_answers": len({(v.allow, v.reason) for v in verdicts}),
    }


def bench_failure(counts: Counts) -> dict[str, Any]:
    module = PolicyModule.load((FIXTURES / "trap.wat").read_text(encoding="utf-8"))
    samples, verdicts = time_calls(module.evaluate, [b"[1]"] * counts.failure_calls, min(counts.warmup, 20))
    if any(v.failure != "trap" for v in verdicts):
        raise RuntimeError(f"trap.wat did not trap: {verdicts[0]}")
    return {
        "description": "PolicyModule.evaluate of trap.wat on a request that makes it trap: the deny, "
        "and the fresh store and instance that replace the trapped one",
        "calls": len(samples),
        "latency_us": latency_summary(samples),
        "fuel_per_call": verdicts[0].fuel_used,
        "reason": verdicts[0].reason,
    }


def bench_load(source: str, counts: Counts) -> dict[str, Any]:
    binary = bytes(wasmtime.wat2wasm(source))
    clock = time.perf_counter_ns
    result: dict[str, Any] = {
        "description": "PolicyModule.load: compile (Cranelift), interface checks and the first instantiation",
        "loads": counts.loads,
        "binary_bytes": len(binary),
    }
    for name, given in (("from_wat", source), ("from_binary", binary)):
        samples = []
        for _ in range(counts.loads):
            t0 = clock()
            PolicyModule.load(given)
            samples.append(clock() - t0)
        ordered = sorted(samples)
        result[name] = {
            "p50_ms": round(ordered[len(ordered) // 2] / 1e6, 3),
            "min_ms": round(ordered[0] / 1e6, 3),
            "max_ms": round(ordered[-1] / 1e6, 3),
        }
    return result


def _loop_source() -> str:
    return (FIXTURES / "loop.wat").read_text(encoding="utf-8")


def bench_fuel_rate(counts: Counts) -> dict[str, Any]:
    module = PolicyModule.load(_loop_source(), fuel=counts.rate_fuel, deadline_ms=_NO_DEADLINE_MS)
    rates = []
    for _ in range(counts.rate_calls):
        t0 = time.perf_counter_ns()
        verdict = module.evaluate(b"[1]")
        elapsed = time.perf_counter_ns() - t0
        if verdict.failure != "out_of_fuel":
            raise RuntimeError(f"loop.wat did not run out of fuel: {verdict}")
        rates.append(verdict.fuel_used / (elapsed / 1e6))
    slowest = min(rates)
    return {
        "description": "loop.wat's tight loop ((loop (br 0)), one unit of fuel an iteration) run out of fuel, "
        "under a deadline too long to matter: fuel burnt per millisecond",
        "fuel_per_call": counts.rate_fuel,
        "calls": counts.rate_calls,
        "fuel_per_ms": {"min": round(slowest), "median": round(statistics.median(rates)), "max": round(max(rates))},
        "max_fuel": MAX_FUEL,
        "max_deadline_ms": MAX_DEADLINE_MS,
        "max_fuel_ms_at_slowest": round(MAX_FUEL / slowest, 1),
        "max_deadline_over_max_fuel_ms": round(MAX_DEADLINE_MS / (MAX_FUEL / slowest), 2),
        "default_fuel": DEFAULT_FUEL,
        "default_deadline_ms": DEFAULT_DEADLINE_MS,
        "default_fuel_ms_at_slowest": round(DEFAULT_FUEL / slowest, 2),
    }


def bench_deadline(counts: Counts) -> dict[str, Any]:
    module = PolicyModule.load(_loop_source(), fuel=MAX_FUEL)
    samples = []
    reason = ""
    for _ in range(counts.deadline_calls):
        t0 = time.perf_counter_ns()
        verdict = module.evaluate(b"[1]")
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        if verdict.failure != "deadline":
            raise RuntimeError(f"loop.wat with the most fuel was not stopped by its deadline: {verdict}")
        reason = verdict.reason
    ordered = sorted(samples)
    median = statistics.median(ordered)
    return {
        "description": f"loop.wat with fuel {MAX_FUEL} and the default deadline: wall-clock time until the call "
        "is denied, including the fresh instance that replaces the stopped one",
        "calls": len(samples),
        "deadline_ms": DEFAULT_DEADLINE_MS,
        "denied_after_ms": {"min": round(ordered[0], 2), "median": round(median, 2), "max": round(ordered[-1], 2)},
        "overshoot_ms_p50": round(median - DEFAULT_DEADLINE_MS, 2),
        "reason": reason,
    }


def bench_start_deadline(counts: Counts) -> dict[str, Any]:
    source = _loop_source().replace("(module", "(module (func $spin (loop $l (br $l))) (start $spin)", 1)
    samples = []
    message = ""
    for _ in range(counts.rate_calls):
        t0 = time.perf_counter_ns()
        try:
            PolicyModule.load(source, fuel=MAX_FUEL)
        except PolicyError as exc:
            message = exc.reason
        else:
            raise RuntimeError("a module whose start function loops was loaded")
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        if "deadline" not in message:
            raise RuntimeError(f"the looping start function was not stopped by the deadline: {message}")
    return {
        "description": f"PolicyModule.load of a module whose start function loops, fuel {MAX_FUEL}: "
        "wall-clock time until the load is refused (compile included)",
        "loads": len(samples),
        "deadline_ms": DEFAULT_DEADLINE_MS,
        "refused_after_ms": {"min": round(min(samples), 2), "max": round(max(samples), 2)},
        "message": message,
    }


def _deadline_machinery(module: PolicyModule) -> dict[str, Callable[[], object]]:
    """What each call pays for its deadline, as separate operations (the private pieces, on purpose)."""
    ticker = policy_module._ticker
    instance = module._instance
    assert isinstance(instance, policy_module._FastInstance)
    ctx = instance.ctx
    set_deadline = policy_module._set_deadline

    def bracket() -> None:
        ticker.enter()
        ticker.leave()

    return {"ticker_enter_leave": bracket, "set_epoch_deadline": lambda: set_deadline(ctx, 51)}


def run(counts: Counts, seed: int, mode: str) -> dict[str, Any]:
    started = datetime.now(UTC)
    wall = time.perf_counter()
    source = (FIXTURES / "allow_small.wat").read_text(encoding="utf-8")
    fast = PolicyModule.load(source)
    checked = PolicyModule.load(source, checked=True)
    if fast.evaluate(REQUEST) != checked.evaluate(REQUEST):
        raise RuntimeError("the fast and checked paths disagree on the benchmark request")

    fast_result = bench_fixed(
        fast, counts.fast_calls, counts.warmup, "PolicyModule.evaluate(request) on the unchecked fast path"
    )
    anchors = call_anchors(counts.anchor_calls, timed_like="PolicyModule.evaluate", **_deadline_machinery(fast))
    anchors["evaluate_p50_over_empty_call"] = round(
        fast_result["latency_us"]["p50"] * 1000 / anchors["empty_call_p50_ns"], 1
    )
    fast_result["anchors"] = anchors
    checked_result = bench_fixed(
        checked,
        counts.checked_calls,
        min(counts.warmup, counts.checked_calls),
        "PolicyModule.evaluate(request) with checked=True: Func.__call__, Memory.read/write",
    )
    checked_result["p50_over_fast_p50"] = round(
        checked_result["latency_us"]["p50"] / fast_result["latency_us"]["p50"], 1
    )

    workloads: dict[str, dict[str, Any]] = {
        "policy-module-fast": fast_result,
        "policy-module-checked": checked_result,
        "policy-module-varied": bench_varied(fast, counts, seed),
        "policy-module-failure": bench_failure(counts),
        "policy-module-load": bench_load(source, counts),
        "policy-module-fuel-rate": bench_fuel_rate(counts),
        "policy-module-deadline": bench_deadline(counts),
        "policy-module-start-deadline": bench_start_deadline(counts),
    }
    summary = attach_targets(workloads, TARGETS)
    return {
        "format": FORMAT,
        "mode": mode,
        "seed": seed,
        "started_at": format_timestamp(started),
        "duration_seconds": round(time.perf_counter() - wall, 2),
        "environment": environment(wasmtime=metadata.version("wasmtime"), module_sha256=fast.sha256),
        "workloads": workloads,
        "summary": summary,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark WebAssembly policy modules; print JSON.")
    parser.add_argument("--quick", action="store_true", help="a few hundred calls, for CI smoke runs")
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the varied-request generator (default 1234)")
    args = parser.parse_args(argv)

    report = run(QUICK if args.quick else FULL, args.seed, "quick" if args.quick else "full")
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

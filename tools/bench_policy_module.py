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


FULL: Final = Counts(
    fast_calls=20_000,
    warmup=2_000,
    checked_calls=2_000,
    varied_calls=20_000,
    failure_calls=500,
    loads=20,
    anchor_calls=20_000,
)
QUICK: Final = Counts(
    fast_calls=500,
    warmup=100,
    checked_calls=200,
    varied_calls=500,
    failure_calls=50,
    loads=5,
    anchor_calls=500,
)

TARGETS: Final[dict[str, dict[str, Target]]] = {
    "policy-module-fast": {"p50_us": Target(15.0)},
}


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
    anchors = call_anchors(counts.anchor_calls, timed_like="PolicyModule.evaluate")
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

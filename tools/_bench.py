"""What the benchmarks in ``tools/`` share: percentiles, targets, the environment and the report."""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cra


@dataclass(frozen=True, slots=True)
class Target:
    """A bound one figure should meet: at most ``bound``, or at least it if ``higher_is_better``."""

    bound: float
    higher_is_better: bool = False

    def judge(self, value: float) -> dict[str, Any]:
        met = value >= self.bound if self.higher_is_better else value <= self.bound
        return {
            "value": value,
            "target": f"{'>=' if self.higher_is_better else '<='} {self.bound:g}",
            "meets_target": met,
        }


def rank(ordered: Sequence[int], percent: float) -> int:
    """Nearest-rank percentile of sorted samples."""
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def p50_ns(samples_ns: Sequence[int]) -> float:
    return float(rank(sorted(samples_ns), 50))


def latency_summary(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50, p95, p99, mean, min and max of nanosecond samples, in microseconds."""
    ordered = sorted(samples_ns)
    return {
        "p50": round(rank(ordered, 50) / 1000, 3),
        "p95": round(rank(ordered, 95) / 1000, 3),
        "p99": round(rank(ordered, 99) / 1000, 3),
        "mean": round(statistics.fmean(ordered) / 1000, 3),
        "min": round(ordered[0] / 1000, 3),
        "max": round(ordered[-1] / 1000, 3),
    }


def _empty() -> None:
    return None


def call_anchors(n: int, *, timed_like: str, **operations: Callable[[], object]) -> dict[str, Any]:
    """The named anchors of a run: the p50 of a timer read, of an empty Python call and of each
    extra operation, each timed one call at a time exactly as the workloads are."""
    clock = time.perf_counter_ns
    gc.collect()
    timer: list[int] = []
    for _ in range(n):
        t0 = clock()
        t1 = clock()
        timer.append(t1 - t0)
    out: dict[str, Any] = {
        "method": f"p50 of single operations, each timed like {timed_like} (one timer read included)",
        "timer_overhead_p50_ns": p50_ns(timer),
    }
    for name, operation in {"empty_call": _empty, **operations}.items():
        samples: list[int] = []
        for _ in range(n):
            t0 = clock()
            operation()
            t1 = clock()
            samples.append(t1 - t0)
        out[f"{name}_p50_ns"] = p50_ns(samples)
    return out


def environment(**extra: Any) -> dict[str, Any]:
    """The machine and interpreter the figures were taken on."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "cpus_available": affinity,
        "perf_counter_resolution_ns": time.get_clock_info("perf_counter").resolution * 1e9,
        "gc_enabled": gc.isenabled(),
        "cra_version": cra.__version__,
        **extra,
    }


def _figure(workload: Mapping[str, Any], metric: str) -> float:
    """The value a target refers to: ``p50_us`` reads ``latency_us.p50``, anything else a top-level figure."""
    if metric.endswith("_us"):
        return float(workload["latency_us"][metric.removesuffix("_us")])
    return float(workload[metric])


def attach_targets(workloads: dict[str, dict[str, Any]], targets: Mapping[str, Mapping[str, Target]]) -> dict[str, Any]:
    """Put each workload's targets next to its figures; return the overall summary."""
    missed: list[str] = []
    total = 0
    for name, bounds in targets.items():
        judged = {metric: target.judge(_figure(workloads[name], metric)) for metric, target in bounds.items()}
        workloads[name]["targets"] = judged
        total += len(judged)
        missed.extend(f"{name}.{metric}" for metric, verdict in judged.items() if not verdict["meets_target"])
    return {"targets": total, "met": total - len(missed), "missed": missed, "all_targets_met": not missed}


def emit(report: Mapping[str, Any], out: Path | None) -> None:
    """Print the report as JSON, and also write it to ``out`` when given."""
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")

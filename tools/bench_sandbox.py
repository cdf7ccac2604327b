"""Measure the WebAssembly sandbox and print the figures as one JSON document.

Run it with::

    uv run python tools/bench_sandbox.py            # the full run (includes a cold build)
    uv run python tools/bench_sandbox.py --quick    # smaller counts, no cold build, for CI smoke runs
    uv run python tools/bench_sandbox.py --no-cold --out bench-sandbox.json

Workloads:

* ``warm-start``: from a compiled component already loaded in the process to
  the guest's first instruction: a new store with its limits and WASI
  configuration, and the instantiation of the snapshot.
* ``run-pass``: ``WasmSandbox.run`` of ``pass`` end to end: scratch directory,
  instantiation, the call, reading outputs back, cleanup.
* ``sum-range``: ``print(sum(range(10**6)))`` end to end, with the fuel it used.
* ``cold-build``: componentize-py and wasmtime compiling the guest into an
  empty cache directory, then loading the compiled artifact.

Anchors measured in the same run: starting a native ``python -S -c pass``
process, and ``sum(range(10**6))`` in this interpreter. The ratios to them
survive a change of machine; the absolute figures do not.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import wasmtime

from _bench import Target, attach_targets, emit, environment, latency_summary, p50_ns
from cra.runtime.code import CodeRun, Limits
from cra.sandbox import WasmSandbox
from cra.sandbox.wasm import _Lane

FORMAT: Final = "cra.bench_sandbox/1"
TARGETS: Final = {
    "warm-start": {"p50_us": Target(10_000.0)},
    "run-pass": {"p50_us": Target(30_000.0)},
}


def _samples(fn: Callable[[], object], n: int) -> list[int]:
    out: list[int] = []
    for _ in range(n):
        started = time.perf_counter_ns()
        fn()
        out.append(time.perf_counter_ns() - started)
    return out


def _warm_start(artifact: Path) -> Callable[[], object]:
    """What ``WasmSandbox._execute`` does before the guest's first instruction, on a lane of its own
    (a private part of the sandbox, used read-only)."""
    lane = _Lane(artifact, tick=0.01)
    engine, linker, component = lane.engine, lane.linker, lane.component
    scratch = tempfile.mkdtemp(prefix="cra-bench-")

    def start() -> object:
        store = wasmtime.Store(engine)
        store.set_fuel(10**9)
        store.set_limits(memory_size=256 << 20)
        wasi = wasmtime.WasiConfig()
        wasi.argv = ["main.py"]
        wasi.preopen_dir(scratch, "/work", True)
        store.set_wasi(wasi)
        store.set_epoch_deadline(1000)
        return linker.instantiate(store, component)

    return start


def run(*, iterations: int, heavy: int, cold: bool, mode: str) -> dict[str, Any]:
    sandbox = WasmSandbox()
    loaded_at = time.perf_counter()
    artifact = sandbox.prepare()
    load_ms = (time.perf_counter() - loaded_at) * 1000
    workloads: dict[str, dict[str, Any]] = {}

    start = _warm_start(artifact.path)
    start()
    workloads["warm-start"] = {"iterations": iterations, "latency_us": latency_summary(_samples(start, iterations))}

    passing = CodeRun("pass")
    sandbox.run(passing)
    pass_ns = _samples(lambda: sandbox.run(passing), iterations)
    workloads["run-pass"] = {"iterations": iterations, "latency_us": latency_summary(pass_ns)}

    process_ns = _samples(
        lambda: subprocess.run([sys.executable, "-S", "-c", "pass"], check=True),
        max(5, iterations // 4),
    )
    workloads["run-pass"]["anchor_native_process_start_us"] = round(p50_ns(process_ns) / 1000, 3)
    workloads["run-pass"]["ratio_to_native_process_start"] = round(p50_ns(pass_ns) / p50_ns(process_ns), 3)

    summing = CodeRun("print(sum(range(10**6)))", limits=Limits(timeout_s=60))
    first = sandbox.run(summing)
    assert first.ok, first.stderr
    sum_ns = _samples(lambda: sandbox.run(summing), heavy)
    native_ns = _samples(lambda: sum(range(10**6)), heavy)
    workloads["sum-range"] = {
        "iterations": heavy,
        "latency_us": latency_summary(sum_ns),
        "fuel_used": first.fuel_used,
        "anchor_native_sum_us": round(p50_ns(native_ns) / 1000, 3),
        "ratio_to_native": round(p50_ns(sum_ns) / p50_ns(native_ns), 1),
    }

    if cold:
        with tempfile.TemporaryDirectory(prefix="cra-bench-cache-") as cache:
            fresh = WasmSandbox(Path(cache))
            started = time.perf_counter()
            built = fresh.prepare()
            total = time.perf_counter() - started
            workloads["cold-build"] = {
                "componentize_s": round(built.build_s, 2),
                "compile_s": round(built.compile_s, 2),
                "total_s": round(total, 2),
            }

    summary = attach_targets(workloads, TARGETS)
    return {
        "format": FORMAT,
        "mode": mode,
        "environment": environment(wasmtime=metadata.version("wasmtime")),
        "artifact": {
            "key": artifact.key,
            "compiled_bytes": artifact.path.stat().st_size,
            "load_ms": round(load_ms, 2),
        },
        "workloads": workloads,
        "summary": summary,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the WebAssembly sandbox; print JSON.")
    parser.add_argument("--quick", action="store_true", help="smaller counts and no cold build, for CI smoke runs")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold build (about half a minute)")
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    args = parser.parse_args(argv)
    if args.quick:
        report = run(iterations=20, heavy=3, cold=False, mode="quick")
    else:
        report = run(iterations=200, heavy=15, cold=not args.no_cold, mode="full")
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

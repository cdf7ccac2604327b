"""Measure the CRA HTTP service end to end with ``wrk`` and print the figures as one JSON document.

Run it with::

    uv run python tools/bench_service.py            # 10 s per scenario after a 2 s warm-up
    uv run python tools/bench_service.py --quick    # 2 s per scenario, no warm-up, for smoke runs
    uv run python tools/bench_service.py --out bench-service.json

It needs ``wrk`` on the PATH (Debian: ``apt-get install wrk``) and installs nothing.
It starts ``cra serve`` itself (``python -m cra serve``: one process, one worker) on
a free port of 127.0.0.1 with a throwaway data directory, ``--key-rate 0`` and
``--log-level warning``, waits for ``/v1/health``, creates an agent key with
``cra apikey create`` (tenant ``default``, agent ``support-bot``, policy role
``agent``; the demo atlases are loaded on first start) and stops the server at the
end (SIGTERM, then SIGKILL after a timeout).

Scenarios, each measured by ``wrk`` with ``tools/bench_service.lua``:

* ``health`` (the anchor): ``GET /v1/health``, no authentication and no database.
* ``evaluate``: ``POST /v1/evaluate`` of an allowed call (``order.lookup`` with
  ``{"order_id": "42"}`` for ``support-bot``).
* ``resolve``: ``POST /v1/resolve``, a CARP/1.0 request on one session; every request
  has its own request id and a timestamp from the load generator's clock.

The ratios ``evaluate/health`` and ``resolve/health`` (throughput and p50) compare
each route with the cheapest request the same server answers in the same run, so they
survive a change of machine better than the absolute figures. ``wrk`` runs on the same
machine as the server and competes with it for the CPU; ``cpu_seconds`` reports what
each side used. ``wrk`` keeps a fixed number of connections busy (a closed loop), so
latencies are those of a saturated server, not of a server at a given arrival rate.
Figures are comparable only between runs on the same machine; tests never assert them
(DESIGN §7, "measure, don't time-test").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from _bench import Target, emit, environment
from cra.trace.event import format_timestamp

FORMAT: Final = "cra.bench_service/1"
HOST: Final = "127.0.0.1"
LUA: Final = Path(__file__).with_name("bench_service.lua")
TENANT: Final = "default"
AGENT: Final = "support-bot"
POLICY_ROLE: Final = "agent"
ATLAS_ID: Final = "com.cra.examples.customer-support"
EVALUATE_BODY: Final = {"action": "order.lookup", "agent": AGENT, "params": {"order_id": "42"}}
STARTUP_SECONDS: Final = 60.0
STOP_SECONDS: Final = 10.0
SCENARIOS: Final = ("health", "evaluate", "resolve")
ANCHOR: Final = "health"


@dataclass(frozen=True, slots=True)
class Load:
    """How hard and how long ``wrk`` drives each scenario."""

    threads: int
    connections: int
    duration_s: int
    warmup_s: int
    timeout_s: int = 5


FULL: Final = Load(threads=2, connections=16, duration_s=10, warmup_s=2)
QUICK: Final = Load(threads=2, connections=16, duration_s=2, warmup_s=0)

# From the service issue: one worker answers >= 3000 evaluate requests/s with p99 <= 10 ms.
TARGETS: Final[dict[str, dict[str, Target]]] = {
    "evaluate": {"requests_per_second": Target(3000, higher_is_better=True), "p99_ms": Target(10.0)},
}


class BenchError(RuntimeError):
    """The benchmark could not run (no wrk, a server that does not start, a failing request)."""


# -- the server ----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _cra(*args: str) -> list[str]:
    return [sys.executable, "-m", "cra", *args]


class Server:
    """``cra serve`` in a subprocess, its output in files of the data directory (stdout holds the admin key)."""

    def __init__(self, data_dir: Path, logs: Path, workers: int = 1, sealing: str = "background") -> None:
        self.workers = workers
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self._stdout = (logs / "serve.stdout").open("w")
        self._stderr_path = logs / "serve.stderr"
        self._stderr = self._stderr_path.open("w")
        command = _cra(
            "serve",
            "--data-dir",
            str(data_dir),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--key-rate",
            "0",
            "--log-level",
            "warning",
            "--workers",
            str(workers),
            "--sealing",
            sealing,
            "--no-sandbox",  # code.execute is not measured; a first-use build would skew every figure
        )
        self.process = subprocess.Popen(  # noqa: S603 - the project's own command line
            command, stdout=self._stdout, stderr=self._stderr, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )

    def log_tail(self, lines: int = 30) -> str:
        self._stderr.flush()
        text = self._stderr_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_healthy(self, timeout: float = STARTUP_SECONDS) -> float:
        """Seconds until ``/v1/health`` answered 200; :class:`BenchError` if it does not in ``timeout``."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                raise BenchError(f"cra serve exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v1/health", timeout=2) as r:  # noqa: S310 - loopback
                    if r.status == 200:
                        return time.monotonic() - start
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise BenchError(f"cra serve did not answer /v1/health within {timeout:g} s:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server and its worker processes have used so far (Linux /proc)."""
        total = 0.0
        for pid in [self.process.pid, *self._workers()]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                return float("nan")
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def _workers(self) -> list[int]:
        """The pids of the server's direct children (uvicorn's worker processes)."""
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                children.append(int(stat.parent.name))
        return children

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_SECONDS)
        self._stdout.close()
        self._stderr.close()
        return self.process.returncode


def create_agent_key(data_dir: Path) -> str:
    command = _cra(
        "apikey",
        "create",
        "--tenant",
        TENANT,
        "--role",
        "agent",
        "--agent",
        AGENT,
        "--policy-role",
        POLICY_ROLE,
        "--label",
        "bench_service",
        "--data-dir",
        str(data_dir),
        "--json",
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603
    if done.returncode != 0:
        raise BenchError(f"cra apikey create failed ({done.returncode}):\n{done.stderr}{done.stdout}")
    key: str = json.loads(done.stdout)["key"]
    return key


def call(url: str, key: str, body: Mapping[str, Any]) -> tuple[int, Any]:
    """One JSON POST; the status and the decoded body."""
    request = urllib.request.Request(  # noqa: S310 - loopback
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-API-Key": key},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", errors="replace")


def prepare(server: Server, key: str) -> dict[str, Any]:
    """Open the session ``resolve`` runs on, and check each scenario's request once before timing it."""
    status, evaluated = call(f"{server.url}/v1/evaluate", key, EVALUATE_BODY)
    if status != 200 or evaluated.get("decision") != "allow":
        raise BenchError(f"the evaluate request is not an allowed call: {status} {evaluated}")
    status, session = call(
        f"{server.url}/v1/sessions", key, {"agent_id": AGENT, "goal": "Benchmark session", "atlas_id": ATLAS_ID}
    )
    if status != 201:
        raise BenchError(f"could not open a session: {status} {session}")
    session_id: str = session["session_id"]
    probe = {
        "carp_version": "1.0",
        "request_id": f"{secrets.token_hex(4)}-0000-7000-8000-000000000000",
        "timestamp": format_timestamp(datetime.now(UTC)),
        "operation": "resolve",
        "requester": {"agent_id": AGENT, "session_id": session_id},
        "task": {"goal": "Look up order 42 and answer the customer", "risk_tier": "low"},
    }
    status, resolution = call(f"{server.url}/v1/resolve", key, probe)
    if status != 200:
        raise BenchError(f"the resolve request failed: {status} {resolution}")
    return {
        "session_id": session_id,
        "evaluate_response": evaluated,
        "resolve_decision": resolution["decision"]["type"],
        "resolve_allowed_actions": sorted(a["action_id"] for a in resolution["allowed_actions"]),
        "resolve_response_bytes": len(json.dumps(resolution)),
    }


# -- wrk -----------------------------------------------------------------------------------------------------------


def wrk_version(wrk: str) -> str:
    done = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)  # noqa: S603
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0] if first else "unknown"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(wrk: str, server: Server, load: Load, seconds: int, mode: str, key: str, session_id: str) -> dict[str, Any]:
    """One ``wrk`` run of a scenario; its JSON line, with the CPU both sides used."""
    salt = secrets.token_hex(4)  # request ids are unique per run, so a warm-up never collides
    command = [
        wrk,
        f"--threads={load.threads}",
        f"--connections={load.connections}",
        f"--duration={seconds}s",
        f"--timeout={load.timeout_s}s",
        f"--script={LUA}",
        f"{server.url}/",
        "--",
        mode,
        salt,
        key,
        AGENT,
        session_id,
    ]
    server_cpu, client_cpu = server.cpu_seconds(), _children_cpu()
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)  # noqa: S603
    server_cpu, client_cpu = server.cpu_seconds() - server_cpu, _children_cpu() - client_cpu
    if server.process.poll() is not None:
        raise BenchError(f"cra serve exited during {mode}:\n{server.log_tail()}")
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed on {mode} ({done.returncode}):\n{done.stderr}{done.stdout}")
    figures: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    figures["cpu_seconds"] = {"server": round(server_cpu, 3), "wrk": round(client_cpu, 3)}
    return figures


def _ms(us: float) -> float:
    return round(us / 1000, 3)


def scenario(raw: Mapping[str, Any], description: str, load: Load) -> dict[str, Any]:
    seconds = raw["duration_us"] / 1e6
    requests = raw["requests"]
    lat = raw["latency_us"]
    sock = raw["socket_errors"]
    cpu = raw["cpu_seconds"]
    return {
        "description": description,
        "requests": requests,
        "duration_s": round(seconds, 3),
        "requests_per_second": round(requests / seconds, 1),
        "latency_ms": {
            "p50": _ms(lat["p50"]),
            "p90": _ms(lat["p90"]),
            "p99": _ms(lat["p99"]),
            "p99_9": _ms(lat["p99_9"]),
            "mean": _ms(lat["mean"]),
            "stdev": _ms(lat["stdev"]),
            "max": _ms(lat["max"]),
        },
        "non_2xx": raw["non_2xx"],
        "first_non_2xx": raw["first_non_2xx"],
        "socket_errors": sock,
        "errors": raw["non_2xx"] + sum(sock.values()),
        "bytes_per_response": round(raw["bytes"] / requests) if requests else None,
        "cpu_seconds": cpu,
        "server_cpu_ms_per_request": round(cpu["server"] * 1000 / requests, 4) if requests else None,
        "server_cpu_utilization": round(cpu["server"] / seconds, 3) if seconds else None,
        "warmup_s": load.warmup_s,
    }


DESCRIPTIONS: Final = {
    "health": "GET /v1/health: no authentication, no body, no database (the anchor)",
    "evaluate": "POST /v1/evaluate {action: order.lookup, agent: support-bot, params: {order_id: '42'}}, "
    "an allowed call, with an agent key",
    "resolve": "POST /v1/resolve, a CARP/1.0 resolve on one session of the customer-support atlas; "
    "unique request ids, timestamps from os.time()",
}


def judge(workloads: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Put each target next to its figure (``p99_ms`` reads ``latency_ms.p99``); return the summary."""
    missed: list[str] = []
    total = 0
    for name, bounds in TARGETS.items():
        figures = workloads[name]
        verdicts = {}
        for metric, target in bounds.items():
            value = figures["latency_ms"][metric.removesuffix("_ms")] if metric.endswith("_ms") else figures[metric]
            verdicts[metric] = target.judge(float(value))
            total += 1
            if not verdicts[metric]["meets_target"]:
                missed.append(f"{name}.{metric}")
        figures["targets"] = verdicts
    return {
        "targets": total,
        "met": total - len(missed),
        "missed": missed,
        "all_targets_met": not missed,
        "per": "worker (one cra serve process)",
    }


def ratios(workloads: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    anchor = workloads[ANCHOR]
    out: dict[str, Any] = {"anchor": ANCHOR}
    for name in SCENARIOS:
        if name == ANCHOR:
            continue
        w = workloads[name]
        out[f"{name}/{ANCHOR}"] = {
            "throughput": round(w["requests_per_second"] / anchor["requests_per_second"], 3),
            "p50_latency": round(w["latency_ms"]["p50"] / anchor["latency_ms"]["p50"], 2),
        }
    return out


# -- the report ----------------------------------------------------------------------------------------------------


def run(wrk: str, load: Load, mode: str, workers: int = 1, sealing: str = "background") -> dict[str, Any]:
    started = datetime.now(UTC)
    wall = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cra-bench-service-") as tmp:
        data_dir = Path(tmp) / "data"
        logs = Path(tmp)
        server = Server(data_dir, logs, workers, sealing)
        try:
            startup = server.wait_healthy()
            key = create_agent_key(data_dir)
            setup = prepare(server, key)
            workloads: dict[str, dict[str, Any]] = {}
            for name in SCENARIOS:
                if load.warmup_s:
                    run_wrk(wrk, server, load, load.warmup_s, name, key, setup["session_id"])
                raw = run_wrk(wrk, server, load, load.duration_s, name, key, setup["session_id"])
                workloads[name] = scenario(raw, DESCRIPTIONS[name], load)
        finally:
            exit_code = server.stop()
    summary = judge(workloads)
    return {
        "format": FORMAT,
        "mode": mode,
        "started_at": format_timestamp(started),
        "duration_seconds": round(time.perf_counter() - wall, 2),
        "environment": environment(
            nproc=len(os.sched_getaffinity(0)),
            load_average_before=[round(x, 2) for x in load_before],
            wrk_version=wrk_version(wrk),
        ),
        "server": {
            "command": "python -m cra serve --key-rate 0 --log-level warning (demo atlases, SQLite in a temp dir)",
            "host": HOST,
            "workers": workers,
            "sealing": sealing,
            "startup_seconds": round(startup, 2),
            "exit_code": exit_code,
        },
        "load": {**asdict(load), "tool": "wrk", "script": LUA.name},
        "setup": {k: v for k, v in setup.items() if k != "session_id"},
        "workloads": workloads,
        "ratios": ratios(workloads),
        "summary": summary,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the CRA HTTP service with wrk; print JSON.")
    parser.add_argument("--quick", action="store_true", help="2 s per scenario and no warm-up, for smoke runs")
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    parser.add_argument("--threads", type=int, help="wrk threads (default 2)")
    parser.add_argument("--workers", type=int, default=1, help="cra serve worker processes (default 1)")
    parser.add_argument(
        "--sealing",
        choices=("background", "answer"),
        default="background",
        help="cra serve --sealing (default background)",
    )
    parser.add_argument("--connections", type=int, help="open connections (default 16)")
    parser.add_argument("--duration", type=int, help="seconds per scenario (default 10; 2 with --quick)")
    parser.add_argument(
        "--warmup", type=int, help="seconds of warm-up before each scenario (default 2; 0 with --quick)"
    )
    args = parser.parse_args(argv)

    wrk = shutil.which("wrk")
    if wrk is None:
        print(
            "bench_service: wrk is not installed; install it first (Debian/Ubuntu: apt-get install wrk)",
            file=sys.stderr,
        )
        return 2
    if not LUA.is_file():
        print(f"bench_service: the wrk script {LUA} is missing", file=sys.stderr)
        return 2

    base = QUICK if args.quick else FULL
    load = Load(
        threads=args.threads or base.threads,
        connections=args.connections or base.connections,
        duration_s=args.duration or base.duration_s,
        warmup_s=base.warmup_s if args.warmup is None else args.warmup,
    )
    if load.connections < load.threads:
        parser.error("--connections must be at least --threads")
    try:
        report = run(wrk, load, "quick" if args.quick else "full", args.workers, args.sealing)
    except BenchError as exc:
        print(f"bench_service: {exc}", file=sys.stderr)
        return 1
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The chaos stress run (issue #12): load ``cra serve --workers 2`` from several tenants while workers are killed.

Run it with::

    uv run python tools/chaos.py --seconds 45 --json     # what CI runs (.ci/run, stage "chaos")
    uv run python tools/chaos.py --seconds 15            # a short run with a summary in words
    uv run python tools/chaos.py --seconds 30 --workdir /tmp/chaos   # keep the data dir and logs to look at

It installs nothing and needs no service. It starts ``cra serve --workers 2`` (the interpreter itself,
``python -m cra serve``) on a free port of 127.0.0.1 with a data directory of its own (the embedded
default: state and ledger in SQLite files there), ``--key-rate 0``, ``--no-demo`` and ``--log-level info``
(uvicorn's supervisor says there when a worker died and when one is ready). The server's ``TMPDIR`` is a
folder of its own: ``cra serve`` has no option for the sandbox's scratch parent, and the sandbox makes each
run's scratch directory (``cra-sandbox-*``) with :func:`tempfile.mkdtemp` under the temporary directory,
so any folder left there after the run is one the server failed to remove. PostgreSQL is not used:
``cra ledger check`` reads the data directory's ledger and has no ``--database-url``.

Before the server starts, the API keys are issued into its state database with the library's
:func:`cra.server.auth.issue_key` (what ``cra apikey create`` runs): per tenant an admin, an approver
(policy role ``supervisor``), an auditor and ``--agents`` agent keys (policy roles ``agent`` and
``engineer``). Each tenant's admin loads the example atlases ``customer-support`` and, when the
WebAssembly sandbox is built (:meth:`cra.sandbox.WasmSandbox.built`), ``code-sandbox`` over HTTP. If it
is not built the server runs with ``--no-sandbox`` and the load has no ``code.execute``; the report
says so (``server.code_execute``).

Then, for ``--seconds``, concurrently (asyncio and httpx, one connection per task):

* each agent opens sessions, resolves, evaluates, executes allowed calls (``order.lookup``: authorised
  and recorded, no executor), denied calls (``customer.delete``), refunds that need a supervisor's
  approval, redeems the tickets its tenant's approver hands back, runs ``code.execute`` (short runs, and
  runs of about a second so that kills land in them, each with an idempotency key), attaches evidence,
  reads its trace and ends sessions;
* each tenant's approver approves (4 in 5) or denies the approvals its agents asked for;
* each tenant's auditor reads the ledger: checkpoints, consistency proofs between them (verified here),
  the attestations of a session and their proofs, traces and their verification, decision records;
* the chaos loop SIGKILLs one worker process (a child of the server process running
  ``multiprocessing.spawn``, found in ``/proc/<pid>/task/*/children``) every ``--kill-every`` seconds
  and waits until uvicorn's supervisor has started a replacement and it is ready before the next kill.

Every 2xx answer is an acknowledged write and is recorded: sessions created, resolutions, calls (with
their execution ids, approval ids and parameter hashes), evidence events (id and sequence), approvals
decided, tickets redeemed, sessions ended. Errors are counted by status and problem code (or the
transport error), and by whether they came while a killed worker was being replaced: requests in flight
on a killed worker get no answer, which is expected and is not a loss.

After the load and the chaos stop, the run settles: it waits for every worker to be ready, sends each
``code.execute`` whose answer was lost again with the same idempotency key, in the same session, which
its agent kept open for this (it must end with the call's outcome; "in progress" is allowed for
``--settle-seconds``, 60, after the last kill, time for the server to record the outcome of a call whose
process died), and ends every session still active. Then it checks the invariants, each reported with
what broke:

``acknowledged_writes_present``
    every acknowledged write is in its session's trace and state (resolutions, events with the
    acknowledged ids and sequences, calls, approvals in the status their answers imply, ended sessions);
``chains_verify``
    every session's hash chain verifies, here (:func:`cra.trace.chain.verify_chain`) and on the server;
``calls_have_outcomes``
    every call authorised to run an executor has its outcome (``action.executed`` or ``action.failed``);
``idempotency_keys_settle``
    no idempotency key is still "in progress" (or refused) once nothing runs;
``sessions_can_end``
    every session can be ended once nothing runs (no 409, on any worker);
``reads_verify``
    every trace verification, attestation proof and consistency proof read during the run verified;
``ledger_check``
    every decision (resolution, execute-time policy decision) has its attestation; after the server
    stopped: ``cra ledger check`` passes on the data directory, the ledger holds every event of every
    session exactly once and nothing else, and every checkpoint read during the run is signed by the
    log's key and consistent with the final one, and every inclusion proof read verifies with that key;
``no_leftover_scratch``
    no ``cra-sandbox-*`` folder is left in the server's temporary directory;
``supervisor_restarts``
    every killed worker was replaced by a ready one, and no other worker process went away.

It prints one JSON object (``--json``; a summary in words otherwise) and exits 1 if any invariant failed,
2 if the run itself could not be made (the server did not start, a setup request failed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx

from bench_service import HOST, free_port
from cra.errors import ChainError, CRAError
from cra.ledger.checkpoint import checkpoint_of, open_checkpoint
from cra.ledger.merkle import verify_consistency
from cra.ledger.tlog_proof import verify_tlog_proof
from cra.protocol.canonical import canonical_json, sha256_hex
from cra.runtime.atlas_files import read_package
from cra.sandbox import CODE_EXECUTE, WasmSandbox
from cra.server.auth import issue_key
from cra.server.boot import DEMO_ATLASES
from cra.store.database import open_state, sqlite_url
from cra.store.datadir import open_ledger
from cra.trace.chain import verify_chain
from cra.trace.event import TraceEvent, format_timestamp
from cra.trace.jsonl import loads_trace

FORMAT: Final = "cra.chaos/1"
SUPPORT: Final = "com.cra.examples.customer-support"
CODE: Final = "com.cra.examples.code-sandbox"
NDJSON: Final = "application/x-ndjson"
SCRATCH_PREFIX: Final = "cra-sandbox-"

STARTUP_SECONDS: Final = 120.0  # the server's first start, on a loaded machine
RESTART_SECONDS: Final = 90.0  # a killed worker's replacement must be ready within this
REQUEST_SECONDS: Final = 30.0  # cra serve's own --request-timeout
#: How long after the last kill a lost code.execute may still answer "in progress": the server must have
#: recorded the outcome of a call whose process died by then (at least 10 s after the load stops).
SETTLE_SECONDS: Final = 60.0
STOP_SECONDS: Final = 30.0
END_ATTEMPTS: Final = 4  # DELETE of a session at the end, each on a new connection
MAX_PROOFS: Final = 500  # inclusion proofs read during the run that are verified offline at the end

#: The calls whose actions have an executor in ``cra serve``: each authorised one must get an outcome.
EXECUTOR_ACTIONS: Final = frozenset({CODE_EXECUTE})
#: The outcome of a call is final for these execute statuses, and names its execution id in the trace.
_OUTCOME_EVENTS: Final = {"success": "action.executed", "error": "action.failed"}
#: Execute errors that are answered without an outcome event carrying the execution id.
_NO_OUTCOME_ERRORS: Final = frozenset({"idempotency_key_in_progress", "invalid_parameters"})
#: What an approval's status may be now, given the last acknowledged answer about it. A ticket is spent
#: ("used") only by a call that runs an executor, so an approved refund (no executor) stays "approved".
_APPROVAL_STATES: Final = {
    "requested": frozenset({"pending", "approved", "denied", "used"}),
    "approved": frozenset({"approved", "used"}),
    "denied": frozenset({"denied"}),
}
#: A run of about a second in the sandbox (0.8 s unloaded for 2,000,000 rounds): long enough for kills to land in.
LONG_LOOP: Final = 1_500_000
CODE_LIMITS: Final = {"timeout_s": 5, "memory_mb": 128, "fuel": 20_000_000_000}
#: The code-sandbox atlas allows 60 runs a minute per agent; each agent stays under it.
CODE_INTERVAL_SECONDS: Final = 1.2

# The invariants, as the report names them.
LOSS: Final = "acknowledged_writes_present"
CHAIN: Final = "chains_verify"
OUTCOME: Final = "calls_have_outcomes"
IDEMPOTENCY: Final = "idempotency_keys_settle"
#: The lease of a running call in the server under test.
CALL_LEASE_SECONDS: Final = 3
END: Final = "sessions_can_end"
READS: Final = "reads_verify"
LEDGER: Final = "ledger_check"
SCRATCH: Final = "no_leftover_scratch"
RESTART: Final = "supervisor_restarts"
INVARIANTS: Final = (LOSS, CHAIN, OUTCOME, IDEMPOTENCY, END, READS, LEDGER, SCRATCH, RESTART)


class ChaosError(RuntimeError):
    """The run could not be made (a server that does not start, a setup request that fails)."""


# -- what was acknowledged, and the checks (no I/O) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One acknowledged execute answer."""

    action_id: str
    parameters_hash: str
    status: str
    execution_id: str
    error_code: str | None = None
    approval_id: str | None = None


@dataclass(slots=True)
class SessionRecord:
    """The acknowledged writes of one session."""

    tenant: str
    agent: str
    session_id: str
    resolutions: set[str] = field(default_factory=set)
    #: Evidence event id -> (sequence, sha256), as the 201 answer gave them.
    evidence: dict[str, tuple[int, str]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    #: Approval id -> the last acknowledged answer about it: requested, approved or denied.
    approvals: dict[str, str] = field(default_factory=dict)
    #: Approvals whose ticket an acknowledged call presented and that call was authorised with.
    redeemed: set[str] = field(default_factory=set)
    ended: bool = False


@dataclass(frozen=True, slots=True)
class Finding:
    """One invariant that did not hold, and exactly what broke."""

    invariant: str
    session_id: str | None
    detail: str
    count: int = 1  # how many things it is about (calls of a session without an outcome)

    def to_dict(self) -> dict[str, Any]:
        return {"invariant": self.invariant, "session_id": self.session_id, "detail": self.detail, "count": self.count}


def parameters_hash(parameters: Mapping[str, Any]) -> str:
    """The ``parameters_hash`` CRA records for a call's arguments."""
    return sha256_hex(canonical_json(dict(parameters)))


def check_chain(
    session_id: str, events: Sequence[TraceEvent], server_report: Mapping[str, Any] | None
) -> list[Finding]:
    """The session's hash chain verifies, here and (when given) in the server's ``/verify`` answer."""
    found: list[Finding] = []
    try:
        verify_chain(events)
    except ChainError as exc:
        found.append(Finding(CHAIN, session_id, f"{exc.kind} at index {exc.index}: {exc}"))
    else:
        if events[0].event_type != "session.started":
            found.append(Finding(CHAIN, session_id, f"the chain starts with {events[0].event_type}"))
    if server_report is not None and (
        server_report.get("valid") is not True or server_report.get("event_count") != len(events)
    ):
        found.append(
            Finding(CHAIN, session_id, f"the server's verification of {len(events)} events: {dict(server_report)}")
        )
    return found


def check_outcomes(session_id: str, events: Sequence[TraceEvent], executor_actions: Iterable[str]) -> list[Finding]:
    """Every call authorised to run an executor has an outcome event (``action.executed`` or ``action.failed``).

    A call is authorised when its ``action.requested`` (not a repeat of an idempotency key) is followed by an
    allowing ``policy.evaluated``; calls of one action are counted, since their events carry no common id."""
    found = []
    for action in sorted(set(executor_actions)):
        allowed = sum(
            1
            for e in events
            if e.event_type == "policy.evaluated"
            and e.payload.get("action_id") == action
            and e.payload.get("result") == "allow"
            and "approval_id" not in e.payload
            and _during_execute(events, e)
        )
        outcomes = sum(
            1
            for e in events
            if e.event_type in ("action.executed", "action.failed") and e.payload.get("action_id") == action
        )
        if outcomes < allowed:
            found.append(
                Finding(
                    OUTCOME,
                    session_id,
                    f"{allowed - outcomes} of {allowed} authorised {action} calls have no outcome event "
                    f"(action.executed or action.failed): the call stays 'running' in the trace",
                    allowed - outcomes,
                )
            )
    return found


def check_attested(session_id: str, events: Sequence[TraceEvent], attested: Iterable[str]) -> list[Finding]:
    """Every decision the ledger attests has its attestation: each resolution (``carp.resolution.completed``)
    and each execute-time ``policy.evaluated``; ``attested`` are the session's attestation ids."""
    have = set(attested)
    decisions = [
        e
        for e in events
        if e.event_type == "carp.resolution.completed"
        or (e.event_type == "policy.evaluated" and _during_execute(events, e))
    ]
    missing = [e for e in decisions if e.event_id not in have]
    if not missing:
        return []
    first = missing[0]
    detail = (
        f"{len(missing)} of {len(decisions)} decisions have no attestation, the first {first.event_id} "
        f"({first.event_type}, sequence {first.sequence})"
    )
    return [Finding(LEDGER, session_id, detail, len(missing))]


def _during_execute(events: Sequence[TraceEvent], decision: TraceEvent) -> bool:
    """Whether a ``policy.evaluated`` event decided an execute call (and not a resolve): the nearest
    ``action.requested`` or ``carp.request.received`` before it is an ``action.requested``."""
    for e in reversed(events[: decision.sequence - events[0].sequence]):
        if e.event_type == "action.requested":
            return True
        if e.event_type == "carp.request.received":
            return False
    return False


def check_acknowledged(
    record: SessionRecord,
    events: Sequence[TraceEvent] | None,
    status: str | None,
    approval_status: Mapping[str, str | None],
) -> list[Finding]:
    """Every acknowledged write of the session is present.

    ``events`` is the session's trace and ``status`` its status (None: the session was not found);
    ``approval_status`` the status of each approval the record names (None: not found)."""
    sid = record.session_id
    if status is None or events is None:
        return [Finding(LOSS, sid, f"the acknowledged session of {record.tenant}/{record.agent} is not found")]
    found: list[Finding] = []

    def lost(what: str) -> None:
        found.append(Finding(LOSS, sid, what))

    if not events or events[0].event_type != "session.started":
        lost("the trace does not begin with the acknowledged session.started")
    by_id = {e.event_id: e for e in events}
    resolved = {e.payload.get("resolution_id") for e in events if e.event_type == "carp.resolution.completed"}
    for resolution_id in sorted(record.resolutions - resolved):
        lost(f"acknowledged resolution {resolution_id} has no carp.resolution.completed event")
    for event_id, (sequence, sha256) in sorted(record.evidence.items()):
        event = by_id.get(event_id)
        if event is None:
            lost(f"acknowledged evidence event {event_id} (sequence {sequence}) is not in the trace")
        elif event.sequence != sequence or event.payload.get("evidence", {}).get("sha256") != sha256:
            lost(f"evidence event {event_id} differs from its acknowledgement: sequence {event.sequence}")
    requested = Counter(e.payload.get("parameters_hash") for e in events if e.event_type == "action.requested")
    acknowledged = Counter(c.parameters_hash for c in record.calls)
    for digest, count in sorted(acknowledged.items()):
        if requested[digest] < count:
            lost(
                f"{count} acknowledged calls with parameters_hash {digest}, {requested[digest]} action.requested events"
            )
    outcomes = {
        (e.event_type, e.payload.get("execution_id")) for e in events if e.event_type in _OUTCOME_EVENTS.values()
    }
    asked = {e.payload.get("approval_id") for e in events if e.event_type == "policy.evaluated"}
    for call in record.calls:
        wanted = _OUTCOME_EVENTS.get(call.status)
        if (
            wanted is not None
            and call.error_code not in _NO_OUTCOME_ERRORS
            and (wanted, call.execution_id) not in outcomes
        ):
            lost(
                f"acknowledged {call.status} of {call.action_id} (execution {call.execution_id}) has no {wanted} event"
            )
        if call.status == "pending_approval" and call.approval_id not in asked:
            lost(f"acknowledged approval request {call.approval_id} has no policy.evaluated event naming it")
    decided = {
        (e.event_type, e.payload.get("approval_id"))
        for e in events
        if e.event_type in ("action.approved", "action.denied") and "approval_id" in e.payload
    }
    for approval_id, last in sorted(record.approvals.items()):
        now = approval_status.get(approval_id)
        if now is None:
            lost(f"acknowledged approval {approval_id} ({last}) is not found")
        elif now not in _APPROVAL_STATES[last]:
            lost(f"approval {approval_id} is {now}, but its acknowledged answers say {last}")
        if last == "approved" and ("action.approved", approval_id) not in decided:
            lost(f"acknowledged approval of {approval_id} has no action.approved event")
        if last == "denied" and ("action.denied", approval_id) not in decided:
            lost(f"acknowledged refusal of {approval_id} has no action.denied event")
    carried = {e.payload.get("approval_id") for e in events if e.event_type == "action.requested"}
    for approval_id in sorted(record.redeemed - carried):
        lost(f"the acknowledged call with the ticket of {approval_id} has no action.requested event carrying it")
    if record.ended:
        if status != "ended":
            lost(f"the acknowledged end of the session is lost: its status is {status}")
        if not any(e.event_type == "session.ended" for e in events):
            lost("the acknowledged end of the session has no session.ended event")
    return found


# -- figures ---------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Stats:
    """Requests sent and acknowledged by kind, and errors by kind and label (status and code, or transport error)."""

    sent: Counter[str] = field(default_factory=Counter)
    acknowledged: Counter[str] = field(default_factory=Counter)
    errors: list[tuple[float, str, str]] = field(default_factory=list)  # (monotonic time, kind, label)
    examples: dict[str, str] = field(default_factory=dict)

    def error(self, kind: str, label: str, detail: str) -> None:
        self.errors.append((time.monotonic(), kind, label))
        self.examples.setdefault(label, f"{kind}: {detail}"[:300])

    def operations(self) -> dict[str, Any]:
        kinds = sorted(set(self.sent) | set(self.acknowledged))
        return {
            "sent": sum(self.sent.values()),
            "acknowledged": sum(self.acknowledged.values()),
            "by_kind": {k: {"sent": self.sent[k], "acknowledged": self.acknowledged[k]} for k in kinds},
        }


@dataclass(slots=True)
class Kill:
    """One SIGKILL of a worker, and its replacement as seen from outside."""

    at: float  # monotonic
    pid: int
    replaced_by: int | None = None  # the replacement that became ready
    started_after: float | None = None  # seconds until a replacement process existed
    ready_after: float | None = None  # seconds until it said "Application startup complete."


def _label(response: httpx.Response) -> str:
    """``503 overloaded``: the status and, for a problem document, its code."""
    code = None
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        try:
            code = response.json().get("code")
        except ValueError:
            code = None
    return f"{response.status_code} {code}" if isinstance(code, str) else str(response.status_code)


def _windows(kills: Sequence[Kill]) -> list[tuple[float, float]]:
    """The times a killed worker's requests may fail: from the kill until a second after its replacement was
    ready (or for the whole restart allowance if it never was)."""
    return [(k.at, k.at + (k.ready_after if k.ready_after is not None else RESTART_SECONDS) + 1.0) for k in kills]


def error_figures(stats: Stats, kills: Sequence[Kill]) -> dict[str, Any]:
    windows = _windows(kills)
    by_label: Counter[str] = Counter()
    outside: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    for at, kind, label in stats.errors:
        by_label[label] += 1
        by_kind[kind] += 1
        if not any(start <= at <= end for start, end in windows):
            outside[label] += 1
    return {
        "total": len(stats.errors),
        "by_status": dict(sorted(by_label.items())),
        "by_kind": dict(sorted(by_kind.items())),
        "outside_kill_windows": dict(sorted(outside.items())),
        "examples": dict(sorted(stats.examples.items())),
    }


def _seconds(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": round(statistics.fmean(values), 2), "max": round(max(values), 2)}


def chaos_figures(kills: Sequence[Kill], kill_every: float) -> dict[str, Any]:
    return {
        "kill_every_seconds": kill_every,
        "kills": len(kills),
        "restarts_seen": sum(k.started_after is not None for k in kills),
        "replacements_ready": sum(k.ready_after is not None for k in kills),
        "replacement_started_seconds": _seconds([k.started_after for k in kills if k.started_after is not None]),
        "replacement_ready_seconds": _seconds([k.ready_after for k in kills if k.ready_after is not None]),
        "killed": [{"pid": k.pid, "replaced_by": k.replaced_by, "ready_after": k.ready_after} for k in kills],
    }


@dataclass(frozen=True, slots=True)
class Exit:
    """A worker process that went away although this run did not kill it."""

    pid: int
    age: float  # seconds from when it was first seen
    served: bool  # the log said "Started server process [pid]" before it went


def restart_findings(kills: Sequence[Kill], exits: Sequence[Exit]) -> list[Finding]:
    """Every killed worker was replaced by a ready one, and no other worker went away."""
    unexplained = [
        Finding(
            RESTART,
            None,
            f"worker {e.pid} went away {e.age:g} s after it appeared, {'after' if e.served else 'before'} it served "
            "(its 'Started server process' log line), and this run did not kill it",
        )
        for e in exits
    ]
    return unexplained + [
        Finding(
            RESTART,
            None,
            f"worker {k.pid} was killed and "
            + ("no replacement process appeared" if k.started_after is None else "no replacement was ready")
            + f" within {RESTART_SECONDS:g} s",
        )
        for k in kills
        if k.ready_after is None
    ]


def verdict(findings: Sequence[Finding]) -> dict[str, Any]:
    """Per invariant: whether it held and how many findings broke it; the run is ok only if all held."""
    counts = Counter(f.invariant for f in findings)
    return {
        "ok": not findings,
        "failed": [name for name in INVARIANTS if counts[name]],
        "invariants": {name: {"held": not counts[name], "findings": counts[name]} for name in INVARIANTS},
    }


# -- the server ------------------------------------------------------------------------------------------------------


class LogWatch:
    """Reads the server's log as it grows: workers ready and died, and error lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.ready = 0
        self.died = 0
        self.started: set[int] = set()
        self.error_lines = 0
        self.errors: list[str] = []

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            line = raw.decode("utf-8", errors="replace")
            if "Application startup complete." in line:
                self.ready += 1
            elif "Started server process [" in line:
                self.started.add(int(line.rpartition("[")[2].rstrip("]").strip() or 0))
            elif "Child process [" in line and "] died" in line:
                self.died += 1
            if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback"):
                self.error_lines += 1
                if len(self.errors) < 20:
                    self.errors.append(line[:400])


class Serve:
    """``cra serve --workers N`` as a process, with its log in a file and its own temporary directory."""

    def __init__(self, data_dir: Path, scratch: Path, logs: Path, port: int, workers: int, sandbox: bool) -> None:
        self.workers_wanted = workers
        self.url = f"http://{HOST}:{port}"
        self.log_path = logs / "serve.log"
        self._out = (logs / "serve.stdout").open("w")
        self._err = self.log_path.open("w")
        self.watch = LogWatch(self.log_path)
        command = [
            sys.executable,
            "-m",
            "cra",
            "serve",
            "--data-dir",
            str(data_dir),
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--key-rate",
            "0",
            "--no-demo",
            "--log-level",
            "info",
            "--sandbox" if sandbox else "--no-sandbox",
            # A killed worker's calls are recorded as lost once their lease runs out: a short lease
            # lets the run settle in seconds (ADR 0010).
            "--call-lease",
            str(CALL_LEASE_SECONDS),
        ]
        env = {**os.environ, "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, stdout=self._out, stderr=self._err, env=env)  # noqa: S603 - our CLI

    def workers(self) -> set[int]:
        """The pids of the worker processes: the server's children that run ``multiprocessing.spawn``
        (not its resource tracker)."""
        found: set[int] = set()
        for children in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            try:
                pids = children.read_text().split()
            except OSError:
                continue
            for pid in pids:
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"spawn_main" in cmdline:
                    found.add(int(pid))
        return found

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        self._err.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    async def ready(self, ready_lines: int, timeout: float) -> float:
        """Wait until the log says ``ready_lines`` workers completed startup, all workers run and
        ``/v1/health`` answers; the seconds it took."""
        start = time.monotonic()
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            while time.monotonic() - start < timeout:
                if not self.alive():
                    raise ChaosError(f"cra serve exited with {self.process.returncode}:\n{self.log_tail()}")
                self.watch.poll()
                if self.watch.ready >= ready_lines and len(self.workers()) >= self.workers_wanted:
                    try:
                        if (await client.get("/v1/health")).status_code == 200:
                            return time.monotonic() - start
                    except httpx.TransportError:
                        pass
                await asyncio.sleep(0.1)
        self.watch.poll()
        raise ChaosError(
            f"cra serve was not ready within {timeout:g} s: {self.watch.ready} workers completed startup and "
            f"uvicorn's supervisor logged {self.watch.died} worker processes dead ('Child process [...] died')"
            f":\n{self.log_tail()}"
        )

    def stop(self) -> int:
        """SIGTERM (uvicorn's graceful shutdown: each worker seals what it committed), SIGKILL if it hangs."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            for pid in self.workers():
                os.kill(pid, signal.SIGKILL)
            self.process.kill()
            code = self.process.wait(timeout=STOP_SECONDS)
        self._out.close()
        self._err.close()
        self.watch.poll()
        return code


class WorkerWatch:
    """Follows the worker processes: when each appeared, which this run killed, which went away otherwise."""

    def __init__(self, server: Serve) -> None:
        self.server = server
        self.seen: dict[int, float] = {}
        self.killed: set[int] = set()
        self.exits: list[Exit] = []

    def poll(self) -> set[int]:
        now = time.monotonic()
        current = self.server.workers()
        for pid in current:
            self.seen.setdefault(pid, now)
        gone = [pid for pid in self.seen if pid not in current]
        if gone:
            self.server.watch.poll()
        for pid in gone:
            first = self.seen.pop(pid)
            if pid not in self.killed:
                self.exits.append(Exit(pid, round(now - first, 1), pid in self.server.watch.started))
                print(f"chaos: worker {pid} went away without being killed by this run", file=sys.stderr)
        return current

    async def loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.poll()
            await asyncio.sleep(0.1)


async def chaos_loop(
    server: Serve, watch: WorkerWatch, stop: asyncio.Event, rng: random.Random, every: float, kills: list[Kill]
) -> None:
    """Every ``every`` seconds (jittered), SIGKILL one worker; then wait for its ready replacement."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=every * rng.uniform(0.75, 1.25))
            return
        except TimeoutError:
            pass
        before = watch.poll()
        if len(before) < server.workers_wanted:
            continue
        server.watch.poll()
        ready_before = server.watch.ready
        victim = rng.choice(sorted(before))
        kill = Kill(time.monotonic(), victim)
        watch.killed.add(victim)
        os.kill(victim, signal.SIGKILL)
        kills.append(kill)
        print(f"chaos: killed worker {victim}", file=sys.stderr)
        # Waited for even once the load stops: the report must say whether the supervisor replaced it.
        while time.monotonic() - kill.at < RESTART_SECONDS:
            await asyncio.sleep(0.1)
            if not server.alive():
                raise ChaosError(f"the server process exited after a worker was killed:\n{server.log_tail()}")
            new = watch.poll() - before
            if new and kill.started_after is None:
                kill.started_after = round(time.monotonic() - kill.at, 2)
            server.watch.poll()
            if new and server.watch.ready > ready_before:
                # The replacement that is ready: the supervisor may have replaced earlier ones in between.
                kill.replaced_by = min(new & server.watch.started or new)
                kill.ready_after = round(time.monotonic() - kill.at, 2)
                print(f"chaos: worker {kill.replaced_by} ready {kill.ready_after} s after the kill", file=sys.stderr)
                break
        else:
            print(
                f"chaos: worker {victim} was not replaced within {RESTART_SECONDS:g} s; no more kills", file=sys.stderr
            )
            return


# -- tenants and keys ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Tenant:
    name: str
    admin: str
    approver: str
    auditor: str
    agents: dict[str, str]  # agent id -> key
    approvals: asyncio.Queue[Pending] = field(default_factory=asyncio.Queue)
    tickets: dict[str, asyncio.Queue[Ticket]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Pending:
    """An approval an agent's call asked for, for the tenant's approver."""

    approval_id: str
    agent: str
    record: SessionRecord
    resolution_id: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Ticket:
    pending: Pending
    token: str


async def issue_keys(data_dir: Path, tenants: int, agents: int) -> list[Tenant]:
    """Every key of the run, issued into the state database before the server starts."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    state = await open_state(sqlite_url(data_dir / "cra.sqlite3"))
    now = datetime.now(UTC)
    out = []
    try:

        async def key(tenant: str, role: str, agent: str | None = None, roles: Sequence[str] = ()) -> str:
            token, _ = await issue_key(
                state, tenant_id=tenant, role=role, agent_id=agent, policy_roles=roles, now=now, label="tools/chaos.py"
            )
            return token

        for t in range(tenants):
            name = f"chaos-{t}"
            out.append(
                Tenant(
                    name=name,
                    admin=await key(name, "admin"),
                    approver=await key(name, "approver", roles=("supervisor",)),
                    auditor=await key(name, "auditor"),
                    agents={
                        f"agent-{t}-{a}": await key(name, "agent", f"agent-{t}-{a}", ("agent", "engineer"))
                        for a in range(agents)
                    },
                )
            )
    finally:
        await state.close()
    return out


def atlas_upload(path: Path) -> dict[str, Any]:
    """An example atlas package as ``POST /v1/atlases`` takes it: the manifest and its files."""
    package = read_package(path)
    manifest = json.loads(package.pop("atlas.json"))
    return {"manifest": manifest, "files": {name: data.decode("utf-8") for name, data in package.items()}}


async def load_atlases(url: str, tenants: Sequence[Tenant], atlases: Sequence[str]) -> None:
    uploads = [atlas_upload(DEMO_ATLASES / name) for name in atlases]
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_SECONDS) as client:
        for tenant in tenants:
            for upload in uploads:
                r = await client.post("/v1/atlases", json=upload, headers={"X-API-Key": tenant.admin})
                if r.status_code != 201:
                    raise ChaosError(f"loading an atlas for {tenant.name} failed: {r.status_code} {r.text}")


# -- the load --------------------------------------------------------------------------------------------------------


def carp_request(agent: str, session_id: str, operation: str, **extra: Any) -> dict[str, Any]:
    """A CARP/1.0 request with a new request id and the current time."""
    return {
        "carp_version": "1.0",
        "request_id": str(uuid.uuid4()),
        "timestamp": format_timestamp(datetime.now(UTC)),
        "operation": operation,
        "requester": {"agent_id": agent, "session_id": session_id},
        "task": {"goal": "Help a customer with order 42 and check the numbers"},
        **extra,
    }


def code_parameters(nonce: str, long: bool) -> dict[str, Any]:
    """A ``code.execute`` call: a short print, or a loop of about a second; unique by ``nonce``."""
    if long:
        code = f"# {nonce}\nn = 0\nfor i in range({LONG_LOOP}):\n    n += i\nprint(n)\n"
    else:
        code = f"print({nonce!r})\n"
    return {"code": code, "limits": dict(CODE_LIMITS)}


@dataclass(slots=True)
class Unsettled:
    """A ``code.execute`` with an idempotency key whose answer was lost: sent again once the run settles."""

    record: SessionRecord
    key: str
    body: dict[str, Any]


@dataclass(slots=True)
class Run:
    """Everything the load records, shared by its tasks (one event loop, so no locks)."""

    url: str
    tenants: list[Tenant]
    code: bool
    stats: Stats = field(default_factory=Stats)
    records: dict[str, SessionRecord] = field(default_factory=dict)
    unsettled: list[Unsettled] = field(default_factory=list)
    checkpoints: dict[str, None] = field(default_factory=dict)  # signed notes read, in order, without repeats
    #: (attestation id, its event's bytes, its tlog-proof) as served during the run: verified offline at the end.
    proofs: list[tuple[str, str, str]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)  # reads that answered but did not verify

    async def request(
        self,
        client: httpx.AsyncClient,
        kind: str,
        method: str,
        url: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        stats: Stats | None = None,
    ) -> httpx.Response | None:
        """One request, counted: its response, or None if none came (a transport error, counted as one)."""
        into = stats or self.stats
        into.sent[kind] += 1
        try:
            r = await client.request(method, url, json=body, params=params, headers=headers)
        except httpx.TransportError as exc:
            into.error(kind, f"transport {type(exc).__name__}", str(exc) or type(exc).__name__)
            return None
        if r.is_success:
            into.acknowledged[kind] += 1
        else:
            into.error(kind, _label(r), r.text)
        return r

    async def call(
        self,
        client: httpx.AsyncClient,
        kind: str,
        method: str,
        url: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        stats: Stats | None = None,
    ) -> httpx.Response | None:
        """One request, counted: the response if it is a 2xx (acknowledged), else None."""
        r = await self.request(client, kind, method, url, body=body, params=params, headers=headers, stats=stats)
        return r if r is not None and r.is_success else None


class Agent:
    """One agent's traffic: sessions one after another, one request at a time."""

    def __init__(self, run: Run, tenant: Tenant, agent_id: str, seed: int) -> None:
        self.run = run
        self.tenant = tenant
        self.agent_id = agent_id
        self.key = tenant.agents[agent_id]
        self.rng = random.Random(seed)
        self.tickets: asyncio.Queue[Ticket] = asyncio.Queue()
        tenant.tickets[agent_id] = self.tickets
        self.record: SessionRecord | None = None
        self.resolution: str | None = None
        self.ops = 0
        #: Approvals asked for in this session and not yet settled, and calls whose answer was lost (sent again
        #: when the run settles): the session is not ended while there are any.
        self.outstanding = 0
        self.next_code = 0.0
        self.counter = 0

    def nonce(self) -> str:
        self.counter += 1
        return f"{self.agent_id}-{self.counter}-{self.rng.getrandbits(32):08x}"

    async def loop(self, stop: asyncio.Event) -> None:
        headers = {"X-API-Key": self.key}
        async with httpx.AsyncClient(base_url=self.run.url, headers=headers, timeout=REQUEST_SECONDS) as client:
            while not stop.is_set():
                if not await self.step(client):
                    await asyncio.sleep(0.05 + self.rng.random() * 0.15)  # a refused or cut request: back off

    async def step(self, client: httpx.AsyncClient) -> bool:
        if self.record is None:
            return await self.open(client)
        if self.resolution is None:
            return await self.resolve(client)
        if not self.tickets.empty():
            ticket = self.tickets.get_nowait()
            self.outstanding -= 1
            if not ticket.token:  # refused, or its answer was lost: nothing to redeem
                return True
            return await self.redeem(client, ticket)
        self.ops += 1
        choices = [
            ("evaluate", 14),
            ("resolve", 6),
            ("allowed", 12),
            ("denied", 5),
            ("refund", 8),
            ("evidence", 8),
            ("trace", 5),
            ("end", 3 if self.ops > 12 and not self.outstanding else 0),
        ]
        if self.run.code and time.monotonic() >= self.next_code:
            choices.append(("code", 14))
        names, weights = zip(*choices, strict=True)
        op = self.rng.choices(names, weights)[0]
        if op == "evaluate":
            return await self.evaluate(client)
        if op == "resolve":
            return await self.resolve(client)
        if op == "allowed":
            return await self.execute(client, "execute.allowed", "order.lookup", {"order_id": self.nonce()})
        if op == "denied":
            return await self.execute(client, "execute.denied", "customer.delete", {"customer_id": self.nonce()})
        if op == "refund":
            return await self.refund(client)
        if op == "code":
            self.next_code = time.monotonic() + CODE_INTERVAL_SECONDS
            return await self.code(client)
        if op == "evidence":
            return await self.evidence(client)
        if op == "trace":
            return await self.read_trace(client)
        return await self.end(client)

    async def open(self, client: httpx.AsyncClient) -> bool:
        atlases = [SUPPORT, CODE] if self.run.code else [SUPPORT]
        body = {"agent_id": self.agent_id, "goal": "Chaos: help a customer", "atlas_ids": atlases}
        r = await self.run.call(client, "session.create", "POST", "/v1/sessions", body=body)
        if r is None:
            return False
        session_id = r.json()["session_id"]
        self.record = self.run.records[session_id] = SessionRecord(self.tenant.name, self.agent_id, session_id)
        self.resolution, self.ops, self.outstanding = None, 0, 0
        return True

    async def resolve(self, client: httpx.AsyncClient) -> bool:
        assert self.record is not None
        body = carp_request(self.agent_id, self.record.session_id, "resolve")
        r = await self.run.call(client, "resolve", "POST", "/v1/resolve", body=body)
        if r is None:
            return False
        self.resolution = r.json()["resolution_id"]
        self.record.resolutions.add(self.resolution)
        return True

    async def evaluate(self, client: httpx.AsyncClient) -> bool:
        body = self.rng.choice(
            [
                {"action": "order.lookup", "agent": self.agent_id, "params": {"order_id": "42"}},
                {"action": "refund.create", "params": {"order_id": "42", "amount": 25_000, "currency": "SAR"}},
                {"action": "customer.delete", "params": {"customer_id": "C-7"}, "explain": True},
            ]
        )
        return await self.run.call(client, "evaluate", "POST", "/v1/evaluate", body=body) is not None

    async def execute(
        self,
        client: httpx.AsyncClient,
        kind: str,
        action: str,
        parameters: dict[str, Any],
        *,
        key: str | None = None,
        ticket: Ticket | None = None,
    ) -> bool:
        record, resolution = (ticket.pending.record, ticket.pending.resolution_id) if ticket else (None, None)
        record = record or self.record
        resolution = resolution or self.resolution
        assert record is not None
        assert resolution is not None
        execution: dict[str, Any] = {"resolution_id": resolution, "action_id": action, "parameters": parameters}
        if key is not None:
            execution["idempotency_key"] = key
        body = carp_request(self.agent_id, record.session_id, "execute", execution=execution)
        headers = {"X-CRA-Approval-Ticket": ticket.token} if ticket is not None else None
        r = await self.run.call(client, kind, "POST", "/v1/execute", body=body, headers=headers)
        if r is None:
            if key is not None:
                # Sent again with this key once the run settles, so this session stays open until then.
                self.run.unsettled.append(Unsettled(record, key, body))
                self.outstanding += 1
            return False
        out = r.json()
        call = record_call(record, action, parameters, out)
        if call.status == "pending_approval" and call.approval_id is not None:
            record.approvals[call.approval_id] = "requested"
            self.outstanding += 1
            pending = Pending(call.approval_id, self.agent_id, record, resolution, parameters)
            await self.tenant.approvals.put(pending)
        if ticket is not None and call.status == "error" and call.error_code == "no_executor":
            record.redeemed.add(ticket.pending.approval_id)  # the ticket was accepted and the call authorised
        return True

    async def refund(self, client: httpx.AsyncClient) -> bool:
        parameters = {"order_id": self.nonce(), "amount": self.rng.randint(10_001, 99_999), "currency": "SAR"}
        return await self.execute(client, "execute.approval", "refund.create", parameters)

    async def redeem(self, client: httpx.AsyncClient, ticket: Ticket) -> bool:
        pending = ticket.pending
        return await self.execute(client, "execute.redeem", "refund.create", pending.parameters, ticket=ticket)

    async def code(self, client: httpx.AsyncClient) -> bool:
        long = self.rng.random() < 0.4
        kind = "execute.code.long" if long else "execute.code"
        return await self.execute(client, kind, CODE_EXECUTE, code_parameters(self.nonce(), long), key=self.nonce())

    async def evidence(self, client: httpx.AsyncClient) -> bool:
        assert self.record is not None
        sha256 = sha256_hex(self.nonce())
        body = {
            "session_id": self.record.session_id,
            "sha256": sha256,
            "media_type": "text/plain",
            "description": "a customer's message",
            "size_bytes": 1024,
        }
        r = await self.run.call(client, "evidence", "POST", "/v1/evidence", body=body)
        if r is None:
            return False
        event = r.json()
        self.record.evidence[event["event_id"]] = (event["sequence"], sha256)
        return True

    async def read_trace(self, client: httpx.AsyncClient) -> bool:
        assert self.record is not None
        path = f"/v1/traces/{self.record.session_id}"
        return await self.run.call(client, "trace.read", "GET", path, params={"limit": 50}) is not None

    async def end(self, client: httpx.AsyncClient) -> bool:
        assert self.record is not None
        record = self.record
        r = await self.run.call(client, "session.end", "DELETE", f"/v1/sessions/{record.session_id}")
        # Refused or not, the agent moves on; a session left active is ended when the run settles.
        self.record, self.resolution = None, None
        if r is None:
            return False
        record.ended = True
        return True


def record_call(record: SessionRecord, action: str, parameters: Mapping[str, Any], out: Mapping[str, Any]) -> Call:
    """Record an acknowledged execute answer in the session's record."""
    error = out.get("error") or {}
    result = out.get("result") or {}
    call = Call(
        action_id=action,
        parameters_hash=parameters_hash(parameters),
        status=str(out["status"]),
        execution_id=str(out["execution_id"]),
        error_code=error.get("code") if isinstance(error, dict) else None,
        approval_id=result.get("approval_id") if out["status"] == "pending_approval" else None,
    )
    record.calls.append(call)
    return call


async def approver_loop(run: Run, tenant: Tenant, stop: asyncio.Event, seed: int) -> None:
    """The tenant's supervisor: approves (4 in 5) or denies each approval asked for, and hands tickets back."""
    rng = random.Random(seed)
    headers = {"X-API-Key": tenant.approver}
    async with httpx.AsyncClient(base_url=run.url, headers=headers, timeout=REQUEST_SECONDS) as client:
        while not stop.is_set():
            try:
                pending = await asyncio.wait_for(tenant.approvals.get(), timeout=0.5)
            except TimeoutError:
                await run.call(client, "approval.list", "GET", "/v1/approvals", params={"limit": 20})
                continue
            approve = rng.random() < 0.8
            verb = "approve" if approve else "deny"
            path = f"/v1/approvals/{pending.approval_id}/{verb}"
            r = await run.call(client, f"approval.{verb}", "POST", path, body={"comment": "chaos run"})
            if r is None:
                release(tenant, pending)  # the agent waits no longer for it
                continue
            if approve:
                pending.record.approvals[pending.approval_id] = "approved"
                await tenant.tickets[pending.agent].put(Ticket(pending, r.json()["ticket"]))
            else:
                pending.record.approvals[pending.approval_id] = "denied"
                release(tenant, pending)


def release(tenant: Tenant, pending: Pending) -> None:
    """An approval that brings no ticket: tell the agent (a ticket without a token), whose session may end again."""
    tenant.tickets[pending.agent].put_nowait(Ticket(pending, ""))


class Auditor:
    """The tenant's auditor: reads the ledger and traces, and verifies what it reads."""

    def __init__(self, run: Run, tenant: Tenant, seed: int) -> None:
        self.run = run
        self.tenant = tenant
        self.rng = random.Random(seed)
        self.last: str | None = None  # the newest checkpoint note read

    async def loop(self, stop: asyncio.Event) -> None:
        headers = {"X-API-Key": self.tenant.auditor}
        async with httpx.AsyncClient(base_url=self.run.url, headers=headers, timeout=REQUEST_SECONDS) as client:
            while not stop.is_set():
                if self.session() is None:  # nothing logged yet: a checkpoint would be 503 "the log is empty"
                    await asyncio.sleep(0.1)
                    continue
                op = self.rng.choices(["checkpoint", "attestation", "trace", "evidence"], [4, 3, 3, 1])[0]
                if op == "checkpoint":
                    await self.checkpoint(client)
                elif op == "attestation":
                    await self.attestation(client)
                elif op == "trace":
                    await self.trace(client)
                else:
                    await self.run.call(client, "evidence.list", "GET", "/v1/evidence", params={"limit": 20})
                await asyncio.sleep(0.05)

    def session(self) -> SessionRecord | None:
        mine = [r for r in self.run.records.values() if r.tenant == self.tenant.name]
        return self.rng.choice(mine) if mine else None

    async def checkpoint(self, client: httpx.AsyncClient) -> None:
        r = await self.run.call(client, "ledger.checkpoint", "GET", "/v1/ledger/checkpoint")
        if r is None:
            return
        note = r.text
        self.run.checkpoints[note] = None
        if self.last is not None:
            await self.consistency(client, self.last, note)
        self.last = note

    async def consistency(self, client: httpx.AsyncClient, old_note: str, new_note: str) -> None:
        """The log only grew between two checkpoints read: the server's consistency proof verifies here."""
        old, new = checkpoint_of(old_note), checkpoint_of(new_note)
        if new.size < old.size:
            self.run.findings.append(Finding(READS, None, f"a checkpoint of size {new.size} after one of {old.size}"))
            return
        if new.size == old.size:
            if new.root != old.root:
                self.run.findings.append(Finding(READS, None, f"two checkpoints of size {new.size}, different roots"))
            return
        params = {"old": old.size, "new": new.size}
        r = await self.run.call(client, "ledger.consistency", "GET", "/v1/ledger/consistency", params=params)
        if r is None:
            return
        try:
            proof = [base64.b64decode(node, validate=True) for node in r.json()["proof"]]
            verify_consistency(old.size, new.size, old.root, new.root, proof)
        except (CRAError, binascii.Error, KeyError, ValueError) as exc:
            detail = f"the consistency proof from {old.size} to {new.size} does not verify: {exc}"
            self.run.findings.append(Finding(READS, None, detail))

    async def attestation(self, client: httpx.AsyncClient) -> None:
        record = self.session()
        if record is None:
            return
        path = f"/v1/sessions/{record.session_id}/attestations"
        r = await self.run.call(client, "attestation.list", "GET", path)
        if r is None or not r.json()["attestation_ids"]:
            return
        attestation_id = self.rng.choice(r.json()["attestation_ids"])
        r = await self.run.call(client, "attestation.verify", "GET", f"/v1/attestations/{attestation_id}/verify")
        if r is None:
            return
        evidence = r.json()
        if evidence.get("verified") is not True:
            detail = f"attestation {attestation_id} answered verified={evidence.get('verified')!r}"
            self.run.findings.append(Finding(READS, record.session_id, detail))
        elif len(self.run.proofs) < MAX_PROOFS:
            self.run.proofs.append((attestation_id, evidence["entry"], evidence["tlog_proof"]))

    async def trace(self, client: httpx.AsyncClient) -> None:
        record = self.session()
        if record is None:
            return
        r = await self.run.call(client, "trace.verify", "POST", f"/v1/traces/{record.session_id}/verify")
        if r is not None and r.json().get("valid") is not True:
            self.run.findings.append(Finding(READS, record.session_id, f"trace verification said {r.json()}"))


# -- settling and checking -------------------------------------------------------------------------------------------


async def settle_calls(run: Run, stats: Stats, last_kill: float | None, settle: float) -> list[Finding]:
    """Send each lost ``code.execute`` again with its idempotency key until it answers with an outcome, for
    ``settle`` seconds after the last kill (and at least 10 s)."""
    found: list[Finding] = []
    keys = {t.name: t.agents for t in run.tenants}
    deadline = max(time.monotonic() + 10.0, (last_kill or 0.0) + settle)

    async def one(item: Unsettled) -> None:
        headers = {"X-API-Key": keys[item.record.tenant][item.record.agent]}
        async with httpx.AsyncClient(base_url=run.url, headers=headers, timeout=REQUEST_SECONDS) as client:
            last = "no answer"
            while time.monotonic() < deadline:
                body = {**item.body, "request_id": str(uuid.uuid4()), "timestamp": format_timestamp(datetime.now(UTC))}
                r = await run.request(client, "execute.code.again", "POST", "/v1/execute", body=body, stats=stats)
                if r is not None and r.is_success:
                    out = r.json()
                    execution = item.body["execution"]
                    call = record_call(item.record, execution["action_id"], execution["parameters"], out)
                    if call.error_code != "idempotency_key_in_progress":
                        return
                    last = f"{call.status} {call.error_code}"
                elif r is not None and r.status_code < 500:  # refused for good: the key cannot be settled
                    detail = f"sending idempotency key {item.key} again was refused: {r.status_code} {r.text}"
                    found.append(Finding(IDEMPOTENCY, item.record.session_id, detail[:400]))
                    return
                else:
                    last = "no answer" if r is None else _label(r)
                await asyncio.sleep(1.0)
            detail = f"idempotency key {item.key} still answers '{last}' {settle:g} s after the last kill"
            found.append(Finding(IDEMPOTENCY, item.record.session_id, detail))

    await asyncio.gather(*(one(item) for item in run.unsettled))
    return found


async def _pages(client: httpx.AsyncClient, path: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        r = await client.get(path, params={**params, "limit": 1000, "offset": len(items)})
        if r.status_code != 200:
            raise ChaosError(f"GET {path} answered {r.status_code}: {r.text}")
        page = r.json()
        items.extend(page["items"])
        if len(items) >= page["total"] or not page["items"]:
            return items


async def end_sessions(run: Run, stats: Stats) -> list[Finding]:
    """End every session still active, each DELETE on a new connection (so it may reach either worker)."""
    found: list[Finding] = []
    for tenant in run.tenants:
        headers = {"X-API-Key": tenant.admin}
        async with httpx.AsyncClient(base_url=run.url, headers=headers, timeout=REQUEST_SECONDS) as client:
            active = await _pages(client, "/v1/sessions", {"status": "active"})
        for session in active:
            sid = session["session_id"]
            refusals: list[str] = []
            for _ in range(END_ATTEMPTS):
                async with httpx.AsyncClient(base_url=run.url, headers=headers, timeout=REQUEST_SECONDS) as client:
                    path = f"/v1/sessions/{sid}"
                    r = await run.request(client, "session.end.final", "DELETE", path, stats=stats)
                if r is not None and r.is_success:
                    if sid in run.records:
                        run.records[sid].ended = True
                    break
                refusals.append("no answer" if r is None else f"{r.status_code}: {r.text}"[:300])
            if refusals:
                outcome = "then ended" if len(refusals) < END_ATTEMPTS else "never ended"
                detail = f"DELETE refused {len(refusals)} of {END_ATTEMPTS} times ({outcome}); first: {refusals[0]}"
                found.append(Finding(END, sid, detail))
    return found


async def read_trace(client: httpx.AsyncClient, session_id: str) -> list[TraceEvent]:
    """The whole trace as NDJSON, page by page, parsed exactly as served."""
    text, since = "", None
    while True:
        params: dict[str, int] = {"limit": 1000}
        if since is not None:
            params["since_sequence"] = since
        r = await client.get(f"/v1/traces/{session_id}", params=params, headers={"Accept": NDJSON})
        if r.status_code != 200:
            raise ChaosError(f"reading the trace of {session_id} answered {r.status_code}: {r.text}")
        page = loads_trace(r.text)
        text += r.text
        if len(page) < 1000:
            return loads_trace(text)
        since = page[-1].sequence


@dataclass(slots=True)
class Observed:
    """What the checks read back from the server."""

    traces: dict[str, list[TraceEvent]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    sessions: int = 0


async def check_service(run: Run) -> Observed:
    """Read back every session of every tenant, and check it against what was acknowledged."""
    seen = Observed()
    limit = asyncio.Semaphore(8)

    async def session(client: httpx.AsyncClient, sid: str, status: str) -> None:
        async with limit:
            events = await read_trace(client, sid)
            r = await client.post(f"/v1/traces/{sid}/verify")
            server_report = r.json() if r.status_code == 200 else {"status": r.status_code, "body": r.text[:200]}
            seen.traces[sid] = events
            r = await client.get(f"/v1/sessions/{sid}/attestations")
            if r.status_code == 200:
                seen.findings.extend(check_attested(sid, events, r.json()["attestation_ids"]))
            else:
                seen.findings.append(Finding(LEDGER, sid, f"its attestations answered {r.status_code}: {r.text}"))
            if not events:
                seen.findings.append(Finding(CHAIN, sid, "the session has no events"))
            else:
                seen.findings.extend(check_chain(sid, events, server_report))
                seen.findings.extend(check_outcomes(sid, events, EXECUTOR_ACTIONS))
            record = run.records.get(sid)
            if record is not None:
                approvals: dict[str, str | None] = {}
                for approval_id in record.approvals:
                    r = await client.get(f"/v1/approvals/{approval_id}")
                    approvals[approval_id] = r.json()["status"] if r.status_code == 200 else None
                seen.findings.extend(check_acknowledged(record, events, status, approvals))

    for tenant in run.tenants:
        headers = {"X-API-Key": tenant.admin}
        async with httpx.AsyncClient(base_url=run.url, headers=headers, timeout=REQUEST_SECONDS) as client:
            listed = {s["session_id"]: s["status"] for s in await _pages(client, "/v1/sessions", {})}
            seen.sessions += len(listed)
            await asyncio.gather(*(session(client, sid, status) for sid, status in listed.items()))
            for record in run.records.values():
                if record.tenant == tenant.name and record.session_id not in listed:
                    seen.findings.extend(check_acknowledged(record, None, None, {}))
    return seen


def check_ledger(
    data_dir: Path,
    traces: Mapping[str, Sequence[TraceEvent]],
    notes: Iterable[str],
    proofs: Iterable[tuple[str, str, str]] = (),
) -> dict[str, Any]:
    """After the server stopped: every event in the ledger once, every checkpoint read consistent with the final
    one, every inclusion proof read verified with the log's keys, and ``cra ledger check`` on the data directory."""
    found: list[Finding] = []
    events = [e for trace in traces.values() for e in trace]
    figures: dict[str, Any] = {"events": len(events)}
    ledger = open_ledger(data_dir)
    try:
        indexes: dict[int, str] = {}
        missing = 0
        for event in events:
            try:
                index = ledger.index_of(event.event_id)
            except CRAError:
                missing += 1
                if missing <= 10:
                    found.append(Finding(LEDGER, event.session_id, f"event {event.event_id} is not in the ledger"))
                continue
            if index in indexes:
                found.append(
                    Finding(LEDGER, event.session_id, f"events {indexes[index]} and {event.event_id} share {index}")
                )
            indexes[index] = event.event_id
        if missing > 10:
            found.append(Finding(LEDGER, None, f"{missing - 10} more events are not in the ledger"))
        figures.update(size=ledger.size, events_missing=missing)
        if ledger.size != len(events):
            found.append(Finding(LEDGER, None, f"the ledger holds {ledger.size} entries for {len(events)} events"))
        final = open_checkpoint(ledger.checkpoint(), ledger.verifiers, origin=ledger.origin)
        checked = 0
        for note in notes:
            try:
                seen = open_checkpoint(note, ledger.verifiers, origin=ledger.origin)
                proof = ledger.consistency(seen.size, final.size)
                verify_consistency(seen.size, final.size, seen.root, final.root, proof.proof)
                checked += 1
            except CRAError as exc:
                found.append(Finding(LEDGER, None, f"a checkpoint read during the run does not hold: {exc}"))
        figures["checkpoints_read_consistent"] = checked
        verified = 0
        for attestation_id, entry, tlog_proof in proofs:
            try:
                verify_tlog_proof(tlog_proof, entry.encode("utf-8"), ledger.verifiers, origin=ledger.origin)
                verified += 1
            except CRAError as exc:
                found.append(Finding(LEDGER, None, f"the inclusion proof served for {attestation_id} fails: {exc}"))
        figures["inclusion_proofs_read_verified"] = verified
    finally:
        ledger.close()
    done = subprocess.run(  # noqa: S603 - the project's own command line
        [sys.executable, "-m", "cra", "ledger", "check", "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        report = json.loads(done.stdout) if done.returncode == 0 else None
    except ValueError:
        report = None
    figures["cra_ledger_check"] = report or {"ok": False, "exit_code": done.returncode, "stderr": done.stderr[-500:]}
    if report is None or report.get("ok") is not True:
        found.append(Finding(LEDGER, None, f"cra ledger check failed ({done.returncode}): {done.stderr[-500:]}"))
    figures["findings"] = found
    return figures


def leftover_scratch(scratch: Path) -> list[Finding]:
    return [
        Finding(SCRATCH, None, f"{path.name} is left in the server's temporary directory")
        for path in sorted(scratch.glob(f"{SCRATCH_PREFIX}*"))
    ]


# -- the run ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    seconds: float
    tenants: int = 3
    agents: int = 2
    workers: int = 2
    kill_every: float = 4.0
    seed: int = 12
    port: int | None = None
    code: bool = True
    settle_seconds: float = SETTLE_SECONDS


async def run_chaos(options: Options, workdir: Path) -> dict[str, Any]:
    """The whole run in ``workdir``; the report."""
    started = datetime.now(UTC)
    wall = time.monotonic()
    data_dir, scratch, logs = workdir / "data", workdir / "tmp", workdir
    scratch.mkdir(parents=True, exist_ok=True)
    sandbox = options.code and WasmSandbox().built()
    code_note = (
        "code.execute runs in the WebAssembly sandbox"
        if sandbox
        else "code.execute is left out: "
        + ("--no-code" if not options.code else "the WebAssembly sandbox is not built (uv run cra sandbox build)")
    )
    tenants = await issue_keys(data_dir, options.tenants, options.agents)
    server = Serve(data_dir, scratch, logs, options.port or free_port(), options.workers, sandbox)
    rng = random.Random(options.seed)
    run = Run(server.url, tenants, sandbox)
    kills: list[Kill] = []
    watch = WorkerWatch(server)
    settle_stats = Stats()
    findings: list[Finding] = []
    try:
        startup = await server.ready(options.workers, STARTUP_SECONDS)
        await load_atlases(
            server.url, tenants, ["customer-support", "code-sandbox"] if sandbox else ["customer-support"]
        )
        stop, chaos_stop, watch_stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
        tasks = []
        for t, tenant in enumerate(tenants):
            for a, agent_id in enumerate(tenant.agents):
                tasks.append(asyncio.create_task(Agent(run, tenant, agent_id, rng.getrandbits(32) + a).loop(stop)))
            tasks.append(asyncio.create_task(approver_loop(run, tenant, stop, rng.getrandbits(32) + t)))
            tasks.append(asyncio.create_task(Auditor(run, tenant, rng.getrandbits(32) + t).loop(stop)))
        watching = asyncio.create_task(watch.loop(watch_stop))
        chaos = asyncio.create_task(
            chaos_loop(server, watch, chaos_stop, random.Random(options.seed), options.kill_every, kills)
        )
        load_start = time.monotonic()
        await asyncio.sleep(options.seconds)
        chaos_stop.set()
        stop.set()
        await asyncio.gather(*tasks)
        load_seconds = time.monotonic() - load_start
        await chaos
        print("chaos: load stopped; settling", file=sys.stderr)
        settle_start = time.monotonic()
        # Every worker ready again (a replacement that never came is a finding, not the end of the run),
        # and everything committed sealed: a ledger read flushes first.
        try:
            await server.ready(options.workers + sum(k.ready_after is not None for k in kills), RESTART_SECONDS)
        except ChaosError:
            if not server.alive():
                raise
            print(f"chaos: fewer than {options.workers} workers are ready; checking anyway", file=sys.stderr)
        async with httpx.AsyncClient(base_url=server.url, timeout=REQUEST_SECONDS) as client:
            await client.get("/v1/ledger/checkpoint", headers={"X-API-Key": tenants[0].admin})
        last_kill = kills[-1].at if kills else None
        findings += await settle_calls(run, settle_stats, last_kill, options.settle_seconds)
        findings += await end_sessions(run, settle_stats)
        check_start = time.monotonic()
        observed = await check_service(run)
        findings += observed.findings + run.findings
        watch_stop.set()  # before the server stops its workers
        await watching
    finally:
        exit_code = server.stop()
    ledger_start = time.monotonic()
    ledger = check_ledger(data_dir, observed.traces, run.checkpoints, run.proofs)
    findings += ledger.pop("findings")
    findings += leftover_scratch(scratch)
    findings += restart_findings(kills, watch.exits)
    records = run.records.values()
    losses = [f for f in findings if f.invariant == LOSS]
    return {
        "format": FORMAT,
        "started_at": format_timestamp(started),
        **verdict(findings),
        "seconds": {
            "requested": options.seconds,
            "startup": round(startup, 2),
            "load": round(load_seconds, 2),
            "settle": round(check_start - settle_start, 2),
            "check": round(ledger_start - check_start, 2),
            "ledger_check": round(time.monotonic() - ledger_start, 2),
            "total": round(time.monotonic() - wall, 2),
        },
        "server": {
            "command": "python -m cra serve --workers N --key-rate 0 --no-demo --log-level info",
            "workers": options.workers,
            "database": "SQLite in the data directory (embedded default)",
            "sealing": "background",
            "code_execute": sandbox,
            "code_execute_note": code_note,
            "startup_seconds": round(startup, 2),
            "exit_code": exit_code,
            "log_error_lines": server.watch.error_lines,
            "log_errors": server.watch.errors,
            "workers_died_per_log": server.watch.died,
        },
        "load": {"tenants": options.tenants, "agents_per_tenant": options.agents, "seed": options.seed},
        "operations": run.stats.operations(),
        "errors": error_figures(run.stats, kills),
        "chaos": {
            **chaos_figures(kills, options.kill_every),
            "workers_gone_unkilled": [{"pid": e.pid, "age": e.age, "served": e.served} for e in watch.exits],
        },
        "kills": len(kills),
        "restarts_seen": sum(k.started_after is not None for k in kills),
        "acknowledged": {
            "sessions": len(run.records),
            "resolutions": sum(len(r.resolutions) for r in records),
            "calls": sum(len(r.calls) for r in records),
            "evidence_events": sum(len(r.evidence) for r in records),
            "approvals_decided": sum(s in ("approved", "denied") for r in records for s in r.approvals.values()),
            "tickets_redeemed": sum(len(r.redeemed) for r in records),
            "sessions_ended": sum(r.ended for r in records),
            "checkpoints_read": len(run.checkpoints),
        },
        "settle": {
            "lost_code_calls_sent_again": len(run.unsettled),
            "operations": settle_stats.operations(),
            "errors": error_figures(settle_stats, ()),
        },
        "sessions_checked": observed.sessions,
        "losses": len(losses),
        "chain_failures": sum(f.invariant == CHAIN for f in findings),
        "calls_without_outcome": sum(f.count for f in findings if f.invariant == OUTCOME),
        "stuck_idempotency_keys": sum(f.invariant == IDEMPOTENCY for f in findings),
        "sessions_refused_end": sum(f.invariant == END for f in findings),
        "read_failures": sum(f.invariant == READS for f in findings),
        "leftover_scratch": sum(f.invariant == SCRATCH for f in findings),
        "ledger": {**ledger, "ok": not any(f.invariant == LEDGER for f in findings)},
        "findings": [f.to_dict() for f in findings[:100]],
        "findings_total": len(findings),
    }


def summary(report: Mapping[str, Any]) -> str:
    """The report in a few lines of words."""
    ops = report["operations"]
    lines = [
        f"chaos run: {'OK' if report['ok'] else 'FAILED: ' + ', '.join(report['failed'])}",
        f"  {report['seconds']['load']} s of load, {ops['sent']} operations, {ops['acknowledged']} acknowledged; "
        f"{report['errors']['total']} errors ({report['errors']['by_status']})",
        f"  kills {report['kills']}, restarts seen {report['restarts_seen']}; {report['server']['code_execute_note']}",
        f"  losses {report['losses']}, chain failures {report['chain_failures']}, calls without outcome "
        f"{report['calls_without_outcome']}, stuck idempotency keys {report['stuck_idempotency_keys']}, "
        f"sessions refused end {report['sessions_refused_end']}, leftover scratch {report['leftover_scratch']}, "
        f"ledger ok {report['ledger']['ok']}",
    ]
    lines += [f"  - {f['invariant']}: {f['session_id'] or ''} {f['detail']}" for f in report["findings"][:20]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Kill cra serve's workers under load; check nothing acknowledged is lost."
    )
    parser.add_argument("--seconds", type=float, default=45.0, help="seconds of load and chaos (default 45)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--out", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--tenants", type=int, default=3, help="tenants (default 3)")
    parser.add_argument("--agents", type=int, default=2, help="agents per tenant (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="cra serve worker processes (default 2)")
    parser.add_argument("--kill-every", type=float, default=4.0, help="seconds between kills (default 4)")
    parser.add_argument("--seed", type=int, default=12, help="seed of the load's choices (default 12)")
    parser.add_argument("--port", type=int, help="the port to serve on (default: a free one)")
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=SETTLE_SECONDS,
        help=f"how long after the last kill a lost call may still be 'in progress' (default {SETTLE_SECONDS:g})",
    )
    parser.add_argument("--no-code", action="store_true", help="leave code.execute out even if the sandbox is built")
    parser.add_argument("--workdir", type=Path, help="keep the data dir and logs here (default: a removed temp dir)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.tenants < 1 or args.agents < 1 or args.kill_every <= 0:
        parser.error("--seconds, --tenants, --agents and --kill-every must be positive")
    if args.workers < 2:
        parser.error("--workers must be at least 2: a killed worker's requests need another to go to")
    options = Options(
        seconds=args.seconds,
        tenants=args.tenants,
        agents=args.agents,
        workers=args.workers,
        kill_every=args.kill_every,
        seed=args.seed,
        port=args.port,
        code=not args.no_code,
        settle_seconds=args.settle_seconds,
    )
    try:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            report = asyncio.run(run_chaos(options, args.workdir))
        else:
            with tempfile.TemporaryDirectory(prefix="cra-chaos-") as tmp:
                report = asyncio.run(run_chaos(options, Path(tmp)))
    except ChaosError as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text if args.json else summary(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

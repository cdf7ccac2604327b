"""Measure CRA's hot paths and print the figures as one JSON document.

Run it with::

    uv run python tools/bench_eval.py            # the full run
    uv run python tools/bench_eval.py --quick    # smaller counts, for CI smoke runs
    uv run python tools/bench_eval.py --seed 7 --out bench.json

Workloads:

* ``agent-tool-authz-v1``: ``Engine.evaluate`` on a 50-action, ~100-policy
  atlas built here (10 resources x 5 verbs, 5 roles, 100 agents), with the
  cost of ``Decision.explain()`` and two anchors (an empty Python call and a
  dict lookup) measured in the same run, so ratios survive a change of machine.
* ``resolve-50-actions``: a full CARP ``Resolver.resolve`` of the same atlas,
  including its trace events.
* ``trace-append``: ``build_event`` chained on the previous event, then
  ``MemoryEventStore.append``.
* ``chain-verify``: ``verify_chain`` over one long chain.
* ``governed-call``: the in-process governed call of the customer-support example
  (one resolve, then ``Resolver.execute`` of ``order.lookup`` per call, its
  executor a dictionary lookup), three ways in the same run: with the trace in
  memory only; with a data directory's audit ledger sealing every call before it
  answers (an fsync'd SQLite commit each); and with the same ledger sealing in
  the background (``seal_in_background=True``), flushed once at the end.

Latencies are wall-clock times of single calls taken with ``perf_counter_ns``
on either side, so every sample also holds the cost of one timer read (reported
as ``timer_overhead_p50_ns``). The garbage collector stays on, as it would in a
host process. Figures are comparable only between runs on the same machine;
tests never assert them (DESIGN §7, "measure, don't time-test").
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from _bench import Target, attach_targets, call_anchors, emit, environment, latency_summary, p50_ns
from cra import (
    Decision,
    Engine,
    MemoryEventStore,
    Resolver,
    SystemClock,
    SystemIds,
    TraceEvent,
    open_ledger,
    verify_chain,
)
from cra.policy.resolve import evaluate_actions, policy_event_payload
from cra.trace.event import build_event, format_timestamp

FORMAT: Final = "cra.bench_eval/1"

RESOURCES: Final = (
    "documents",
    "tickets",
    "payments",
    "invoices",
    "users",
    "reports",
    "orders",
    "customers",
    "projects",
    "secrets",
)
VERBS: Final = ("read", "list", "create", "update", "delete")
ROLES: Final = ("viewer", "editor", "finance", "ops", "admin")
AGENTS: Final = tuple(f"agent-{i:03d}" for i in range(100))
_VERB_RISK: Final = {"read": "low", "list": "low", "create": "medium", "update": "medium", "delete": "high"}

#: Per-role grants as (role, verbs, resources); each (role, resource, verb) becomes one allow policy.
GRANTS: Final[tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]] = (
    ("viewer", ("read", "list"), RESOURCES),
    ("editor", ("read", "list"), RESOURCES),
    (
        "editor",
        ("create", "update"),
        ("documents", "tickets", "invoices", "users", "reports", "orders", "customers", "projects"),
    ),
    ("editor", ("delete",), ("documents", "tickets", "reports")),
    ("finance", ("read", "list", "create", "update"), ("payments", "invoices")),
    ("finance", ("read", "list"), ("orders", "customers", "reports")),
    ("finance", ("delete",), ("invoices",)),
    ("ops", ("read", "list", "create", "update"), ("users", "projects", "tickets")),
    ("ops", ("read", "list", "update"), ("secrets",)),
    ("ops", ("delete",), ("users", "projects")),
)


@dataclass(frozen=True, slots=True)
class Counts:
    """How much work each workload does."""

    eval_requests: int
    eval_warmup: int
    explain_decisions: int
    resolves: int
    resolve_warmup: int
    resolves_per_session: int
    trace_events: int
    chain_events: int
    chain_repeats: int
    governed_calls: int = 2_000


FULL: Final = Counts(
    eval_requests=20_000,
    eval_warmup=2_000,
    explain_decisions=1_000,
    resolves=2_000,
    resolve_warmup=100,
    resolves_per_session=100,
    trace_events=20_000,
    chain_events=100_000,
    chain_repeats=3,
)
QUICK: Final = Counts(
    eval_requests=2_000,
    eval_warmup=200,
    explain_decisions=200,
    resolves=200,
    resolve_warmup=20,
    resolves_per_session=100,
    trace_events=2_000,
    chain_events=10_000,
    chain_repeats=1,
    governed_calls=200,
)


TARGETS: Final[dict[str, dict[str, Target]]] = {
    "agent-tool-authz-v1": {"p50_us": Target(3.0), "p99_us": Target(15.0)},
    "resolve-50-actions": {"p95_us": Target(100.0)},
    "trace-append": {"p50_us": Target(5.0)},
    "chain-verify": {"events_per_second": Target(200_000, higher_is_better=True)},
}
#: Issue #13's targets for the governed call in process: 30 µs in memory, 40 µs with the ledger attached.
GOVERNED_TARGETS: Final = {"memory": 30.0, "ledger-background": 40.0}
SUPPORT_ATLAS: Final = Path(__file__).resolve().parents[1] / "examples" / "atlases" / "customer-support"


# -- the authorization atlas ---------------------------------------------------------------------------------------


def _allow(policy_id: str, name: str, actions: list[str], roles: list[str]) -> dict[str, Any]:
    return {
        "policy_id": policy_id,
        "name": name,
        "type": "allow",
        "actions": actions,
        "conditions": {"roles": roles},
    }


def _deny(policy_id: str, name: str, actions: list[str], conditions: dict[str, Any], reason: str) -> dict[str, Any]:
    return {
        "policy_id": policy_id,
        "name": name,
        "type": "deny",
        "actions": actions,
        "conditions": conditions,
        "parameters": {"reason": reason},
    }


def build_authz_atlas() -> dict[str, Any]:
    """The ``agent-tool-authz-v1`` atlas: 50 actions, per-role grants, guards and an admin wildcard."""
    actions = [
        {
            "action_id": f"{resource}.{verb}",
            "name": f"{verb.capitalize()} {resource}",
            "description": f"{verb.capitalize()} {resource} in the system of record.",
            "risk_tier": _VERB_RISK[verb],
        }
        for resource in RESOURCES
        for verb in VERBS
    ]
    policies = [
        _deny(
            "deny-delete-unless-admin",
            "Only admins delete",
            ["*.delete"],
            {"not_roles": ["admin"]},
            "Deleting records is reserved for admins.",
        ),
        _deny(
            "deny-large-payments",
            "Large payments need finance",
            ["payments.*"],
            {"params": {"amount": {"gt": 1000}}, "not_roles": ["finance", "admin"]},
            "Payments above 1000 are handled by finance.",
        ),
        _deny(
            "deny-large-invoices",
            "Large invoices need finance",
            ["invoices.create", "invoices.update"],
            {"params": {"amount": {"gt": 1000}}, "not_roles": ["finance", "admin"]},
            "Invoices above 1000 are issued by finance.",
        ),
        _deny(
            "deny-large-orders",
            "Very large orders need finance",
            ["orders.create", "orders.update"],
            {"params": {"amount": {"gt": 4000}}, "not_roles": ["finance", "admin"]},
            "Orders above 4000 are booked by finance.",
        ),
        _allow("allow-admin-all", "Admins may do anything not denied", ["*"], ["admin"]),
    ]
    for role, verbs, resources in GRANTS:
        for resource in resources:
            for verb in verbs:
                action = f"{resource}.{verb}"
                policies.append(
                    _allow(f"allow-{role}-{resource}-{verb}", f"{role} may {verb} {resource}", [action], [role])
                )
    return {
        "atlas_version": "1.0",
        "atlas_id": "com.cra.bench.authz",
        "version": "1.0.0",
        "name": "Agent tool authorization benchmark",
        "description": "Role-based grants over 10 resources x 5 verbs, with delete and large-amount guards.",
        "actions": actions,
        "policies": policies,
    }


def role_of(agent_index: int) -> str:
    return ROLES[agent_index % len(ROLES)]


def check_semantics(engine: Engine) -> None:
    """Refuse to benchmark an atlas that does not decide as designed."""
    probes = (
        ("documents.read", "viewer", 0, "allow", "allow-viewer-documents-read"),
        ("documents.delete", "editor", 0, "deny", "deny-delete-unless-admin"),
        ("payments.delete", "admin", 5000, "allow", "allow-admin-all"),
        ("payments.read", "viewer", 1001, "deny", "deny-large-payments"),
        ("payments.create", "finance", 5000, "allow", "allow-finance-payments-create"),
        ("secrets.create", "ops", 0, "deny", None),
    )
    for action, role, amount, effect, policy_id in probes:
        decision = engine.evaluate(action=action, agent="probe", roles=[role], params={"amount": amount})
        if decision.effect.value != effect or decision.policy_id != policy_id:
            raise RuntimeError(f"atlas check failed for {role} {action}: {decision.explain()}")
    missing = engine.evaluate(action="payments.read", agent="probe", roles=["viewer"], params={})
    if missing.allowed:
        raise RuntimeError("a deny guard that reads a missing amount must fail closed")


# -- measuring -----------------------------------------------------------------------------------------------------


def measure_anchors(n: int) -> dict[str, Any]:
    """The shared anchors, and a dict lookup timed inline (no call around it), as the workloads are."""
    anchors = call_anchors(n, timed_like="Engine.evaluate")
    clock = time.perf_counter_ns
    table = {action: i for i, action in enumerate(f"{r}.{v}" for r in RESOURCES for v in VERBS)}
    key = "payments.update"
    lookup: list[int] = []
    for _ in range(n):
        t0 = clock()
        _ = table[key]
        t1 = clock()
        lookup.append(t1 - t0)
    anchors["dict_lookup_p50_ns"] = p50_ns(lookup)
    return anchors


# -- workloads -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvalCall:
    action: str
    agent: str
    roles: tuple[str, ...]
    params: Mapping[str, Any]


def generate_requests(rng: random.Random, n: int) -> list[EvalCall]:
    actions = [f"{r}.{v}" for r in RESOURCES for v in VERBS]
    out = []
    for _ in range(n):
        agent_index = rng.randrange(len(AGENTS))
        out.append(
            EvalCall(
                action=rng.choice(actions),
                agent=AGENTS[agent_index],
                roles=(role_of(agent_index),),
                params={"amount": rng.randint(0, 5000)},
            )
        )
    return out


def bench_evaluate(
    engine: Engine, atlas: Mapping[str, Any], counts: Counts, seed: int
) -> tuple[dict[str, Any], list[Decision]]:
    rng = random.Random(seed)
    warmup = generate_requests(rng, counts.eval_warmup)
    calls = generate_requests(rng, counts.eval_requests)
    evaluate = engine.evaluate
    clock = time.perf_counter_ns

    for c in warmup:
        evaluate(action=c.action, agent=c.agent, roles=c.roles, params=c.params)

    gc.collect()
    samples: list[int] = []
    decisions: list[Decision] = []
    for c in calls:
        t0 = clock()
        decision = evaluate(action=c.action, agent=c.agent, roles=c.roles, params=c.params)
        t1 = clock()
        samples.append(t1 - t0)
        decisions.append(decision)

    gc.collect()
    start = clock()
    for c in calls:
        evaluate(action=c.action, agent=c.agent, roles=c.roles, params=c.params)
    elapsed = clock() - start

    gc.collect()
    explain_samples: list[int] = []
    for decision in decisions[: counts.explain_decisions]:
        t0 = clock()
        decision.explain()
        t1 = clock()
        explain_samples.append(t1 - t0)
    sample = next((d for d in decisions if d.reason_code == "policy_deny"), decisions[0])

    latency = latency_summary(samples)
    anchors = measure_anchors(counts.eval_requests)
    evaluate_p50 = latency["p50"] * 1000
    anchors["evaluate_p50_over_empty_call"] = round(evaluate_p50 / anchors["empty_call_p50_ns"], 1)
    anchors["evaluate_p50_over_dict_lookup"] = round(evaluate_p50 / anchors["dict_lookup_p50_ns"], 1)

    effects = Counter(d.effect.value for d in decisions)
    result = {
        "description": "Engine.evaluate(action, agent, roles=[role], params={'amount': ...}), one call at a time",
        "atlas": {
            "atlas_id": atlas["atlas_id"],
            "actions": len(atlas["actions"]),
            "policies": len(atlas["policies"]),
            "roles": list(ROLES),
            "agents": len(AGENTS),
            "digest": engine.digest,
        },
        "requests": len(calls),
        "warmup": len(warmup),
        "latency_us": latency,
        "ops_per_second": round(len(calls) / (elapsed / 1e9)),
        "decision_mix": {
            "allow": effects.get("allow", 0),
            "deny": effects.get("deny", 0),
            "requires_approval": effects.get("requires_approval", 0),
            "by_reason_code": dict(sorted(Counter(d.reason_code for d in decisions).items())),
        },
        "explain": {
            "decisions": len(explain_samples),
            "p50_us": round(p50_ns(explain_samples) / 1000, 3),
            "sample": sample.explain().splitlines(),
        },
        "anchors": anchors,
    }
    return result, decisions


def _resolve_request(agent: str, session_id: str, request_id: str, timestamp: str) -> dict[str, Any]:
    return {
        "carp_version": "1.0",
        "request_id": request_id,
        "timestamp": timestamp,
        "operation": "resolve",
        "requester": {"agent_id": agent, "session_id": session_id},
        "task": {"goal": "Triage today's open tickets and update the affected customer records", "risk_tier": "low"},
    }


def bench_resolve(atlas: Mapping[str, Any], counts: Counts) -> dict[str, Any]:
    clock = SystemClock()
    ids = SystemIds()
    resolver = Resolver(clock=clock, ids=ids)
    resolver.load_atlas(atlas)
    goal = "Benchmark session"
    perf = time.perf_counter_ns

    warm_session = resolver.create_session(AGENTS[0], goal, roles=[role_of(0)])
    for _ in range(counts.resolve_warmup):
        request = _resolve_request(AGENTS[0], warm_session, ids.new_id(), format_timestamp(clock.now()))
        resolver.resolve(request)

    gc.collect()
    samples: list[int] = []
    decision_types: Counter[str] = Counter()
    allowed = 0
    events = 0
    sessions = math.ceil(counts.resolves / counts.resolves_per_session)
    for k in range(sessions):
        agent = AGENTS[k % len(AGENTS)]
        session_id = resolver.create_session(agent, goal, roles=[role_of(k % len(AGENTS))])
        before = len(resolver.get_trace(session_id))
        todo = min(counts.resolves_per_session, counts.resolves - k * counts.resolves_per_session)
        for _ in range(todo):
            request = _resolve_request(agent, session_id, ids.new_id(), format_timestamp(clock.now()))
            t0 = perf()
            resolution = resolver.resolve(request)
            t1 = perf()
            samples.append(t1 - t0)
            decision_types[resolution["decision"]["type"]] += 1
            allowed += len(resolution["allowed_actions"])
        events += len(resolver.get_trace(session_id)) - before
        resolver.verify_chain(session_id)

    latency = latency_summary(samples)
    return {
        "description": "Resolver.resolve(carp_request) over the 50-action atlas: policies, context and trace events",
        "policy_decisions": bench_resolve_decisions(resolver, counts),
        "resolves": len(samples),
        "sessions": sessions,
        "warmup": counts.resolve_warmup,
        "latency_us": latency,
        "resolves_per_second": round(1e6 / latency["mean"]),
        "trace_events_per_resolve": round(events / len(samples), 1),
        "allowed_actions_per_resolve": round(allowed / len(samples), 1),
        "decision_types": dict(sorted(decision_types.items())),
    }


def bench_resolve_decisions(resolver: Resolver, counts: Counts) -> dict[str, Any]:
    """The pure part of a resolve, uncached: all 50 actions decided without arguments.

    The rest of a resolve is recording its events (one per action, as TRACE/1.0's
    golden case requires) and building the document; ``trace-append`` prices one event.
    """
    compiled = [resolver.compiled(a.atlas_id) for a in resolver.atlases]
    perf = time.perf_counter_ns
    samples: list[int] = []
    for k in range(counts.resolves):
        agent_index = k % len(AGENTS)
        t0 = perf()
        evaluate_actions(
            compiled,
            agent=AGENTS[agent_index],
            roles=frozenset((role_of(agent_index),)),
            risk_tier="low",
            context={},
            now=None,
            session_id=None,
            tenant_id=None,
        )
        samples.append(perf() - t0)
    return {
        "description": "cra.policy.resolve.evaluate_actions over the 50 actions, without the resolver's memo",
        "latency_us": latency_summary(samples),
    }


def build_chain(payloads: Sequence[Mapping[str, Any]], n: int) -> list[TraceEvent]:
    """A valid chain of ``n`` ``policy.evaluated`` events in one session."""
    ids = SystemIds()
    session_id, trace_id, span_id = ids.new_id(), ids.new_id(), ids.new_id()
    start = datetime.now(UTC)
    chain: list[TraceEvent] = []
    previous: TraceEvent | None = None
    for i in range(n):
        previous = build_event(
            previous,
            event_id=ids.new_id(),
            trace_id=trace_id,
            span_id=span_id,
            parent_span_id=None,
            session_id=session_id,
            timestamp=format_timestamp(start + timedelta(microseconds=i)),
            event_type="policy.evaluated",
            payload=payloads[i % len(payloads)],
        )
        chain.append(previous)
    return chain


def bench_trace_append(payloads: Sequence[Mapping[str, Any]], counts: Counts) -> dict[str, Any]:
    n = counts.trace_events
    ids = SystemIds()
    session_id, trace_id, span_id, root_span = ids.new_id(), ids.new_id(), ids.new_id(), ids.new_id()
    event_ids = [ids.new_id() for _ in range(n)]
    start = datetime.now(UTC)
    timestamps = [format_timestamp(start + timedelta(microseconds=i)) for i in range(n)]
    store = MemoryEventStore()
    perf = time.perf_counter_ns

    gc.collect()
    samples: list[int] = []
    previous: TraceEvent | None = None
    for i in range(n):
        t0 = perf()
        event = build_event(
            previous,
            event_id=event_ids[i],
            trace_id=trace_id,
            span_id=span_id,
            parent_span_id=root_span,
            session_id=session_id,
            timestamp=timestamps[i],
            event_type="policy.evaluated",
            payload=payloads[i % len(payloads)],
        )
        store.append(event)
        t1 = perf()
        samples.append(t1 - t0)
        previous = event
    verify_chain(store.events(session_id))

    latency = latency_summary(samples)
    return {
        "description": "build_event (SHA-256 over the canonical fields) chained on the previous event, then "
        "MemoryEventStore.append; ids and timestamps are prepared beforehand",
        "events": n,
        "payload_example": dict(payloads[0]),
        "latency_us": latency,
        "events_per_second": round(1e6 / latency["mean"]),
    }


def bench_chain_verify(payloads: Sequence[Mapping[str, Any]], counts: Counts) -> dict[str, Any]:
    chain = build_chain(payloads, counts.chain_events)
    perf = time.perf_counter_ns
    runs: list[float] = []
    for _ in range(counts.chain_repeats):
        gc.collect()
        t0 = perf()
        verify_chain(chain)
        runs.append((perf() - t0) / 1e9)
    median = statistics.median(runs)
    return {
        "description": "verify_chain over one session's chain: sequence, link and recomputed hash of every event",
        "events": len(chain),
        "runs": len(runs),
        "seconds_per_run": [round(s, 4) for s in runs],
        "events_per_second": round(len(chain) / median),
        "per_event_us": round(median / len(chain) * 1e6, 3),
    }


# -- the report ----------------------------------------------------------------------------------------------------


def _governed_calls(resolver: Resolver, calls: int) -> list[int]:
    """Resolve once, then time ``calls`` governed executes of ``order.lookup``."""
    clock, ids = SystemClock(), SystemIds()
    resolver.load_atlas(SUPPORT_ATLAS)
    resolver.register_executor("order.lookup", lambda args: {"found": args["order_id"] in {"42", "43"}})
    session_id = resolver.create_session("support-bot", "Look up orders", roles=["agent"])
    request = {
        "carp_version": "1.0",
        "request_id": ids.new_id(),
        "timestamp": format_timestamp(clock.now()),
        "operation": "resolve",
        "requester": {"agent_id": "support-bot", "session_id": session_id},
        "task": {"goal": "Look up orders", "risk_tier": "low"},
    }
    resolution_id = resolver.resolve(request)["resolution_id"]
    perf = time.perf_counter_ns
    samples: list[int] = []
    for n in range(calls):
        execution = {"resolution_id": resolution_id, "action_id": "order.lookup", "parameters": {"order_id": str(n)}}
        call = {**request, "request_id": ids.new_id(), "operation": "execute", "execution": execution}
        call["timestamp"] = format_timestamp(clock.now())
        t0 = perf()
        answer = resolver.execute(call)
        samples.append(perf() - t0)
        if answer["status"] != "success":
            raise AssertionError(f"the governed call was not allowed: {answer}")
    resolver.verify_chain(session_id)
    return samples


def bench_governed_call(counts: Counts) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": "Resolver.execute of an allowed call with its executor, after one resolve (customer-support)",
        "calls": counts.governed_calls,
        "targets_p50_us": GOVERNED_TARGETS,
    }
    gc.collect()
    out["memory"] = {"latency_us": latency_summary(_governed_calls(Resolver(), counts.governed_calls))}
    for name, background in (("ledger-sync", False), ("ledger-background", True)):
        with tempfile.TemporaryDirectory(prefix="cra-bench-") as data_dir:
            ledger = open_ledger(Path(data_dir), create=True)
            resolver = Resolver(ledger=ledger, seal_in_background=background)
            try:
                gc.collect()
                samples = _governed_calls(resolver, counts.governed_calls)
                flushed = perf_flush(resolver)
                out[name] = {"latency_us": latency_summary(samples), "final_flush_ms": flushed, "size": ledger.size}
            finally:
                resolver.close()
                ledger.close()
    for name, target in GOVERNED_TARGETS.items():
        p50 = out[name]["latency_us"]["p50"]
        out[name]["target_p50_us"] = {"value": p50, "target": f"<= {target:g}", "meets_target": p50 <= target}
    out["ratio_sync_to_background_p50"] = round(
        out["ledger-sync"]["latency_us"]["p50"] / out["ledger-background"]["latency_us"]["p50"], 1
    )
    return out


def perf_flush(resolver: Resolver) -> float:
    """Milliseconds the final flush waited for the sealer (0 for a resolver that seals per call)."""
    started = time.perf_counter()
    resolver.flush()
    return round((time.perf_counter() - started) * 1000, 3)


def run(counts: Counts, seed: int, mode: str) -> dict[str, Any]:
    started = datetime.now(UTC)
    wall = time.perf_counter()
    atlas = build_authz_atlas()
    engine = Engine.from_atlas(atlas)
    check_semantics(engine)

    authz, decisions = bench_evaluate(engine, atlas, counts, seed)
    payloads = [policy_event_payload(d) for d in decisions[:1000]]
    workloads: dict[str, dict[str, Any]] = {
        "agent-tool-authz-v1": authz,
        "resolve-50-actions": bench_resolve(atlas, counts),
        "trace-append": bench_trace_append(payloads, counts),
        "chain-verify": bench_chain_verify(payloads, counts),
        "governed-call": bench_governed_call(counts),
    }
    summary = attach_targets(workloads, TARGETS)
    return {
        "format": FORMAT,
        "mode": mode,
        "seed": seed,
        "started_at": format_timestamp(started),
        "duration_seconds": round(time.perf_counter() - wall, 2),
        "environment": environment(),
        "workloads": workloads,
        "summary": summary,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark CRA's evaluate, resolve and trace paths; print JSON.")
    parser.add_argument("--quick", action="store_true", help="smaller counts, for CI smoke runs")
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the request generator (default 1234)")
    args = parser.parse_args(argv)

    report = run(QUICK if args.quick else FULL, args.seed, "quick" if args.quick else "full")
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

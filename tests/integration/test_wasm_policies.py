"""``wasm`` policies through the engine and the resolver: a module may deny, never grant, and fails closed."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cra import AtlasError, Engine, ManualClock, PolicyError, Resolver, SeededIds, load_atlas
from cra.policy.decision import Effect, EvalRequest
from cra.policy.modules import DEFAULT_DEADLINE_MS, MAX_FUEL, ModuleAnswer, ModuleLimits, module_request
from cra.sandbox import load_policy_module

FIXTURES = Path(__file__).parents[1] / "fixtures"
GUARD = FIXTURES / "atlases" / "module-guard"
MODULES = FIXTURES / "policy_modules"


def _guarded_by(tmp_path: Path, module: str, **parameters: Any) -> Path:
    """The module-guard atlas with its refund module replaced by ``module``."""
    package = tmp_path / "atlas"
    shutil.copytree(GUARD, package)
    shutil.copyfile(MODULES / module, package / "modules" / module)
    manifest = json.loads((package / "atlas.json").read_text())
    manifest["policies"][0]["parameters"] = {"module": f"modules/{module}", **parameters}
    (package / "atlas.json").write_text(json.dumps(manifest))
    return package


def _decide(engine: Engine, action: str = "refund.create", **params: Any) -> Any:
    return engine.evaluate(action=action, agent="bot", roles=["agent"], params=params)


def test_the_module_denies_what_it_refuses_and_the_allow_grants_the_rest() -> None:
    engine = Engine.from_atlas(GUARD, modules=load_policy_module)
    small = _decide(engine, "refund.small", amount=5)
    assert (small.effect, small.policy_id) == (Effect.ALLOW, "allow-agents")
    other = _decide(engine, "refund.create", amount=5)
    assert (other.effect, other.policy_id, other.reason_code) == (Effect.DENY, "refund-module", "module_deny")
    assert "refund.small" in other.reason
    lookup = _decide(engine, "order.lookup")
    assert (lookup.effect, lookup.policy_id) == (Effect.ALLOW, "allow-agents")


def test_a_module_cannot_grant_what_no_allow_grants() -> None:
    engine = Engine.from_atlas(GUARD, modules=load_policy_module)
    without_role = engine.evaluate(action="refund.small", agent="bot", roles=[], params={"amount": 1})
    assert (without_role.effect, without_role.reason_code) == (Effect.DENY, "default_deny")


def test_an_atlas_with_a_wasm_policy_needs_a_host_that_runs_modules() -> None:
    with pytest.raises(PolicyError) as err:
        Engine.from_atlas(GUARD)
    assert err.value.path == "/policies/0/type"
    assert "WebAssembly" in err.value.reason


@pytest.mark.parametrize(
    ("module", "failure"),
    [
        ("trap.wat", "trap"),
        ("loop.wat", "out_of_fuel"),
        ("memory_hog.wat", "memory"),
        ("bad_pointer.wat", "bad_pointer"),
        ("bad_json.wat", "bad_json"),
        ("wrong_shape.wat", "bad_shape"),
    ],
)
def test_a_failing_module_denies_and_says_why(tmp_path: Path, module: str, failure: str) -> None:
    engine = Engine.from_atlas(_guarded_by(tmp_path, module, fuel=100_000, memory_mb=2), modules=load_policy_module)
    first = _decide(engine, amount=5)
    assert (first.effect, first.policy_id, first.reason_code) == (Effect.DENY, "refund-module", "module_failure")
    assert first.reason
    again = _decide(engine, amount=5)
    assert (again.effect, again.reason) == (first.effect, first.reason)
    lookup = _decide(engine, "order.lookup")
    assert lookup.effect is Effect.ALLOW
    verdict = load_policy_module((MODULES / module).read_bytes(), ModuleLimits(100_000, 2 << 20))(
        module_request(_request())
    )
    assert verdict == ModuleAnswer(False, verdict.reason, failure)


def _request() -> EvalRequest:
    return EvalRequest("refund.create", "bot", frozenset({"agent"}), None, {"amount": 5})


@pytest.mark.parametrize(("module", "word"), [("imports.wat", "import"), ("no_alloc.wat", "alloc")])
def test_a_module_that_cannot_load_is_a_load_error_at_its_path(tmp_path: Path, module: str, word: str) -> None:
    with pytest.raises(PolicyError) as err:
        Engine.from_atlas(_guarded_by(tmp_path, module), modules=load_policy_module)
    assert err.value.path == "/policies/0/parameters/module"
    assert word in err.value.reason


@pytest.mark.parametrize(
    ("parameters", "path"),
    [
        ({"module": "modules/missing.wat"}, "/policies/0/parameters/module"),
        ({"module": "../outside.wat"}, "/policies/0/parameters/module"),
        ({}, "/policies/0/parameters/module"),
        ({"module": "modules/allow_small.wat", "fuel": 0}, "/policies/0/parameters/fuel"),
        ({"module": "modules/allow_small.wat", "memory_mb": 1000}, "/policies/0/parameters/memory_mb"),
        ({"module": "modules/allow_small.wat", "fuel": MAX_FUEL + 1}, "/policies/0/parameters/fuel"),
        ({"module": "modules/allow_small.wat", "deadline_ms": 0}, "/policies/0/parameters/deadline_ms"),
        ({"module": "modules/allow_small.wat", "deadline_ms": 501}, "/policies/0/parameters/deadline_ms"),
        ({"module": "modules/allow_small.wat", "deadline_ms": "50"}, "/policies/0/parameters/deadline_ms"),
        ({"module": "modules/allow_small.wat", "deadline_ms": True}, "/policies/0/parameters/deadline_ms"),
        ({"module": "modules/allow_small.wat", "source": "x"}, "/policies/0/parameters/source"),
    ],
)
def test_bad_wasm_policy_parameters_name_their_path(tmp_path: Path, parameters: dict[str, Any], path: str) -> None:
    package = tmp_path / "atlas"
    shutil.copytree(GUARD, package)
    manifest = json.loads((package / "atlas.json").read_text())
    manifest["policies"][0]["parameters"] = parameters
    (package / "atlas.json").write_text(json.dumps(manifest))
    with pytest.raises(AtlasError) as err:
        Engine.from_atlas(package, modules=load_policy_module)
    assert err.value.path == path


@pytest.mark.parametrize(("parameters", "deadline_ms"), [({}, DEFAULT_DEADLINE_MS), ({"deadline_ms": 20}, 20)])
def test_a_module_that_runs_past_its_deadline_denies_and_says_so(
    tmp_path: Path, parameters: dict[str, Any], deadline_ms: int
) -> None:
    """Issue #12, finding 4: with the most fuel a policy may set, slow.wat would run for seconds."""
    package = _guarded_by(tmp_path, "slow.wat", fuel=MAX_FUEL, **parameters)
    engine = Engine.from_atlas(package, modules=load_policy_module)
    decision = _decide(engine, amount=5)
    assert (decision.effect, decision.policy_id, decision.reason_code) == (
        Effect.DENY,
        "refund-module",
        "module_failure",
    )
    assert decision.reason == f"the policy module ran past its deadline of {deadline_ms} ms in evaluate"
    assert _decide(engine, "order.lookup").effect is Effect.ALLOW


def test_a_module_whose_start_function_loops_is_refused_at_load(tmp_path: Path) -> None:
    package = _guarded_by(tmp_path, "slow.wat", fuel=MAX_FUEL)
    module = package / "modules" / "slow.wat"
    spin = "(module (func $spin (loop $l (drop (memory.grow (i32.const 0))) (br $l))) (start $spin)"
    module.write_text(module.read_text().replace("(module", spin, 1))
    with pytest.raises(PolicyError) as err:
        Engine.from_atlas(package, modules=load_policy_module)
    assert err.value.path == "/policies/0/parameters/module"
    assert err.value.reason == (
        "modules/slow.wat: the module cannot be instantiated: "
        f"the policy module ran past its deadline of {DEFAULT_DEADLINE_MS} ms in its start function"
    )


def test_the_digest_covers_the_module_bytes(tmp_path: Path) -> None:
    package = tmp_path / "atlas"
    shutil.copytree(GUARD, package)
    before = load_atlas(package).digest
    module = package / "modules" / "allow_small.wat"
    module.write_text(module.read_text() + "\n;; one more comment\n")
    assert load_atlas(package).digest != before


def test_the_module_sees_the_call_as_canonical_json(tmp_path: Path) -> None:
    seen: list[bytes] = []

    def recording(source: bytes, limits: ModuleLimits) -> Any:
        def evaluate(request: bytes) -> ModuleAnswer:
            seen.append(request)
            return ModuleAnswer(True, "fine")

        return evaluate

    engine = Engine.from_atlas(GUARD, modules=recording)
    engine.evaluate(action="refund.create", agent="bot", roles=["agent", "a"], params={"b": 1, "a": [2]})
    (request,) = seen
    assert json.loads(request) == {
        "action": "refund.create",
        "agent": "bot",
        "roles": ["a", "agent"],
        "risk_tier": "low",
        "params": {"a": [2], "b": 1},
        "context": {},
        "tenant": "default",
        "session": None,
        "now": None,
    }
    assert request == json.dumps(json.loads(request), sort_keys=True, separators=(",", ":")).encode()


def _carp(session_id: str, operation: str, n: int, **extra: Any) -> dict[str, Any]:
    return {
        "carp_version": "1.0",
        "request_id": f"00000000-0000-7000-8000-{n:012d}",
        "timestamp": "2026-03-01T09:00:00Z",
        "operation": operation,
        "requester": {"agent_id": "bot", "session_id": session_id},
        "task": {"goal": "Refund the customer"},
        **extra,
    }


def test_at_resolve_the_module_is_deferred_and_at_execute_it_decides() -> None:
    clock = ManualClock(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    resolver = Resolver(clock=clock, ids=SeededIds(3, clock), modules=load_policy_module)
    resolver.load_atlas(GUARD)
    ran: list[str] = []
    for action in ("refund.small", "refund.create"):

        def record(args: dict[str, Any], a: str = action) -> dict[str, Any]:
            ran.append(a)
            return {"ok": True}

        resolver.register_executor(action, record)
    sid = resolver.create_session("bot", "Refund the customer", roles=("agent",))
    resolution = resolver.resolve(_carp(sid, "resolve", 0))
    allowed = {a["action_id"] for a in resolution["allowed_actions"]}
    assert {"refund.small", "refund.create"} <= allowed
    assert any(c["constraint_id"] == "refund-module" for c in resolution["constraints"]), resolution
    rid = resolution["resolution_id"]
    for n, action in enumerate(("refund.small", "refund.create"), start=1):
        execution = {"resolution_id": rid, "action_id": action, "parameters": {"amount": 5}}
        resolver.execute(_carp(sid, "execute", n, execution=execution))
    assert ran == ["refund.small"]
    denied = [e for e in resolver.get_trace(sid) if e.event_type == "action.denied"]
    assert [e.payload["policy_id"] for e in denied] == ["refund-module"]
    resolver.verify_chain(sid)

"""Running code is an action like any other: code.execute goes through policy and into the trace."""

from __future__ import annotations

import base64
import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from tests.conftest import EXAMPLES

from cra import ManualClock, Resolver, SeededIds
from cra.protocol.canonical import canonical_json, sha256_hex
from cra.runtime.code import CodeExecutor, CodeRun, Limits
from cra.sandbox import CODE_EXECUTE, WasmSandbox

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SMALL = {"timeout_s": 2, "memory_mb": 128, "fuel": 2_000_000_000}


class Host:
    def __init__(self, sandbox: WasmSandbox) -> None:
        self.clock = ManualClock(T0)
        self.resolver = Resolver(clock=self.clock, ids=SeededIds(5, self.clock))
        self.resolver.load_atlas(EXAMPLES / "code-sandbox")
        self.resolver.register_executor(CODE_EXECUTE, CodeExecutor(sandbox, ceiling=Limits(timeout_s=10)))
        self._n = itertools.count()

    def _request(self, sid: str, operation: str, **extra: Any) -> dict[str, Any]:
        return {
            "carp_version": "1.0",
            "request_id": f"00000000-0000-7000-8000-{next(self._n):012d}",
            "timestamp": self.clock.now().isoformat().replace("+00:00", "Z"),
            "operation": operation,
            "requester": {"agent_id": "coder", "session_id": sid},
            **extra,
        }

    def run(self, params: dict[str, Any], *, tier: str = "medium") -> tuple[str, dict[str, Any]]:
        sid = self.resolver.create_session("coder", "Summarise the sales file", roles=("engineer",))
        task = {"goal": "Summarise the sales file", "risk_tier": tier}
        rid = self.resolver.resolve(self._request(sid, "resolve", task=task))["resolution_id"]
        execution = {"resolution_id": rid, "action_id": CODE_EXECUTE, "parameters": params}
        return sid, self.resolver.execute(self._request(sid, "execute", task=task, execution=execution))


def test_an_allowed_run_is_executed_in_the_sandbox_and_traced(wasm_sandbox: WasmSandbox) -> None:
    host = Host(wasm_sandbox)
    code = "import csv\nrows = list(csv.reader(open('sales.csv')))\nprint(len(rows))\nopen('n.txt','w').write('ok')\n"
    files = {"sales.csv": base64.b64encode(b"a,1\nb,2\nc,3\n").decode()}
    sid, response = host.run({"code": code, "files": files, "seed": 9, "limits": SMALL})
    assert response["status"] == "success", response
    result = response["result"]
    assert (result["ok"], result["reason"], result["stdout"]) == (True, "ok", "3\n")
    assert base64.b64decode(result["files"]["n.txt"]) == b"ok"

    trace = host.resolver.get_trace(sid)
    executed = [e for e in trace if e.event_type == "action.executed"]
    assert len(executed) == 1
    payload = executed[0].payload
    facts = payload["sandbox"]
    assert facts["code_sha256"] == sha256_hex(code)
    assert facts["seed"] == 9
    assert facts["limits"] == Limits.from_json(SMALL).to_json()
    assert (facts["reason"], facts["exit_code"]) == ("ok", 0)
    assert facts["fuel_used"] == result["fuel_used"]
    assert payload["result_hash"] == sha256_hex(canonical_json(result))
    again = wasm_sandbox.run(
        CodeRun(code, files={"sales.csv": b"a,1\nb,2\nc,3\n"}, seed=9, limits=Limits.from_json(SMALL))
    )
    assert facts["output_sha256"] == again.digest()
    host.resolver.verify_chain(sid)


def test_a_failed_run_is_still_an_executed_call_with_its_reason(wasm_sandbox: WasmSandbox) -> None:
    host = Host(wasm_sandbox)
    # Fuel for several seconds: the deadline, not the fuel, ends the run.
    limits = {**SMALL, "timeout_s": 0.3, "fuel": 20_000_000_000}
    sid, response = host.run({"code": "while True:\n    pass\n", "limits": limits})
    assert response["status"] == "success"
    assert (response["result"]["ok"], response["result"]["reason"]) == (False, "timeout")
    (executed,) = [e for e in host.resolver.get_trace(sid) if e.event_type == "action.executed"]
    assert executed.payload["sandbox"]["reason"] == "timeout"


@pytest.mark.parametrize(
    ("tier", "limits", "policy"),
    [
        ("high", {**SMALL, "timeout_s": 5}, "high-risk-runs-are-short"),
        ("high", {**SMALL, "memory_mb": 512}, "high-risk-runs-are-small"),
        ("critical", SMALL, "no-code-in-critical-sessions"),
    ],
)
def test_limits_beyond_the_tier_are_denied_and_nothing_runs(
    wasm_sandbox: WasmSandbox, tier: str, limits: dict[str, Any], policy: str
) -> None:
    host = Host(wasm_sandbox)
    marker = "print('ran')"
    sid, response = host.run({"code": marker, "limits": limits}, tier=tier)
    assert response["status"] == "denied", response
    trace = host.resolver.get_trace(sid)
    assert not [e for e in trace if e.event_type == "action.executed"]
    denied = [e for e in trace if e.event_type in ("action.denied", "policy.violated", "policy.evaluated")]
    assert any(e.payload.get("policy_id") == policy for e in denied), [e.payload for e in denied]


def test_limits_beyond_the_hosts_ceiling_fail_before_running(wasm_sandbox: WasmSandbox) -> None:
    host = Host(wasm_sandbox)
    sid, response = host.run({"code": "print(1)", "limits": {**SMALL, "timeout_s": 20}})
    assert response["status"] == "error"
    assert response["error"]["code"] == "invalid_arguments"
    assert "/limits/timeout_s" in response["error"]["message"]
    (failed,) = [e for e in host.resolver.get_trace(sid) if e.event_type == "action.failed"]
    assert failed.payload["error_code"] == "invalid_arguments"

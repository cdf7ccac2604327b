"""``cra serve`` runs code.execute in the WebAssembly sandbox: policy first, the run, then the trace."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

from tests.conftest import EXAMPLES
from tests.e2e._service import Env, carp, served

from cra.protocol.canonical import sha256_hex
from cra.sandbox import WasmSandbox
from cra.server.boot import load_atlas_dirs

ATLAS_ID = "com.cra.examples.code-sandbox"
CODE = "import json\nrows = json.load(open('rows.json'))\nprint(sum(r['n'] for r in rows))\n"
LIMITS = {"timeout_s": 2, "memory_mb": 128, "fuel": 2_000_000_000}


async def _call(env: Env, headers: dict[str, str], tier: str, limits: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    r = await env.client.post("/v1/sessions", json={"agent_id": "coder", "goal": "Sum the rows"}, headers=headers)
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]
    task = {"goal": "Sum the rows", "risk_tier": tier}
    r = await env.client.post("/v1/resolve", json={**carp("coder", sid), "task": task}, headers=headers)
    assert r.status_code == 200, r.text
    rid = r.json()["resolution_id"]
    files = {"rows.json": base64.b64encode(b'[{"n": 2}, {"n": 40}]').decode()}
    execution = {
        "resolution_id": rid,
        "action_id": "code.execute",
        "parameters": {"code": CODE, "files": files, "limits": limits},
    }
    r = await env.client.post(
        "/v1/execute", json={**carp("coder", sid, "execute", execution=execution), "task": task}, headers=headers
    )
    assert r.status_code == 200, r.text
    return sid, r.json()


def test_code_runs_in_the_sandbox_over_http_under_policy(tmp_path: Path, wasm_sandbox: WasmSandbox) -> None:
    async def main() -> None:
        async with served(tmp_path, sandbox=True) as env:
            assert await load_atlas_dirs(env.booted.service, "default", [EXAMPLES / "code-sandbox"]) == [ATLAS_ID]
            agent = await env.key("default", "agent", agent="coder", policy_roles=("engineer",))
            sid, out = await _call(env, agent, "medium", LIMITS)
            assert out["status"] == "success", out
            assert (out["result"]["ok"], out["result"]["stdout"]) == (True, "42\n")
            r = await env.client.get(f"/v1/traces/{sid}", params={"limit": 1000}, headers=agent)
            (executed,) = [e for e in r.json()["events"] if e["event_type"] == "action.executed"]
            assert executed["payload"]["sandbox"]["code_sha256"] == sha256_hex(CODE)
            assert executed["payload"]["sandbox"]["reason"] == "ok"

            _, denied = await _call(env, agent, "high", {**LIMITS, "timeout_s": 10})
            assert denied["status"] == "denied", denied
            assert denied["error"]["code"] == "policy_deny"
            assert denied["error"]["details"]["policy_id"] == "high-risk-runs-are-short"

    asyncio.run(main())

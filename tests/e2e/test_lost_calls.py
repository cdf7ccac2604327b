"""Calls in flight are counted exactly, and a call whose process died is recorded as lost (issue #12, findings 5, 8).

Finding 5: after 12 concurrent calls in one session under two workers, every
``DELETE /v1/sessions/{id}`` answered 409 "still has calls running" until a restart: the
count lived in each process's memory and drifted when a commit lost a race and was retried.
Running calls are now rows committed with the call's authorisation and its outcome.

Finding 8: a server killed during a long ``code.execute`` left the trace ending at
``policy.evaluated`` and every retry of its idempotency key answered
``idempotency_key_in_progress``, forever. Running calls are now leased to their process;
once a lease runs out, a live process records the call as failed (``executor_lost``),
releases its key, and the sandbox's start-up sweep removes its scratch.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e._process import cra, free_port
from tests.e2e._service import SUPPORT, carp
from tests.e2e.test_crash_restart import Serve, servers

from cra.sandbox import WasmSandbox
from cra.sandbox.scratch import PREFIX
from cra.server.app import create_app
from cra.server.auth import issue_key
from cra.server.boot import boot, load_atlas_dirs

AGENT = "support-bot"


def test_concurrent_calls_through_two_workers_leave_a_session_that_can_end(tmp_path: Path) -> None:
    """Two services on one database, as two workers are: their commits race and are retried."""
    calls = 12

    async def body() -> None:
        from datetime import UTC, datetime

        workers = [await boot(tmp_path, executors={"order.lookup": lambda args: {"found": True}}) for _ in range(2)]
        try:
            for booted in workers:
                await booted.service.start()
            assert await load_atlas_dirs(workers[0].service, "acme", [SUPPORT])
            token, _ = await issue_key(
                workers[0].state,
                tenant_id="acme",
                role="agent",
                agent_id=AGENT,
                policy_roles=("agent",),
                now=datetime.now(UTC),
            )
            key = {"X-API-Key": token}
            clients = [
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=create_app(b.service, b.state)), base_url="http://cra.test"
                )
                for b in workers
            ]
            try:
                r = await clients[0].post("/v1/sessions", json={"agent_id": AGENT, "goal": "g"}, headers=key)
                sid = r.json()["session_id"]
                rid = (await clients[1].post("/v1/resolve", json=carp(AGENT, sid), headers=key)).json()["resolution_id"]

                async def execute(n: int) -> httpx.Response:
                    execution = {"resolution_id": rid, "action_id": "order.lookup", "parameters": {"order_id": str(n)}}
                    return await clients[n % 2].post(
                        "/v1/execute", json=carp(AGENT, sid, "execute", execution=execution), headers=key
                    )

                answers = await asyncio.gather(*(execute(n) for n in range(calls)))
                assert [a.json()["status"] for a in answers] == ["success"] * calls, [a.text for a in answers]
                ended = await clients[1].delete(f"/v1/sessions/{sid}", headers=key)
                assert ended.status_code == 204, ended.text
                session = await clients[0].get(f"/v1/sessions/{sid}", headers=key)
                assert session.json()["status"] == "ended"
            finally:
                for client in clients:
                    await client.aclose()
        finally:
            for booted in workers:
                await booted.close()

    asyncio.run(body())


LEASE_SECONDS = 2
LONG_RUN = {"code": "while True:\n    pass\n", "limits": {"timeout_s": 8, "memory_mb": 128, "fuel": 200_000_000_000}}


async def _until(what: str, check: Any, seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {seconds} s")


@pytest.mark.slow
def test_a_call_running_when_its_server_is_killed_is_recorded_as_lost(
    tmp_path: Path, wasm_sandbox: WasmSandbox
) -> None:
    data, scratch, logs = tmp_path / "data", tmp_path / "scratch", tmp_path / "logs"
    scratch.mkdir()
    logs.mkdir()
    port = free_port()

    def start(n: int) -> Serve:
        return Serve(
            data,
            port,
            logs / f"serve-{n}.log",
            sandbox=True,
            args=("--call-lease", str(LEASE_SECONDS)),
            env={"TMPDIR": str(scratch)},
        )

    def leftovers() -> list[str]:
        return sorted(p.name for p in scratch.iterdir() if p.name.startswith(PREFIX))

    async def main() -> None:
        async with servers() as started:
            server = start(0)
            started.append(server)
            await server.healthy()
            server.admin_key()
            made = cra(
                "apikey", "create", "--tenant", "default", "--role", "agent", "--agent", "coder",
                "--policy-role", "engineer", "--data-dir", data, "--json",
            )  # fmt: skip
            assert made.returncode == 0, made.stderr
            key = {"X-API-Key": json.loads(made.stdout)["key"]}
            async with httpx.AsyncClient(base_url=server.url, headers=key, timeout=60) as client:
                r = await client.post("/v1/sessions", json={"agent_id": "coder", "goal": "Spin"})
                sid = r.json()["session_id"]
                task = {"goal": "Spin", "risk_tier": "medium"}
                r = await client.post("/v1/resolve", json={**carp("coder", sid), "task": task})
                rid = r.json()["resolution_id"]
                execution = {
                    "resolution_id": rid,
                    "action_id": "code.execute",
                    "parameters": LONG_RUN,
                    "idempotency_key": "spin-once",
                }

                async def execute() -> httpx.Response:
                    while True:  # the sandbox may still be loading: 503 sandbox_building, then it runs
                        body = {**carp("coder", sid, "execute", execution=execution), "task": task}
                        answer = await client.post("/v1/execute", json=body)
                        if answer.status_code != 503:
                            return answer
                        await asyncio.sleep(0.2)

                running = asyncio.ensure_future(execute())

                async def run_started() -> list[str]:
                    assert not running.done(), running.result().text  # the run must still be going
                    return leftovers()

                await _until("the sandbox run starting", run_started)
            server.kill()
            with pytest.raises(httpx.TransportError):
                await running
            assert leftovers()  # killed mid-run: nothing removed its scratch

            server = start(1)
            started.append(server)
            await server.healthy()
            async with httpx.AsyncClient(base_url=server.url, headers=key, timeout=60) as client:

                async def lost() -> list[dict[str, Any]]:
                    events = (await client.get(f"/v1/traces/{sid}", params={"limit": 1000})).json()["events"]
                    return [e for e in events if e["event_type"] == "action.failed"]

                (failed,) = await _until("the lost call being recorded", lost)
                assert failed["payload"]["error_code"] == "executor_lost"
                assert "stopped before it reported an outcome" in failed["payload"]["error_message"]
                await _until("the dead run's scratch being removed", lambda: asyncio.sleep(0, not leftovers()))

                again = await execute()  # the key was released: the call runs again, once
                assert again.status_code == 200, again.text
                assert again.json()["status"] == "success", again.text
                assert again.json()["result"]["reason"] == "timeout"
                ended = await client.delete(f"/v1/sessions/{sid}")
                assert ended.status_code == 204, ended.text
                verified = await client.post(f"/v1/traces/{sid}/verify")
                assert verified.json()["valid"] is True, verified.text
            assert leftovers() == []
            assert server.stopped_cleanly(server.stop())

    asyncio.run(main())

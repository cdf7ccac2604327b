"""Executors run on threads of their own, with a bounded queue (issue #12, finding 7).

24 stuck ``code.execute`` runs used to take every thread of the default pool, so
ledger reads and sealing waited 30 s and answered 503. Now executors have
``executor_threads`` threads and ``executor_queue`` waiting places; a call past
that is refused up front (503, ``Retry-After``, nothing recorded), and the
ledger keeps answering while every executor thread is held.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
from tests.e2e._service import PROBLEM, SUPPORT, carp

from cra.server.app import create_app
from cra.server.auth import issue_key
from cra.server.boot import boot, load_atlas_dirs

AGENT = "support-bot"
THREADS, QUEUE = 8, 1  # more threads than asyncio's default pool has here (min(32, cores + 4) = 6)


def test_executors_cannot_starve_the_ledger_and_a_full_queue_is_a_503(tmp_path: Path) -> None:
    release = threading.Event()
    started = threading.Semaphore(0)

    def stuck(args: dict[str, Any]) -> dict[str, Any]:
        started.release()
        if not release.wait(timeout=120):
            raise TimeoutError("the test never released the executor")
        return {"found": True}

    async def body() -> None:
        from datetime import UTC, datetime

        booted = await boot(tmp_path, executors={"order.lookup": stuck}, executor_threads=THREADS, executor_queue=QUEUE)
        service = booted.service
        try:
            await service.start()
            assert await load_atlas_dirs(service, "acme", [SUPPORT])
            token, _ = await issue_key(
                booted.state,
                tenant_id="acme",
                role="agent",
                agent_id=AGENT,
                policy_roles=("agent",),
                now=datetime.now(UTC),
            )
            key = {"X-API-Key": token}
            app = create_app(service, booted.state)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cra.test") as c:
                sid = (await c.post("/v1/sessions", json={"agent_id": AGENT, "goal": "g"}, headers=key)).json()[
                    "session_id"
                ]
                rid = (await c.post("/v1/resolve", json=carp(AGENT, sid), headers=key)).json()["resolution_id"]

                def execute(n: int) -> dict[str, Any]:
                    execution = {"resolution_id": rid, "action_id": "order.lookup", "parameters": {"order_id": str(n)}}
                    return carp(AGENT, sid, "execute", execution=execution)

                held = [asyncio.ensure_future(c.post("/v1/execute", json=execute(n), headers=key)) for n in range(9)]
                for _ in range(THREADS):  # every executor thread is taken
                    assert await asyncio.to_thread(started.acquire, True, 60)

                async def queued() -> None:  # and the ninth call waits for one
                    while service.executor_calls < THREADS + QUEUE:
                        await asyncio.sleep(0.01)

                await asyncio.wait_for(queued(), timeout=60)

                # The ledger answers while every executor thread is held.
                checkpoint = await asyncio.wait_for(c.get("/v1/ledger/checkpoint", headers=key), timeout=60)
                assert checkpoint.status_code == 200, checkpoint.text

                refused = await c.post("/v1/execute", json=execute(99), headers=key)
                assert refused.status_code == 503, refused.text
                assert refused.headers["content-type"].startswith(PROBLEM)
                assert refused.json()["code"] == "overloaded"
                assert int(refused.headers["retry-after"]) >= 1

                release.set()
                answers = await asyncio.gather(*held)
                assert [a.json()["status"] for a in answers] == ["success"] * 9
                assert service.executor_calls == 0
                events = (await c.get(f"/v1/traces/{sid}", params={"limit": 1000}, headers=key)).json()["events"]
                requested = [
                    e["payload"]["parameters"]["order_id"] for e in events if e["event_type"] == "action.requested"
                ]
                assert sorted(requested) == sorted(str(n) for n in range(9))  # nothing of the refused call
        finally:
            release.set()
            await booted.close()

    asyncio.run(body())


class WarmingLookup:
    """An executor that is not ready until the test says so, like the sandbox during its first build."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.calls = 0

    def warming(self) -> str | None:
        return None if self.ready.is_set() else "the lookup is still warming up"

    def __call__(self, args: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        return {"found": True}


def test_a_call_to_an_executor_still_warming_is_refused_and_never_runs_later(tmp_path: Path) -> None:
    """Issue #12, finding 11: a code.execute sent during the sandbox's first build answered 503
    "timeout" and then ran anyway. Now it is refused up front, and nothing of it is kept or run."""
    lookup = WarmingLookup()

    async def body() -> None:
        from datetime import UTC, datetime

        booted = await boot(tmp_path, executors={"order.lookup": lookup})
        service = booted.service
        try:
            await service.start()
            assert await load_atlas_dirs(service, "acme", [SUPPORT])
            token, _ = await issue_key(
                booted.state,
                tenant_id="acme",
                role="agent",
                agent_id=AGENT,
                policy_roles=("agent",),
                now=datetime.now(UTC),
            )
            key = {"X-API-Key": token}
            app = create_app(service, booted.state)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cra.test") as c:
                sid = (await c.post("/v1/sessions", json={"agent_id": AGENT, "goal": "g"}, headers=key)).json()[
                    "session_id"
                ]
                rid = (await c.post("/v1/resolve", json=carp(AGENT, sid), headers=key)).json()["resolution_id"]
                execution = {"resolution_id": rid, "action_id": "order.lookup", "parameters": {"order_id": "1"}}
                refused = await c.post(
                    "/v1/execute", json=carp(AGENT, sid, "execute", execution=execution), headers=key
                )
                assert refused.status_code == 503, refused.text
                assert refused.headers["content-type"].startswith(PROBLEM)
                assert refused.json()["code"] == "sandbox_building"
                assert "still warming up" in refused.json()["detail"]
                assert int(refused.headers["retry-after"]) >= 1
                assert service.executor_calls == 0

                lookup.ready.set()
                await service.flush()
                assert lookup.calls == 0  # the refused call never ran
                events = (await c.get(f"/v1/traces/{sid}", headers=key)).json()["events"]
                assert [e["event_type"] for e in events if e["event_type"].startswith("action.")] == []

                ran = await c.post("/v1/execute", json=carp(AGENT, sid, "execute", execution=execution), headers=key)
                assert ran.json()["status"] == "success", ran.text
                assert lookup.calls == 1
        finally:
            await booted.close()

    asyncio.run(body())

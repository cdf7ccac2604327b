"""An executor runs once per allowed call, however the recording races go, and off the event loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from tests.e2e._service import SUPPORT, carp

from cra.server.boot import boot, load_atlas_dirs

AGENT = "support-bot"


def test_racing_processes_run_each_allowed_call_exactly_once(tmp_path: Path) -> None:
    calls: list[str] = []
    lock = threading.Lock()

    def lookup(args: dict[str, Any]) -> dict[str, Any]:
        with lock:
            calls.append(args["order_id"])
        return {"found": True}

    async def body() -> None:
        # Two services over one data directory: two processes, as far as the database can tell.
        a = await boot(tmp_path, executors={"order.lookup": lookup})
        b = await boot(tmp_path, executors={"order.lookup": lookup})
        try:
            assert await load_atlas_dirs(a.service, "acme", [SUPPORT])
            session = await a.service.create_session("acme", agent_id=AGENT, goal="g", roles=["agent"])
            sid = session.session_id
            resolution = await a.service.resolve("acme", carp(AGENT, sid))
            rid = resolution["resolution_id"]
            answers = []
            for round_ in range(4):
                requests = [
                    carp(
                        AGENT,
                        sid,
                        "execute",
                        execution={
                            "resolution_id": rid,
                            "action_id": "order.lookup",
                            "parameters": {"order_id": f"{round_}-{n}"},
                        },
                    )
                    for n in range(4)
                ]
                answers += await asyncio.gather(
                    *((a if n % 2 else b).service.execute("acme", r) for n, r in enumerate(requests))
                )
            assert [x["status"] for x in answers] == ["success"] * 16
            assert sorted(calls) == sorted(f"{r}-{n}" for r in range(4) for n in range(4))
            executed = [e for e in await a.service.trace("acme", sid) if e.event_type == "action.executed"]
            assert len(executed) == 16
            assert (await a.service.verify_trace("acme", sid)).valid
        finally:
            await a.close()
            await b.close()

    asyncio.run(body())


def test_a_slow_executor_does_not_stall_other_requests(tmp_path: Path) -> None:
    started, release = threading.Event(), threading.Event()

    def slow(args: dict[str, Any]) -> dict[str, Any]:
        started.set()
        if not release.wait(timeout=60):
            raise TimeoutError("the test never released the executor")
        return {"done": True}

    async def body() -> None:
        booted = await boot(tmp_path, executors={"order.lookup": slow})
        try:
            service = booted.service
            assert await load_atlas_dirs(service, "acme", [SUPPORT])
            sid = (await service.create_session("acme", agent_id=AGENT, goal="g", roles=["agent"])).session_id
            other = (await service.create_session("acme", agent_id=AGENT, goal="g", roles=["agent"])).session_id
            rid = (await service.resolve("acme", carp(AGENT, sid)))["resolution_id"]
            execution = {"resolution_id": rid, "action_id": "order.lookup", "parameters": {"order_id": "1"}}
            running = asyncio.ensure_future(service.execute("acme", carp(AGENT, sid, "execute", execution=execution)))
            # Wait, without blocking the loop, until the executor holds its thread.
            assert await asyncio.to_thread(started.wait, 60)
            # Another session's resolve completes while the executor is still held.
            await service.resolve("acme", carp(AGENT, other))
            assert not running.done()
            release.set()
            assert (await running)["status"] == "success"
        finally:
            release.set()
            await booted.close()

    asyncio.run(body())

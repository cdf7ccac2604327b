"""The service with Redis (``CRA_TEST_REDIS_URL``): one limit for every process, atlas changes seen
at once everywhere, and calls refused — with nothing kept — when the counters cannot answer."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
from tests.e2e._service import PROBLEM, SUPPORT, carp

from cra.cache import RedisCounters
from cra.runtime.atlas_files import read_package
from cra.runtime.service import GovernanceService
from cra.server.app import create_app
from cra.server.auth import issue_key
from cra.server.boot import Booted, boot, load_atlas_dirs

AGENT = "support-bot"
REPLY = {"ticket_id": "T-1", "message": "On its way."}


def _sent(args: dict[str, Any]) -> dict[str, Any]:
    return {"sent": True}


def client_of(booted: Booted) -> httpx.AsyncClient:
    app = create_app(booted.service, booted.state)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cra.test")


async def agent_key(booted: Booted, tenant: str) -> dict[str, str]:
    from datetime import UTC, datetime

    token, _ = await issue_key(
        booted.state, tenant_id=tenant, role="agent", agent_id=AGENT, policy_roles=("agent",), now=datetime.now(UTC)
    )
    return {"X-API-Key": token}


def test_two_processes_share_one_rate_limit_and_see_atlas_changes_at_once(tmp_path: Path, redis_url: str) -> None:
    url = redis_url
    tenant = f"t-{uuid.uuid4().hex[:12]}"  # counters and caches are keyed by tenant: a fresh one per run

    async def body() -> None:
        a = await boot(tmp_path, redis_url=url, executors={"ticket.reply": _sent})
        b = await boot(tmp_path, redis_url=url, executors={"ticket.reply": _sent})
        try:
            await a.service.start()
            await b.service.start()
            assert await load_atlas_dirs(a.service, tenant, [SUPPORT])
            key = await agent_key(a, tenant)
            async with client_of(a) as ca, client_of(b) as cb:
                made = await ca.post("/v1/sessions", headers=key, json={"agent_id": AGENT, "goal": "Reply"})
                sid = made.json()["session_id"]
                rid = (await ca.post("/v1/resolve", headers=key, json=carp(AGENT, sid))).json()["resolution_id"]

                async def reply(client: httpx.AsyncClient) -> str:
                    execution = {"resolution_id": rid, "action_id": "ticket.reply", "parameters": REPLY}
                    r = await client.post(
                        "/v1/execute", headers=key, json=carp(AGENT, sid, "execute", execution=execution)
                    )
                    assert r.status_code == 200, r.text
                    return str(r.json()["status"])

                # reply-rate-limit: three replies a minute per session, whichever process serves them.
                statuses = await asyncio.gather(*(reply(c) for c in (ca, cb, ca, cb, ca, cb)))
                assert sorted(statuses) == ["denied"] * 3 + ["success"] * 3

                # An atlas change through A is what B decides with on its next call.
                probe = {"action": "order.lookup", "params": {"order_id": "42"}}
                assert (await cb.post("/v1/evaluate", headers=key, json=probe)).json()["decision"] == "allow"
                package = read_package(SUPPORT)
                manifest = json.loads(package["atlas.json"])
                manifest["version"] = "1.0.1"
                manifest["policies"].insert(
                    0,
                    {"policy_id": "freeze-lookups", "type": "deny", "actions": ["order.lookup"], "priority": 1000},
                )
                package["atlas.json"] = json.dumps(manifest).encode()
                await a.service.load_atlas(tenant, package, replace=True)
                decided = (await cb.post("/v1/evaluate", headers=key, json=probe)).json()
                assert (decided["decision"], decided["policy_id"]) == ("deny", "freeze-lookups")
                assert decided["atlas"]["version"] == "1.0.1"
        finally:
            await a.close()
            await b.close()

    asyncio.run(body())


def test_counters_that_cannot_answer_refuse_the_call_and_keep_nothing(tmp_path: Path) -> None:
    tenant = f"t-{uuid.uuid4().hex[:12]}"

    async def body() -> None:
        booted = await boot(tmp_path, executors={"ticket.reply": _sent})
        dead = RedisCounters.from_url("redis://127.0.0.1:1/0", timeout_seconds=0.5)
        service = GovernanceService(
            booted.state,
            signer=booted.service._signer,
            ledger=booted.ledger,
            counters=dead,
            executors={"ticket.reply": _sent},
        )
        try:
            assert await load_atlas_dirs(service, tenant, [SUPPORT])
            key = await agent_key(booted, tenant)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_app(service, booted.state)), base_url="http://cra.test"
            ) as c:
                sid = (await c.post("/v1/sessions", headers=key, json={"agent_id": AGENT, "goal": "x"})).json()[
                    "session_id"
                ]
                rid = (await c.post("/v1/resolve", headers=key, json=carp(AGENT, sid))).json()["resolution_id"]
                before = (await c.get(f"/v1/traces/{sid}", headers=key)).json()["total"]
                execution = {
                    "resolution_id": rid,
                    "action_id": "ticket.reply",
                    "parameters": REPLY,
                    "idempotency_key": "once",
                }
                refused = await c.post(
                    "/v1/execute", headers=key, json=carp(AGENT, sid, "execute", execution=execution)
                )
                assert refused.status_code == 503
                assert refused.headers["content-type"] == PROBLEM
                assert refused.json()["code"] == "counter_store_unavailable"
                assert (await c.get(f"/v1/traces/{sid}", headers=key)).json()["total"] == before
            # The idempotency key was not kept either: with counters that answer, the same call runs.
            working = create_app(booted.service, booted.state)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=working), base_url="http://cra.test") as c:
                retried = carp(AGENT, sid, "execute", execution=execution)
                assert (await c.post("/v1/execute", headers=key, json=retried)).json()["status"] == "success"
        finally:
            dead.close()
            await booted.close()

    asyncio.run(body())

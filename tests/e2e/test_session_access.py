"""Acting in a session: only the caller's own agent's, and never with roles the caller lacks."""

from __future__ import annotations

from pathlib import Path

from tests.e2e._service import PROBLEM, Env, carp, run


def test_an_agent_cannot_probe_or_write_into_another_agents_session(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        await env.support("acme")
        mine = await env.key("acme", "agent", agent="bot-a", policy_roles=("agent",))
        theirs = await env.key("acme", "agent", agent="bot-b", policy_roles=("agent",))
        c = env.client
        sid = (await c.post("/v1/sessions", headers=theirs, json={"agent_id": "bot-b", "goal": "g"})).json()[
            "session_id"
        ]
        before = (await c.get(f"/v1/traces/{sid}", headers=theirs)).json()["total"]
        # bot-a names itself, truthfully, but cites bot-b's session: the session does not exist for it.
        for path, request in (
            ("/v1/resolve", carp("bot-a", sid)),
            (
                "/v1/execute",
                carp(
                    "bot-a",
                    sid,
                    "execute",
                    execution={"resolution_id": sid, "action_id": "order.lookup", "parameters": {}},
                ),
            ),
        ):
            r = await c.post(path, headers=mine, json=request)
            assert r.status_code == 404, r.text
            assert r.headers["content-type"] == PROBLEM
        assert (await c.delete(f"/v1/sessions/{sid}", headers=mine)).status_code == 404
        # Nothing was written into bot-b's chain.
        assert (await c.get(f"/v1/traces/{sid}", headers=theirs)).json()["total"] == before

    run(tmp_path, body)


def test_a_key_cannot_borrow_the_roles_of_the_key_that_made_the_session(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        await env.support("acme")
        admin = await env.key("acme", "admin", policy_roles=("supervisor", "agent"))
        agent = await env.key("acme", "agent", agent="bot-b", policy_roles=("agent",))
        c = env.client
        made = await c.post("/v1/sessions", headers=admin, json={"agent_id": "bot-b", "goal": "g"})
        assert made.json()["roles"] == ["agent", "supervisor"]
        sid = made.json()["session_id"]
        refused = await c.post("/v1/resolve", headers=agent, json=carp("bot-b", sid))
        assert refused.status_code == 403
        assert "roles" in refused.json()["detail"]
        # A session made with exactly the agent's own roles is the agent's to run.
        own = await c.post("/v1/sessions", headers=agent, json={"agent_id": "bot-b", "goal": "g"})
        ok = await c.post("/v1/resolve", headers=agent, json=carp("bot-b", own.json()["session_id"]))
        assert ok.status_code == 200

    run(tmp_path, body)


def test_the_key_that_asked_for_an_approval_cannot_grant_it(tmp_path: Path) -> None:
    """An admin key with the supervisor role drives a session for support-bot; the approval its
    call asks for must be granted by someone else."""

    async def body(env: Env) -> None:
        await env.support("acme")
        admin = await env.key("acme", "admin", policy_roles=("supervisor", "agent"))
        supervisor = await env.key("acme", "approver", policy_roles=("supervisor",))
        c = env.client
        sid = (await c.post("/v1/sessions", headers=admin, json={"agent_id": "support-bot", "goal": "g"})).json()[
            "session_id"
        ]
        rid = (await c.post("/v1/resolve", headers=admin, json=carp("support-bot", sid))).json()["resolution_id"]
        params = {"order_id": "42", "amount": 20_000, "currency": "SAR"}
        execution = {"resolution_id": rid, "action_id": "refund.create", "parameters": params}
        out = (
            await c.post("/v1/execute", headers=admin, json=carp("support-bot", sid, "execute", execution=execution))
        ).json()
        assert out["status"] == "pending_approval", out
        approval_id = out["result"]["approval_id"]
        listed = (await c.get(f"/v1/approvals/{approval_id}", headers=supervisor)).json()
        assert listed["requested_by"].startswith("key:")

        refused = await c.post(f"/v1/approvals/{approval_id}/approve", json={}, headers=admin)
        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith(PROBLEM)
        assert "asked for this approval" in refused.json()["detail"]
        assert (await c.get(f"/v1/approvals/{approval_id}", headers=supervisor)).json()["status"] == "pending"

        granted = await c.post(f"/v1/approvals/{approval_id}/approve", json={}, headers=supervisor)
        assert granted.status_code == 200, granted.text
        assert granted.json()["status"] == "approved"

    run(tmp_path, body)

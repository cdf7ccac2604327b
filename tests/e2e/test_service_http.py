"""The CRA HTTP service end to end: a real app over a real data directory, through httpx.

Every test boots the service in a temporary data directory, issues API keys,
loads atlases and talks to the FastAPI app through ``httpx.ASGITransport``.
Expectations come from the customer-support example atlas, the CRA 1.0
conformance data and the permission matrix, not from the responses themselves.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import uuid
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import fastjsonschema
import httpx
import pytest
from tests.conformance.test_golden import match
from tests.conftest import CRA10
from tests.e2e._service import PROBLEM, SUPPORT, SUPPORT_ID, Env, carp, now, run

from cra.protocol.validation import validate
from cra.server.app import ServerSettings, create_app
from cra.trace.chain import verify_chain
from cra.trace.event import GENESIS_HASH
from cra.trace.jsonl import loads_trace

NDJSON = "application/x-ndjson"

#: What the customer-support atlas gives an agent whose policy role is ``agent``.
AGENT_ALLOWED = {"order.lookup", "customer.lookup", "ticket.reply", "refund.create"}
AGENT_DENIED = {"customer.delete": "deny-customer-delete"}


def tiny_atlas(atlas_id: str) -> dict[str, Any]:
    """A self-contained manifest (no context files)."""
    return {
        "atlas_version": "1.0",
        "atlas_id": atlas_id,
        "version": "1.0.0",
        "name": "Tiny",
        "description": "A one-action atlas",
        "actions": [{"action_id": "notes.read", "name": "Read notes", "description": "Read the notes"}],
        "policies": [{"policy_id": "allow-notes", "type": "allow", "actions": ["notes.read"]}],
    }


# -- helpers ------------------------------------------------------------------


def execution(resolution_id: str, action_id: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"resolution_id": resolution_id, "action_id": action_id, "parameters": parameters}


def refund(amount: int) -> dict[str, Any]:
    return {"order_id": "43", "amount": amount, "currency": "SAR"}


def problem_of(response: httpx.Response, status: int, *, path: str | None = None) -> dict[str, Any]:
    """Check ``response`` is an RFC 9457 problem with ``status`` (and ``path``); return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers["content-type"]
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("https://")
    for field in ("title", "detail", "code"):
        assert isinstance(body[field], str)
        assert body[field]
    assert body["error"]["code"] == body["code"]
    assert isinstance(body["error"]["message"], str)
    if path is not None:
        assert body.get("path") == path, body
    return body


async def new_session(env: Env, headers: dict[str, str], agent: str, **extra: Any) -> str:
    r = await env.client.post(
        "/v1/sessions", json={"agent_id": agent, "goal": "Help a customer", **extra}, headers=headers
    )
    assert r.status_code == 201, r.text
    session_id: str = r.json()["session_id"]
    return session_id


async def resolve(env: Env, headers: dict[str, str], agent: str, session_id: str, **extra: Any) -> dict[str, Any]:
    r = await env.client.post("/v1/resolve", json=carp(agent, session_id, "resolve", **extra), headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def execute(
    env: Env,
    headers: dict[str, str],
    agent: str,
    session_id: str,
    resolution_id: str,
    action_id: str,
    parameters: dict[str, Any],
    ticket: str | None = None,
) -> dict[str, Any]:
    h = dict(headers)
    if ticket is not None:
        h["X-CRA-Approval-Ticket"] = ticket
    req = carp(agent, session_id, "execute", execution=execution(resolution_id, action_id, parameters))
    r = await env.client.post("/v1/execute", json=req, headers=h)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["resolution_id"] == resolution_id
    assert body["request_id"] == req["request_id"]
    return body


async def all_events(env: Env, headers: dict[str, str], session_id: str) -> list[dict[str, Any]]:
    r = await env.client.get(f"/v1/traces/{session_id}", params={"limit": 1000}, headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == len(body["events"])
    events: list[dict[str, Any]] = body["events"]
    return events


async def ndjson(env: Env, headers: dict[str, str], session_id: str) -> str:
    r = await env.client.get(f"/v1/traces/{session_id}", params={"limit": 1000}, headers={**headers, "Accept": NDJSON})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(NDJSON)
    return r.text


# -- 1. the governed flow ---------------------------------------------------------


def test_governed_flow_with_approvals_and_a_verifiable_trace(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        await env.support("acme")
        agent = await env.key("acme", "agent", agent="support-bot")
        supervisor = await env.key("acme", "approver", policy_roles=("supervisor",))
        c = env.client

        r = await c.post(
            "/v1/sessions",
            json={"agent_id": "support-bot", "goal": "Help a customer", "metadata": {"ticket": "T-1001"}},
            headers=agent,
        )
        assert r.status_code == 201, r.text
        session = r.json()
        sid = session["session_id"]
        assert session["agent_id"] == "support-bot"
        assert session["status"] == "active"
        assert session["roles"] == ["agent"]  # the key's policy role, nothing else
        assert session["metadata"] == {"ticket": "T-1001"}
        r = await c.get(f"/v1/sessions/{sid}", headers=agent)
        assert r.status_code == 200
        assert r.json() == session

        resolution = await resolve(env, agent, "support-bot", sid)
        validate("carp-resolution", resolution)
        assert resolution["decision"]["type"] == "partial"
        assert {a["action_id"] for a in resolution["allowed_actions"]} == AGENT_ALLOWED
        assert {d["action_id"]: d["policy_id"] for d in resolution["denied_actions"]} == AGENT_DENIED
        assert resolution["trace_id"] == session["trace_id"]
        rid = resolution["resolution_id"]

        # Allowed, but nothing executes it in this service.
        out = await execute(env, agent, "support-bot", sid, rid, "order.lookup", {"order_id": "42"})
        assert out["status"] == "error"
        assert out["error"]["code"] == "no_executor"
        # Denied at resolve time: never executable.
        out = await execute(env, agent, "support-bot", sid, rid, "customer.delete", {"customer_id": "C-7"})
        assert out["status"] == "denied"
        # Allowed action, but above 1,000.00 deny-large-refunds applies.
        out = await execute(env, agent, "support-bot", sid, rid, "refund.create", refund(200_000))
        assert out["status"] == "denied"
        assert out["error"]["details"]["policy_id"] == "deny-large-refunds"
        # 200.00 SAR needs a supervisor.
        out = await execute(env, agent, "support-bot", sid, rid, "refund.create", refund(20_000))
        assert out["status"] == "pending_approval"
        assert out["result"]["policy_id"] == "approve-medium-refunds"
        first = out["result"]["approval_id"]

        r = await c.get("/v1/approvals", headers=supervisor)
        assert r.status_code == 200, r.text
        pending = {a["approval_id"]: a for a in r.json()["items"]}
        assert set(pending) == {first}
        assert pending[first]["status"] == "pending"
        assert pending[first]["session_id"] == sid
        assert pending[first]["agent_id"] == "support-bot"
        assert pending[first]["action_id"] == "refund.create"
        assert pending[first]["parameters"] == refund(20_000)
        assert pending[first]["approver_roles"] == ["supervisor"]
        r = await c.get(f"/v1/approvals/{first}", headers=supervisor)
        assert r.status_code == 200
        assert r.json()["status"] == "pending"

        r = await c.post(f"/v1/approvals/{first}/approve", json={"comment": "customer sent photos"}, headers=supervisor)
        assert r.status_code == 200, r.text
        granted = r.json()
        assert granted["status"] == "approved"
        assert granted["comment"] == "customer sent photos"
        ticket = granted["ticket"]
        assert isinstance(ticket, str)
        assert ticket

        # The ticket is for exactly that call: other arguments are refused...
        out = await execute(env, agent, "support-bot", sid, rid, "refund.create", refund(20_001), ticket=ticket)
        assert out["status"] == "denied"
        assert out["error"]["code"] == "invalid_approval"
        # ...the approved call passes the policy and reaches the (missing) executor.
        out = await execute(env, agent, "support-bot", sid, rid, "refund.create", refund(20_000), ticket=ticket)
        assert out["status"] == "error"
        assert out["error"]["code"] == "no_executor"

        # The deny path.
        out = await execute(env, agent, "support-bot", sid, rid, "refund.create", refund(30_000))
        assert out["status"] == "pending_approval"
        second = out["result"]["approval_id"]
        assert second != first
        r = await c.post(f"/v1/approvals/{second}/deny", json={"comment": "no receipt"}, headers=supervisor)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "denied"
        assert r.json()["comment"] == "no receipt"
        r = await c.post(f"/v1/approvals/{second}/approve", headers=supervisor)
        problem_of(r, r.status_code)
        assert r.status_code in (403, 409)
        r = await c.get("/v1/approvals", headers=supervisor)
        assert r.json()["items"] == []
        assert r.json()["total"] == 0
        r = await c.get("/v1/approvals", params={"status": "denied"}, headers=supervisor)
        assert [a["approval_id"] for a in r.json()["items"]] == [second]

        r = await c.delete(f"/v1/sessions/{sid}", headers=agent)
        assert r.status_code == 204
        assert r.content == b""
        r = await c.get(f"/v1/sessions/{sid}", headers=agent)
        assert r.json()["status"] == "ended"
        assert "ended_at" in r.json()

        events = await all_events(env, agent, sid)
        types = [e["event_type"] for e in events]
        assert types[0] == "session.started"
        assert types[-1] == "session.ended"
        assert "action.approved" in types
        assert "action.denied" in types
        assert [e["sequence"] for e in events] == list(range(len(events)))
        r = await c.post(f"/v1/traces/{sid}/verify", headers=supervisor)
        assert r.status_code == 200, r.text
        assert r.json() == {"valid": True, "event_count": len(events), "errors": []}

        text = await ndjson(env, agent, sid)
        assert text.endswith("\n")
        assert len(text.splitlines()) == len(events)
        parsed = loads_trace(text)
        verify_chain(parsed)
        assert parsed[0].previous_event_hash == GENESIS_HASH
        for before, after in itertools.pairwise(parsed):
            assert after.previous_event_hash == before.event_hash
        assert [e.to_dict() for e in parsed] == events

    run(tmp_path, body)


# -- 2. the golden resolution over HTTP ---------------------------------------------


def test_golden_resolution_over_http(tmp_path: Path) -> None:
    golden = CRA10 / "conformance" / "golden" / "simple-resolve"
    manifest = json.loads((golden / "atlas.json").read_text())
    request = json.loads((golden / "request.json").read_text())
    expected = json.loads((golden / "expected-resolution.json").read_text())
    schema = fastjsonschema.compile(json.loads((CRA10 / "schemas" / "carp-resolution.schema.json").read_text()))

    async def body(env: Env) -> None:
        author = await env.key("conformance", "policy_author")
        agent = await env.key("conformance", "agent", agent="test-agent")
        # The golden directory lacks the context file its manifest names (as in test_golden.py).
        r = await env.client.post("/v1/atlases", json={"manifest": manifest}, headers=author)
        problem_of(r, 400, path="/context_packs/0/files/0")
        files = {"context/overview.md": "# Resource overview\n\nResources have an id and a name.\n"}
        r = await env.client.post("/v1/atlases", json={"manifest": manifest, "files": files}, headers=author)
        assert r.status_code == 201, r.text
        assert r.json()["atlas_id"] == manifest["atlas_id"]
        assert r.json()["action_count"] == len(manifest["actions"])

        r = await env.client.post(
            "/v1/sessions", json={"agent_id": "test-agent", "goal": "I need to read and manage data"}, headers=agent
        )
        assert r.status_code == 201, r.text
        sid = r.json()["session_id"]
        req = {
            **request,
            "timestamp": now(),
            "requester": {"agent_id": "test-agent", "session_id": sid},
            "task": {**request["task"], "goal": "I need to read and manage data"},
        }
        r = await env.client.post("/v1/resolve", json=req, headers=agent)
        assert r.status_code == 200, r.text
        resolution = r.json()
        assert match(resolution, expected) == []
        assert resolution["request_id"] == request["request_id"]
        schema(resolution)
        validate("carp-resolution", resolution)

    run(tmp_path, body)


# -- 3. tenancy -----------------------------------------------------------------


def test_tenants_cannot_see_each_other(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        c = env.client
        await env.support("tenant-a")
        admin_a = await env.key("tenant-a", "admin")
        agent_a = await env.key("tenant-a", "agent", agent="support-bot")
        approver_a = await env.key("tenant-a", "approver", policy_roles=("supervisor",))
        admin_b = await env.key("tenant-b", "admin")
        agent_b = await env.key("tenant-b", "agent", agent="support-bot")  # the same agent id
        approver_b = await env.key("tenant-b", "approver", policy_roles=("supervisor",))
        r = await c.post(
            "/v1/atlases",
            json=tiny_atlas("com.tenant-b.own"),
            headers=admin_b,
        )
        assert r.status_code == 201, r.text

        sid = await new_session(env, agent_a, "support-bot")
        res = await resolve(env, agent_a, "support-bot", sid)
        out = await execute(env, agent_a, "support-bot", sid, res["resolution_id"], "refund.create", refund(20_000))
        pending = out["result"]["approval_id"]
        out = await execute(env, agent_a, "support-bot", sid, res["resolution_id"], "refund.create", refund(30_000))
        other = out["result"]["approval_id"]

        for who in (admin_b, agent_b, approver_b):
            problem_of(await c.get(f"/v1/sessions/{sid}", headers=who), 404)
            problem_of(await c.get(f"/v1/traces/{sid}", headers=who), 404)
            problem_of(await c.get(f"/v1/traces/{sid}", headers={**who, "Accept": NDJSON}), 404)
            problem_of(await c.post(f"/v1/traces/{sid}/verify", headers=who), 404)
            r = await c.get("/v1/sessions", headers=who)
            assert r.status_code == 200
            assert r.json()["items"] == []
            assert r.json()["total"] == 0
            r = await c.get("/v1/atlases", headers=who)
            assert [a["atlas_id"] for a in r.json()["items"]] == ["com.tenant-b.own"]
            problem_of(await c.get(f"/v1/atlases/{SUPPORT_ID}", headers=who), 404)
        for who in (admin_b, agent_b):
            problem_of(await c.delete(f"/v1/sessions/{sid}", headers=who), 404)
            r = await c.post("/v1/resolve", json=carp("support-bot", sid, "resolve"), headers=who)
            problem_of(r, 404)
        for who in (admin_b, approver_b):
            problem_of(await c.get(f"/v1/approvals/{pending}", headers=who), 404)
            problem_of(await c.post(f"/v1/approvals/{pending}/approve", headers=who), 404)
            problem_of(await c.post(f"/v1/approvals/{other}/deny", json={}, headers=who), 404)
            r = await c.get("/v1/approvals", headers=who)
            assert r.json()["items"] == []
        problem_of(await c.delete(f"/v1/atlases/{SUPPORT_ID}", headers=admin_b), 404)

        # Nothing B did touched A.
        r = await c.get(f"/v1/sessions/{sid}", headers=admin_a)
        assert r.json()["status"] == "active"
        r = await c.get("/v1/approvals", headers=approver_a)
        assert {a["approval_id"] for a in r.json()["items"]} == {pending, other}
        r = await c.get("/v1/atlases", headers=admin_a)
        assert [a["atlas_id"] for a in r.json()["items"]] == [SUPPORT_ID]
        r = await c.get("/v1/sessions", headers=admin_a)
        assert [s["session_id"] for s in r.json()["items"]] == [sid]

    run(tmp_path, body)


# -- 4. privilege escalation -------------------------------------------------------


def test_keys_cannot_exceed_their_role(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        c = env.client
        await env.support("acme")
        admin = await env.key("acme", "admin")
        bot = await env.key("acme", "agent", agent="support-bot")
        other = await env.key("acme", "agent", agent="other-bot")
        supervisor = await env.key("acme", "approver", policy_roles=("supervisor",))
        plain_approver = await env.key("acme", "approver")
        auditor = await env.key("acme", "auditor")
        author = await env.key("acme", "policy_author")

        # Acting as another agent.
        problem_of(await c.post("/v1/sessions", json={"agent_id": "other-bot", "goal": "g"}, headers=bot), 403)
        other_sid = await new_session(env, other, "other-bot")
        other_res = await resolve(env, other, "other-bot", other_sid)
        problem_of(await c.post("/v1/resolve", json=carp("other-bot", other_sid, "resolve"), headers=bot), 403)
        ex = execution(other_res["resolution_id"], "order.lookup", {"order_id": "1"})
        problem_of(
            await c.post("/v1/execute", json=carp("other-bot", other_sid, "execute", execution=ex), headers=bot), 403
        )
        problem_of(
            await c.post("/v1/evaluate", json={"action": "order.lookup", "agent": "other-bot"}, headers=bot), 403
        )
        problem_of(await c.post("/evaluate", json={"action": "order.lookup", "agent": "other-bot"}, headers=bot), 403)
        # Its own agent id is fine, named or implied.
        r = await c.post("/v1/evaluate", json={"action": "order.lookup", "params": {"order_id": "1"}}, headers=bot)
        assert r.status_code == 200, r.text
        assert r.json()["decision"] == "allow"

        # Another agent's session in the same tenant does not exist for it.
        problem_of(await c.get(f"/v1/sessions/{other_sid}", headers=bot), 404)
        problem_of(await c.get(f"/v1/traces/{other_sid}", headers=bot), 404)
        problem_of(await c.post(f"/v1/traces/{other_sid}/verify", headers=bot), 404)
        problem_of(await c.delete(f"/v1/sessions/{other_sid}", headers=bot), 404)
        sid = await new_session(env, bot, "support-bot")
        r = await c.get("/v1/sessions", params={"agent_id": "other-bot"}, headers=bot)
        assert [s["session_id"] for s in r.json()["items"]] == [sid]

        # Atlases: read yes, write no.
        assert (await c.get("/v1/atlases", headers=bot)).status_code == 200
        problem_of(await c.post("/v1/atlases", json=tiny_atlas("com.evil.x"), headers=bot), 403)
        problem_of(await c.delete(f"/v1/atlases/{SUPPORT_ID}", headers=bot), 403)

        # Approvals: an agent cannot list, read or decide any, not even its own.
        res = await resolve(env, bot, "support-bot", sid)
        out = await execute(env, bot, "support-bot", sid, res["resolution_id"], "refund.create", refund(20_000))
        approval = out["result"]["approval_id"]
        problem_of(await c.get("/v1/approvals", headers=bot), 403)
        problem_of(await c.get(f"/v1/approvals/{approval}", headers=bot), 403)
        problem_of(await c.post(f"/v1/approvals/{approval}/approve", headers=bot), 403)
        problem_of(await c.post(f"/v1/approvals/{approval}/deny", headers=bot), 403)
        # An approver without the atlas's approver role (supervisor) cannot approve either.
        problem_of(await c.post(f"/v1/approvals/{approval}/approve", headers=plain_approver), 403)
        # An auditor reads but decides nothing and runs nothing.
        assert (await c.get("/v1/approvals", headers=auditor)).status_code == 200
        assert (await c.get(f"/v1/sessions/{sid}", headers=auditor)).status_code == 200
        problem_of(await c.post(f"/v1/approvals/{approval}/approve", headers=auditor), 403)
        problem_of(await c.post(f"/v1/approvals/{approval}/deny", headers=auditor), 403)
        problem_of(await c.post("/v1/sessions", json={"agent_id": "x", "goal": "g"}, headers=auditor), 403)
        problem_of(await c.post("/v1/resolve", json=carp("support-bot", sid, "resolve"), headers=auditor), 403)
        problem_of(await c.delete(f"/v1/sessions/{sid}", headers=auditor), 403)
        # Nor does an approver run sessions.
        problem_of(await c.post("/v1/sessions", json={"agent_id": "x", "goal": "g"}, headers=supervisor), 403)
        r = await c.get(f"/v1/approvals/{approval}", headers=supervisor)
        assert r.json()["status"] == "pending"

        # A policy author loads atlases but runs no sessions.
        r = await c.post("/v1/atlases", json=tiny_atlas("com.acme.copy"), headers=author)
        assert r.status_code == 201, r.text
        assert (await c.delete("/v1/atlases/com.acme.copy", headers=author)).status_code == 204
        problem_of(await c.post("/v1/sessions", json={"agent_id": "x", "goal": "g"}, headers=author), 403)
        problem_of(await c.post("/v1/resolve", json=carp("support-bot", sid, "resolve"), headers=author), 403)
        problem_of(await c.get("/v1/sessions", headers=author), 403)
        problem_of(await c.get("/v1/approvals", headers=author), 403)

        # Nothing in a body grants roles or moves tenants.
        for field, value in (("roles", ["privacy-officer"]), ("tenant_id", "other"), ("policy_roles", ["admin"])):
            r = await c.post("/v1/sessions", json={"agent_id": "support-bot", "goal": "g", field: value}, headers=bot)
            problem_of(r, 400, path=f"/{field}")
        r = await c.post("/v1/evaluate", json={"action": "customer.delete", "roles": ["privacy-officer"]}, headers=bot)
        problem_of(r, 400, path="/roles")
        r = await c.post(
            "/v1/evaluate",
            json={
                "action": "customer.delete",
                "params": {"customer_id": "C-7"},
                "context": {"roles": ["privacy-officer"], "tenant_id": "other"},
            },
            headers=bot,
        )
        assert r.status_code == 200, r.text
        assert r.json()["decision"] == "deny"
        assert r.json()["policy_id"] == "deny-customer-delete"
        sneaky = await resolve(
            env, bot, "support-bot", sid, context={"roles": ["privacy-officer"], "tenant_id": "other"}
        )
        assert {d["action_id"]: d["policy_id"] for d in sneaky["denied_actions"]} == AGENT_DENIED
        r = await c.get(f"/v1/sessions/{sid}", headers=bot)
        assert r.json()["roles"] == ["agent"]

        # An admin key may act for any agent of its own tenant.
        assert (await c.get(f"/v1/sessions/{other_sid}", headers=admin)).status_code == 200

    run(tmp_path, body)


def test_bad_credentials_get_401(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        c = env.client
        good, key_id = await env.key_with_id("acme", "admin")
        assert (await c.get("/v1/sessions", headers=good)).status_code == 200
        token = good["X-API-Key"]
        assert (await c.get("/v1/sessions", headers={"Authorization": f"Bearer {token}"})).status_code == 200

        for headers in (
            {},
            {"X-API-Key": ""},
            {"X-API-Key": "not-a-key"},
            {"X-API-Key": "cra_"},
            {"X-API-Key": "cra_0000000000000000_" + "x" * 43},
            {"X-API-Key": token[:-1] + ("A" if token[-1] != "A" else "B")},
            {"X-API-Key": "cra_" + "a" * 300},
            {"Authorization": "Basic dXNlcjpwYXNz"},
        ):
            body = problem_of(await c.get("/v1/sessions", headers=headers), 401)
            assert body["code"] == "unauthenticated"
        r = await c.get("/v1/sessions")
        assert "www-authenticate" in r.headers

        # With the key cache off (as here), a revocation in the store takes effect at once.
        assert await env.booted.state.revoke_key(key_id, now())
        problem_of(await c.get("/v1/sessions", headers=good), 401)
        problem_of(await c.post("/v1/sessions", json={"agent_id": "a", "goal": "g"}, headers=good), 401)
        # Health needs no key.
        r = await c.get("/v1/health")
        assert r.status_code == 200
        assert r.json()["status"] == "healthy"

    run(tmp_path, body, ServerSettings(key_cache_seconds=0))


# -- 5. bad input -------------------------------------------------------------------


def test_bad_bodies_are_precise_4xx_problems(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        c = env.client
        await env.support("acme")
        admin = await env.key("acme", "admin")
        raw = {**admin, "Content-Type": "application/json"}

        for text in (
            b"",
            b'{"agent_id":',
            b'{"agent_id": "a", "goal": "g"} trailing',
            b'{"agent_id": "a", "agent_id": "b", "goal": "g"}',
            b'{"agent_id": "a", "goal": NaN}',
            b"\xff\xfe{}",
            b"[]",
            b"null",
            b'"text"',
            b"42",
        ):
            problem_of(await c.post("/v1/sessions", content=text, headers=raw), 400, path="")
        for route in ("/v1/resolve", "/v1/execute", "/v1/evaluate", "/v1/atlases"):
            for text in (b"[1, 2]", b'{"a": 1, "a": 2}', b"{"):
                r = await c.post(route, content=text, headers=raw)
                assert 400 <= r.status_code < 500, (route, text, r.text)
                problem_of(r, r.status_code)

        for fields, path in (
            ({"goal": "g"}, "/agent_id"),
            ({"agent_id": "a"}, "/goal"),
            ({"agent_id": 7, "goal": "g"}, "/agent_id"),
            ({"agent_id": True, "goal": "g"}, "/agent_id"),
            ({"agent_id": "a", "goal": ["g"]}, "/goal"),
            ({"agent_id": "a", "goal": "g", "metadata": []}, "/metadata"),
            ({"agent_id": "a", "goal": "g", "atlas_ids": "com.x.y"}, "/atlas_ids"),
            ({"agent_id": "a", "goal": "g", "atlas_ids": [1]}, "/atlas_ids/0"),
            ({"agent_id": "a", "goal": "g", "surprise": 1}, "/surprise"),
        ):
            problem_of(await c.post("/v1/sessions", json=fields, headers=admin), 400, path=path)

        for fields, path in (
            ({}, "/action"),
            ({"action": 1, "agent": "a"}, "/action"),
            ({"action": "order.lookup", "agent": "a", "params": []}, "/params"),
            ({"action": "order.lookup", "agent": "a", "explain": "yes"}, "/explain"),
            ({"action": "order.lookup", "agent": "a", "risk_tier": "extreme"}, "/risk_tier"),
            ({"action": "order.lookup", "agent": "a", "context": "x"}, "/context"),
            ({"action": "order.lookup"}, "/agent"),  # an admin key is bound to no agent
        ):
            problem_of(await c.post("/v1/evaluate", json=fields, headers=admin), 400, path=path)

        sid = await new_session(env, admin, "support-bot")
        good = carp("support-bot", sid, "resolve")
        without_task = {k: v for k, v in good.items() if k != "task"}
        problem_of(await c.post("/v1/resolve", json=without_task, headers=admin), 400, path="/task")
        problem_of(await c.post("/v1/resolve", json={**good, "carp_version": "2.0"}, headers=admin), 400)
        problem_of(
            await c.post("/v1/resolve", json={**good, "requester": {"session_id": sid}}, headers=admin),
            400,
            path="/requester/agent_id",
        )
        problem_of(
            await c.post("/v1/resolve", json={**good, "task": {"goal": "g", "risk": 1}}, headers=admin),
            400,
            path="/task/risk",
        )
        problem_of(await c.post("/v1/execute", json=carp("support-bot", sid, "execute"), headers=admin), 400)
        # Stale and replayed requests are refused, not served.
        stale = {**good, "timestamp": "2024-12-28T12:00:00.000Z"}
        r = await c.post("/v1/resolve", json=stale, headers=admin)
        assert 400 <= r.status_code < 500
        problem_of(r, r.status_code)
        assert (await c.post("/v1/resolve", json=good, headers=admin)).status_code == 200
        r = await c.post("/v1/resolve", json=good, headers=admin)
        assert 400 <= r.status_code < 500
        problem_of(r, r.status_code)
        problem_of(
            await c.post("/v1/resolve", json=carp("support-bot", str(uuid.uuid4()), "resolve"), headers=admin), 404
        )

        # Query parameters.
        problem_of(await c.get("/v1/sessions", params={"limit": 0}, headers=admin), 400, path="/limit")
        problem_of(await c.get("/v1/sessions", params={"limit": "many"}, headers=admin), 400, path="/limit")
        problem_of(await c.get("/v1/sessions", params={"status": "paused"}, headers=admin), 400, path="/status")
        problem_of(await c.get("/v1/approvals", params={"status": "maybe"}, headers=admin), 400, path="/status")
        problem_of(
            await c.delete(f"/v1/sessions/{sid}", params={"reason": "bored"}, headers=admin), 400, path="/reason"
        )
        # Approval bodies.
        bot = await env.key("acme", "agent", agent="support-bot")
        bot_sid = await new_session(env, bot, "support-bot")
        res = await resolve(env, bot, "support-bot", bot_sid)
        out = await execute(env, bot, "support-bot", bot_sid, res["resolution_id"], "refund.create", refund(20_000))
        approval = out["result"]["approval_id"]
        supervisor = await env.key("acme", "approver", policy_roles=("supervisor",))
        r = await c.post(f"/v1/approvals/{approval}/approve", json={"comment": 5}, headers=supervisor)
        problem_of(r, 400, path="/comment")
        r = await c.post(f"/v1/approvals/{approval}/deny", json={"note": "x"}, headers=supervisor)
        problem_of(r, 400, path="/note")
        problem_of(await c.post(f"/v1/approvals/{approval}/approve", json=[], headers=supervisor), 400, path="")
        problem_of(await c.get(f"/v1/approvals/{uuid.uuid4()}", headers=supervisor), 404)
        problem_of(await c.post(f"/v1/approvals/{uuid.uuid4()}/approve", headers=supervisor), 404)
        # Unknown routes and methods.
        problem_of(await c.get("/v1/nothing-here", headers=admin), 404)
        problem_of(await c.put("/v1/sessions", headers=admin), 405)
        problem_of(await c.get(f"/v1/sessions/{uuid.uuid4()}", headers=admin), 404)
        problem_of(await c.get(f"/v1/traces/{uuid.uuid4()}", headers=admin), 404)

    run(tmp_path, body)


def test_body_size_and_depth_limits(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        c = env.client
        admin = await env.key("acme", "admin")
        big = {"agent_id": "a", "goal": "g", "metadata": {"blob": "x" * 5000}}
        problem_of(await c.post("/v1/sessions", json=big, headers=admin), 413)

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            yield b'{"agent_id": "a", "goal": "g", "metadata": {"blob": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}}'

        r = await c.post("/v1/sessions", content=chunks(), headers={**admin, "Content-Type": "application/json"})
        problem_of(r, 413)
        r = await c.post("/v1/sessions", content=b"{}", headers={**admin, "Content-Length": "nope"})
        assert 400 <= r.status_code < 500

        def nested(levels: int) -> dict[str, Any]:
            """A session body whose metadata makes the document ``levels`` objects deep."""
            value: dict[str, Any] = {}
            for _ in range(levels - 2):
                value = {"k": value}
            return {"agent_id": "a", "goal": "g", "metadata": value}

        problem_of(await c.post("/v1/sessions", json=nested(9), headers=admin), 400, path="")
        problem_of(await c.post("/v1/sessions", json=nested(500), headers=admin), 400, path="")
        deep_list = "[" * 5000 + "]" * 5000
        text = b'{"agent_id": "a", "goal": "g", "metadata": {"x": ' + deep_list.encode() + b"}}"
        r = await c.post("/v1/sessions", content=text, headers={**admin, "Content-Type": "application/json"})
        problem_of(r, r.status_code)
        assert r.status_code in (400, 413)
        r = await c.post("/v1/sessions", json=nested(6), headers=admin)
        assert r.status_code == 201, r.text

    run(tmp_path, body, ServerSettings(max_body_bytes=4096, max_json_depth=8))


def test_json_nested_exactly_at_the_depth_limit_is_accepted(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        admin = await env.key("acme", "admin")
        value: dict[str, Any] = {"leaf": 1}
        for _ in range(8 - 2):
            value = {"k": value}
        at_limit = {"agent_id": "a", "goal": "g", "metadata": value}  # 8 objects deep, no more
        r = await env.client.post("/v1/sessions", json=at_limit, headers=admin)
        assert r.status_code == 201, r.text

    run(tmp_path, body, ServerSettings(max_json_depth=8))


def test_atlas_upload_errors_conflicts_replace_and_unload(tmp_path: Path) -> None:
    manifest = json.loads((SUPPORT / "atlas.json").read_text())
    files = {
        str(p.relative_to(SUPPORT)): p.read_text()
        for p in sorted(SUPPORT.rglob("*"))
        if p.is_file() and p.name != "atlas.json" and p.parts[len(SUPPORT.parts)] != "tests"
    }

    async def body(env: Env) -> None:
        c = env.client
        admin = await env.key("acme", "admin")
        broken = json.loads(json.dumps(manifest))
        broken["policies"][1]["conditions"] = {"paramz": {}}
        r = await c.post("/v1/atlases", json={"manifest": broken, "files": files}, headers=admin)
        problem_of(r, 400, path="/policies/1/conditions/paramz")
        r = await c.post("/v1/atlases", json={"manifest": {**manifest, "version": 3}, "files": files}, headers=admin)
        problem_of(r, 400, path="/version")
        no_context = {k: v for k, v in files.items() if not k.startswith("context/")}
        r = await c.post("/v1/atlases", json={"manifest": manifest, "files": no_context}, headers=admin)
        body = problem_of(r, 400)
        assert body["path"].startswith("/context_packs/")
        r = await c.post("/v1/atlases", json={"manifest": manifest, "files": files, "extra": 1}, headers=admin)
        problem_of(r, 400, path="/extra")
        r = await c.post("/v1/atlases", json={"manifest": manifest, "files": []}, headers=admin)
        problem_of(r, 400, path="/files")
        r = await c.post("/v1/atlases", json={"manifest": "atlas.json"}, headers=admin)
        problem_of(r, 400, path="/manifest")
        problem_of(await c.post("/v1/atlases", json=[manifest], headers=admin), 400, path="")
        assert (await c.get("/v1/atlases", headers=admin)).json()["total"] == 0

        r = await c.post("/v1/atlases", json={"manifest": manifest, "files": files}, headers=admin)
        assert r.status_code == 201, r.text
        first = r.json()
        assert first["atlas_id"] == SUPPORT_ID
        assert first["version"] == "1.0.0"
        assert first["action_count"] == 5  # four in atlas.json, customer.delete in actions/privacy.json
        r = await c.post("/v1/atlases", json={"manifest": manifest, "files": files}, headers=admin)
        problem_of(r, 409)
        newer = {**manifest, "version": "1.1.0"}
        r = await c.post("/v1/atlases", json={"manifest": newer, "files": files}, headers=admin)
        problem_of(r, 409)
        r = await c.post(
            "/v1/atlases", params={"replace": "true"}, json={"manifest": newer, "files": files}, headers=admin
        )
        assert r.status_code == 201, r.text
        assert r.json()["version"] == "1.1.0"
        assert r.json()["digest"] != first["digest"]
        r = await c.get(f"/v1/atlases/{SUPPORT_ID}", headers=admin)
        assert r.status_code == 200
        assert r.json()["version"] == "1.1.0"
        r = await c.get("/v1/atlases", headers=admin)
        assert [(a["atlas_id"], a["version"]) for a in r.json()["items"]] == [(SUPPORT_ID, "1.1.0")]

        assert (await c.delete(f"/v1/atlases/{SUPPORT_ID}", headers=admin)).status_code == 204
        problem_of(await c.get(f"/v1/atlases/{SUPPORT_ID}", headers=admin), 404)
        problem_of(await c.delete(f"/v1/atlases/{SUPPORT_ID}", headers=admin), 404)
        assert (await c.get("/v1/atlases", headers=admin)).json()["items"] == []
        r = await c.post("/v1/evaluate", json={"action": "order.lookup", "agent": "a"}, headers=admin)
        problem_of(r, 404)

    run(tmp_path, body)


def test_a_non_text_atlas_file_is_reported_at_its_json_pointer(tmp_path: Path) -> None:
    manifest = json.loads((SUPPORT / "atlas.json").read_text())

    async def body(env: Env) -> None:
        admin = await env.key("acme", "admin")
        files = {"context/tone-guide.md": 5}
        r = await env.client.post("/v1/atlases", json={"manifest": manifest, "files": files}, headers=admin)
        problem_of(r, 400, path="/files/context~1tone-guide.md")

    run(tmp_path, body)


# -- 6. durability ----------------------------------------------------------------


def test_everything_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    saved: dict[str, Any] = {}

    async def before(env: Env) -> None:
        await env.support("acme")
        bot = await env.key("acme", "agent", agent="support-bot")
        auditor = await env.key("acme", "auditor")
        supervisor = await env.key("acme", "approver", policy_roles=("supervisor",))
        sid = await new_session(env, bot, "support-bot")
        done = await new_session(env, bot, "support-bot")
        assert (await env.client.delete(f"/v1/sessions/{done}", headers=bot)).status_code == 204
        res = await resolve(env, bot, "support-bot", sid)
        rid = res["resolution_id"]
        out = await execute(env, bot, "support-bot", sid, rid, "refund.create", refund(20_000))
        approved = out["result"]["approval_id"]
        out = await execute(env, bot, "support-bot", sid, rid, "refund.create", refund(30_000))
        waiting = out["result"]["approval_id"]
        r = await env.client.post(f"/v1/approvals/{approved}/approve", headers=supervisor)
        assert r.status_code == 200, r.text
        saved.update(
            bot=bot,
            auditor=auditor,
            sid=sid,
            done=done,
            rid=rid,
            approved=approved,
            waiting=waiting,
            ticket=r.json()["ticket"],
            session=(await env.client.get(f"/v1/sessions/{sid}", headers=bot)).json(),
            trace=await ndjson(env, bot, sid),
            done_trace=await ndjson(env, bot, done),
        )

    async def after(env: Env) -> None:
        c = env.client
        bot, auditor, sid = saved["bot"], saved["auditor"], saved["sid"]
        r = await c.get(f"/v1/sessions/{sid}", headers=bot)
        assert r.status_code == 200
        assert r.json() == saved["session"]
        assert await ndjson(env, bot, sid) == saved["trace"]
        assert await ndjson(env, bot, saved["done"]) == saved["done_trace"]
        verify_chain(loads_trace(saved["trace"]))
        r = await c.post(f"/v1/traces/{sid}/verify", headers=auditor)
        assert r.json() == {"valid": True, "event_count": len(loads_trace(saved["trace"])), "errors": []}
        r = await c.get("/v1/approvals", headers=auditor)
        assert [a["approval_id"] for a in r.json()["items"]] == [saved["waiting"]]
        r = await c.get(f"/v1/approvals/{saved['approved']}", headers=auditor)
        assert r.json()["status"] == "approved"
        r = await c.get("/v1/sessions", headers=auditor)
        assert {s["session_id"]: s["status"] for s in r.json()["items"]} == {sid: "active", saved["done"]: "ended"}
        r = await c.get("/v1/atlases", headers=auditor)
        assert [a["atlas_id"] for a in r.json()["items"]] == [SUPPORT_ID]

        # The ticket issued before the restart is still honoured (and only for its call).
        rid = saved["rid"]
        out = await execute(env, bot, "support-bot", sid, rid, "refund.create", refund(20_001), ticket=saved["ticket"])
        assert out["status"] == "denied"
        out = await execute(env, bot, "support-bot", sid, rid, "refund.create", refund(20_000), ticket=saved["ticket"])
        assert out["status"] == "error"
        assert out["error"]["code"] == "no_executor"
        assert (await c.delete(f"/v1/sessions/{sid}", headers=bot)).status_code == 204

        events = await all_events(env, auditor, sid)
        assert events[: len(loads_trace(saved["trace"]))] == [e.to_dict() for e in loads_trace(saved["trace"])]
        verify_chain(loads_trace(await ndjson(env, bot, sid)))
        total = len(events) + len(await all_events(env, auditor, saved["done"]))
        ledger = env.booted.ledger
        assert ledger.size == total
        report = ledger.audit()
        assert report.size == total
        lines = (await ndjson(env, bot, sid)).splitlines()
        for event, line in zip(events, lines, strict=True):
            assert ledger.entry(event["event_id"]) == line.encode()

    run(data, before)
    run(data, after)


# -- 7. per-key rate limit ---------------------------------------------------------


def test_per_key_rate_limit(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        c = env.client
        one = await env.key("acme", "admin")
        two = await env.key("acme", "admin")
        statuses = [(await c.get("/v1/sessions", headers=one)).status_code for _ in range(2)]
        assert statuses == [200, 200]  # the burst is twice the rate
        r = await c.get("/v1/sessions", headers=one)
        body = problem_of(r, 429)
        assert body["code"] == "rate_limited"
        assert int(r.headers["Retry-After"]) >= 1
        assert (await c.get("/v1/sessions", headers=two)).status_code == 200  # per key, not global
        problem_of(await c.post("/v1/sessions", json={"agent_id": "a", "goal": "g"}, headers=one), 429)
        await asyncio.sleep(1.1)
        assert (await c.get("/v1/sessions", headers=one)).status_code == 200

    run(tmp_path, body, ServerSettings(key_requests_per_second=1))


# -- 8. concurrency ---------------------------------------------------------------


def test_concurrent_resolves_on_one_session(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        await env.support("acme")
        bot = await env.key("acme", "agent", agent="support-bot")
        # The baseline: the same eight resolves, one after another, on another session.
        serial = await new_session(env, bot, "support-bot")
        for _ in range(8):
            await resolve(env, bot, "support-bot", serial)
        expected = len(await all_events(env, bot, serial))
        assert expected > 9

        sid = await new_session(env, bot, "support-bot")
        requests = [carp("support-bot", sid, "resolve") for _ in range(8)]
        responses = await asyncio.gather(*(env.client.post("/v1/resolve", json=q, headers=bot) for q in requests))
        assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
        bodies = [r.json() for r in responses]
        assert [b["request_id"] for b in bodies] == [q["request_id"] for q in requests]
        assert len({b["resolution_id"] for b in bodies}) == 8
        for b in bodies:
            assert {a["action_id"] for a in b["allowed_actions"]} == AGENT_ALLOWED

        events = await all_events(env, bot, sid)
        assert len(events) == expected
        assert [e["sequence"] for e in events] == list(range(expected))
        assert sum(e["event_type"] == "carp.resolution.completed" for e in events) == 8
        verify_chain(loads_trace(await ndjson(env, bot, sid)))
        r = await env.client.post(f"/v1/traces/{sid}/verify", headers=bot)
        assert r.json() == {"valid": True, "event_count": expected, "errors": []}

    run(tmp_path, body)


def test_the_hot_evaluate_path_answers_like_every_other_route(tmp_path: Path) -> None:
    """/v1/evaluate is served ahead of the router: its errors, limits and headers must not differ."""
    call = {"action": "order.lookup", "params": {"order_id": "42"}}

    async def errors(env: Env) -> None:
        await env.support("acme")
        agent = await env.key("acme", "agent", agent="support-bot", policy_roles=("agent",))
        c = env.client
        for path in ("/v1/evaluate", "/evaluate"):
            ok = await c.post(path, headers=agent, json=call)
            assert ok.status_code == 200
            assert ok.json()["decision"] == "allow"
            assert ok.headers["x-content-type-options"] == "nosniff"
        problem_of(await c.post("/v1/evaluate", json=call), 401)
        problem_of(await c.post("/v1/evaluate", headers=agent, json={**call, "roles": ["admin"]}), 400, path="/roles")
        problem_of(await c.post("/v1/evaluate", headers=agent, content=b"{"), 400)
        as_other = await c.post("/v1/evaluate", headers=agent, json={**call, "agent": "other-bot"})
        assert problem_of(as_other, 403)["code"] == "forbidden"
        # Other methods on the hot path are the router's business: 405, as for any route.
        assert (await c.get("/v1/evaluate", headers=agent)).status_code == 405

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug")

        env.booted.service.evaluate = broken  # type: ignore[method-assign]
        crashed = await c.post("/v1/evaluate", headers=agent, json=call)
        assert problem_of(crashed, 500)["code"] == "internal"
        assert "a bug" not in crashed.text
        assert crashed.headers["x-content-type-options"] == "nosniff"

    async def limits(env: Env) -> None:
        await env.support("acme")
        agent = await env.key("acme", "agent", agent="support-bot", policy_roles=("agent",))
        statuses = [(await env.client.post("/v1/evaluate", headers=agent, json=call)).status_code for _ in range(4)]
        assert statuses[:2] == [200, 200]
        assert statuses[-1] == 429
        limited = await env.client.post("/evaluate", headers=agent, json=call)
        problem_of(limited, 429)
        assert int(limited.headers["retry-after"]) >= 1

    run(tmp_path / "errors", errors)
    run(tmp_path / "limits", limits, ServerSettings(key_requests_per_second=1))


def test_evaluate_denies_the_arguments_execute_would_refuse(tmp_path: Path) -> None:
    """Issue #12, finding 3: an integrator who gates on evaluate never gets an allow that execute refuses."""
    good = {"order_id": "42", "amount": 2500, "currency": "SAR"}
    cases = [
        ({"order_id": "42", "amount": 2500}, "/currency"),
        ({**good, "order_id": 42}, "/order_id"),
        ({**good, "note": "an unknown field"}, "/note"),
    ]

    async def body(env: Env) -> None:
        await env.support("acme")
        agent = await env.key("acme", "agent", agent="support-bot", policy_roles=("agent",))
        for params, path in cases:
            r = await env.client.post("/v1/evaluate", headers=agent, json={"action": "refund.create", "params": params})
            assert r.status_code == 200, r.text
            out = r.json()
            assert (out["decision"], out["policy_id"], out["reason_code"]) == (
                "deny",
                "cra:parameters_schema",
                "invalid_parameters",
            )
            assert out["details"] == {"path": path}
        fits = await env.client.post("/v1/evaluate", headers=agent, json={"action": "refund.create", "params": good})
        assert fits.json()["reason_code"] != "invalid_parameters"

    run(tmp_path, body)


def test_every_integer_parameter_is_bounded_and_a_huge_one_is_a_400(tmp_path: Path) -> None:
    """Issue #12, finding 13: ``?since_sequence=99999999999999999999999`` was a 500 (OverflowError)."""

    async def body(env: Env) -> None:
        await env.support("acme")
        admin = await env.key("acme", "admin")
        sid = (await env.client.post("/v1/sessions", json={"agent_id": "a", "goal": "g"}, headers=admin)).json()
        huge = "99999999999999999999999"
        r = await env.client.get(f"/v1/traces/{sid['session_id']}?since_sequence={huge}", headers=admin)
        problem_of(r, 400)
        assert "since_sequence" in r.text

        spec = (await env.client.get("/openapi.json", headers=admin)).json()
        unbounded = [
            f"{method.upper()} {route} {parameter['name']}"
            for route, methods in spec["paths"].items()
            for method, operation in methods.items()
            for parameter in operation.get("parameters", [])
            for schema in [parameter["schema"], *parameter["schema"].get("anyOf", [])]
            if schema.get("type") == "integer" and "maximum" not in schema
        ]
        assert unbounded == []

    run(tmp_path, body)


def test_a_lone_surrogate_anywhere_in_a_body_is_a_400_with_its_path(tmp_path: Path) -> None:
    """Issue #12, finding 6: these bodies were 500s with two tracebacks and a dropped connection."""

    async def body(env: Env) -> None:
        await env.support("acme")
        admin = await env.key("acme", "admin")
        agent = await env.key("acme", "agent", agent="support-bot", policy_roles=("agent",))
        json_headers = {"content-type": "application/json"}
        r = await env.client.post(
            "/v1/sessions", content=b'{"agent_id": "support-bot", "goal": "x\\ud800"}', headers=admin | json_headers
        )
        problem_of(r, 400, path="/goal")
        r = await env.client.post(
            "/v1/evaluate",
            content=b'{"action": "order.lookup", "params": {"order_id": "\\udfff"}}',
            headers=agent | json_headers,
        )
        problem_of(r, 400, path="/params/order_id")
        # The service goes on answering.
        assert (await env.client.get("/v1/health")).status_code == 200

    run(tmp_path, body)


def test_an_atlas_with_a_pasted_time_zone_is_a_400_and_the_value_is_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue #12, finding 14: a 5,000-character time zone was a 500 that logged the value twice."""
    pasted = "card 4111111111111111 " + "x" * 5000
    manifest = {
        "atlas_version": "1.0",
        "atlas_id": "org.test.tz",
        "version": "1.0.0",
        "name": "TZ",
        "description": "A pasted time zone",
        "actions": [{"action_id": "a.b", "name": "A", "description": "A"}],
        "policies": [
            {
                "policy_id": "night",
                "type": "deny",
                "actions": ["*"],
                "conditions": {"time_window": {"start": "22:00", "end": "06:00", "timezone": pasted}},
            }
        ],
    }

    async def body(env: Env) -> None:
        author = await env.key("acme", "policy_author")
        r = await env.client.post("/v1/atlases", json={"manifest": manifest}, headers=author)
        problem_of(r, 400, path="/policies/0/conditions/time_window/timezone")
        assert "4111" not in r.text

    with caplog.at_level(logging.DEBUG):
        run(tmp_path, body)
    assert "4111" not in caplog.text


def test_the_openapi_document_is_public_unless_turned_off_and_no_cdn_docs_ui_is_served(tmp_path: Path) -> None:
    """Issue #12, finding 16: /docs and /redoc loaded Swagger UI and ReDoc from a CDN (blank under the CSP)."""

    async def default(env: Env) -> None:
        r = await env.client.get("/openapi.json")
        assert r.status_code == 200
        assert "/v1/evaluate" in r.json()["paths"]
        for ui in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            assert (await env.client.get(ui)).status_code == 404, ui

    async def closed(env: Env) -> None:
        assert (await env.client.get("/openapi.json")).status_code == 404
        admin = await env.key("acme", "admin")
        assert (await env.client.get("/openapi.json", headers=admin)).status_code == 404

    run(tmp_path / "default", default)
    run(tmp_path / "closed", closed, ServerSettings(public_openapi=False))


def test_a_client_that_leaves_before_its_body_arrives_costs_one_debug_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue #12, finding 15: ``Content-Length: 100``, 10 bytes, then gone, logged two full tracebacks."""

    async def body(env: Env) -> None:
        await env.support("acme")
        key = (await env.key("acme", "agent", agent="support-bot", policy_roles=("agent",)))["X-API-Key"]
        app = create_app(env.booted.service, env.booted.state)
        for path in ("/v1/sessions", "/v1/evaluate"):  # a routed endpoint and the hot path
            incoming: list[dict[str, Any]] = [
                {"type": "http.request", "body": b'{"agent_id"', "more_body": True},
                {"type": "http.disconnect"},
            ]

            async def receive(incoming: list[dict[str, Any]] = incoming) -> dict[str, Any]:
                return incoming.pop(0) if incoming else {"type": "http.disconnect"}

            async def send(message: MutableMapping[str, Any]) -> None:
                return None

            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "root_path": "",
                "query_string": b"",
                "headers": [
                    (b"host", b"cra.test"),
                    (b"x-api-key", key.encode()),
                    (b"content-type", b"application/json"),
                    (b"content-length", b"100"),
                ],
                "client": ("127.0.0.1", 50000),
                "server": ("cra.test", 80),
            }
            await app(scope, receive, send)

    with caplog.at_level(logging.DEBUG, logger="cra"):
        run(tmp_path, body)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert sum("left during" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("path", ["/v1/evaluate", "/v1/sessions"])
def test_the_hot_path_keeps_every_middleware_promise_a_routed_path_keeps(tmp_path: Path, path: str) -> None:
    """Issue #13: ``POST /v1/evaluate`` is served ahead of the middleware stack, and with
    ``cors_origins`` set it answered without CORS headers while every routed path had them."""
    origin = "https://console.example.com"
    settings = ServerSettings(cors_origins=(origin,))

    async def body(env: Env) -> None:
        await env.support("acme")
        agent = await env.key("acme", "agent", agent="support-bot", policy_roles=("agent",))
        request = {"action": "order.lookup", "params": {"order_id": "1"}} if path == "/v1/evaluate" else {"goal": "g"}
        if path == "/v1/sessions":
            request["agent_id"] = "support-bot"
        allowed = await env.client.post(path, headers={**agent, "Origin": origin}, json=request)
        assert allowed.status_code in (200, 201), allowed.text
        assert allowed.headers["access-control-allow-origin"] == origin
        assert "origin" in allowed.headers["vary"].lower()
        for name in ("x-content-type-options", "x-frame-options", "referrer-policy", "content-security-policy"):
            assert name in allowed.headers, name
        foreign = await env.client.post(path, headers={**agent, "Origin": "https://evil.example"}, json=request)
        assert "access-control-allow-origin" not in foreign.headers
        preflight = await env.client.options(
            path,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "X-API-Key, Content-Type",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == origin
        assert "POST" in preflight.headers["access-control-allow-methods"]

    run(tmp_path, body, settings)

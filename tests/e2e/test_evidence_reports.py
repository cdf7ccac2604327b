"""Evidence and reports over HTTP: decision records with their attestations, attached evidence, aggregates.

The expected figures are worked out from the customer-support atlas: which
policy decides each call, and what its limits allow.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from typing import Any

import polars as pl
from tests.e2e._service import PROBLEM, SUPPORT, Env, carp, run

from cra import load_atlas
from cra.ledger.attestation import open_attestation
from cra.runtime.execution import Executor
from cra.store.reports import render
from cra.trace.chain import verify_chain
from cra.trace.jsonl import loads_trace

AGENT = "support-bot"


def _reply(args: dict[str, Any]) -> dict[str, Any]:
    return {"sent": True}


EXECUTORS: dict[str, Executor] = dict.fromkeys(
    ("order.lookup", "ticket.reply", "refund.create", "customer.delete"), _reply
)


async def governed_session(env: Env) -> tuple[str, dict[str, str]]:
    """A session whose execute decisions are: 2 allows of order.lookup and 3 of ticket.reply, one
    rate-limited reply, one refund too large to allow, one sent for approval and then allowed with its ticket.

    A deletion, which the resolution already denied, is refused before any policy decides it.
    """
    await env.support("acme")
    agent = await env.key("acme", "agent", agent=AGENT, policy_roles=("agent",))
    approver = await env.key("acme", "approver", policy_roles=("supervisor",))
    c = env.client
    session = (await c.post("/v1/sessions", headers=agent, json={"agent_id": AGENT, "goal": "Refund order 42"})).json()
    sid = session["session_id"]
    resolution = (await c.post("/v1/resolve", headers=agent, json=carp(AGENT, sid))).json()
    rid = resolution["resolution_id"]

    async def execute(action: str, params: dict[str, Any], ticket: str | None = None) -> dict[str, Any]:
        headers = dict(agent) | ({"X-CRA-Approval-Ticket": ticket} if ticket else {})
        body = carp(AGENT, sid, "execute", execution={"resolution_id": rid, "action_id": action, "parameters": params})
        response = await c.post("/v1/execute", headers=headers, json=body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    for _ in range(2):
        assert (await execute("order.lookup", {"order_id": "42"}))["status"] == "success"
    reply = {"ticket_id": "T-1", "message": "Your refund is on its way."}
    statuses = [(await execute("ticket.reply", reply))["status"] for _ in range(4)]
    assert statuses == ["success", "success", "success", "denied"]
    assert (await execute("customer.delete", {"customer_id": "7"}))["status"] == "denied"
    too_large = {"order_id": "42", "amount": 200_000, "currency": "SAR"}
    assert (await execute("refund.create", too_large))["status"] == "denied"
    refund = {"order_id": "42", "amount": 25_000, "currency": "SAR"}
    pending = await execute("refund.create", refund)
    assert pending["status"] == "pending_approval"
    approval_id = pending["result"]["approval_id"]
    granted = await c.post(f"/v1/approvals/{approval_id}/approve", headers=approver, json={"comment": "ok"})
    assert granted.status_code == 200, granted.text
    assert (await execute("refund.create", refund, granted.json()["ticket"]))["status"] == "success"
    return sid, agent


def test_decision_records_carry_attestations_the_ledger_signs(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        sid, agent = await governed_session(env)
        auditor = await env.key("acme", "auditor")
        c = env.client
        records = (await c.get("/v1/evidence", headers=auditor, params={"attested": "true", "limit": 1000})).json()
        execute_decisions = [r for r in records["items"] if r["event_type"] == "policy.evaluated"]
        by_decision: dict[str, int] = {}
        for r in execute_decisions:
            by_decision[r["decision"]] = by_decision.get(r["decision"], 0) + 1
        # 2 lookups + 3 replies + the refund with its ticket allowed; the 4th reply and the large refund denied.
        assert by_decision == {"allow": 6, "deny": 2, "requires_approval": 1}
        resolutions = [r for r in records["items"] if r["event_type"] == "carp.resolution.completed"]
        assert [r["decision"] for r in resolutions] == ["partial"]
        query = {"decision": "deny", "action_id": "refund.create"}
        denied = await c.get("/evidence", headers=auditor, params=query)
        assert denied.status_code == 200
        (refusal,) = denied.json()["items"]
        assert refusal["policy_id"] == "deny-large-refunds"
        assert refusal["agent_id"] == AGENT
        assert refusal["session_id"] == sid
        assert refusal["sealed"] is True
        evidence = env.booted.ledger.attestation(refusal["attestation_id"])
        statement = open_attestation(evidence.attestation, env.booted.ledger.verifiers)
        assert statement.decision == "deny"
        assert statement.action_id == "refund.create"
        # The deletion the resolution denied was refused before any policy decided it again.
        deletions = (await c.get("/v1/evidence", headers=auditor, params={"action_id": "customer.delete"})).json()
        assert [(d["event_type"], d["attestation_id"]) for d in deletions["items"]] == [("policy.evaluated", None)]
        # The violation of the reply rate limit is a record too, but not an attested decision.
        violations = (await c.get("/v1/evidence", headers=auditor, params={"decision": "rate_limit"})).json()
        assert [(v["policy_id"], v["attestation_id"]) for v in violations["items"]] == [("reply-rate-limit", None)]
        # Filters: time range, paging, and an agent key sees only its own agent's records.
        future = await c.get("/v1/evidence", headers=auditor, params={"since": "2999-01-01T00:00:00Z"})
        assert future.json()["total"] == 0
        page = (await c.get("/v1/evidence", headers=auditor, params={"limit": 2, "offset": 1})).json()
        assert len(page["items"]) == 2
        # Without the filter: also the violation, and the resolve-time evaluation of each of the atlas's actions.
        actions = load_atlas(SUPPORT).actions
        assert page["total"] == records["total"] + 1 + len(actions)
        other = await env.key("acme", "agent", agent="other-bot", policy_roles=("agent",))
        assert (await c.get("/v1/evidence", headers=other, params={"agent_id": AGENT})).json()["total"] == 0
        mine = (await c.get("/v1/evidence", headers=agent)).json()
        assert mine["total"] == page["total"]
        bad = await c.get("/v1/evidence", headers=auditor, params={"since": "yesterday"})
        assert bad.status_code == 400
        assert bad.headers["content-type"] == PROBLEM
        assert bad.json()["path"] == "/since"

    run(tmp_path, body, executors=EXECUTORS)


def test_evidence_attached_to_a_session_joins_its_chain(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        await env.support("acme")
        agent = await env.key("acme", "agent", agent=AGENT, policy_roles=("agent",))
        auditor = await env.key("acme", "auditor")
        outsider = await env.key("globex", "admin")
        c = env.client
        sid = (await c.post("/v1/sessions", headers=agent, json={"agent_id": AGENT, "goal": "x"})).json()["session_id"]
        document = "إيصال الاسترداد رقم ٤٢".encode()
        digest = hashlib.sha256(document).hexdigest()
        attach = {
            "session_id": sid,
            "sha256": digest,
            "media_type": "text/plain",
            "description": "Refund receipt / إيصال",
            "size_bytes": len(document),
        }
        made = await c.post("/v1/evidence", headers=auditor, json=attach)
        assert made.status_code == 201, made.text
        assert made.json()["sequence"] == 1
        lines = await c.get(f"/v1/traces/{sid}", headers={**auditor, "Accept": "application/x-ndjson"})
        events = loads_trace(lines.text)
        verify_chain(events)
        last = events[-1]
        assert last.event_type == "context.injected"
        assert last.payload["block_id"] == f"evidence:sha256:{digest}"
        assert last.payload["evidence"]["description"] == "Refund receipt / إيصال"
        assert last.payload["evidence"]["attached_by"].startswith("key:")
        # Refusals: a malformed digest, an unknown field, another tenant's session, an ended session.
        wrong = await c.post("/v1/evidence", headers=auditor, json={**attach, "sha256": "ABC"})
        assert (wrong.status_code, wrong.json()["path"]) == (400, "/sha256")
        extra = await c.post("/v1/evidence", headers=auditor, json={**attach, "tenant_id": "globex"})
        assert (extra.status_code, extra.json()["path"]) == (400, "/tenant_id")
        assert (await c.post("/v1/evidence", headers=outsider, json=attach)).status_code == 404
        assert (await c.delete(f"/v1/sessions/{sid}", headers=agent)).status_code == 204
        ended = await c.post("/v1/evidence", headers=auditor, json=attach)
        assert ended.status_code == 409

    run(tmp_path, body)


def test_reports_aggregate_the_decisions_in_json_csv_and_parquet(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        _, agent = await governed_session(env)
        auditor = await env.key("acme", "auditor")
        c = env.client
        everything = await c.get("/v1/reports", headers=auditor)
        assert everything.status_code == 200, everything.text
        reports = everything.json()["reports"]
        by_policy = {(r["policy_id"], r["decision"]): r["count"] for r in reports["decisions_by_policy"]}
        assert by_policy == {
            ("allow-support-reads", "allow"): 2,
            ("allow-replies", "allow"): 3,
            ("reply-rate-limit", "deny"): 1,
            ("deny-large-refunds", "deny"): 1,
            ("approve-medium-refunds", "requires_approval"): 1,
            ("allow-refunds", "allow"): 1,
        }
        (rates,) = reports["rates"]
        assert (rates["decisions"], rates["denied"], rates["approval_requests"]) == (9, 2, 1)
        assert abs(rates["denial_rate"] - 2 / 9) < 1e-12
        (latency,) = reports["approval_latency"]
        assert latency["outcome"] == "approved"
        assert latency["count"] == 1
        assert latency["max_seconds"] >= 0
        assert reports["limit_hits"] == [{"policy_id": "reply-rate-limit", "kind": "rate_limit", "count": 1}]
        assert sum(r["count"] for r in reports["decisions_by_day"]) == 9
        assert {r["agent_id"] for r in reports["decisions_by_agent"]} == {AGENT}

        as_csv = await c.get("/reports", headers=auditor, params={"report": "decisions_by_action", "format": "csv"})
        assert as_csv.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(as_csv.text)))
        lookups = [r for r in rows if r["action_id"] == "order.lookup"]
        assert lookups == [{"action_id": "order.lookup", "decision": "allow", "count": "2"}]
        as_parquet = await c.get("/v1/reports", headers=auditor, params={"report": "rates", "format": "parquet"})
        frame = pl.read_parquet(io.BytesIO(as_parquet.content))
        assert frame.row(0, named=True)["decisions"] == 9

        assert (await c.get("/v1/reports", headers=agent)).status_code == 403
        unnamed = await c.get("/v1/reports", headers=auditor, params={"format": "csv"})
        assert (unnamed.status_code, unnamed.json()["path"]) == (400, "/report")
        unknown = await c.get("/v1/reports", headers=auditor, params={"report": "secrets"})
        assert (unknown.status_code, unknown.json()["path"]) == (400, "/report")
        # Another tenant's report is empty.
        outsider = await env.key("globex", "auditor")
        empty = (await c.get("/v1/reports", headers=outsider)).json()["reports"]
        assert empty["decisions_by_policy"] == []
        assert empty["rates"][0]["decisions"] == 0

    run(tmp_path, body, executors=EXECUTORS)


def test_csv_cells_a_spreadsheet_would_run_are_quoted() -> None:
    frame = pl.DataFrame({"action_id": ['=HYPERLINK("x")', "order.lookup", "+1", "@sum"], "count": [1, 2, 3, 4]})
    rows = list(csv.DictReader(io.StringIO(render(frame, "csv").decode())))
    assert [r["action_id"] for r in rows] == ['\'=HYPERLINK("x")', "order.lookup", "'+1", "'@sum"]
    assert [r["count"] for r in rows] == ["1", "2", "3", "4"]

"""``cra demo``: one governed support-agent session, end to end, on embedded defaults.

The agent resolves its task, makes allowed calls, is denied, hits a rate limit,
asks for an approval that a supervisor grants and then uses, and exhausts its
refund budget. Every step lands in a hash-chained trace that is written to a
file, read back and verified, and is sealed into the data directory's signed
audit ledger. The demo ends with a signed checkpoint, an export bundle of the
session and a tlog-proof of one decision, each checked with ``cra verify``.
"""

from __future__ import annotations

import json
from base64 import b64encode
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

import cra
from cra.errors import CRAError
from cra.ledger.attestation import open_attestation
from cra.ledger.bundle import verify_bundle
from cra.ledger.checkpoint import checkpoint_of
from cra.ledger.tlog_proof import verify_tlog_proof
from cra.runtime.ids import SystemIds
from cra.runtime.ledger import AuditLedger
from cra.runtime.resolver import Resolver
from cra.store.datadir import open_ledger
from cra.trace.chain import check_chain
from cra.trace.event import format_timestamp
from cra.trace.jsonl import dumps_trace, loads_trace

from ._sandbox import policy_modules

__all__ = ["run_demo"]

AGENT = "support-bot"
SUPERVISOR = "layla.supervisor"
GOAL = "Refund the damaged items of order 42 and answer ticket T-1001"

# The shop the demo agent works on: a few orders and customers kept in memory.
_ORDERS = {
    "42": {"order_id": "42", "customer_id": "C-7", "total": 189_900, "currency": "SAR", "status": "delivered"},
    "43": {"order_id": "43", "customer_id": "C-9", "total": 45_000, "currency": "SAR", "status": "shipped"},
}
_CUSTOMERS = {"C-7": {"customer_id": "C-7", "name": "Nora", "tier": "gold"}}


def _default_atlas() -> Path:
    source_tree = Path(cra.__file__).resolve().parents[2] / "examples" / "atlases" / "customer-support"
    if not source_tree.is_dir():
        raise typer.BadParameter("the example atlases are not next to this installation; pass --atlas DIR")
    return source_tree


class _Timeline:
    def __init__(self) -> None:
        self.step = 0

    def line(self, what: str, outcome: str, color: str | None = None) -> None:
        self.step += 1
        typer.echo(f"{self.step:>3}  {what:<34} ", nl=False)
        typer.secho(outcome, fg=color)

    def note(self, text: str) -> None:
        typer.secho(f"     {text}", dim=True)


def _register_executors(r: Resolver) -> None:
    refunds: list[dict[str, Any]] = []

    def order_lookup(params: dict[str, Any]) -> dict[str, Any]:
        order = _ORDERS.get(params["order_id"])
        return order if order is not None else {"found": False}

    def customer_lookup(params: dict[str, Any]) -> dict[str, Any]:
        return _CUSTOMERS.get(params["customer_id"], {"found": False})

    def ticket_reply(params: dict[str, Any]) -> dict[str, Any]:
        return {"ticket_id": params["ticket_id"], "sent": True, "characters": len(params["message"])}

    def refund_create(params: dict[str, Any]) -> dict[str, Any]:
        refunds.append(params)
        return {"refund_id": f"R-{len(refunds):04d}", "status": "issued", "amount": params["amount"]}

    r.register_executor("order.lookup", order_lookup)
    r.register_executor("customer.lookup", customer_lookup)
    r.register_executor("ticket.reply", ticket_reply)
    r.register_executor("refund.create", refund_create)


def _outcome(response: dict[str, Any]) -> tuple[str, str | None]:
    status = response["status"]
    if status == "success":
        return "allowed, executed", "green"
    if status == "pending_approval":
        return f"needs approval ({response['result']['policy_id']})", "yellow"
    error = response.get("error", {})
    details = error.get("details") or {}
    text = f"{status}: {error.get('code')}"
    if details.get("policy_id"):
        text += f" by {details['policy_id']}"
    if "retry_after" in details:
        text += f", retry after {details['retry_after']}s"
    return text, "red"


def run_demo(out: Path, atlas_path: Path | None, data_dir: Path) -> int:
    """Run the scripted session; return the exit code (0 when the trace and the proofs verify)."""
    ledger = open_ledger(data_dir, create=True)
    try:
        return _run(Resolver(ledger=ledger, modules=policy_modules), out, atlas_path, data_dir)
    finally:
        ledger.close()


def _run(r: Resolver, out: Path, atlas_path: Path | None, data_dir: Path) -> int:
    ids = SystemIds()
    atlas = r.load_atlas(atlas_path or _default_atlas())
    _register_executors(r)
    timeline = _Timeline()

    typer.secho("CRA demo: a support agent under governance", bold=True)
    typer.echo(f"atlas   {atlas.atlas_id} {atlas.version}  {atlas.digest}")
    session_id = r.create_session(AGENT, GOAL, roles=["agent"])
    typer.echo(f"session {session_id}  agent {AGENT} (role: agent)")
    typer.echo(f"goal    {GOAL}\n")

    def request(operation: str, **extra: Any) -> dict[str, Any]:
        return {
            "carp_version": "1.0",
            "request_id": ids.new_id(),
            "timestamp": format_timestamp(datetime.now(UTC)),
            "operation": operation,
            "requester": {"agent_id": AGENT, "session_id": session_id},
            "task": {"goal": GOAL, "risk_tier": "low", "context_hints": ["refund-policy"]},
            **extra,
        }

    resolution = r.resolve(request("resolve"))
    allowed = [a["action_id"] for a in resolution["allowed_actions"]]
    denied = [f"{d['action_id']} ({d.get('policy_id', 'default deny')})" for d in resolution["denied_actions"]]
    timeline.line("resolve", f"{resolution['decision']['type']}: {len(allowed)} allowed, {len(denied)} denied", "cyan")
    timeline.note(f"allowed: {', '.join(allowed)}")
    timeline.note(f"denied:  {', '.join(denied)}")
    for block in resolution["context_blocks"]:
        redacted = block["metadata"].get("redactions") or {}
        note = ", redacted " + ", ".join(f"{n} {kind}" for kind, n in redacted.items()) if redacted else ""
        timeline.note(f"context: {block['block_id']} (~{block['token_estimate']} tokens{note})")
    for constraint in resolution["constraints"]:
        timeline.note(f"constraint: {constraint['constraint_id']} ({constraint['type']})")
    rid = resolution["resolution_id"]

    def call(
        action: str, params: dict[str, Any], ticket: str | None = None, label: str | None = None
    ) -> dict[str, Any]:
        body = request("execute", execution={"resolution_id": rid, "action_id": action, "parameters": params})
        response = r.execute(body, approval_ticket=ticket)
        text, color = _outcome(response)
        timeline.line(label or action, text, color)
        return response

    call("order.lookup", {"order_id": "42"})
    call("customer.lookup", {"customer_id": "C-7"})
    call("customer.delete", {"customer_id": "C-7"})
    call("refund.create", {"order_id": "42", "amount": 189_900, "currency": "SAR"}, label="refund.create 1,899.00 SAR")
    for n in range(1, 5):
        call(
            "ticket.reply", {"ticket_id": "T-1001", "message": f"Update {n}: we are on it."}, label=f"ticket.reply #{n}"
        )

    pending = call(
        "refund.create", {"order_id": "42", "amount": 25_000, "currency": "SAR"}, label="refund.create 250.00 SAR"
    )
    approval_id = pending["result"]["approval_id"]
    try:
        r.approve(approval_id, approver=AGENT)
    except CRAError as exc:
        timeline.line("approve (by the agent itself)", f"refused: {exc}", "red")
    ticket = r.approve(approval_id, approver=SUPERVISOR, approver_roles=["supervisor"], comment="Damaged on delivery")
    timeline.line(
        f"approve (by {SUPERVISOR})", f"granted, ticket valid until {format_timestamp(ticket.expires_at)}", "green"
    )
    call(
        "refund.create",
        {"order_id": "42", "amount": 25_000, "currency": "SAR"},
        ticket.token,
        label="refund.create 250.00 SAR + ticket",
    )
    call(
        "refund.create",
        {"order_id": "42", "amount": 25_000, "currency": "SAR"},
        ticket.token,
        label="same ticket again",
    )
    for n in range(1, 4):
        call(
            "refund.create",
            {"order_id": "43", "amount": 9_000, "currency": "SAR"},
            label=f"refund.create 90.00 SAR #{n}",
        )

    r.end_session(session_id)
    out.write_text(dumps_trace(r.get_trace(session_id)), "utf-8")
    report = check_chain(loads_trace(out.read_text("utf-8")))
    typer.echo("")
    if not report.valid:
        typer.secho(f"trace   {out} does NOT verify: {report.error} at event {report.index}", fg="red")
        return 1
    typer.secho(f"trace   {report.event_count} events written to {out}; hash chain verified", fg="green")
    typer.echo(f"        check it yourself: cra trace verify {out}")
    return _seal_report(r, session_id, out, data_dir)


def _seal_report(r: Resolver, session_id: str, out: Path, data_dir: Path) -> int:
    """Write the ledger evidence of the session next to its trace and verify it as an auditor would."""
    ledger = r.ledger
    assert isinstance(ledger, AuditLedger)
    stem = out.name.removesuffix(".trace.jsonl") if out.name.endswith(".trace.jsonl") else out.stem
    files = {kind: out.with_name(f"{stem}.{kind}") for kind in ("bundle.json", "tlog-proof", "entry", "vkey")}
    bundle = ledger.export(session_id)
    files["bundle.json"].write_text(json.dumps(bundle.to_dict(), ensure_ascii=False, indent=2) + "\n", "utf-8")
    # Prove one decision: the session's last attested one (the refund budget running out).
    decision = open_attestation(bundle.attestations[-1], ledger.verifiers)
    evidence = ledger.attestation(decision.attestation_id)
    files["tlog-proof"].write_text(evidence.proof, "utf-8")
    files["entry"].write_bytes(evidence.entry)
    files["vkey"].write_text("".join(v.vkey + "\n" for v in ledger.verifiers), "utf-8")

    verify_bundle(bundle, ledger.verifiers)
    verify_tlog_proof(evidence.proof, evidence.entry, ledger.verifiers)
    checkpoint = checkpoint_of(bundle.checkpoint)
    typer.secho(f"ledger  {len(bundle.entries)} events sealed in {checkpoint.origin} (data dir {data_dir})", fg="green")
    typer.echo(f"        signed checkpoint: size {checkpoint.size}, root {b64encode(checkpoint.root).decode()}")
    typer.echo(
        f"        {len(bundle.attestations)} decisions attested; proof of a {decision.decision} decision on "
        f"{decision.action_id or 'the resolution'} at log index {decision.log_index}"
    )
    typer.echo(f"        verify offline: cra verify {files['bundle.json']} --key {files['vkey']}")
    typer.echo(
        f"                        cra verify --proof {files['tlog-proof']} --entry {files['entry']} "
        f"--key {files['vkey']}"
    )
    return 0

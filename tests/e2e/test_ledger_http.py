"""The audit ledger over HTTP: checkpoints, consistency proofs and attestations, end to end.

Every test boots the service in a temporary data directory and talks to the app
through ``httpx.ASGITransport``. What the endpoints serve is re-verified here with
the ledger's verifier keys and the pure verifiers of :mod:`cra.ledger`, and every
kind of evidence is also tampered with to show that those verifiers reject it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e._service import carp

from cra.errors import LedgerError, ProofError
from cra.ledger.attestation import open_attestation, verify_attestation
from cra.ledger.checkpoint import checkpoint_of, open_checkpoint
from cra.ledger.merkle import verify_consistency
from cra.ledger.tlog_proof import parse_tlog_proof, verify_tlog_proof
from cra.runtime.memory import HmacSigner
from cra.runtime.service import GovernanceService
from cra.server.app import create_app
from cra.server.auth import issue_key
from cra.server.boot import Booted, boot, load_atlas_dirs
from cra.store.keys import Keyring
from cra.store.sql_ledger import SqlLedgerStore

SUPPORT = Path(__file__).resolve().parents[2] / "examples" / "atlases" / "customer-support"
SUPPORT_ID = "com.cra.examples.customer-support"
PROBLEM = "application/problem+json"
NDJSON = "application/x-ndjson"
TIMEOUT = 30.0


# -- helpers ------------------------------------------------------------------


def app_of(service: GovernanceService, booted: Booted) -> httpx.AsyncClient:
    app = create_app(service, booted.state)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cra.test")


@dataclass
class Env:
    booted: Booted
    client: httpx.AsyncClient

    async def key(self, tenant: str, role: str, *, agent: str | None = None) -> dict[str, str]:
        token, _ = await issue_key(
            self.booted.state,
            tenant_id=tenant,
            role=role,
            agent_id=agent,
            policy_roles=[role],
            now=datetime.now(UTC),
        )
        return {"X-API-Key": token}

    async def support(self, tenant: str) -> None:
        assert await load_atlas_dirs(self.booted.service, tenant, [SUPPORT]) == [SUPPORT_ID]


@dataclass(frozen=True)
class Where:
    """A data directory, and the service's database when it is not the directory's SQLite file."""

    data_dir: Path
    database_url: str | None = None
    seal_in_background: bool = False


@pytest.fixture(
    params=["sqlite", "sqlite-sealing-in-background", pytest.param("postgresql", marks=pytest.mark.services)]
)
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    """Each test runs three times: the ledger in the data directory, sealed on the request path or
    in the background (as ``cra serve`` does), and the ledger in PostgreSQL."""
    if request.param.startswith("sqlite"):
        yield Where(tmp_path, seal_in_background=request.param != "sqlite")
        return
    yield Where(tmp_path, request.getfixturevalue("postgres_db"))


@asynccontextmanager
async def served(where: Where | Path) -> AsyncIterator[Env]:
    if isinstance(where, Path):
        where = Where(where)
    booted = await boot(where.data_dir, database_url=where.database_url, seal_in_background=where.seal_in_background)
    try:
        await booted.service.start()
        async with app_of(booted.service, booted) as client:
            yield Env(booted, client)
    finally:
        await booted.close()


def run(where: Where | Path, body: Callable[[Env], Awaitable[None]]) -> None:
    async def main() -> None:
        async with served(where) as env:
            await asyncio.wait_for(body(env), TIMEOUT)

    asyncio.run(main())


async def new_session(env: Env, headers: dict[str, str], agent: str) -> str:
    r = await env.client.post("/v1/sessions", json={"agent_id": agent, "goal": "Help a customer"}, headers=headers)
    assert r.status_code == 201, r.text
    session_id: str = r.json()["session_id"]
    return session_id


async def resolve(env: Env, headers: dict[str, str], agent: str, session_id: str) -> dict[str, Any]:
    r = await env.client.post("/v1/resolve", json=carp(agent, session_id, "resolve"), headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def execute(
    env: Env, headers: dict[str, str], agent: str, session_id: str, resolution_id: str, action: str, params: Any
) -> dict[str, Any]:
    execution = {"resolution_id": resolution_id, "action_id": action, "parameters": params}
    r = await env.client.post(
        "/v1/execute", json=carp(agent, session_id, "execute", execution=execution), headers=headers
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def governed_session(env: Env, agent_headers: dict[str, str], agent: str = "support-bot") -> tuple[str, str]:
    """A session with a resolution and two execute calls; returns (session id, resolution id)."""
    sid = await new_session(env, agent_headers, agent)
    resolution = await resolve(env, agent_headers, agent, sid)
    rid: str = resolution["resolution_id"]
    out = await execute(env, agent_headers, agent, sid, rid, "order.lookup", {"order_id": "42"})
    assert out["status"] == "error"  # allowed, but no executor runs it over HTTP
    out = await execute(
        env, agent_headers, agent, sid, rid, "refund.create", {"order_id": "43", "amount": 200_000, "currency": "SAR"}
    )
    assert out["status"] == "denied"
    return sid, rid


async def ndjson_lines(env: Env, headers: dict[str, str], session_id: str) -> dict[str, str]:
    """The session's NDJSON trace lines, by event id."""
    r = await env.client.get(f"/v1/traces/{session_id}", params={"limit": 1000}, headers={**headers, "Accept": NDJSON})
    assert r.status_code == 200, r.text
    lines = r.text.split("\n")
    assert lines[-1] == ""
    return {json.loads(line)["event_id"]: line for line in lines[:-1]}


def problem_of(response: httpx.Response, status: int, *, path: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers["content-type"]
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["error"]["code"] == body["code"]
    if path is not None:
        assert body.get("path") == path, body
    return body


def flip_bit(data: bytes, at: int = 0) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def flip_node(b64: str) -> str:
    """A base64 hash with one bit flipped: still well-formed, but another hash."""
    return base64.b64encode(flip_bit(base64.b64decode(b64))).decode()


def flip_char(text: str, at: int) -> str:
    """``text`` with the character at ``at`` replaced by another (ASCII) one."""
    replacement = "B" if text[at] != "B" else "C"
    return text[:at] + replacement + text[at + 1 :]


# -- 1. a governed session's evidence, re-verified -------------------------------------


def test_attestations_checkpoints_and_consistency_verify_independently(where: Where) -> None:
    async def body(env: Env) -> None:
        await env.support("acme")
        agent = await env.key("acme", "agent", agent="support-bot")
        admin = await env.key("acme", "admin")
        ledger = env.booted.ledger
        c = env.client
        sid, rid = await governed_session(env, agent)

        # The session's attestations: the resolution's, and one per execute decision.
        r = await c.get(f"/v1/sessions/{sid}/attestations", headers=agent)
        assert r.status_code == 200, r.text
        listing = r.json()
        assert listing["session_id"] == sid
        assert listing["total"] == len(listing["items"]) == len(listing["attestation_ids"]) == 3
        kinds = [i["event_type"] for i in listing["items"]]
        assert kinds == ["carp.resolution.completed", "policy.evaluated", "policy.evaluated"]
        assert [i["decision"] for i in listing["items"]] == ["partial", "allow", "deny"]
        assert [i["action_id"] for i in listing["items"]] == [None, "order.lookup", "refund.create"]
        indexes = [i["log_index"] for i in listing["items"]]
        assert indexes == sorted(indexes)
        resolution_id = listing["attestation_ids"][0]

        lines = await ndjson_lines(env, agent, sid)
        r = await c.get("/v1/atlases", headers=agent)
        digest = {a["atlas_id"]: a["digest"] for a in r.json()["items"]}[SUPPORT_ID]

        for attestation_id in listing["attestation_ids"]:
            r = await c.get(f"/v1/attestations/{attestation_id}/verify", headers=agent)
            assert r.status_code == 200, r.text
            got = r.json()
            alias = await c.get(f"/attestations/{attestation_id}/verify", headers=agent)
            assert alias.status_code == 200, alias.text
            assert alias.json() == got
            assert set(got) == {
                "attestation_id",
                "attestation",
                "statement",
                "entry",
                "tlog_proof",
                "checkpoint",
                "verified",
            }
            assert got["attestation_id"] == attestation_id
            entry = got["entry"].encode("utf-8")

            # The entry is byte for byte the event's line in the NDJSON trace.
            assert got["entry"] == lines[attestation_id]
            # Re-verified here, with nothing but the ledger's verifier keys.
            proof, checkpoint = verify_tlog_proof(got["tlog_proof"], entry, ledger.verifiers, origin=ledger.origin)
            attestation, _, _ = verify_attestation(got["attestation"], entry, got["tlog_proof"], ledger.verifiers)
            assert proof.checkpoint == got["checkpoint"]
            assert open_checkpoint(got["checkpoint"], ledger.verifiers, origin=ledger.origin) == checkpoint
            assert proof.index == attestation.log_index == got["statement"]["log_index"]
            statement = got["statement"]
            assert statement == json.loads(got["attestation"].split("\n")[1])  # the signed statement line
            assert open_attestation(got["attestation"], ledger.verifiers) == attestation
            assert statement["attestation_id"] == attestation_id
            assert statement["session_id"] == sid
            assert statement["origin"] == ledger.origin
            assert statement["input_hash"].startswith("sha256:")
            assert statement["atlases"] == [{"atlas_id": SUPPORT_ID, "digest": digest, "version": "1.0.0"}]

        r = await c.get(f"/v1/attestations/{resolution_id}/verify", headers=agent)
        resolution = r.json()
        assert resolution["statement"]["event_type"] == "carp.resolution.completed"
        assert resolution["statement"]["decision"] == "partial"
        assert json.loads(resolution["entry"])["payload"]["resolution_id"] == rid

        # The checkpoint endpoint: the signed note, as text.
        r = await c.get("/v1/ledger/checkpoint", headers=agent)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        old_note = r.text
        old = checkpoint_of(old_note)
        assert open_checkpoint(old_note, ledger.verifiers, origin=ledger.origin) == old
        assert old.origin == ledger.origin
        assert old.size > max(indexes)

        # More operations, then a checkpoint of a larger log (ending a session signs one).
        sid2, _ = await governed_session(env, agent)
        r = await c.delete(f"/v1/sessions/{sid2}", headers=agent)
        assert r.status_code == 204, r.text
        r = await c.get("/v1/ledger/checkpoint", headers=admin)
        assert r.status_code == 200, r.text
        new_note = r.text
        new = open_checkpoint(new_note, ledger.verifiers, origin=ledger.origin)
        assert new.size > old.size
        assert new.size == ledger.size

        for params in ({"old": old.size}, {"old": old.size, "new": new.size}):
            r = await c.get("/v1/ledger/consistency", params=params, headers=agent)
            assert r.status_code == 200, r.text
            got = r.json()
            assert set(got) == {"old_size", "new_size", "proof", "checkpoint"}
            assert (got["old_size"], got["new_size"]) == (old.size, new.size)
            assert got["checkpoint"] == new_note
            signed = open_checkpoint(got["checkpoint"], ledger.verifiers, origin=ledger.origin)
            nodes = [base64.b64decode(n, validate=True) for n in got["proof"]]
            verify_consistency(old.size, new.size, old.root, signed.root, nodes)
            # The same format as ``cra ledger consistency``.
            assert ledger.consistency(old.size, new.size).to_dict() == {
                "size1": got["old_size"],
                "size2": got["new_size"],
                "proof": got["proof"],
            }

        # Equal sizes: the empty proof.
        r = await c.get("/v1/ledger/consistency", params={"old": new.size}, headers=agent)
        assert r.status_code == 200, r.text
        assert r.json()["proof"] == []
        verify_consistency(new.size, new.size, new.root, new.root, [])

    run(where, body)


# -- 2. tampering: the verifiers the tests rely on can fail -------------------------


def test_tampered_evidence_is_rejected(where: Where) -> None:
    async def body(env: Env) -> None:
        await env.support("acme")
        agent = await env.key("acme", "agent", agent="support-bot")
        ledger = env.booted.ledger
        c = env.client
        sid, _ = await governed_session(env, agent)
        r = await c.get(f"/v1/sessions/{sid}/attestations", headers=agent)
        attestation_id = r.json()["attestation_ids"][0]
        r = await c.get(f"/v1/attestations/{attestation_id}/verify", headers=agent)
        got = r.json()
        entry = got["entry"].encode()
        proof_text: str = got["tlog_proof"]
        keys = ledger.verifiers

        verify_tlog_proof(proof_text, entry, keys, origin=ledger.origin)  # the untampered evidence verifies

        # The entry: any changed byte moves its leaf hash.
        for at in (0, len(entry) // 2, len(entry) - 1):
            with pytest.raises(ProofError):
                verify_tlog_proof(proof_text, flip_bit(entry, at), keys)
            with pytest.raises(ProofError):
                verify_attestation(got["attestation"], flip_bit(entry, at), proof_text, keys)

        # The inclusion path: each node, with one bit flipped.
        parsed = parse_tlog_proof(proof_text)
        head, _, checkpoint_text = proof_text.partition("\n\n")
        head_lines = head.split("\n")
        assert len(head_lines) == 2 + len(parsed.path)
        assert parsed.path, "a log of several sessions has a non-empty path"
        for i in range(len(parsed.path)):
            lines = list(head_lines)
            lines[2 + i] = flip_node(lines[2 + i])
            with pytest.raises(ProofError, match="does not reach the root"):
                verify_tlog_proof("\n".join(lines) + "\n\n" + checkpoint_text, entry, keys)
        # Another index.
        lines = list(head_lines)
        lines[1] = f"index {parsed.index + 1}"
        with pytest.raises(ProofError):
            verify_tlog_proof("\n".join(lines) + "\n\n" + checkpoint_text, entry, keys)

        # The checkpoint: its root, its size, its signature.
        cp = checkpoint_of(got["checkpoint"])
        root_line = base64.b64encode(cp.root).decode()
        forged_root = got["checkpoint"].replace(root_line, flip_node(root_line), 1)
        with pytest.raises(ProofError, match="signature"):
            open_checkpoint(forged_root, keys)
        with pytest.raises(ProofError):
            verify_tlog_proof(head + "\n\n" + forged_root, entry, keys)
        forged_size = got["checkpoint"].replace(f"\n{cp.size}\n", f"\n{cp.size + 1}\n", 1)
        with pytest.raises(ProofError):
            open_checkpoint(forged_size, keys)
        signature_at = got["checkpoint"].rindex(" ") + 10
        with pytest.raises(ProofError):
            open_checkpoint(flip_char(got["checkpoint"], signature_at), keys)

        # The attestation note: its statement and its signature.
        note: str = got["attestation"]
        forged = note.replace('"decision":"partial"', '"decision":"allow"', 1)
        assert forged != note
        with pytest.raises(ProofError):
            open_attestation(forged, keys)
        with pytest.raises(ProofError):
            open_attestation(flip_char(note, note.rindex(" ") + 10), keys)

        # A consistency proof: each node flipped, and the wrong old root.
        await c.delete(f"/v1/sessions/{sid}", headers=agent)
        sid2 = await new_session(env, agent, "support-bot")
        await c.delete(f"/v1/sessions/{sid2}", headers=agent)
        r = await c.get("/v1/ledger/consistency", params={"old": cp.size}, headers=agent)
        assert r.status_code == 200, r.text
        consistency = r.json()
        new = open_checkpoint(consistency["checkpoint"], keys)
        nodes = [base64.b64decode(n) for n in consistency["proof"]]
        assert new.size > cp.size
        assert nodes
        verify_consistency(cp.size, new.size, cp.root, new.root, nodes)
        for i in range(len(nodes)):
            tampered = [*nodes[:i], flip_bit(nodes[i]), *nodes[i + 1 :]]
            with pytest.raises(ProofError):
                verify_consistency(cp.size, new.size, cp.root, new.root, tampered)
        with pytest.raises(ProofError):
            verify_consistency(cp.size, new.size, flip_bit(cp.root), new.root, nodes)
        with pytest.raises(ProofError):
            verify_consistency(cp.size, new.size, cp.root, flip_bit(new.root), nodes)

    run(where, body)


# -- 3. tenancy and permissions --------------------------------------------------------


def test_other_tenants_and_other_agents_get_404(where: Where) -> None:
    async def body(env: Env) -> None:
        await env.support("acme")
        await env.support("globex")
        agent = await env.key("acme", "agent", agent="support-bot")
        other_agent = await env.key("acme", "agent", agent="other-bot")
        auditor = await env.key("acme", "auditor")
        stranger = await env.key("globex", "admin")
        c = env.client
        sid, _ = await governed_session(env, agent)
        r = await c.get(f"/v1/sessions/{sid}/attestations", headers=agent)
        attestation_id = r.json()["attestation_ids"][0]

        unknown = str(uuid.uuid4())
        r = await c.get(f"/v1/attestations/{unknown}/verify", headers=stranger)
        unknown_detail = problem_of(r, 404)["detail"]
        for headers in (stranger, other_agent):
            for path in (f"/v1/attestations/{attestation_id}/verify", f"/attestations/{attestation_id}/verify"):
                detail = problem_of(await c.get(path, headers=headers), 404)["detail"]
                # The same answer as for an id that does not exist: nothing about the session leaks.
                assert detail == unknown_detail.replace(unknown, attestation_id)
                assert sid not in detail
            problem_of(await c.get(f"/v1/sessions/{sid}/attestations", headers=headers), 404)

        # The tenant's auditor reads every session's attestations; the owning agent its own.
        for headers in (auditor, agent):
            r = await c.get(f"/v1/attestations/{attestation_id}/verify", headers=headers)
            assert r.status_code == 200, r.text
            r = await c.get(f"/v1/sessions/{sid}/attestations", headers=headers)
            assert r.status_code == 200, r.text
            assert attestation_id in r.json()["attestation_ids"]

        # Checkpoints and consistency proofs hold no tenant data: every role reads them.
        for tenant, role in (("globex", "admin"), ("globex", "policy_author"), ("acme", "approver")):
            headers = await env.key(tenant, role)
            r = await c.get("/v1/ledger/checkpoint", headers=headers)
            assert r.status_code == 200, r.text
            size = checkpoint_of(r.text).size
            r = await c.get("/v1/ledger/consistency", params={"old": 1}, headers=headers)
            assert r.status_code == 200, r.text
            assert r.json()["new_size"] == size

        # Without a key: 401.
        for path in ("/v1/ledger/checkpoint", f"/v1/attestations/{attestation_id}/verify"):
            problem_of(await c.get(path), 401)
        problem_of(await c.get("/v1/ledger/consistency", params={"old": 1}), 401)

    run(where, body)


def test_bad_consistency_sizes_are_400_with_the_parameter(where: Where) -> None:
    async def body(env: Env) -> None:
        await env.support("acme")
        agent = await env.key("acme", "agent", agent="support-bot")
        c = env.client
        sid, _ = await governed_session(env, agent)
        await c.delete(f"/v1/sessions/{sid}", headers=agent)
        r = await c.get("/v1/ledger/checkpoint", headers=agent)
        size = checkpoint_of(r.text).size
        signed = {s for s, _ in env.booted.ledger._store.checkpoints()}
        unsigned = next(s for s in range(1, size) if s not in signed)

        cases: list[tuple[dict[str, Any], str]] = [
            ({}, "/old"),
            ({"old": 0}, "/old"),
            ({"old": -1}, "/old"),
            ({"old": "ten"}, "/old"),
            ({"old": str(1 << 64)}, "/old"),
            ({"old": size + 1}, "/old"),
            ({"old": 1, "new": 0}, "/new"),
            ({"old": 1, "new": size + 1}, "/new"),
            ({"old": 2, "new": 1}, "/new"),
            ({"old": 1, "new": unsigned}, "/new"),
        ]
        for params, path in cases:
            r = await c.get("/v1/ledger/consistency", params=params, headers=agent)
            problem_of(r, 400, path=path)

    run(where, body)


def test_unknown_attestation_and_session_are_404(where: Where) -> None:
    async def body(env: Env) -> None:
        admin = await env.key("acme", "admin")
        c = env.client
        # An empty log has no checkpoint to sign yet.
        problem_of(await c.get("/v1/ledger/checkpoint", headers=admin), 503)
        problem_of(await c.get("/v1/attestations/nope/verify", headers=admin), 404)
        problem_of(await c.get("/attestations/nope/verify", headers=admin), 404)
        problem_of(await c.get("/v1/sessions/nope/attestations", headers=admin), 404)
        # A session with no decisions has no attestations.
        sid = await new_session(env, admin, "support-bot")
        r = await c.get(f"/v1/sessions/{sid}/attestations", headers=admin)
        assert r.status_code == 200, r.text
        assert r.json() == {"session_id": sid, "attestation_ids": [], "items": [], "total": 0}
        # A logged event that is not a decision has no attestation.
        r = await c.get(f"/v1/traces/{sid}", headers=admin)
        started = r.json()["events"][0]["event_id"]
        problem_of(await c.get(f"/v1/attestations/{started}/verify", headers=admin), 404)

    run(where, body)


# -- 4. no ledger ----------------------------------------------------------------------


def test_a_service_without_a_ledger_answers_503(tmp_path: Path) -> None:
    async def main() -> None:
        booted = await boot(tmp_path)
        try:
            service = GovernanceService(booted.state, signer=HmacSigner(b"k" * 32))
            await service.start()
            assert service.ledger is None
            token, _ = await issue_key(booted.state, tenant_id="acme", role="admin", now=datetime.now(UTC))
            headers = {"X-API-Key": token}
            async with app_of(service, booted) as client:
                env = Env(booted, client)
                sid = await new_session(env, headers, "support-bot")
                for path in (
                    "/v1/ledger/checkpoint",
                    "/v1/ledger/consistency?old=1",
                    "/v1/attestations/x/verify",
                    "/attestations/x/verify",
                    f"/v1/sessions/{sid}/attestations",
                ):
                    body = problem_of(await client.get(path, headers=headers), 503)
                    assert body["code"] == "ledger_error"
                    assert "without an audit ledger" in body["detail"]
        finally:
            await booted.close()

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))


def test_with_postgresql_the_ledger_lives_in_the_database(
    where: Where, tmp_path_factory: pytest.TempPathFactory
) -> None:
    async def body(env: Env) -> None:
        await env.support("acme")
        agent = await env.key("acme", "agent", agent="support-bot")
        sid, _ = await governed_session(env, agent)
        r = await env.client.get(f"/v1/sessions/{sid}/attestations", headers=agent)
        assert r.json()["total"] == 3
        on_disk = (where.data_dir / "ledger.sqlite3").exists()
        assert on_disk == (where.database_url is None)
        assert isinstance(env.booted.ledger._store, SqlLedgerStore) == (where.database_url is not None)

    run(where, body)
    if where.database_url is not None:
        # Another data directory has other keys, so another log origin: it may not write into this log.
        with pytest.raises(LedgerError, match="holds the log"):
            asyncio.run(boot(tmp_path_factory.mktemp("other"), database_url=where.database_url))


def test_a_rotation_beside_the_running_service_is_taken_up(where: Where) -> None:
    """Issue #12, finding 10: after ``cra keys rotate`` the service went on signing with the old key,
    so a checkpoint did not verify with the new primary key alone."""

    async def body(env: Env) -> None:
        await env.support("acme")
        agent = await env.key("acme", "agent", agent="support-bot")
        await governed_session(env, agent)
        before = (await env.client.get("/v1/ledger/checkpoint", headers=agent)).text
        old = Keyring(where.data_dir / "keys").signers()[0]
        new = Keyring(where.data_dir / "keys").rotate()  # what `cra keys rotate` does, from outside

        after = (await env.client.get("/v1/ledger/checkpoint", headers=agent)).text
        assert after != before
        assert open_checkpoint(after, [new.verifier]).size >= open_checkpoint(before, [old.verifier]).size
        open_checkpoint(after, [old.verifier])  # the old primary co-signs until the next rotation

        # A session after the rotation: its attestations and their proofs verify with the new key alone.
        sid, _ = await governed_session(env, agent)
        listing = (await env.client.get(f"/v1/sessions/{sid}/attestations", headers=agent)).json()
        for attestation_id in listing["attestation_ids"]:
            got = (await env.client.get(f"/v1/attestations/{attestation_id}/verify", headers=agent)).json()
            verify_attestation(got["attestation"], got["entry"].encode(), got["tlog_proof"], [new.verifier])

    run(where, body)

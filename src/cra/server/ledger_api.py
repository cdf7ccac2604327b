"""The audit ledger over HTTP: signed checkpoints, consistency proofs and attestations.

Checkpoints and consistency proofs carry no tenant data (sizes and hashes of the one
global log), so any authenticated caller may read them. An attestation, its event's
bytes and its inclusion proof belong to a session, and follow the session's rules:
another tenant's attestation is not found, and an agent key sees only its own agent's.

Every blocking ledger call runs in a worker thread. Evidence is verified with the
ledger's own verifier keys before it is served, so a damaged log answers 503, never
a proof that does not verify.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query
from starlette.responses import PlainTextResponse

from cra.errors import LedgerError, NotFoundError, ProofError, ValidationError
from cra.ledger._base64 import b64
from cra.ledger.attestation import Attestation, open_attestation, verify_attestation
from cra.ledger.checkpoint import checkpoint_of, open_checkpoint
from cra.runtime.ledger import AuditLedger
from cra.runtime.service import GovernanceService
from cra.server.auth import ForbiddenError, Identity, Permission
from cra.server.deps import MAX_INDEX, Caller, Service, own_session

__all__ = ["aliases", "router"]

_log = logging.getLogger("cra.server")

_CHECKPOINT_READERS: Final = (Permission.READ_SESSIONS, Permission.RUN_SESSIONS, Permission.READ_ATLASES)

router = APIRouter(prefix="/v1")
aliases = APIRouter()


async def _ledger(service: GovernanceService) -> AuditLedger:
    """The service's ledger, with everything committed so far sealed into it."""
    if service.ledger is None:
        raise LedgerError("this service runs without an audit ledger")
    await service.flush()
    return service.ledger


def _require_any(who: Identity, permissions: tuple[Permission, ...]) -> None:
    if not any(who.can(p) for p in permissions):
        raise ForbiddenError(f"the {who.role} role may not read the audit ledger")


def _newest_checkpoint(ledger: AuditLedger) -> str:
    """The newest signed checkpoint, signing the first one if there is none yet."""
    return ledger.latest_checkpoint() or ledger.checkpoint()


# -- checkpoints and consistency ---------------------------------------------------


@router.get("/ledger/checkpoint", tags=["Ledger"], response_class=PlainTextResponse)
async def get_checkpoint(service: Service, who: Caller) -> PlainTextResponse:
    """The newest signed C2SP checkpoint, as the signed note's exact text."""
    _require_any(who, _CHECKPOINT_READERS)
    ledger = await _ledger(service)
    note = await asyncio.to_thread(_newest_checkpoint, ledger)
    return PlainTextResponse(note)


def _consistency(ledger: AuditLedger, old: int, new: int | None) -> dict[str, Any]:
    if new is None:
        note = _newest_checkpoint(ledger)
        new = checkpoint_of(note).size
    else:
        if new < old:
            raise ValidationError("/new", f"must not be smaller than old ({old}): a log cannot shrink")
        found = ledger.checkpoint_at(new)
        if found is None:
            raise ValidationError("/new", f"the log has no signed checkpoint of size {new}")
        note = found
    if old > new:
        raise ValidationError("/old", f"is larger than the newest checkpoint's size ({new})")
    proof = ledger.consistency(old, new)
    return {
        "old_size": proof.size1,
        "new_size": proof.size2,
        "proof": [b64(node) for node in proof.proof],
        "checkpoint": note,
    }


@router.get("/ledger/consistency", tags=["Ledger"])
async def get_consistency(
    service: Service,
    who: Caller,
    old: Annotated[int, Query(ge=1, le=MAX_INDEX, description="The older tree size.")],
    new: Annotated[
        int | None, Query(ge=1, le=MAX_INDEX, description="The newer size (default: the newest checkpoint's).")
    ] = None,
) -> dict[str, Any]:
    """A consistency proof from tree size ``old`` to ``new``, with the signed checkpoint at ``new``."""
    _require_any(who, _CHECKPOINT_READERS)
    ledger = await _ledger(service)
    return await asyncio.to_thread(_consistency, ledger, old, new)


# -- attestations ------------------------------------------------------------------


def _statement(attestation: Attestation) -> dict[str, Any]:
    """The attested fields, exactly as the signed note states them."""
    statement: dict[str, Any] = json.loads(attestation.body().split("\n")[1])
    return statement


def _session_of(ledger: AuditLedger, attestation_id: str) -> str:
    """The session of an attestation's event; NotFoundError if the log holds no such attestation."""
    try:
        entry = ledger.entry(attestation_id)
    except NotFoundError:
        raise NotFoundError("attestation", attestation_id) from None
    event = json.loads(entry)
    session_id = event.get("session_id") if isinstance(event, dict) else None
    if not isinstance(session_id, str):
        raise LedgerError(f"the logged event {attestation_id} names no session")
    return session_id


def _evidence(ledger: AuditLedger, attestation_id: str, session_id: str) -> dict[str, Any]:
    evidence = ledger.attestation(attestation_id)
    try:
        attestation, proof, _ = verify_attestation(
            evidence.attestation, evidence.entry, evidence.proof, ledger.verifiers
        )
        if attestation.origin != ledger.origin or attestation.attestation_id != attestation_id:
            raise ProofError("the attestation is for another log or another event")
        if attestation.session_id != session_id:
            raise ProofError("the attestation names another session than its event")
        open_checkpoint(proof.checkpoint, ledger.verifiers, origin=ledger.origin)
    except ProofError as exc:
        _log.error("attestation %s does not verify against the ledger's own keys: %s", attestation_id, exc)
        raise LedgerError(f"the ledger's evidence for attestation {attestation_id} does not verify") from None
    return {
        "attestation_id": attestation_id,
        "attestation": evidence.attestation,
        "statement": _statement(attestation),
        "entry": evidence.entry.decode("utf-8"),
        "tlog_proof": evidence.proof,
        "checkpoint": proof.checkpoint,
        "verified": True,
    }


async def verify_attestation_route(service: Service, who: Caller, attestation_id: str) -> dict[str, Any]:
    """An attestation with its event's exact bytes, a C2SP tlog-proof and the checkpoint it
    leads to, verified here with the ledger's keys (and verifiable offline with them)."""
    ledger = await _ledger(service)
    session_id = await asyncio.to_thread(_session_of, ledger, attestation_id)
    try:
        await own_session(service, who, session_id)
    except NotFoundError:
        # Another tenant's (or another agent's) attestation: the same answer as an unknown id.
        raise NotFoundError("attestation", attestation_id) from None
    return await asyncio.to_thread(_evidence, ledger, attestation_id, session_id)


router.get("/attestations/{attestation_id}/verify", tags=["Ledger"])(verify_attestation_route)
aliases.get("/attestations/{attestation_id}/verify", tags=["Ledger"], include_in_schema=False)(verify_attestation_route)


def _summaries(ledger: AuditLedger, session_id: str) -> list[dict[str, Any]]:
    out = []
    for note in ledger.attestations(session_id):
        try:
            a = open_attestation(note, ledger.verifiers)
        except ProofError as exc:
            _log.error("a stored attestation of session %s does not verify: %s", session_id, exc)
            raise LedgerError(f"a stored attestation of session {session_id} does not verify") from None
        out.append(
            {
                "attestation_id": a.attestation_id,
                "event_type": a.event_type,
                "decision": a.decision,
                "action_id": a.action_id,
                "log_index": a.log_index,
                "timestamp": a.timestamp,
            }
        )
    return out


@router.get("/sessions/{session_id}/attestations", tags=["Ledger"])
async def session_attestations(service: Service, who: Caller, session_id: str) -> dict[str, Any]:
    """The attestations of a session's decisions, in log order."""
    await own_session(service, who, session_id)
    ledger = await _ledger(service)
    items = await asyncio.to_thread(_summaries, ledger, session_id)
    return {
        "session_id": session_id,
        "attestation_ids": [i["attestation_id"] for i in items],
        "items": items,
        "total": len(items),
    }

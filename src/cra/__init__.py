"""CRA, the Context Registry for Agents: a deterministic, fail-closed governance runtime.

The in-process API::

    from cra import Engine, Resolver
    engine = Engine.from_atlas("examples/atlases/customer-support")
    decision = engine.evaluate(action="refund.create", agent="support-bot", roles=["agent"],
                               risk_tier="low", params={"order_id": "42", "amount": 120, "currency": "SAR"})
    print(decision.effect, decision.policy_id, decision.explain())

Sealing every event into the signed audit ledger of a data directory::

    from cra import Resolver, open_ledger
    resolver = Resolver(ledger=open_ledger("./cra-data", create=True))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cra.errors import (
    ApprovalError,
    AtlasError,
    ChainError,
    CRAError,
    LedgerError,
    NotFoundError,
    PolicyError,
    ProofError,
    ProtocolError,
    ResolutionError,
    RuntimeStateError,
    SessionError,
    TraceError,
    ValidationError,
)
from cra.policy.decision import Decision, Effect, Step
from cra.protocol.atlas import Atlas
from cra.runtime.approvals import Approval, ApprovalTicket
from cra.runtime.atlas_files import load_atlas
from cra.runtime.clock import ManualClock, SystemClock
from cra.runtime.engine import Engine
from cra.runtime.ids import SeededIds, SystemIds
from cra.runtime.memory import MemoryCounters, MemoryEventStore, MemoryLedgerStore, MemorySink
from cra.runtime.resolver import Resolver
from cra.trace.chain import ChainReport, check_chain, verify_chain
from cra.trace.event import TraceEvent
from cra.trace.jsonl import dumps_trace, loads_trace

if TYPE_CHECKING:
    from cra.ledger.bundle import verify_bundle
    from cra.ledger.note import NoteSigner, NoteVerifier
    from cra.runtime.ledger import AuditLedger
    from cra.store.datadir import open_ledger

#: Names whose modules need the ledger's cryptography or a data directory: imported on first use,
#: so that ``import cra`` loads the pure core alone.
_ADAPTERS = {
    "AuditLedger": "cra.runtime.ledger",
    "NoteSigner": "cra.ledger.note",
    "NoteVerifier": "cra.ledger.note",
    "open_ledger": "cra.store.datadir",
    "verify_bundle": "cra.ledger.bundle",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("cra")
        except PackageNotFoundError:  # running from a source tree without installation
            found = "0.0.0"
        globals()[name] = found
        return found
    module = _ADAPTERS.get(name)
    if module is None:
        raise AttributeError(f"module 'cra' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Approval",
    "ApprovalError",
    "ApprovalTicket",
    "Atlas",
    "AtlasError",
    "AuditLedger",
    "CRAError",
    "ChainError",
    "ChainReport",
    "Decision",
    "Effect",
    "Engine",
    "LedgerError",
    "ManualClock",
    "MemoryCounters",
    "MemoryEventStore",
    "MemoryLedgerStore",
    "MemorySink",
    "NotFoundError",
    "NoteSigner",
    "NoteVerifier",
    "PolicyError",
    "ProofError",
    "ProtocolError",
    "ResolutionError",
    "Resolver",
    "RuntimeStateError",
    "SeededIds",
    "SessionError",
    "Step",
    "SystemClock",
    "SystemIds",
    "TraceError",
    "TraceEvent",
    "ValidationError",
    "__version__",
    "check_chain",
    "dumps_trace",
    "load_atlas",
    "loads_trace",
    "open_ledger",
    "verify_bundle",
    "verify_chain",
]

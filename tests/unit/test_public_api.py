"""The curated public API: what `from cra import ...` offers is a decision, pinned here."""

from __future__ import annotations

import cra

EXPECTED = {
    "AuditLedger",
    "LedgerError",
    "MemoryLedgerStore",
    "NoteSigner",
    "NoteVerifier",
    "ProofError",
    "open_ledger",
    "verify_bundle",
    "Approval",
    "ApprovalError",
    "ApprovalTicket",
    "Atlas",
    "AtlasError",
    "CRAError",
    "ChainError",
    "ChainReport",
    "Decision",
    "Effect",
    "Engine",
    "ManualClock",
    "MemoryCounters",
    "MemoryEventStore",
    "MemorySink",
    "NotFoundError",
    "PolicyError",
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
    "verify_chain",
}


def test_the_export_list_is_exactly_the_curated_one() -> None:
    assert set(cra.__all__) == EXPECTED
    assert len(cra.__all__) == len(EXPECTED)


def test_every_export_exists() -> None:
    for name in cra.__all__:
        assert getattr(cra, name) is not None


def test_every_error_is_a_cra_error() -> None:
    errors = [getattr(cra, n) for n in cra.__all__ if n.endswith("Error") and n != "CRAError"]
    assert errors
    assert all(issubclass(e, cra.CRAError) for e in errors)

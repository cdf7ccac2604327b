"""CRA's exception tree.

Every error CRA raises on purpose derives from :class:`CRAError`. Errors about
malformed input carry a JSON Pointer (``path``) to the offending value and a
``reason``; ``str(error)`` renders both. The core knows nothing of exit codes or
HTTP statuses: entry points map these classes in one place each.

    CRAError
    ├── ValidationError      input that does not match a schema (path + reason)
    │   ├── ProtocolError    a CARP or TRACE message
    │   └── AtlasError       an atlas manifest or package
    │       └── PolicyError  a policy that cannot be compiled
    ├── TraceError           a trace file that cannot be read (line + path + reason)
    ├── ChainError           a hash chain that does not verify (kind + index)
    ├── ProofError           a Merkle proof, signed note, checkpoint or bundle that does not verify
    ├── UnavailableError     a dependency that cannot answer (counters, cache): the call is refused
    ├── SandboxError         a sandbox that cannot be built or started (never the code it runs)
    ├── LedgerError          a ledger operation its stored state does not allow
    │   └── LedgerConflict   an append that lost a race with another writer
    └── RuntimeStateError    a call that the runtime's state does not allow
        ├── NotFoundError    no such session, resolution, approval or atlas
        ├── SessionError     ended session, agent mismatch
        ├── ResolutionError  expired resolution, replayed request, clock skew
        ├── ApprovalError    bad, expired, used or mismatched ticket; forbidden approver
        └── ConflictError    a write that lost a race with another writer, or a duplicate
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ApprovalError",
    "AtlasError",
    "CRAError",
    "ChainError",
    "ConflictError",
    "LedgerConflict",
    "LedgerError",
    "NotFoundError",
    "Overloaded",
    "PolicyError",
    "ProofError",
    "ProtocolError",
    "ResolutionError",
    "RuntimeStateError",
    "SandboxBuilding",
    "SandboxError",
    "SessionError",
    "TraceError",
    "UnavailableError",
    "ValidationError",
    "json_pointer",
]


def json_pointer(parts: Sequence[str | int]) -> str:
    """Render path segments as an RFC 6901 JSON Pointer ('' is the whole document)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


class CRAError(Exception):
    """Base class of every error CRA raises deliberately."""

    code = "cra_error"


class ValidationError(CRAError):
    """Input that does not match its schema. ``path`` is a JSON Pointer."""

    code = "invalid"

    def __init__(self, path: str, reason: str, *, source: str | None = None) -> None:
        self.path = path
        self.reason = reason
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{path or '/'}: {reason}")


class ProtocolError(ValidationError):
    """A CARP or TRACE message that does not match the protocol."""

    code = "invalid_message"


class AtlasError(ValidationError):
    """An atlas manifest or package that cannot be loaded."""

    code = "invalid_atlas"


class PolicyError(AtlasError):
    """A policy in an atlas that cannot be compiled (unknown type, key or parameter)."""

    code = "invalid_policy"


class TraceError(CRAError):
    """A trace file that cannot be parsed. ``line`` is 1-based."""

    code = "invalid_trace"

    def __init__(self, line: int, path: str, reason: str) -> None:
        self.line = line
        self.path = path
        self.reason = reason
        super().__init__(f"line {line}: {path or '/'}: {reason}")


class ChainError(CRAError):
    """A hash chain that does not verify.

    ``kind`` is one of ``hash_mismatch``, ``chain_broken``, ``sequence_gap``,
    ``session_mismatch`` or ``empty``; ``index`` is the 0-based position of the
    first failing event.
    """

    code = "chain_invalid"

    def __init__(self, kind: str, index: int, detail: str) -> None:
        self.kind = kind
        self.index = index
        self.detail = detail
        super().__init__(f"{kind} at event {index}: {detail}")


class ProofError(CRAError):
    """Evidence that does not verify: a Merkle proof, a signed note, a checkpoint,
    a tlog-proof, an attestation or an export bundle, malformed or wrong.

    Verifiers have one way to succeed; every other path raises this, saying what failed.
    """

    code = "proof_invalid"


class UnavailableError(CRAError):
    """A dependency that cannot answer, such as the shared rate-limit counters. The call it
    was needed for is refused, and nothing the call did so far is kept."""

    code = "unavailable"


class Overloaded(UnavailableError):
    """Refused before anything was done because the work it needs is full; ``retry_after`` says when to
    ask again. Nothing of the call is kept."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SandboxBuilding(Overloaded):
    """Refused because the executor the call needs is still being prepared (the sandbox's first
    build); nothing of the call is kept, and it never runs later."""

    code = "sandbox_building"


class SandboxError(CRAError):
    """A sandbox that cannot be built, loaded or started. What the code inside it does,
    however it ends, is a result, never this error."""

    code = "sandbox_error"


class LedgerError(CRAError):
    """A ledger operation that the stored state does not allow: an unknown entry,
    an event id already logged with other bytes, a missing or unreadable key."""

    code = "ledger_error"


class LedgerConflict(LedgerError):
    """An append that lost a race: another writer grew the log first, or already
    logged one of the event ids. The ledger reloads and retries."""

    code = "ledger_conflict"


class RuntimeStateError(CRAError):
    """A call the runtime refuses because of its current state."""

    code = "invalid_state"


class NotFoundError(RuntimeStateError):
    """A session, resolution, approval or atlas that does not exist (``kind`` says which)."""

    code = "not_found"

    def __init__(self, kind: str, ident: str) -> None:
        self.kind = kind
        self.ident = ident
        super().__init__(f"no {kind} {ident!r}")


class SessionError(RuntimeStateError):
    code = "session_error"


class ResolutionError(RuntimeStateError):
    code = "resolution_error"


class ApprovalError(RuntimeStateError):
    code = "approval_error"


class ConflictError(RuntimeStateError):
    """A write that lost a race with another writer (the operation may be run again),
    or that would duplicate something that exists (an atlas already loaded)."""

    code = "conflict"

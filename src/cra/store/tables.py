"""The service's tables (SQLAlchemy 2.x), one schema for SQLite and PostgreSQL.

Rows keep what queries filter on in columns and the rest as canonical JSON
text; an event row keeps the exact line that was hashed, never a re-rendering.
Timestamps are RFC 3339 UTC strings with microseconds and ``Z``, which sort as
text. Schema changes go through the Alembic migrations beside this module;
a test checks that the two agree.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Float, Index, Integer, LargeBinary, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ApiKeyRow",
    "ApprovalRow",
    "AtlasRow",
    "Base",
    "EventRow",
    "IdempotencyRow",
    "LedgerAttestationRow",
    "LedgerCheckpointRow",
    "LedgerEntryRow",
    "LedgerHashRow",
    "LedgerMetaRow",
    "RequestIdRow",
    "ResolutionRow",
    "SessionRow",
]

_NAMES = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}

ID = String(64)
NAME = String(255)
STAMP = String(32)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMES)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(NAME, index=True)
    role: Mapped[str] = mapped_column(String(32))
    agent_id: Mapped[str | None] = mapped_column(NAME)
    #: The policy roles the key's holder has (JSON list); the host's word, never the agent's.
    policy_roles: Mapped[str] = mapped_column(Text)
    secret_hash: Mapped[str] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(NAME)
    created_at: Mapped[str] = mapped_column(STAMP)
    revoked_at: Mapped[str | None] = mapped_column(STAMP)


class AtlasRow(Base):
    __tablename__ = "atlases"

    tenant_id: Mapped[str] = mapped_column(NAME, primary_key=True)
    atlas_id: Mapped[str] = mapped_column(NAME, primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(80))
    #: The package's files, ``{path: base64 of the bytes}``, as canonical JSON.
    source: Mapped[str] = mapped_column(Text)
    loaded_at: Mapped[str] = mapped_column(STAMP)


class SessionRow(Base):
    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_tenant_created", "tenant_id", "created_at"),)

    session_id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(NAME)
    agent_id: Mapped[str] = mapped_column(NAME)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[str] = mapped_column(STAMP)
    ended_at: Mapped[str | None] = mapped_column(STAMP)
    #: The rest of the session: goal, roles, trace and root span ids, atlas ids, metadata.
    data: Mapped[str] = mapped_column(Text)


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("session_id", "sequence", name="uq_events_session_sequence"),
        Index("ix_events_tenant_type_time", "tenant_id", "event_type", "timestamp"),
    )

    #: Insertion order: the order events are sealed into the ledger. It keeps each chain in
    #: order (a chain's next event is inserted only after its predecessor committed).
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(ID, unique=True)
    tenant_id: Mapped[str] = mapped_column(NAME)
    session_id: Mapped[str] = mapped_column(ID)
    sequence: Mapped[int] = mapped_column(Integer)
    event_type: Mapped[str] = mapped_column(String(64))
    timestamp: Mapped[str] = mapped_column(STAMP)
    #: The event exactly as hashed and as the ledger's leaf holds it.
    line: Mapped[str] = mapped_column(Text)
    sealed: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    #: What to attest about this event when it is sealed (JSON), if it is a decision.
    claim: Mapped[str | None] = mapped_column(Text)
    # What evidence and reports filter and count on, taken from the event when it is written.
    agent_id: Mapped[str | None] = mapped_column(NAME)
    action_id: Mapped[str | None] = mapped_column(NAME)
    #: ``result`` of a policy.evaluated, ``decision_type`` of a resolution, ``violation_type`` of a violation.
    decision: Mapped[str | None] = mapped_column(String(32))
    policy_id: Mapped[str | None] = mapped_column(NAME)
    #: Whether the ledger attests this event's decision (its attestation id is the event id).
    attested: Mapped[bool] = mapped_column(Boolean, default=False)


class ResolutionRow(Base):
    __tablename__ = "resolutions"

    resolution_id: Mapped[str] = mapped_column(ID, primary_key=True)
    session_id: Mapped[str] = mapped_column(ID, index=True)
    data: Mapped[str] = mapped_column(Text)


class ApprovalRow(Base):
    __tablename__ = "approvals"
    __table_args__ = (Index("ix_approvals_tenant_status", "tenant_id", "status", "requested_at"),)

    approval_id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(NAME)
    session_id: Mapped[str] = mapped_column(ID, index=True)
    agent_id: Mapped[str] = mapped_column(NAME)
    action_id: Mapped[str] = mapped_column(NAME)
    status: Mapped[str] = mapped_column(String(16))
    requested_at: Mapped[str] = mapped_column(STAMP)
    data: Mapped[str] = mapped_column(Text)


class RequestIdRow(Base):
    __tablename__ = "request_ids"

    session_id: Mapped[str] = mapped_column(ID, primary_key=True)
    request_id: Mapped[str] = mapped_column(NAME, primary_key=True)


class IdempotencyRow(Base):
    __tablename__ = "idempotency_keys"

    session_id: Mapped[str] = mapped_column(ID, primary_key=True)
    key: Mapped[str] = mapped_column(NAME, primary_key=True)
    data: Mapped[str] = mapped_column(Text)


class RunningCallRow(Base):
    """A call whose executor runs in some process, under that process's lease.

    ``owner`` names the process; it renews ``expires_at`` (seconds since the epoch) while
    the call runs. A row whose lease expired belongs to a process that stopped: another
    process takes it over and records the call as failed (``executor_lost``).
    """

    __tablename__ = "running_calls"
    __table_args__ = (Index("ix_running_calls_expires", "expires_at"),)

    execution_id: Mapped[str] = mapped_column(ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(NAME)
    session_id: Mapped[str] = mapped_column(ID, index=True)
    action_id: Mapped[str] = mapped_column(NAME)
    idempotency_key: Mapped[str | None] = mapped_column(NAME, nullable=True)
    started_at: Mapped[str] = mapped_column(STAMP)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    expires_at: Mapped[float] = mapped_column(Float)


# -- the audit ledger, when it lives in the service's database (PostgreSQL) ----------------------------------------


class LedgerMetaRow(Base):
    """The log's settings: its ``origin``, so that one database never holds two logs."""

    __tablename__ = "ledger_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class LedgerEntryRow(Base):
    """One leaf: the exact bytes of an event's JSON line, at its log index."""

    __tablename__ = "ledger_entries"
    __table_args__ = (Index("ix_ledger_entries_session", "session_id", "idx"),)

    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(ID, unique=True)
    session_id: Mapped[str] = mapped_column(ID)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class LedgerHashRow(Base):
    """One stored Merkle hash, numbered as Go's ``sumdb/tlog`` numbers them."""

    __tablename__ = "ledger_hashes"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary)


class LedgerCheckpointRow(Base):
    __tablename__ = "ledger_checkpoints"

    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    note: Mapped[str] = mapped_column(Text)


class LedgerAttestationRow(Base):
    __tablename__ = "ledger_attestations"
    __table_args__ = (Index("ix_ledger_attestations_session", "session_id", "idx"),)

    attestation_id: Mapped[str] = mapped_column(ID, primary_key=True)
    idx: Mapped[int] = mapped_column(BigInteger)
    session_id: Mapped[str] = mapped_column(ID)
    note: Mapped[str] = mapped_column(Text)

"""The audit ledger's tables, for a ledger kept in the service's database.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_ledger_meta")),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("idx", name=op.f("pk_ledger_entries")),
        sa.UniqueConstraint("event_id", name=op.f("uq_ledger_entries_event_id")),
    )
    op.create_index("ix_ledger_entries_session", "ledger_entries", ["session_id", "idx"], unique=False)
    op.create_table(
        "ledger_hashes",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_hashes")),
    )
    op.create_table(
        "ledger_checkpoints",
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("size", name=op.f("pk_ledger_checkpoints")),
    )
    op.create_table(
        "ledger_attestations",
        sa.Column("attestation_id", sa.String(length=64), nullable=False),
        sa.Column("idx", sa.BigInteger(), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("attestation_id", name=op.f("pk_ledger_attestations")),
    )
    op.create_index("ix_ledger_attestations_session", "ledger_attestations", ["session_id", "idx"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_ledger_attestations_session", table_name="ledger_attestations")
    op.drop_table("ledger_attestations")
    op.drop_table("ledger_checkpoints")
    op.drop_table("ledger_hashes")
    op.drop_index("ix_ledger_entries_session", table_name="ledger_entries")
    op.drop_table("ledger_entries")
    op.drop_table("ledger_meta")

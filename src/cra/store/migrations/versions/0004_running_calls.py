"""Running calls under a lease, so that a call whose process stopped is recorded as failed

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 18:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "running_calls",
        sa.Column("execution_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=255), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("action_id", sa.String(length=255), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("started_at", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("execution_id", name=op.f("pk_running_calls")),
    )
    with op.batch_alter_table("running_calls", schema=None) as batch_op:
        batch_op.create_index("ix_running_calls_expires", ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_running_calls_owner"), ["owner"], unique=False)
        batch_op.create_index(batch_op.f("ix_running_calls_session_id"), ["session_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("running_calls", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_running_calls_session_id"))
        batch_op.drop_index(batch_op.f("ix_running_calls_owner"))
        batch_op.drop_index("ix_running_calls_expires")
    op.drop_table("running_calls")

"""Decision columns on events, for evidence and reports.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("agent_id", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("action_id", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("decision", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("policy_id", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("attested", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_index("ix_events_tenant_type_time", ["tenant_id", "event_type", "timestamp"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_tenant_type_time")
        batch_op.drop_column("attested")
        batch_op.drop_column("policy_id")
        batch_op.drop_column("decision")
        batch_op.drop_column("action_id")
        batch_op.drop_column("agent_id")

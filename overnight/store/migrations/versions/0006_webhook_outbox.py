"""The webhook outbox moves into the database: leased delivery across a fleet.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

Events that waited as files under <data_dir>/webhooks/ are taken in by the first
process that starts with webhooks configured (overnight/webhooks.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "webhook_events" in set(sa.inspect(op.get_bind()).get_table_names()):
        return  # made by `metadata.create_all` before migrations ran here
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("state", sa.SmallInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("next_at", sa.Float, nullable=False),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_until", sa.Float),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("ix_webhook_events_due", "webhook_events", ["state", "next_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_events_due", "webhook_events")
    op.drop_table("webhook_events")

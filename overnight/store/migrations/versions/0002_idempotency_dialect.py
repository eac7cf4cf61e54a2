"""Idempotency keys for the POSTs that create files and batches; the API a batch came from.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A data dir made by `metadata.create_all` before migrations existed already has both.
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("idempotency_keys"):
        _create_keys()
    if "dialect" not in {c["name"] for c in inspector.get_columns("batches")}:
        op.add_column("batches", sa.Column("dialect", sa.String(8)))


def _create_keys() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("project", sa.String(128), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status_code", sa.SmallInteger),
        sa.Column("response", sa.Text),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_idempotency_created", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("dialect")
    op.drop_table("idempotency_keys")

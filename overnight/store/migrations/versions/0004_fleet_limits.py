"""Fleet-wide limits (token buckets, concurrency slot leases, learnt rates); batch priority.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-09

Several workers on one PostgreSQL database keep a route's rpm, tpm and max_concurrency
together through these tables instead of a service of their own. `batches.priority`
(default 0) lets an operator run one batch before others; existing rows get 0.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _create_tables(existing: set[str]) -> None:
    if "fleet_buckets" not in existing:
        op.create_table(
            "fleet_buckets",
            sa.Column("bucket", sa.String(255), primary_key=True),
            sa.Column("level", sa.Float, nullable=False),
            sa.Column("stamp", sa.Float, nullable=False),
            sa.Column("rate_per_s", sa.Float, nullable=False),
            sa.Column("burst", sa.Float, nullable=False),
        )
    if "fleet_slots" not in existing:
        op.create_table(
            "fleet_slots",
            sa.Column("route", sa.String(255), primary_key=True),
            sa.Column("owner", sa.String(128), primary_key=True),
            sa.Column("held", sa.Integer, nullable=False),
            sa.Column("want", sa.Integer, nullable=False),
            sa.Column("expires_at", sa.Float, nullable=False),
        )
        op.create_index("ix_fleet_slots_owner", "fleet_slots", ["owner"])
    if "fleet_routes" not in existing:
        op.create_table(
            "fleet_routes",
            sa.Column("route", sa.String(255), primary_key=True),
            sa.Column("learnt_rate", sa.Float, nullable=False),
            sa.Column("learnt_at", sa.Float, nullable=False),
        )


def upgrade() -> None:
    # A data dir made by `metadata.create_all` (before migrations) may already have them.
    inspector = sa.inspect(op.get_bind())
    _create_tables(set(inspector.get_table_names()))
    if "priority" not in {c["name"] for c in inspector.get_columns("batches")}:
        # NOT NULL with a constant default: both SQLite and PostgreSQL add it in place.
        op.add_column(
            "batches",
            sa.Column("priority", sa.Integer, nullable=False, server_default=sa.text("0")),
        )


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("priority")
    op.drop_table("fleet_routes")
    op.drop_index("ix_fleet_slots_owner", "fleet_slots")
    op.drop_table("fleet_slots")
    op.drop_table("fleet_buckets")

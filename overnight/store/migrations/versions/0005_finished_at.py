"""When each request finished, for the live throughput and ETA of a running batch.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

Rows finished before this migration keep NULL: they count as finished but not as
"finished in the last minute".
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "finished_at" not in {c["name"] for c in inspector.get_columns("requests")}:
        op.add_column("requests", sa.Column("finished_at", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("finished_at")

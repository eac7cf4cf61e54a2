"""64-bit token counts in the ledger; one ledger row per input line.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

An upstream that claims 2^31 tokens no longer overflows PostgreSQL's `integer` columns
(SQLite's INTEGER is 64-bit already, so its table is left as it is). The unique index
on (batch_seq, line) makes a validation window that is inserted again after a lost
commit answer a no-op (`ON CONFLICT DO NOTHING`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TOKENS = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")


def _unique_lines(unique: bool) -> None:
    inspector = sa.inspect(op.get_bind())
    names = {ix["name"]: ix for ix in inspector.get_indexes("requests")}
    existing = names.get("ix_requests_batch_line")
    if existing is not None and bool(existing.get("unique")) == unique:
        return
    if existing is not None:
        op.drop_index("ix_requests_batch_line", "requests")
    op.create_index("ix_requests_batch_line", "requests", ["batch_seq", "line"], unique=unique)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for column in TOKENS:
            op.alter_column("requests", column, type_=sa.BigInteger(), existing_nullable=False)
    _unique_lines(True)


def downgrade() -> None:
    _unique_lines(False)
    if op.get_bind().dialect.name == "postgresql":
        for column in TOKENS:
            op.alter_column("requests", column, type_=sa.Integer(), existing_nullable=False)

"""The initial schema: files, batches, the request ledger and API keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Databases created before migrations existed (by `metadata.create_all`) are adopted:
a table that is already there is left as it is, the missing ones are created, and
Alembic records revision 0001. So an old data dir that lacks `api_keys` gains it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _tables() -> list[tuple[str, list[Any], list[tuple[Any, ...]]]]:
    """(name, columns and constraints, indexes), a frozen copy of schema.py at 0001."""
    files = [
        sa.Column("seq", BigId, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_details", sa.Text),
        sa.Column("blob_key", sa.String(256), nullable=False),
        sa.UniqueConstraint("id"),
    ]
    batches = [
        sa.Column("seq", BigId, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("endpoint_spelling", sa.String(64)),
        sa.Column("model", sa.String(256)),
        sa.Column("input_file_id", sa.String(64), nullable=False),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column("output_file_id", sa.String(64)),
        sa.Column("error_file_id", sa.String(64)),
        sa.Column("errors", sa.Text),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("in_progress_at", sa.BigInteger),
        sa.Column("finalizing_at", sa.BigInteger),
        sa.Column("completed_at", sa.BigInteger),
        sa.Column("failed_at", sa.BigInteger),
        sa.Column("expired_at", sa.BigInteger),
        sa.Column("cancelling_at", sa.BigInteger),
        sa.Column("cancelled_at", sa.BigInteger),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("completed", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger, nullable=False),
        sa.Column("metadata", sa.Text),
        sa.Column("output_expires_after", sa.Text),
        sa.Column("stop_reason", sa.String(16)),
        sa.Column("owner", sa.String(64)),
        sa.Column("owner_until", sa.Float),
        sa.UniqueConstraint("id"),
    ]
    requests = [
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("batch_seq", sa.BigInteger, nullable=False),
        sa.Column("line", sa.Integer, nullable=False),
        sa.Column("custom_id", sa.Text, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("attempts", sa.SmallInteger, nullable=False),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_until", sa.Float),
        sa.Column("status_code", sa.SmallInteger),
        sa.Column("response", sa.LargeBinary),
        sa.Column("error", sa.Text),
        sa.Column("upstream_request_id", sa.String(128)),
        sa.Column("input_tokens", sa.Integer, nullable=False),
        sa.Column("cached_tokens", sa.Integer, nullable=False),
        sa.Column("output_tokens", sa.Integer, nullable=False),
        sa.Column("reasoning_tokens", sa.Integer, nullable=False),
    ]
    api_keys = [
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128)),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("revoked_at", sa.BigInteger),
        sa.UniqueConstraint("key_hash"),
    ]
    return [
        ("files", files, [("ix_files_project_seq", ["project", "seq"])]),
        (
            "batches",
            batches,
            [("ix_batches_status", ["status"]), ("ix_batches_project_seq", ["project", "seq"])],
        ),
        (
            "requests",
            requests,
            [
                ("ix_requests_batch_state", ["batch_seq", "state", "id"]),
                ("ix_requests_batch_line", ["batch_seq", "line"]),
                ("ix_requests_leased", ["lease_until"], "state = 1"),
            ],
        ),
        ("api_keys", api_keys, []),
    ]


def _existing() -> dict[str, set[str]]:
    """Table name -> its index names, for the tables already there."""
    if context.is_offline_mode():
        return {}
    inspector = sa.inspect(op.get_bind())
    return {
        name: {str(ix["name"]) for ix in inspector.get_indexes(name)}
        for name in inspector.get_table_names()
    }


def upgrade() -> None:
    existing = _existing()
    for name, columns, indexes in _tables():
        if name not in existing:
            op.create_table(name, *columns)
        for index, index_columns, *where in indexes:
            if index in existing.get(name, set()):
                continue
            if where:  # a partial index
                condition = sa.text(where[0])
                op.create_index(
                    index,
                    name,
                    index_columns,
                    postgresql_where=condition,
                    sqlite_where=condition,
                )
            else:
                op.create_index(index, name, index_columns)


def downgrade() -> None:
    for name, _columns, _indexes in reversed(_tables()):
        op.drop_table(name)

"""The tables: files, batches, the request ledger, keys, fleet limits (SQLAlchemy Core)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")
# Token counts: 64-bit (SQLite's INTEGER already is; PostgreSQL's integer is 32-bit).
Tokens = BigInteger().with_variant(Integer(), "sqlite")

files = Table(
    "files",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("project", String(128), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("filename", String(512), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger),
    Column("status", String(16), nullable=False),
    Column("status_details", Text),
    Column("blob_key", String(256), nullable=False),
    Index("ix_files_project_seq", "project", "seq"),
)

batches = Table(
    "batches",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("project", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("endpoint_spelling", String(64)),
    Column("dialect", String(8)),  # the API that created the batch: "openai" | "azure"
    Column("model", String(256)),
    Column("input_file_id", String(64), nullable=False),
    Column("completion_window", String(16), nullable=False),
    Column("output_file_id", String(64)),
    Column("error_file_id", String(64)),
    Column("errors", Text),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("in_progress_at", BigInteger),
    Column("finalizing_at", BigInteger),
    Column("completed_at", BigInteger),
    Column("failed_at", BigInteger),
    Column("expired_at", BigInteger),
    Column("cancelling_at", BigInteger),
    Column("cancelled_at", BigInteger),
    Column("total", Integer, nullable=False, default=0),
    Column("completed", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("cached_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("reasoning_tokens", BigInteger, nullable=False, default=0),
    Column("metadata", Text),
    Column("output_expires_after", Text),
    # Why the batch stops early: "expire" while in_progress; cancel has its own status.
    Column("stop_reason", String(16)),
    # A batch-level lease: the process validating or finalizing it, and until when.
    Column("owner", String(64)),
    Column("owner_until", Float),
    # Higher runs first among open batches (an overnight extension, not in the vendors' API).
    Column("priority", Integer, nullable=False, default=0, server_default=text("0")),
    Index("ix_batches_status", "status"),
    Index("ix_batches_project_seq", "project", "seq"),
)

requests = Table(
    "requests",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("batch_seq", BigInteger, nullable=False),
    Column("line", Integer, nullable=False),
    Column("custom_id", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("state", SmallInteger, nullable=False, default=0),
    Column("attempts", SmallInteger, nullable=False, default=0),
    Column("lease_owner", String(64)),
    Column("lease_until", Float),
    Column("status_code", SmallInteger),
    Column("response", LargeBinary),
    Column("error", Text),
    Column("upstream_request_id", String(128)),
    Column("finished_at", Float),  # unix time the request became done or failed
    Column("input_tokens", Tokens, nullable=False, default=0),
    Column("cached_tokens", Tokens, nullable=False, default=0),
    Column("output_tokens", Tokens, nullable=False, default=0),
    Column("reasoning_tokens", Tokens, nullable=False, default=0),
    Index("ix_requests_batch_state", "batch_seq", "state", "id"),
    # Unique: a validation window inserted twice (a commit whose answer was lost) is a no-op.
    Index("ix_requests_batch_line", "batch_seq", "line", unique=True),
    # Only leased rows (a few thousand at most): lease renewal and takeover stay cheap
    # however many finished requests the table keeps.
    Index(
        "ix_requests_leased",
        "lease_until",
        postgresql_where=text("state = 1"),
        sqlite_where=text("state = 1"),
    ),
)

# The webhook outbox: one row per event until its receiver answers 2xx (state 0), or for
# good once it gave up (state 1). A sender leases rows, so one process sends at a time.
webhook_events = Table(
    "webhook_events",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("project", String(255), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("state", SmallInteger, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_at", Float, nullable=False),
    Column("lease_owner", String(128)),
    Column("lease_until", Float),
    Column("last_error", Text),
    Index("ix_webhook_events_due", "state", "next_at"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),  # "key_<hex>", shown in `overnight keys list`
    Column("project", String(128), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),  # sha256 hex; keys are never kept
    Column("prefix", String(16), nullable=False),  # the first characters, to recognise a key
    Column("name", String(128)),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger),
)

# The first answer to a create sent with an Idempotency-Key (api/idempotency.py).
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("project", String(128), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),  # sha256 of operation + parameters
    Column("status_code", SmallInteger),  # NULL while the first request runs
    Column("response", Text),
    Column("created_at", BigInteger, nullable=False),
    Index("ix_idempotency_created", "created_at"),
)

# Fleet-wide limits shared by every worker on one database (store/sql_fleet.py).
# A token bucket per name (a route's rpm or tpm): its level at `stamp`, and the rate and
# burst its last taker passed.
fleet_buckets = Table(
    "fleet_buckets",
    metadata,
    Column("bucket", String(255), primary_key=True),
    Column("level", Float, nullable=False),
    Column("stamp", Float, nullable=False),
    Column("rate_per_s", Float, nullable=False),
    Column("burst", Float, nullable=False),
)

# Concurrency slots a worker (`owner`) holds on a route until `expires_at`; a row past it
# is a dead worker's and counts for nothing.
fleet_slots = Table(
    "fleet_slots",
    metadata,
    Column("route", String(255), primary_key=True),
    Column("owner", String(128), primary_key=True),
    Column("held", Integer, nullable=False),
    Column("want", Integer, nullable=False),
    Column("expires_at", Float, nullable=False),
    Index("ix_fleet_slots_owner", "owner"),
)

# A route's request rate learnt from its upstream's headers, shared by the fleet.
fleet_routes = Table(
    "fleet_routes",
    metadata,
    Column("route", String(255), primary_key=True),
    Column("learnt_rate", Float, nullable=False),
    Column("learnt_at", Float, nullable=False),
)

"""The nouns of the API: files, batches, their statuses and counters.

These are plain dataclasses; the store fills them from rows and the API turns
them into the exact wire shapes of SPEC.md with `to_api()`.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any


def now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def new_file_id() -> str:
    return new_id("file-")


def new_batch_id() -> str:
    return new_id("batch_")


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)
# The Batch field that records when a batch reached each terminal status.
ENDED_AT = {
    BatchStatus.COMPLETED: "completed_at",
    BatchStatus.CANCELLED: "cancelled_at",
    BatchStatus.EXPIRED: "expired_at",
    BatchStatus.FAILED: "failed_at",
}
# The statuses of a batch with work left: its requests may still run and count.
OPEN = frozenset(set(BatchStatus) - TERMINAL)
# How long batch input and output files live unless the client says otherwise (both vendors).
FILE_TTL = 30 * 86400


class FileStatus(StrEnum):
    UPLOADED = "uploaded"
    PROCESSED = "processed"
    ERROR = "error"


class RequestState(IntEnum):
    """A ledger row's state. Integers keep the hot index small."""

    PENDING = 0
    LEASED = 1
    DONE = 2
    FAILED = 3


@dataclass(slots=True)
class File:
    id: str
    project: str
    purpose: str
    filename: str
    bytes: int
    created_at: int
    status: str = FileStatus.PROCESSED
    status_details: str | None = None
    expires_at: int | None = None
    blob_key: str = ""

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": self.status,
            "status_details": self.status_details,
        }


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    def add(self, other: Usage) -> None:
        """Saturating sums: a batch's totals never pass MAX_TOTAL_TOKENS."""
        cap = MAX_TOTAL_TOKENS
        self.input_tokens = min(cap, self.input_tokens + other.input_tokens)
        self.cached_tokens = min(cap, self.cached_tokens + other.cached_tokens)
        self.output_tokens = min(cap, self.output_tokens + other.output_tokens)
        self.reasoning_tokens = min(cap, self.reasoning_tokens + other.reasoning_tokens)

    def to_api(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + self.output_tokens,
        }

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Usage:
        """Token counts from any endpoint's answer: chat, completions, embeddings, responses."""
        usage = body.get("usage") if isinstance(body, dict) else None
        if not isinstance(usage, dict):
            return cls()
        inp = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
        out = _int(usage.get("completion_tokens", usage.get("output_tokens")))
        in_details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
        out_details = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
        cached = _int(in_details.get("cached_tokens")) if isinstance(in_details, dict) else 0
        reasoning = (
            _int(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0
        )
        return cls(inp, cached, out, reasoning)


# What one answer may claim, at most, per kind of token: far beyond any model's context,
# and small enough that sums over every request of a batch stay exact 64-bit integers.
MAX_ANSWER_TOKENS = 2**31 - 1
# Where a batch's running sums stop (saturate) rather than overflow a 64-bit column.
MAX_TOTAL_TOKENS = 2**62


def _int(value: Any) -> int:
    """A token count from an upstream's answer: untrusted, so bounded where it enters."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(0, min(value, MAX_ANSWER_TOKENS))
    if isinstance(value, float) and value == value and value not in (float("inf"), -float("inf")):
        return max(0, min(int(value), MAX_ANSWER_TOKENS))
    return 0


@dataclass(slots=True)
class BatchError:
    code: str
    message: str
    param: str | None = None
    line: int | None = None

    def to_api(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(slots=True)
class Batch:
    id: str
    project: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    created_at: int
    expires_at: int
    model: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[BatchError] | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    usage: Usage = field(default_factory=Usage)
    metadata: dict[str, str] | None = None
    output_expires_after: dict[str, Any] | None = None
    endpoint_spelling: str | None = None  # what the client sent, echoed back
    dialect: str | None = None  # "openai" or "azure": whose words validation errors use
    estimated_cost: dict[str, Any] | None = None  # overnight's extra field: cost.annotate()
    # What the engine keeps and a client never sees:
    seq: int = 0  # the store's key: ledger rows point at it, listing pages by it
    stop_reason: str | None = None  # "cancel" or "expire" once the batch must stop
    priority: int = 0  # higher runs first among open batches (overnight's extension)

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint_spelling or self.endpoint,
            "model": self.model,
            "errors": (
                {"object": "list", "data": [e.to_api() for e in self.errors]}
                if self.errors
                else None
            ),
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.expires_at,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "usage": self.usage.to_api(),
            "metadata": self.metadata,
            "output_expires_after": self.output_expires_after,
            "estimated_cost": self.estimated_cost,  # {"currency", "amount"} or null
        }


@dataclass(slots=True)
class ApiKey:
    """What `overnight keys list` shows: never the key itself."""

    id: str
    project: str
    prefix: str
    name: str | None
    created_at: int
    revoked_at: int | None = None

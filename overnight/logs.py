"""Logging set-up for `serve` and `worker`: text for people, or one JSON object per line.

OVERNIGHT_LOG_FORMAT=json gives log shippers (Loki, Elasticsearch, CloudWatch) fields
instead of a line to parse: timestamp, level, logger, message, and the batch a line is
about where the code knows it (`batch_id`, set for a batch's jobs and requests), plus
the trace and span ids while tracing is on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The batch whose work this task is doing; asyncio copies it into the tasks it starts.
current_batch: ContextVar[str | None] = ContextVar("overnight_batch", default=None)
# Set by overnight.tracing while it is on: the current span's (trace_id, span_id) in hex.
current_trace: Callable[[], tuple[str, str] | None] | None = None


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        batch_id = getattr(record, "batch_id", None) or current_batch.get()
        if batch_id:
            entry["batch_id"] = batch_id
        ids = current_trace() if current_trace is not None else None
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


def setup(level: str, log_format: str = "text") -> None:
    """Other libraries log warnings and up; overnight's own loggers log from `level`."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JSONFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("overnight").setLevel(getattr(logging, level.upper(), logging.INFO))

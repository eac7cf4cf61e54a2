"""Turn a batch's input file into ledger rows, or fail the batch with coded errors."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from overnight.dialect import Dialect, invalid, line_error
from overnight.jsonl import Line, LineTooLong, custom_id_digest, parse_line, split_lines
from overnight.models import BatchError, BatchStatus, now
from overnight.services import Services
from overnight.store.batches import errors_json
from overnight.webhooks import batch_ended

log = logging.getLogger("overnight.validate")

MAX_ERRORS = 100
# Lines are inserted in windows sorted by prompt prefix: claims follow insertion order,
# so requests that share a prefix reach the model server back to back.
INSERT_CHUNK = 5000


async def _check_lines(
    svc: Services, row: Any, key: str, errors: list[BatchError]
) -> tuple[int, str | None, int]:
    """Stream the file once: insert valid lines, collect errors.

    Returns (count, model, the line that first named the model)."""
    s = svc.settings
    dialect = row.dialect or Dialect.OPENAI
    seen: dict[bytes, int] = {}  # custom_id digest -> its first line
    model: str | None = None
    model_line = 0
    count = 0
    buffer: list[Line] = []
    # The previous window's insert runs (in the database's thread) while the next is parsed.
    inserting: asyncio.Task[None] | None = None
    try:
        async for number, raw in split_lines(svc.blobs.read(key), s.max_line_bytes):
            parsed = parse_line(number, raw, row.endpoint, dialect)
            if parsed is None:
                continue
            if isinstance(parsed, list):
                errors.extend(parsed)
            else:
                digest = custom_id_digest(parsed.custom_id)
                first = seen.setdefault(digest, number)
                if first != number:
                    errors.append(
                        line_error(
                            dialect, "duplicate_custom_id", number, "custom_id", first_line=first
                        )
                    )
                if model is None:
                    model, model_line = parsed.model, number
                elif parsed.model != model:
                    errors.append(
                        line_error(
                            dialect,
                            "model_mismatch",
                            number,
                            "body.model",
                            model=parsed.model[:100],
                            first=model[:100],
                            first_line=model_line,
                        )
                    )
                count += 1
                if count > s.max_requests_per_batch:
                    limit = s.max_requests_per_batch
                    errors.append(line_error(dialect, "too_many_tasks", number, limit=limit))
                    break
                if not errors:
                    buffer.append(parsed)
                    if len(buffer) >= INSERT_CHUNK:
                        if inserting is not None:
                            await inserting
                        inserting = asyncio.create_task(_insert(svc, row.seq, buffer))
                        buffer = []
            if len(errors) >= MAX_ERRORS:
                break
    except LineTooLong as exc:
        message = f"Line {exc.number} is longer than {s.max_line_bytes} bytes."
        errors.append(invalid(message, exc.number, None))
    finally:
        if inserting is not None:
            await inserting  # always: the error path clears the ledger after this returns
    if not errors:
        await _insert(svc, row.seq, buffer)
    return count, model, model_line


async def _insert(svc: Services, batch_seq: int, lines: list[Line]) -> None:
    lines.sort(key=lambda ln: ln.prefix)  # stable: file order within a prefix
    await svc.store.ledger.add_lines(batch_seq, lines)


async def validate_batch(svc: Services, row: Any) -> None:
    """Validate one `validating` batch; idempotent, so a crash mid-way just runs it again."""
    ledger = svc.store.ledger
    await ledger.clear(row.seq)
    errors: list[BatchError] = []
    count, model = 0, None
    dialect = row.dialect or Dialect.OPENAI
    # Another project's file is "not found" exactly like a file that never existed.
    f = await svc.store.files.get(row.input_file_id, row.project)
    if f is None:
        errors.append(
            line_error(
                dialect,
                "file_not_found",
                None,
                "file_id",
                file_id=row.input_file_id,
                project=row.project,
            )
        )
    else:
        count, model, model_line = await _check_lines(svc, row, f.blob_key, errors)
        if not errors and count == 0:
            errors.append(line_error(dialect, "empty_file", None))
        if not errors and model is not None and svc.router.route(model) is None:
            error = line_error(
                dialect, "model_not_found", model_line, "body.model", model=model[:200]
            )
            error.message += (
                " (overnight: add the model to the config's [models] table, or set "
                "OVERNIGHT_UPSTREAM_URL to serve every model.)"
            )
            errors.append(error)
    t = now()
    if errors:
        await ledger.clear(row.seq)
        if await svc.store.batches.transition(
            row.id,
            [BatchStatus.VALIDATING, BatchStatus.CANCELLING],
            status=BatchStatus.FAILED,
            errors=errors_json(errors),
            failed_at=t,
            model=model,
        ):
            await batch_ended(svc, row.project, row.id, BatchStatus.FAILED)
        log.info("batch %s failed validation: %s", row.id, errors[0].code)
        return
    await svc.store.batches.set_values(row.id, total=count, model=model)
    await svc.store.batches.transition(
        row.id, [BatchStatus.VALIDATING], status=BatchStatus.IN_PROGRESS, in_progress_at=t
    )
    log.info("batch %s validated: %d requests for model %r", row.id, count, model)

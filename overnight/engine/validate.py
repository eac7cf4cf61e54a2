"""Turn a batch's input file into ledger rows, or fail the batch with coded errors."""

from __future__ import annotations

import asyncio
import logging

from overnight.dialect import Dialect, invalid, line_error
from overnight.engine.deps import EngineDeps
from overnight.jsonl import Line, LineTooLong, custom_id_digest, parse_line, split_lines
from overnight.models import Batch, BatchError, BatchStatus
from overnight.store.faults import retrying
from overnight.webhooks import batch_ended, queued_event

log = logging.getLogger("overnight.validate")

MAX_ERRORS = 100
# Lines are inserted in windows sorted by prompt prefix: claims follow insertion order,
# so requests that share a prefix reach the model server back to back.
INSERT_CHUNK = 5000


async def _check_lines(
    svc: EngineDeps, batch: Batch, key: str, errors: list[BatchError], resume_after: int
) -> tuple[int, str | None, int]:
    """Stream the file once: insert valid lines after `resume_after`, collect errors.

    Every line is checked (duplicates and the model need them all); lines up to
    `resume_after` are in the ledger already, from a run that was interrupted.
    Returns (count, model, the line that first named the model)."""
    s = svc.settings
    dialect = batch.dialect or Dialect.OPENAI
    seen: dict[bytes, int] = {}  # custom_id digest -> its first line
    model: str | None = None
    model_line = 0
    count = 0
    buffer: list[Line] = []
    # The previous window's insert runs (in the database's thread) while the next is parsed.
    inserting: asyncio.Task[None] | None = None
    try:
        async for number, raw in split_lines(svc.blobs.read(key), s.max_line_bytes):
            parsed = parse_line(number, raw, batch.endpoint, dialect)
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
                if not errors and number > resume_after:
                    buffer.append(parsed)
                    if len(buffer) >= INSERT_CHUNK:
                        if inserting is not None:
                            await inserting
                        inserting = asyncio.create_task(_insert(svc, batch.seq, buffer))
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
        await _insert(svc, batch.seq, buffer)
    return count, model, model_line


async def _insert(svc: EngineDeps, batch_seq: int, lines: list[Line]) -> None:
    """One window, in one transaction: after a crash the ledger holds whole windows, so
    the highest line in it says where to resume. A retried window adds nothing twice."""
    lines.sort(key=lambda ln: ln.prefix)  # stable: file order within a prefix
    await retrying(
        lambda: svc.store.ledger.add_lines(batch_seq, lines), f"inserting batch {batch_seq}"
    )


async def validate_batch(svc: EngineDeps, batch: Batch) -> None:
    """Validate one `validating` batch; resumable, so a crash or a dropped database
    connection mid-way goes on from the last window inserted."""
    ledger = svc.store.ledger
    resume_after = await retrying(lambda: ledger.last_line(batch.seq), f"validating {batch.id}")
    errors: list[BatchError] = []
    count, model = 0, None
    dialect = batch.dialect or Dialect.OPENAI
    # Another project's file is "not found" exactly like a file that never existed.
    f = await retrying(
        lambda: svc.store.files.get(batch.input_file_id, batch.project), f"validating {batch.id}"
    )
    if f is None:
        errors.append(
            line_error(
                dialect,
                "file_not_found",
                None,
                "file_id",
                file_id=batch.input_file_id,
                project=batch.project,
            )
        )
    else:
        if resume_after:
            log.info("batch %s: resuming validation after line %d", batch.id, resume_after)
        count, model, model_line = await _check_lines(svc, batch, f.blob_key, errors, resume_after)
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
    t = int(svc.clock())
    batches, what = svc.store.batches, f"validating {batch.id}"
    if errors:
        await retrying(lambda: ledger.clear(batch.seq), what)
        if await retrying(
            lambda: batches.transition(
                batch.id,
                [BatchStatus.VALIDATING, BatchStatus.CANCELLING],
                status=BatchStatus.FAILED,
                errors=errors,
                failed_at=t,
                model=model,
                event=queued_event(svc.webhooks, batch.project, batch.id, BatchStatus.FAILED),
            ),
            what,
        ):
            batch_ended(svc.webhooks)
        log.info("batch %s failed validation: %s", batch.id, errors[0].code)
        return
    # The total and the status change together: a client never sees a validating batch
    # with its total known, nor an in_progress one without it.
    started = await retrying(
        lambda: batches.transition(
            batch.id,
            [BatchStatus.VALIDATING],
            status=BatchStatus.IN_PROGRESS,
            in_progress_at=t,
            total=count,
            model=model,
        ),
        what,
    )
    if not started:  # cancelled meanwhile: its counts still say what it held
        await retrying(lambda: batches.set_values(batch.id, total=count, model=model), what)
    log.info("batch %s validated: %d requests for model %r", batch.id, count, model)

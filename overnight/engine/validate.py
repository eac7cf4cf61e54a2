"""Turn a batch's input file into ledger rows, or fail the batch with coded errors."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

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
) -> tuple[int, str | None]:
    """Stream the file once: insert valid lines, collect errors. Returns (count, model)."""
    s = svc.settings
    seen: set[bytes] = set()
    model: str | None = None
    model_line = 0
    count = 0
    buffer: list[Line] = []
    # The previous window's insert runs (in the database's thread) while the next is parsed.
    inserting: asyncio.Task[None] | None = None
    try:
        async for number, raw in split_lines(svc.blobs.read(key), s.max_line_bytes):
            parsed = parse_line(number, raw, row.endpoint)
            if parsed is None:
                continue
            if isinstance(parsed, BatchError):
                errors.append(parsed)
            else:
                digest = custom_id_digest(parsed.custom_id)
                if digest in seen:
                    errors.append(
                        BatchError(
                            "duplicate_custom_id",
                            f"The custom_id {parsed.custom_id[:100]!r} on line {number} "
                            "is used by an earlier line; custom_id values must be unique.",
                            "custom_id",
                            number,
                        )
                    )
                seen.add(digest)
                if model is None:
                    model, model_line = parsed.model, number
                elif parsed.model != model:
                    errors.append(
                        BatchError(
                            "model_mismatch",
                            f"Line {number} uses model {parsed.model[:100]!r} but line "
                            f"{model_line} uses {model[:100]!r}; a batch file holds one model.",
                            "body.model",
                            number,
                        )
                    )
                count += 1
                if count > s.max_requests_per_batch:
                    errors.append(
                        BatchError(
                            "too_many_tasks",
                            f"The file has more than {s.max_requests_per_batch} requests, "
                            "the limit for one batch.",
                            None,
                            number,
                        )
                    )
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
        errors.append(
            BatchError(
                "invalid_request",
                f"Line {exc.number} is longer than {s.max_line_bytes} bytes.",
                None,
                exc.number,
            )
        )
    finally:
        if inserting is not None:
            await inserting  # always: the error path clears the ledger after this returns
    if not errors:
        await _insert(svc, row.seq, buffer)
    return count, model


async def _insert(svc: Services, batch_seq: int, lines: list[Line]) -> None:
    lines.sort(key=lambda ln: ln.prefix)  # stable: file order within a prefix
    await svc.store.ledger.add_lines(batch_seq, lines)


async def validate_batch(svc: Services, row: Any) -> None:
    """Validate one `validating` batch; idempotent, so a crash mid-way just runs it again."""
    ledger = svc.store.ledger
    await ledger.clear(row.seq)
    errors: list[BatchError] = []
    count, model = 0, None
    f = await svc.store.files.get(row.input_file_id)
    if f is None:
        errors.append(
            BatchError(
                "invalid_request",
                f"The input file {row.input_file_id} no longer exists.",
                "input_file_id",
                None,
            )
        )
    else:
        count, model = await _check_lines(svc, row, f.blob_key, errors)
        if not errors and count == 0:
            errors.append(BatchError("empty_file", "The input file has no requests.", None, None))
        if not errors and model is not None and svc.router.route(model) is None:
            errors.append(
                BatchError(
                    "model_not_found",
                    f"The model {model[:200]!r} has no route: add it to the config's [models] "
                    "table or set OVERNIGHT_UPSTREAM_URL to serve every model.",
                    "body.model",
                    1,
                )
            )
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

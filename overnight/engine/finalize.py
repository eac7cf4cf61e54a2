"""Write a batch's output and error files from the ledger, then close the batch."""

from __future__ import annotations

import logging

import orjson

from overnight.blobs.base import BlobWriter
from overnight.engine.deps import EngineDeps
from overnight.jsonl import request_id, result_line
from overnight.models import FILE_TTL, Batch, BatchStatus, File, RequestState, new_file_id
from overnight.store.base import error_json
from overnight.store.faults import retrying
from overnight.webhooks import batch_ended, queued_event

log = logging.getLogger("overnight.finalize")

STOP_ERRORS = {
    "expire": (
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    ),
    "cancel": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
}


class _Output:
    """One result file being written, created only when its first line arrives."""

    def __init__(self, svc: EngineDeps, batch_id: str, kind: str) -> None:
        self.svc = svc
        self.name = f"{batch_id}_{kind}.jsonl"
        self.file_id = new_file_id()
        self.key = f"files/{self.file_id}"
        self.writer: BlobWriter | None = None
        self.parts: list[bytes] = []
        self.pending = 0
        self.size = 0

    async def add(self, line: bytes) -> None:
        self.parts.append(line)
        self.pending += len(line)
        if self.pending >= 1 << 20:
            await self._drain()

    async def _drain(self) -> None:
        if not self.parts:
            return
        if self.writer is None:
            self.writer = await self.svc.blobs.writer(self.key)
        await self.writer.write(b"".join(self.parts))
        self.parts, self.pending = [], 0

    async def commit(self) -> int | None:
        await self._drain()
        if self.writer is None:
            return None
        self.size = await self.writer.commit()
        return self.size

    async def abort(self) -> None:
        if self.writer is not None:
            await self.writer.abort()


async def finalize_batch(svc: EngineDeps, batch: Batch, reason: str | None) -> None:
    """Finish `batch`: reason None (all done), "cancel" or "expire". Safe to re-run."""
    ledger = svc.store.ledger
    what = f"finalizing {batch.id}"
    if reason in STOP_ERRORS:
        code, message = STOP_ERRORS[reason]
        stop_error = error_json(code, message)
        await retrying(lambda: ledger.close_open(batch.seq, stop_error), what)
    elif batch.status == BatchStatus.IN_PROGRESS:
        await retrying(
            lambda: svc.store.batches.transition(
                batch.id,
                [BatchStatus.IN_PROGRESS],
                status=BatchStatus.FINALIZING,
                finalizing_at=int(svc.clock()),
            ),
            what,
        )

    output = _Output(svc, batch.id, "output")
    errors = _Output(svc, batch.id, "error")
    try:
        async for r in ledger.results(batch.seq):
            if r.state == RequestState.DONE:
                target = output
            elif r.state == RequestState.FAILED:
                target = errors
            else:
                continue
            error = orjson.loads(r.error) if r.error else None
            await target.add(
                result_line(
                    request_id(batch.id, r.line),
                    r.custom_id,
                    r.status_code,
                    r.upstream_request_id,
                    r.response,
                    error,
                )
            )
        out_size = await output.commit()
        err_size = await errors.commit()
    except BaseException:
        await output.abort()
        await errors.abort()
        raise

    counts, usage = await retrying(lambda: ledger.counts(batch.seq), what)
    t = int(svc.clock())
    ttl = FILE_TTL
    if batch.output_expires_after:
        ttl = int(batch.output_expires_after.get("seconds", FILE_TTL))
    final = {
        None: BatchStatus.COMPLETED,
        "cancel": BatchStatus.CANCELLED,
        "expire": BatchStatus.EXPIRED,
    }[reason]
    new_files: list[tuple[str, File]] = []
    for out, size, column in (
        (output, out_size, "output_file_id"),
        (errors, err_size, "error_file_id"),
    ):
        if size is None:
            continue
        new_files.append(
            (
                column,
                File(
                    id=out.file_id,
                    project=batch.project,
                    purpose="batch_output",
                    filename=out.name,
                    bytes=size,
                    created_at=t,
                    expires_at=t + ttl,
                    blob_key=out.key,
                ),
            )
        )
    from_states = [BatchStatus.FINALIZING, BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING]
    ours = {f.id for _, f in new_files}
    batches = svc.store.batches
    totals = (counts.total, counts.completed, counts.failed)

    event = queued_event(svc.webhooks, batch.project, batch.id, final)

    async def close_batch() -> bool:
        if await batches.finish(batch.id, from_states, final, t, totals, usage, new_files, event):
            return True
        # Closed already: by another process, or by this one in a commit whose answer
        # the database dropped (then the batch names our files).
        now_row = await batches.get(batch.id)
        named = {now_row.output_file_id, now_row.error_file_id} if now_row else set()
        return bool(ours & named) or (not ours and now_row is not None and now_row.status == final)

    try:
        done = await retrying(close_batch, what)
    except Exception:
        for _, f in new_files:  # written for nothing; the next run writes its own
            await svc.blobs.delete(f.blob_key)
        raise
    if not done:
        for _, f in new_files:
            await svc.blobs.delete(f.blob_key)
        log.info("batch %s was finalized elsewhere", batch.id)
        return
    batch_ended(svc.webhooks)
    log.info(
        "batch %s %s: %d completed, %d failed of %d",
        batch.id,
        final,
        counts.completed,
        counts.failed,
        counts.total,
    )

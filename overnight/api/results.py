"""Results while a batch runs (an extension): finished lines, a failure summary, a retry.

The vendors' contract is untouched: output and error files still appear only when a
batch ends. These routes read the ledger instead, so a client can follow a batch line
by line, see why requests fail while they fail, and send again only what did not work.
Each route is an extension under every prefix; docs/compatibility.md says why the
summary is not a field of the Batch object.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from overnight.api import idempotency
from overnight.api.batches import MAX_METADATA_PAIRS, CreateBatch, Project, get_batch, new_batch
from overnight.api.files import services
from overnight.api.schemas import AUTH_ERRORS, CONFLICT, NOT_FOUND, BatchObject, ok
from overnight.errors import Conflict, InvalidRequest
from overnight.failure_summary import FailureSummary
from overnight.jsonl import request_id, result_line
from overnight.models import Batch, BatchStatus, File, RequestState, new_file_id, now

router = APIRouter(tags=["results (extension)"], responses=AUTH_ERRORS)

MAX_PAGE = 10_000
MAX_CUSTOM_IDS = 100
OUTCOMES = {"succeeded": RequestState.DONE, "failed": RequestState.FAILED}
RETRY_OF = "overnight_retry_of"


@router.get("/batches/{batch_id}/results", response_model=None, responses=NOT_FOUND)
async def batch_results(
    request: Request,
    batch_id: str,
    project: Project,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1000,
    outcome: Annotated[Literal["succeeded", "failed"] | None, Query()] = None,
    custom_id: Annotated[list[str] | None, Query(max_length=MAX_CUSTOM_IDS)] = None,
) -> Response:
    """The lines finished so far, in the output (or error) file's own format, as JSONL.

    Lines come in the order overnight sends them; while the batch runs, a page stops
    before the first request still open, so following with `after` never misses a line.
    """
    svc = services(request)
    b = await get_batch(request, batch_id, project)
    state = OUTCOMES[outcome] if outcome else None
    page = await svc.store.ledger.finished_page(
        b.seq, after, limit, state=state, custom_ids=custom_id or ()
    )
    body = b"".join(
        result_line(
            request_id(b.id, r.line),
            r.custom_id,
            r.status_code,
            r.upstream_request_id,
            r.response,
            orjson.loads(r.error) if r.error else None,
        )
        for r in page.rows
    )
    headers = {
        "x-overnight-next-after": str(page.cursor),
        "x-overnight-has-more": "true" if page.more else "false",
        "x-overnight-batch-status": str(b.status),
    }
    return Response(body, media_type="application/x-ndjson", headers=headers)


@router.get("/batches/{batch_id}/results/summary", response_model=None, responses=NOT_FOUND)
async def batch_results_summary(request: Request, batch_id: str, project: Project) -> Any:
    """Failures so far grouped by code and by the model the request named."""
    svc = services(request)
    b = await get_batch(request, batch_id, project)
    summary = FailureSummary()
    async for line in svc.store.ledger.stored_lines(b.seq, [RequestState.FAILED]):
        summary.add(line.error, line.body)
    return {
        "object": "batch.results_summary",
        "batch_id": b.id,
        "status": b.status,
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "finished": b.completed + b.failed,
        "failures": [g.to_api() for g in summary.groups()],
    }


@router.post(
    "/batches/{batch_id}/retry",
    response_model=None,
    responses=ok(BatchObject) | NOT_FOUND | CONFLICT,
)
async def retry_batch(request: Request, batch_id: str, project: Project) -> Response:
    """A new batch of this one's failed and unfinished requests, as the user sent them."""
    svc = services(request)
    key = idempotency.key_of(request)

    async def create() -> tuple[int, dict[str, Any]]:
        b = await get_batch(request, batch_id, project)
        return 200, await _retry(request, project, b)

    answer, _ = await idempotency.run_once(
        svc.store.idempotency, project, key, "batches.retry", {"batch_id": batch_id}, create
    )
    return answer


async def _retry(request: Request, project: str, b: Batch) -> dict[str, Any]:
    svc = services(request)
    if not BatchStatus(b.status).terminal:
        raise Conflict(
            f"Batch {b.id} is still {b.status}: retry it once it has ended (or cancel it first).",
            code="batch_not_finished",
        )
    states = [RequestState.PENDING, RequestState.LEASED, RequestState.FAILED]
    file_id = new_file_id()
    key = f"files/{file_id}"
    writer = await svc.blobs.writer(key)
    lines = 0
    try:
        async for line in svc.store.ledger.stored_lines(b.seq, states):
            await writer.write(
                b'{"custom_id":'
                + orjson.dumps(line.custom_id)
                + b',"method":"POST","url":'
                + orjson.dumps(b.endpoint_spelling or b.endpoint)
                + b',"body":'
                + line.body
                + b"}\n"
            )
            lines += 1
        if lines == 0:
            raise InvalidRequest(
                f"Batch {b.id} has no failed or unfinished requests to retry.",
                code="nothing_to_retry",
            )
        size = await writer.commit()
    except BaseException:
        await writer.abort()
        raise
    f = File(
        id=file_id,
        project=project,
        purpose="batch",
        filename=f"{b.id}_retry.jsonl",
        bytes=size,
        created_at=now(),
        blob_key=key,
    )
    await svc.store.files.add(f)
    metadata = dict(b.metadata or {})
    if RETRY_OF in metadata or len(metadata) < MAX_METADATA_PAIRS:
        metadata[RETRY_OF] = b.id
    params = CreateBatch.model_validate(
        {
            "input_file_id": file_id,
            "endpoint": b.endpoint_spelling or b.endpoint,
            "completion_window": b.completion_window,
            "metadata": metadata or None,
            "output_expires_after": b.output_expires_after,
            "priority": b.priority,  # an extension field, as a client sends it in extra_body
        }
    )
    return await new_batch(request, project, params)

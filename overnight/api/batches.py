"""The Batches API: create, retrieve, list, cancel."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from overnight.api.auth import current_project
from overnight.api.files import services
from overnight.errors import InvalidRequest, NotFound, TooManyRequests
from overnight.jsonl import normalize_endpoint
from overnight.models import Batch, BatchStatus, new_batch_id, now

router = APIRouter(tags=["batches"])
Project = Annotated[str, Depends(current_project)]

MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


class ExpiresAfter(BaseModel):
    anchor: Literal["created_at"]
    seconds: Annotated[int, Field(ge=3600, le=2_592_000)]


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="allow")

    input_file_id: Annotated[str, Field(max_length=256)]
    endpoint: Annotated[str, Field(max_length=256)]
    completion_window: Annotated[str, Field(max_length=64)]
    metadata: dict[str, str] | None = None
    output_expires_after: ExpiresAfter | None = None


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidRequest(
            f"metadata can hold at most {MAX_METADATA_PAIRS} pairs.", param="metadata"
        )
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise InvalidRequest(
                f"metadata keys can be at most {MAX_METADATA_KEY} characters.", param="metadata"
            )
        if len(value) > MAX_METADATA_VALUE:
            raise InvalidRequest(
                f"metadata values can be at most {MAX_METADATA_VALUE} characters.",
                param="metadata",
            )


async def _get_batch(request: Request, batch_id: str, project: str) -> Batch:
    svc = services(request)
    b = await svc.store.batches.get(batch_id, project) if len(batch_id) <= 64 else None
    if b is None:
        raise NotFound(f"No such Batch object: {batch_id[:100]}", param="batch_id")
    return b


def _wake(request: Request) -> None:
    scheduler = getattr(request.app.state, "scheduler", None)
    if scheduler is not None:
        scheduler.wake()


@router.post("/batches")
async def create_batch(
    request: Request, project: Project, params: Annotated[CreateBatch, Body()]
) -> dict[str, Any]:
    svc = services(request)
    endpoint = normalize_endpoint(params.endpoint)
    if endpoint is None:
        raise InvalidRequest(
            f"Invalid endpoint {params.endpoint[:100]!r}; supported: /v1/chat/completions, "
            "/v1/completions, /v1/embeddings, /v1/responses (or without /v1).",
            param="endpoint",
        )
    if params.completion_window != "24h":
        raise InvalidRequest(
            "Invalid completion_window: only '24h' is supported.", param="completion_window"
        )
    _check_metadata(params.metadata)
    f = await svc.store.files.get(params.input_file_id, project)
    if f is None:
        raise InvalidRequest(
            f"Could not find file with ID {params.input_file_id[:100]!r}.",
            param="file_id",
            code="invalid_file_id",
        )
    if f.purpose != "batch":
        raise InvalidRequest(
            f"The input file must have purpose 'batch', not {f.purpose!r}.",
            param="input_file_id",
        )
    if await svc.store.batches.count_open(project) >= svc.settings.max_open_batches:
        raise TooManyRequests(
            f"This project already has {svc.settings.max_open_batches} open batches; "
            "wait for some to finish or cancel them."
        )
    created = now()
    b = Batch(
        id=new_batch_id(),
        project=project,
        endpoint=endpoint,
        endpoint_spelling=params.endpoint,
        input_file_id=f.id,
        completion_window="24h",
        status=BatchStatus.VALIDATING,
        created_at=created,
        expires_at=created + svc.settings.completion_window_seconds,
        metadata=params.metadata,
        output_expires_after=(
            params.output_expires_after.model_dump() if params.output_expires_after else None
        ),
    )
    await svc.store.batches.add(b)
    _wake(request)
    return b.to_api()


@router.get("/batches")
async def list_batches(
    request: Request,
    project: Project,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    items, more = await services(request).store.batches.page(project, limit=limit, after=after)
    data = [b.to_api() for b in items]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


@router.get("/batches/{batch_id}")
async def retrieve_batch(request: Request, batch_id: str, project: Project) -> dict[str, Any]:
    return (await _get_batch(request, batch_id, project)).to_api()


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str, project: Project) -> dict[str, Any]:
    svc = services(request)
    b = await _get_batch(request, batch_id, project)
    if b.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
        return b.to_api()
    cancellable = [BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING]
    if not await svc.store.batches.transition(
        b.id, cancellable, status=BatchStatus.CANCELLING, cancelling_at=now()
    ):
        current = await _get_batch(request, batch_id, project)
        if current.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
            return current.to_api()
        raise InvalidRequest(
            f"Cannot cancel a batch with status '{current.status}'.",
            param="batch_id",
            code="batch_not_cancellable",
        )
    _wake(request)
    return (await _get_batch(request, batch_id, project)).to_api()

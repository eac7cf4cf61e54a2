"""The Batches API: create, retrieve, list, cancel."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from overnight.api.auth import current_project
from overnight.api.files import services
from overnight.api.limits import has_surrogates, plausible_id
from overnight.api.schemas import (
    AUTH_ERRORS,
    CONFLICT,
    NOT_FOUND,
    TOO_MANY,
    BatchList,
    BatchObject,
    ok,
)
from overnight.cost import annotate
from overnight.errors import Conflict, InvalidRequest, NotFound, TooManyRequests
from overnight.jsonl import normalize_endpoint
from overnight.models import Batch, BatchStatus, new_batch_id, now

router = APIRouter(tags=["batches"], responses=AUTH_ERRORS)
Project = Annotated[str, Depends(current_project)]

MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


def _unicode(value: str) -> str:
    if has_surrogates(value):
        raise ValueError("must be valid Unicode text (no lone surrogate escapes)")
    return value


Text = Annotated[str, AfterValidator(_unicode)]


class ExpiresAfter(BaseModel):
    anchor: Literal["created_at"]
    seconds: Annotated[int, Field(ge=3600, le=2_592_000)]


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="allow")

    input_file_id: Annotated[Text, Field(max_length=256)]
    endpoint: Annotated[Text, Field(max_length=64)]
    completion_window: Annotated[Text, Field(max_length=64)]
    metadata: dict[Text, Text] | None = None
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
    b = await svc.store.batches.get(batch_id, project) if plausible_id(batch_id) else None
    if b is None:
        raise NotFound(f"No such Batch object: {batch_id[:100]}", param="batch_id")
    return annotate(b, svc.settings.prices)


def _wake(request: Request) -> None:
    scheduler = getattr(request.app.state, "scheduler", None)
    if scheduler is not None:
        scheduler.wake()


@router.post("/batches", response_model=None, responses=ok(BatchObject) | TOO_MANY)
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
    file_id = params.input_file_id
    f = await svc.store.files.get(file_id, project) if plausible_id(file_id) else None
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
            "wait for some to finish or cancel them (the limit is OVERNIGHT_MAX_OPEN_BATCHES).",
            code="too_many_open_batches",
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


@router.get("/batches", response_model=None, responses=ok(BatchList))
async def list_batches(
    request: Request,
    project: Project,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    if after and not plausible_id(after):
        items: list[Batch] = []
        more = False  # as for any cursor that names no batch of this project
    else:
        items, more = await services(request).store.batches.page(project, limit=limit, after=after)
    prices = services(request).settings.prices
    data = [annotate(b, prices).to_api() for b in items]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


@router.get("/batches/{batch_id}", response_model=None, responses=ok(BatchObject) | NOT_FOUND)
async def retrieve_batch(request: Request, batch_id: str, project: Project) -> dict[str, Any]:
    return (await _get_batch(request, batch_id, project)).to_api()


@router.post(
    "/batches/{batch_id}/cancel",
    response_model=None,
    responses=ok(BatchObject) | NOT_FOUND | CONFLICT,
)
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
        # What OpenAI answers: 409 (the SDK's ConflictError), and the batch is unchanged.
        raise Conflict(
            f"Cannot cancel a batch with status '{current.status}'.",
            code="batch_not_cancellable",
        )
    _wake(request)
    return (await _get_batch(request, batch_id, project)).to_api()

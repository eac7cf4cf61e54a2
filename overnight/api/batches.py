"""The Batches API: create, retrieve, list, cancel."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.responses import Response

from overnight.api import idempotency
from overnight.api.auth import current_project
from overnight.api.files import is_azure, services
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
from overnight.backends.base import ENDPOINTS
from overnight.cost import annotate
from overnight.dialect import Dialect
from overnight.errors import Conflict, InvalidRequest, NotFound, TooManyRequests
from overnight.jsonl import normalize_endpoint
from overnight.models import Batch, BatchStatus, new_batch_id, now
from overnight.settings import Settings, window_seconds

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


def _check_batch_id(batch_id: str) -> None:
    if not batch_id.startswith("batch"):
        raise InvalidRequest(
            f"Invalid 'batch_id': {batch_id[:100]!r}. Expected an ID that begins with 'batch'.",
            param="batch_id",
            code="invalid_value",
        )


async def get_batch(request: Request, batch_id: str, project: str) -> Batch:
    svc = services(request)
    _check_batch_id(batch_id)
    b = await svc.store.batches.get(batch_id, project) if plausible_id(batch_id) else None
    if b is None:
        raise NotFound(f"No batch found with id {batch_id[:100]!r}.")
    return annotate(b, svc.settings.prices)


def supported(values: tuple[str, ...]) -> str:
    """OpenAI's list: "'a', 'b', and 'c'"."""
    quoted = [f"'{v}'" for v in values]
    if len(quoted) == 1:
        return quoted[0]
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def invalid_value(value: str, param: str, values: tuple[str, ...]) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid value: {value[:100]!r}. Supported values are: {supported(values)}.",
        param=param,
        code="invalid_value",
    )


PRIORITY_RANGE = range(-10, 11)
PRIORITY_KEY = "overnight_priority"  # in metadata, for clients that send no extra fields


def _priority(params: CreateBatch) -> int:
    """overnight's extension: `priority` (extra_body) or metadata's overnight_priority;
    higher runs sooner, from -10 to 10, 0 by default (docs/scheduling.md)."""
    extra = params.model_extra or {}
    raw: Any = extra.get("priority")
    param = "priority"
    if raw is None and params.metadata and PRIORITY_KEY in params.metadata:
        raw, param = params.metadata[PRIORITY_KEY], f"metadata.{PRIORITY_KEY}"
    if raw is None:
        return 0
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        value = int(raw)
    if value is None or value not in PRIORITY_RANGE:
        raise InvalidRequest(
            f"Invalid {param}: {str(raw)[:40]!r}. Expected a whole number from -10 to 10 "
            "(higher runs sooner).",
            param=param,
            code="invalid_value",
        )
    return value


def _window_seconds(settings: Settings, window: str) -> int:
    if window == "24h":
        return settings.completion_window_seconds
    seconds = window_seconds(window)
    assert seconds is not None  # settings checked every allowed window
    return seconds


def _wake(request: Request) -> None:
    scheduler = getattr(request.app.state, "scheduler", None)
    if scheduler is not None:
        scheduler.wake()


@router.post("/batches", response_model=None, responses=ok(BatchObject) | TOO_MANY | CONFLICT)
async def create_batch(
    request: Request, project: Project, params: Annotated[CreateBatch, Body()]
) -> Response:
    svc = services(request)
    key = idempotency.key_of(request)

    async def create() -> tuple[int, dict[str, Any]]:
        return 200, await new_batch(request, project, params)

    fields = params.model_dump(mode="json")
    answer, _ = await idempotency.run_once(
        svc.store.idempotency, project, key, "batches.create", fields, create
    )
    return answer


async def new_batch(request: Request, project: str, params: CreateBatch) -> dict[str, Any]:
    svc = services(request)
    endpoint = normalize_endpoint(params.endpoint)
    if endpoint is None:
        raise invalid_value(params.endpoint, "endpoint", ENDPOINTS)
    windows = svc.settings.completion_windows
    if params.completion_window not in windows:
        raise invalid_value(params.completion_window, "completion_window", windows)
    _check_metadata(params.metadata)
    priority = _priority(params)
    file_id = params.input_file_id
    if not (file_id.startswith("file") and plausible_id(file_id)):
        raise InvalidRequest(
            f"Invalid 'input_file_id': {file_id[:100]!r}. Expected an ID that begins with 'file'.",
            param="input_file_id",
            code="invalid_value",
        )
    # An unknown file is not refused here: as on OpenAI, the batch is created and fails
    # validation with "Cannot find file ...".
    f = await svc.store.files.get(file_id, project)
    if f is not None and f.purpose != "batch":
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
        dialect=Dialect.AZURE if is_azure(request) else Dialect.OPENAI,
        input_file_id=file_id,
        completion_window=params.completion_window,
        status=BatchStatus.VALIDATING,
        created_at=created,
        expires_at=created + _window_seconds(svc.settings, params.completion_window),
        priority=priority,
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
    return (await get_batch(request, batch_id, project)).to_api()


@router.post(
    "/batches/{batch_id}/cancel",
    response_model=None,
    responses=ok(BatchObject) | NOT_FOUND | CONFLICT,
)
async def cancel_batch(request: Request, batch_id: str, project: Project) -> dict[str, Any]:
    svc = services(request)
    b = await get_batch(request, batch_id, project)
    if b.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
        return b.to_api()
    cancellable = [BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING]
    if not await svc.store.batches.transition(
        b.id, cancellable, status=BatchStatus.CANCELLING, cancelling_at=now()
    ):
        current = await get_batch(request, batch_id, project)
        if current.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
            return current.to_api()
        # What OpenAI answers: 409 (the SDK's ConflictError), and the batch is unchanged.
        raise Conflict(f"Cannot cancel a batch with status '{current.status}'.")
    _wake(request)
    return (await get_batch(request, batch_id, project)).to_api()

"""The Files API: upload, list, retrieve, content, delete."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.responses import Response

from overnight.api import idempotency
from overnight.api.auth import current_project
from overnight.api.limits import plausible_id
from overnight.api.schemas import (
    AUTH_ERRORS,
    CONTENT_RESPONSE,
    NOT_FOUND,
    UPLOAD_BODY,
    FileDeleted,
    FileList,
    FileObject,
    ok,
)
from overnight.api.upload import receive_upload
from overnight.errors import InvalidRequest, MissingParameter, NotFound
from overnight.models import FILE_TTL, File, FileStatus, new_file_id, now
from overnight.services import Services

router = APIRouter(tags=["files"], responses=AUTH_ERRORS)

PURPOSES = frozenset(
    {"batch", "assistants", "fine-tune", "vision", "user_data", "evals", "batch_output"}
)
UPLOAD_PURPOSES = PURPOSES - {"batch_output"}
MIN_TTL, MAX_TTL = 3600, 2_592_000
EXPIRY_FIELDS = ("anchor", "seconds")

Project = Annotated[str, Depends(current_project)]


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def is_azure(request: Request) -> bool:
    return request.url.path.startswith("/openai/")


def _expiry(fields: dict[str, str], purpose: str, created: int) -> int | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return created + FILE_TTL if purpose == "batch" else None
    if anchor != "created_at":
        raise InvalidRequest(
            "expires_after[anchor] must be 'created_at'.", param="expires_after.anchor"
        )
    try:
        value = int(seconds or "")
    except ValueError:
        raise InvalidRequest(
            "expires_after[seconds] must be an integer.", param="expires_after.seconds"
        ) from None
    if not MIN_TTL <= value <= MAX_TTL:
        raise InvalidRequest(
            f"expires_after[seconds] must be between {MIN_TTL} and {MAX_TTL}.",
            param="expires_after.seconds",
        )
    return created + value


def content_disposition(filename: str) -> str:
    """Header values are Latin-1: send an ASCII fallback plus the RFC 5987 UTF-8 name."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename)}"


async def _get_file(svc: Services, file_id: str, project: str) -> File:
    f = await svc.store.files.get(file_id, project) if plausible_id(file_id) else None
    if f is None:
        raise NotFound(f"No such File object: {file_id[:100]}", param="id")
    return f


@router.post(
    "/files",
    status_code=200,
    response_model=None,
    responses=ok(FileObject),
    openapi_extra=UPLOAD_BODY,
)
async def upload_file(request: Request, project: Project) -> Response:
    svc = services(request)
    s = svc.settings
    idempotency_key = idempotency.key_of(request)
    file_id = new_file_id()
    key = f"files/{file_id}"
    upload = await receive_upload(
        request.headers.get("content-type"),
        request.stream(),
        svc.blobs,
        key,
        s.max_upload_bytes,
        digest=idempotency_key is not None,
    )
    try:
        purpose = upload.fields.get("purpose")
        if not purpose:
            raise MissingParameter("Missing required parameter: 'purpose'.", param="purpose")
        if purpose not in UPLOAD_PURPOSES:
            raise InvalidRequest(
                f"Invalid purpose {purpose[:64]!r}; expected one of "
                f"{', '.join(sorted(UPLOAD_PURPOSES))}.",
                param="purpose",
            )
        filename = upload.filename or "upload"
        status, details = FileStatus.PROCESSED, None
        if purpose == "batch":
            if "." in filename and not filename.lower().endswith(".jsonl"):
                raise InvalidRequest(
                    "Invalid file format for Batch API. Must be .jsonl", param="file"
                )
            if upload.size > s.max_batch_file_bytes:
                raise InvalidRequest(
                    f"File is too large for Batch API: {upload.size} bytes; the limit is "
                    f"{s.max_batch_file_bytes} bytes.",
                    param="file",
                    code="file_too_large",
                    status_code=413,
                )
            if not upload.has_content:
                status, details = FileStatus.ERROR, "The file is empty."
            elif not upload.utf8_ok:
                status, details = FileStatus.ERROR, "The file is not valid UTF-8 text."
        created = now()
        f = File(
            id=file_id,
            project=project,
            purpose=purpose,
            filename=filename,
            bytes=upload.size,
            created_at=created,
            status=status,
            status_details=details,
            expires_at=_expiry(upload.fields, purpose, created),
            blob_key=key,
        )

        async def create() -> tuple[int, dict[str, Any]]:
            await svc.store.files.add(f)
            return (201 if is_azure(request) else 200), f.to_api()

        params = {
            "purpose": purpose,
            "filename": filename,
            "sha256": upload.sha256,
            "expires_after": [upload.fields.get(f"expires_after[{k}]") for k in EXPIRY_FIELDS],
        }
        answer, replayed = await idempotency.run_once(
            svc.store.idempotency, project, idempotency_key, "files.create", params, create
        )
    except BaseException:
        await svc.blobs.delete(key)
        raise
    if replayed:
        await svc.blobs.delete(key)  # the first upload's file is the one that counts
    return answer


@router.get("/files", response_model=None, responses=ok(FileList))
async def list_files(
    request: Request,
    project: Project,
    purpose: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    svc = services(request)
    if (after and not plausible_id(after)) or (purpose and purpose not in PURPOSES):
        items: list[File] = []
        more = False  # nothing can match: no need to ask the database
    else:
        items, more = await svc.store.files.page(
            project, purpose=purpose, limit=limit, order=order, after=after
        )
    data = [f.to_api() for f in items]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


@router.get("/files/{file_id}", response_model=None, responses=ok(FileObject) | NOT_FOUND)
async def retrieve_file(request: Request, file_id: str, project: Project) -> dict[str, Any]:
    return (await _get_file(services(request), file_id, project)).to_api()


@router.get(
    "/files/{file_id}/content",
    response_class=StreamingResponse,
    responses=CONTENT_RESPONSE | NOT_FOUND,
)
async def file_content(request: Request, file_id: str, project: Project) -> StreamingResponse:
    return await stream_file(services(request), file_id, project)


async def stream_file(svc: Services, file_id: str, project: str) -> StreamingResponse:
    """A file's bytes, streamed from storage (the API's content route and the dashboard's)."""
    f = await _get_file(svc, file_id, project)
    media = "application/jsonl" if f.filename.endswith(".jsonl") else "application/octet-stream"
    return StreamingResponse(
        svc.blobs.read(f.blob_key),
        media_type=media,
        headers={
            "content-length": str(f.bytes),
            "content-disposition": content_disposition(f.filename),
        },
    )


@router.delete("/files/{file_id}", response_model=None, responses=ok(FileDeleted) | NOT_FOUND)
async def delete_file(request: Request, file_id: str, project: Project) -> dict[str, Any]:
    svc = services(request)
    f = await _get_file(svc, file_id, project)
    # The bytes first: on a full disk, deleting is how space comes back, and the
    # tombstone's write may need that space. A retry finds the row and finishes.
    await svc.blobs.delete(f.blob_key)
    await svc.store.files.delete(f.id)
    return {"id": f.id, "object": "file", "deleted": True}

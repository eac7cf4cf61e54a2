"""The wire shapes, for the OpenAPI description only (SPEC.md sections 2, 3 and 6).

Routes build their answers with `to_api()` and return them as they are; these
models document those answers (and every error) so that clients, and the
schema-driven fuzz tests, can check what the server sends against what it says.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict

BatchStatusName = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorBody(_Open):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(_Open):
    error: ErrorBody


class FileObject(_Open):
    id: str
    object: Literal["file"]
    bytes: int
    created_at: int
    expires_at: int | None
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None


class FileList(_Open):
    object: Literal["list"]
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(_Open):
    id: str
    object: Literal["file"]
    deleted: bool


class BatchErrorItem(_Open):
    code: str
    message: str
    param: str | None
    line: int | None


class BatchErrors(_Open):
    object: Literal["list"]
    data: list[BatchErrorItem]


class RequestCounts(_Open):
    total: int
    completed: int
    failed: int


class InputTokensDetails(_Open):
    cached_tokens: int


class OutputTokensDetails(_Open):
    reasoning_tokens: int


class BatchUsage(_Open):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class BatchObject(_Open):
    id: str
    object: Literal["batch"]
    endpoint: str
    model: str | None
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: BatchStatusName
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    usage: BatchUsage
    metadata: dict[str, str] | None


class BatchList(_Open):
    object: Literal["list"]
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


Responses = dict[int | str, dict[str, Any]]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorEnvelope, "description": description}


AUTH_ERRORS: Responses = {
    400: _error("Invalid request (code says which check failed)."),
    401: _error("Missing or wrong API key (code invalid_api_key)."),
    413: _error("The request body is over its size limit."),
}
NOT_FOUND: Responses = {404: _error("No such object in the caller's project.")}
TOO_MANY: Responses = {429: _error("Too many open batches in this project.")}
CONFLICT: Responses = {409: _error("The batch has already ended (cancel).")}


def ok(model: type[BaseModel], description: str = "OK") -> Responses:
    return {200: {"model": model, "description": description}}


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["purpose", "file"],
                    "properties": {
                        "purpose": {
                            "type": "string",
                            "enum": ["batch", "assistants", "fine-tune", "vision", "user_data"],
                        },
                        "file": {"type": "string", "format": "binary"},
                        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                        "expires_after[seconds]": {
                            "type": "integer",
                            "minimum": 3600,
                            "maximum": 2592000,
                        },
                    },
                }
            }
        },
    }
}

CONTENT_RESPONSE: Responses = {
    200: {
        "description": "The file's bytes.",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/jsonl": {"schema": {"type": "string"}},
        },
    }
}


def install_openapi(app: FastAPI) -> None:
    """Describe auth, and drop FastAPI's 422 answers: validation errors are 400s here."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        components = schema.setdefault("components", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(name, None)
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "OpenAI clients."},
            "api-key": {"type": "apiKey", "in": "header", "name": "api-key"},
        }
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
                if path not in ("/healthz", "/readyz"):  # probes carry no key
                    operation["security"] = [{"bearer": []}, {"api-key": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

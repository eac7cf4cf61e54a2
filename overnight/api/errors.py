"""Every error a client can see, in the OpenAI envelope, mapped in one place."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from overnight.api.responses import JSON
from overnight.errors import InvalidRequest, OvernightError
from overnight.store.faults import is_disk_full, is_transient

log = logging.getLogger("overnight.api")

_HTTP_CODES: dict[int, tuple[str | None, str]] = {
    401: ("invalid_api_key", "invalid_request_error"),
    404: (None, "invalid_request_error"),
    405: ("method_not_allowed", "invalid_request_error"),
    413: ("request_too_large", "invalid_request_error"),
}


def _text(value: str, limit: int = 500) -> str:
    """Client-supplied text echoed in an error: bounded, and always encodable as UTF-8."""
    return value[:limit].encode("utf-8", "replace").decode("utf-8")


def envelope(status: int, message: str, type_: str, param: str | None, code: str | None) -> JSON:
    return JSON(
        {"error": {"message": message, "type": type_, "param": param, "code": code}},
        status_code=status,
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(OvernightError)
    async def _domain(_: Request, exc: OvernightError) -> JSON:
        response = envelope(exc.status_code, exc.message, exc.type, exc.param, exc.code)
        if exc.status_code == 401:
            response.headers["www-authenticate"] = "Bearer"
        if exc.status_code == 503:
            response.headers["retry-after"] = "1"  # the SDK waits this long, then retries
        if exc.status_code == 409 and not exc.retryable:
            # The SDK retries 409s unless told not to; a state conflict will not resolve itself.
            response.headers["x-should-retry"] = "false"
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSON:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = _text(".".join(loc), 100) or None
        kind = first.get("type", "")
        if kind == "missing":
            return envelope(
                400,
                f"Missing required parameter: '{param}'.",
                "invalid_request_error",
                param,
                "missing_required_parameter",
            )
        message = _text(str(first.get("msg", "Invalid request.")))
        if kind == "json_invalid":
            message, param = "The request body is not valid JSON.", None
        text = f"Invalid value for '{param}': {message}" if param else message
        return envelope(400, text, InvalidRequest.type, param, "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSON:
        code, type_ = _HTTP_CODES.get(exc.status_code, ("invalid_request", "invalid_request_error"))
        message = str(exc.detail) if exc.detail else "Request failed."
        if exc.status_code == 404 and message == "Not Found":
            if request.url.path.startswith("/openai/"):
                # Azure's own answer for a path it does not serve.
                return JSON({"error": {"code": "404", "message": "Resource not found"}}, 404)
            # OpenAI's words for a route that does not exist.
            message = f"Invalid URL ({request.method} {_text(request.url.path, 200)})"
        return envelope(exc.status_code, message, type_, None, code)

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, exc: ClientDisconnect) -> JSON:
        # The client went away mid-body: nobody reads this answer, and it is not our error.
        return envelope(
            400,
            "The request body was not received in full.",
            "invalid_request_error",
            None,
            "invalid_request",
        )

    async def _store(request: Request, exc: Exception) -> JSON:
        """The database or the disk, not the request: say so, and when to come back."""
        if is_disk_full(exc):
            log.error("%s %s: storage is full (%s)", request.method, request.url.path, exc)
            return envelope(
                507,
                "overnight's storage is full; nothing was kept. Free space (delete files "
                "no longer needed) and try again.",
                "server_error",
                None,
                "insufficient_storage",
            )
        if is_transient(exc):
            log.warning("%s %s: store unavailable (%s)", request.method, request.url.path, exc)
            response = envelope(
                503,
                "overnight's database is unavailable right now; try again shortly.",
                "server_error",
                None,
                "database_unavailable",
            )
            response.headers["retry-after"] = "1"
            return response
        return await _unexpected(request, exc)

    for kind in (sa_exc.DBAPIError, sa_exc.TimeoutError, OSError):
        app.add_exception_handler(kind, _store)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSON:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return envelope(
            500,
            "The server had an error while processing your request.",
            "server_error",
            None,
            "internal_error",
        )

"""Bounds on what a request may make the server hold: body sizes, ids, strings.

Uploads stream to blob storage and are bounded by `max_upload_bytes`; every other
request body is JSON of a few kilobytes at most, so it is refused past
`MAX_JSON_BODY` before it is read into memory, whether it declares its length or
is sent chunked.
"""

from __future__ import annotations

import re

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from overnight.api.errors import envelope

MAX_JSON_BODY = 1024 * 1024
UPLOAD_OVERHEAD = 1024 * 1024  # multipart headers and form fields around the file
# Every id overnight hands out matches this; anything else cannot name an object, so it
# is answered "not found" without reaching the database (no NUL or path characters there).
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def plausible_id(value: str) -> bool:
    return bool(ID_PATTERN.match(value))


def has_surrogates(value: str) -> bool:
    """A lone surrogate (JSON allows "\\ud800") cannot be stored or sent as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than the {limit}-byte limit.")


class BodyLimitMiddleware:
    """413 for a body over the limit of its route, before or while it is received."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int) -> None:
        self.app = app
        self.upload_limit = max_upload_bytes + UPLOAD_OVERHEAD

    def _limit(self, scope: Scope) -> int:
        if scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/files"):
            return self.upload_limit
        return MAX_JSON_BODY

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                response = envelope(
                    413,
                    f"The request body is larger than the {limit}-byte limit.",
                    "invalid_request_error",
                    None,
                    "request_too_large",
                )
                response.headers["connection"] = "close"
                await response(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)

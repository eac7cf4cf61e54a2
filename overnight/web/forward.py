"""The dashboard's actions, passed to the public API with the key the login holds.

The login keeps the key in an HttpOnly cookie, out of reach of the page's script,
so the page cannot call /v1 itself. It calls /ui/v1/<route> instead, and this
module hands the request, body streamed and untouched, to the same app at
/v1/<route> with the cookie's key as a bearer key. The API route does the work
and answers, errors in its own envelope; the dashboard adds no second copy of
its rules. Only the routes the page offers pass, and only with the header the
page's script sets: a form on another site cannot send that header, and the
SameSite=Strict cookie does not travel with a cross-site request anyway.
"""

from __future__ import annotations

import contextlib
import re

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from overnight.errors import NotFound, OvernightError

PREFIX = "/ui/v1"
TARGET = "/v1"
MARK = "x-overnight-dashboard"  # set by app.js on every action
SEGMENT = r"[A-Za-z0-9_-]{1,100}"

ACTIONS = tuple(
    (method, re.compile(pattern))
    for method, pattern in (
        ("POST", r"/files"),
        ("DELETE", rf"/files/{SEGMENT}"),
        ("POST", r"/batches"),
        ("POST", rf"/batches/{SEGMENT}/cancel"),
        ("POST", rf"/batches/{SEGMENT}/retry"),
        ("GET", rf"/batches/{SEGMENT}/results/summary"),
    )
)


class Forbidden(OvernightError):
    """This request did not come from the dashboard's own script."""

    status_code = 403
    type = "invalid_request_error"
    code = "dashboard_header_missing"


def allowed(method: str, path: str) -> bool:
    return any(method == m and pattern.fullmatch(path) for m, pattern in ACTIONS)


def api_scope(scope: Scope, path: str, key: str | None) -> Scope:
    """`scope` as a call of the API route at `path` with `key` as its bearer key."""
    target = TARGET + path
    headers = [(k, v) for k, v in scope["headers"] if k != b"cookie"]
    presented = any(k in (b"authorization", b"api-key") for k, _ in headers)
    if key and not presented:
        # A key that is not Latin-1 names no project; without it the API answers 401.
        with contextlib.suppress(UnicodeEncodeError):
            headers.append((b"authorization", f"Bearer {key}".encode("latin-1")))
    inner = {k: v for k, v in scope.items() if k not in ("route", "endpoint", "path_params")}
    inner.update(path=target, raw_path=target.encode(), headers=headers)
    return inner


class Forwarded(Response):
    """A response that is the API's own: the app runs again on the rewritten scope."""

    def __init__(self, scope: Scope) -> None:
        super().__init__()
        self.scope = scope

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_once_tagged(message: Message) -> None:
            # The outer pass adds its own x-request-id; one per response.
            if message["type"] == "http.response.start":
                message["headers"] = [
                    (k, v) for k, v in message.get("headers", []) if k != b"x-request-id"
                ]
            await send(message)

        await scope["app"](self.scope, receive, send_once_tagged)


def forward(scope: Scope, method: str, path: str, key: str | None) -> Forwarded:
    if not any(k == MARK.encode() for k, _ in scope["headers"]):
        raise Forbidden(f"Dashboard actions need the {MARK} header that the dashboard sets.")
    if not allowed(method, path):
        raise NotFound(f"The dashboard has no action {method} {path[:100]}.")
    return Forwarded(api_scope(scope, path, key))

"""How long the API takes to answer: one histogram sample per HTTP request (/metrics)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from overnight import metrics

# Paths no route matched (scanners, typos) share one label, so they cannot grow the series.
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestTimingMiddleware:
    """Labels requests by their route's path template (`/v1/batches/{batch_id}`), never
    by the raw path: ids in paths would make a series per batch."""

    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.prefixes = sorted(prefixes, key=len, reverse=True)

    def _template(self, scope: Scope) -> str:
        route = scope.get("route")  # FastAPI leaves the matched route in the scope
        template = getattr(route, "path", None)
        if template is None:
            return UNMATCHED
        # A router included under a prefix may name its routes without it (FastAPI
        # >= 0.16x keeps the router's own route): put back the prefix the path had.
        regex = getattr(route, "path_regex", None)
        path = scope["path"]
        if regex is None or regex.match(path):
            return str(template)
        for prefix in self.prefixes:
            if path.startswith(prefix) and regex.match(path[len(prefix) :]):
                return prefix + template
        return str(template)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before it starts one

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            handler = self._template(scope)
            method = scope["method"] if scope["method"] in METHODS else "other"
            metrics.api_request(method, handler, status, time.perf_counter() - started)

"""The ASGI application: OpenAI routes at /v1, Azure routes at /openai and /openai/v1."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from overnight import __version__, task_dump
from overnight.api import batches, errors, files, results
from overnight.api.auth import KeyRing
from overnight.api.limits import BodyLimitMiddleware
from overnight.api.responses import JSON
from overnight.api.schemas import install_openapi
from overnight.api.timing import RequestTimingMiddleware
from overnight.engine.scheduler import Scheduler
from overnight.services import Services
from overnight.settings import Settings
from overnight.web import routes as web

log = logging.getLogger("overnight")

PREFIXES = ("/v1", "/openai", "/openai/v1")


class RequestIdMiddleware:
    """Every response carries an `x-request-id`, errors and 404s included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ("req_" + secrets.token_hex(12)).encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid)]
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """Build the app; it opens the store and starts the executor in its lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = services or await Services.open(settings)
        if services is None:
            task_dump.install(asyncio.get_running_loop())
        app.state.services = svc
        app.state.keys = KeyRing(settings.api_keys, svc.store.keys, settings.key_cache_seconds)
        scheduler = Scheduler(svc) if settings.run_executor else None
        app.state.scheduler = scheduler
        if scheduler is not None:
            await scheduler.start()
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            if scheduler is not None:
                await scheduler.stop()
            if services is None:
                await svc.close()

    app = FastAPI(
        title="overnight",
        version=__version__,
        summary="A self-hosted Batch API, wire-compatible with OpenAI and Azure OpenAI.",
        default_response_class=JSON,
        lifespan=lifespan,
    )
    app.state.ready = False
    errors.install(app)
    for prefix in PREFIXES:
        # Azure's dated routes are the same operations; only the first prefix is documented.
        include = prefix == "/v1"
        app.include_router(files.router, prefix=prefix, include_in_schema=include)
        app.include_router(batches.router, prefix=prefix, include_in_schema=include)
        app.include_router(results.router, prefix=prefix, include_in_schema=include)
    app.include_router(web.router)  # the dashboard (GET / and /ui/...) and GET /metrics

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        if not app.state.ready:
            return JSON({"status": "starting"}, status_code=503)  # type: ignore[return-value]
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSON:
        """Ready to take work: the database answers and storage can take bytes."""
        if not app.state.ready:
            return JSON({"status": "starting"}, status_code=503)
        svc: Services = app.state.services
        problems = {"database": await svc.store.problem(), "storage": await svc.blobs.problem()}
        checks = {name: problem or "ok" for name, problem in problems.items()}
        if any(problems.values()):
            return JSON({"status": "unavailable", "checks": checks}, status_code=503)
        return JSON({"status": "ready", "checks": checks})

    install_openapi(app)
    app.add_middleware(BodyLimitMiddleware, max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(RequestTimingMiddleware, prefixes=PREFIXES)  # outermost: times all
    return app

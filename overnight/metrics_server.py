"""A worker's /metrics on a port of its own (`overnight worker --metrics-port`).

A worker serves no API, so nothing else would show what it sends upstream; it serves
the same exposition as the API's GET /metrics (overnight/metrics.py), plus /healthz
for a liveness probe, on the worker's event loop.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from overnight import metrics


class MetricsServer:
    def __init__(self, services: Any, scheduler: Any, host: str, port: int) -> None:
        self.services = services
        self.scheduler = scheduler
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = await metrics.render(self.services, self.scheduler)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

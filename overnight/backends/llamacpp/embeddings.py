"""Embeddings on the embedded model."""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Any

from overnight.backends.base import Response
from overnight.backends.llamacpp.decoder import BatchEngine
from overnight.backends.llamacpp.jobs import EmbedJob
from overnight.backends.llamacpp.params import bad, integer, new_id
from overnight.backends.llamacpp.reader import Reader


async def embed(engine: BatchEngine, reader: Reader, body: dict[str, Any]) -> Response:
    """Answer an embeddings request: one pooled, normalised vector per input."""
    dims = integer(body, "dimensions", 1)
    if dims is not None and dims != reader.model.n_embd:
        raise bad(
            f"this model's embeddings have {reader.model.n_embd} dimensions; "
            "'dimensions' cannot change that",
            "dimensions",
        )
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise bad("'encoding_format' must be float or base64", "encoding_format")
    inputs = await asyncio.to_thread(
        reader.embedding_inputs, body.get("input"), engine.embed_ctx_size
    )
    loop = asyncio.get_running_loop()
    job = EmbedJob(inputs, loop, loop.create_future())
    engine.submit(job)
    try:
        vectors = await job.future
    except BaseException:
        job.cancelled = True
        raise
    count = sum(len(t) for t in inputs)
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(vec, encoding)}
        for i, vec in enumerate(vectors)
    ]
    return Response(
        200,
        {
            "object": "list",
            "data": data,
            "model": reader.model_name(body),
            "usage": {"prompt_tokens": count, "total_tokens": count},
        },
        request_id=new_id("req_"),
    )


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")

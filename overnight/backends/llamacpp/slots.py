"""The decoder's bookkeeping: a sequence being generated, the KV stream (slot) it runs
in, handing results back to the event loop, and shared prompt prefixes."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
from typing import Any

from overnight.backends.llamacpp.jobs import EmbedJob, GenerateJob
from overnight.backends.llamacpp.sampling import SequenceSampler


class Sequence:
    __slots__ = (
        "decoder",
        "job",
        "n_generated",
        "n_past",
        "prompt_len",
        "reused",
        "sampler",
        "seq_id",
        "text",
        "tokens",
        "unit",
    )

    def __init__(
        self, job: GenerateJob, unit: int, seq_id: int, sampler: SequenceSampler, n_past: int
    ):
        self.job = job
        self.unit = unit  # which of the job's n choices
        self.seq_id = seq_id
        self.sampler = sampler
        self.tokens = list(job.prompt)  # prompt, then every sampled token
        self.prompt_len = len(job.prompt)
        self.n_past = n_past  # tokens of `tokens` already in the KV cache
        self.reused = n_past
        self.n_generated = 0
        self.text = ""
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")


class Slot:
    """One KV stream: the sequence running in it, or the tokens it still holds."""

    __slots__ = ("cached", "last_used", "seq", "seq_id")

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.seq: Sequence | None = None
        self.cached: list[int] = []  # tokens at positions 0.. of this stream (when free)
        self.last_used = 0

    def tokens(self) -> tuple[list[int], int]:
        """The tokens whose KV this stream holds, and how many of them."""
        if self.seq is None:
            return self.cached, len(self.cached)
        return self.seq.tokens, min(self.seq.n_past, self.seq.prompt_len)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def resolve(job: GenerateJob | EmbedJob, result: Any = None, error: BaseException | None = None):
    # A RuntimeError means the caller's loop is closed: nobody is waiting any more.
    with contextlib.suppress(RuntimeError):
        job.loop.call_soon_threadsafe(_settle, job.future, result, error)


def common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common prefix of a and b, at most `limit` (slices compare in C)."""
    n = min(len(a), len(b), limit)
    if n <= 0:
        return 0
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo

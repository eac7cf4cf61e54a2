"""Continuous batching over llama.cpp's batch API, in one thread that owns the context.

Every request becomes one sequence (n of them for `n` choices) bound to one of
`n_parallel` slots. Each step reads the prompts of newly admitted sequences,
then runs one llama_decode holding the next token of every generating
sequence, and samples each with its own sampler chain; sequences that finish
free their slot, and waiting requests take it at the next step.

Each slot owns its own KV stream (kv_unified off) and flash attention is off:
a sequence then gets bit for bit the logits it would get alone, whatever else
shares the batch and whether or not its prefix came from the cache (with one
unified cache the order of the attention sums follows the cell layout, and
llama.cpp's CPU flash attention rounds differently with the ubatch size; both
made greedy answers drift). Attention also reads only its own cells, which is
faster on CPU than a unified cache.

Prefix reuse: a free slot keeps the KV of the last prompt it read. A new
request goes to the free slot whose cached tokens share the longest prefix with
its prompt and only the rest is evaluated; when another slot (free or running)
holds a longer prefix, its stream is copied over (llama_memory_seq_cp across
streams copies the whole stream) and trimmed to the shared part.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from typing import Any

from overnight.backends.base import TransientError
from overnight.backends.llamacpp.embed_context import Embedder
from overnight.backends.llamacpp.jobs import (
    Choice,
    EmbedJob,
    EngineStats,
    GenerateJob,
    Generation,
)
from overnight.backends.llamacpp.model import LocalModel, LocalModelUnavailable, RequestRejected
from overnight.backends.llamacpp.sampling import Candidates, SequenceSampler
from overnight.backends.llamacpp.slots import Sequence, Slot, common_prefix, resolve

log = logging.getLogger(__name__)

# A request whose prompt shares this many more tokens with a prompt still being
# read waits a step and reuses them, rather than reading them again alongside.
WAIT_FOR_PREFIX_TOKENS = 32


class BatchEngine:
    """Owns the llama contexts and the one thread that may touch them."""

    def __init__(
        self,
        model: LocalModel,
        *,
        n_ctx: int,
        n_parallel: int,
        n_threads: int,
        n_batch: int = 512,
        prefix_cache: bool = True,
        embed_ctx: int = 2048,
    ) -> None:
        self.model = model
        self.lib = model.lib
        self.n_ctx = n_ctx  # per sequence: prompt + output
        self.n_parallel = n_parallel
        self.n_threads = n_threads
        self.n_batch = max(n_batch, n_parallel)
        self.prefix_cache = prefix_cache
        # Copying a stream moves all its n_ctx cells (about 10 ms for SmolLM2 at
        # 8192, measured), the cost of reading a few prompt tokens.
        self.copy_min_tokens = 16
        self.embed_ctx_size = min(embed_ctx, n_ctx)
        self.stats = EngineStats()
        self._inbox: queue.SimpleQueue[GenerateJob | EmbedJob | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ctx: Any = None
        self._mem: Any = None
        self._batch: Any = None
        self._embedder = Embedder(model, self.embed_ctx_size, n_threads)
        self._pending: deque[tuple[GenerateJob, int]] = deque()
        self._slots = [Slot(i) for i in range(n_parallel)]
        self._scratch = Candidates(model)
        self._clock = 0

    # -- life cycle (called from outside the engine thread) ----------------------

    def start(self) -> None:
        lib = self.lib
        params = lib.llama_context_default_params()
        params.n_ctx = self.n_ctx * self.n_parallel
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        params.n_seq_max = self.n_parallel
        params.n_threads = self.n_threads
        params.n_threads_batch = self.n_threads
        params.kv_unified = False  # one stream per slot: see the module docstring
        # llama.cpp's CPU flash attention rounds differently with the ubatch size,
        # so a reused prefix or a busier batch would change greedy answers.
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.no_perf = True
        self._ctx = lib.llama_init_from_model(self.model.model, params)
        if not self._ctx:
            raise LocalModelUnavailable(
                f"llama.cpp could not create a context of {self.n_parallel} x {self.n_ctx} "
                "tokens; lower n_ctx or n_parallel"
            )
        self.n_ctx = min(self.n_ctx, int(lib.llama_n_ctx_seq(self._ctx)))
        self._mem = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self._thread = threading.Thread(target=self._run, name="llama.cpp-engine", daemon=True)
        self._thread.start()

    def submit(self, job: GenerateJob | EmbedJob) -> None:
        self._inbox.put(job)

    def stop(self) -> None:
        """End the thread (failing what is left as transient) and free llama memory."""
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join()
            self._thread = None
        lib = self.lib
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
        if self._ctx:
            lib.llama_free(self._ctx)
        self._batch = self._ctx = None
        self._embedder.close()

    # -- the engine thread ------------------------------------------------------

    def _running(self) -> list[Sequence]:
        return [slot.seq for slot in self._slots if slot.seq is not None]

    def _run(self) -> None:
        try:
            while self._receive(block=not self._pending and not self._running()):
                self._drop_cancelled()
                self._admit()
                if self._running():
                    self._step()
        except Exception as exc:  # never leave callers waiting on a dead thread
            log.exception("llama.cpp engine failed")
            self._abandon(TransientError(f"embedded engine failed: {exc}", code="engine_error"))
            return
        self._abandon(TransientError("the embedded engine is shutting down", code="engine_closed"))

    def _receive(self, *, block: bool) -> bool:
        """Move submitted jobs in; False once stop() asked the thread to end."""
        while True:
            try:
                job = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if job is None:
                return False
            if isinstance(job, EmbedJob):
                self._embed(job)
            else:
                self._pending.extend((job, unit) for unit in range(job.n))

    def _abandon(self, error: Exception) -> None:
        jobs: dict[int, GenerateJob | EmbedJob] = {}
        for seq in self._running():
            jobs[id(seq.job)] = seq.job
            self._vacate(seq, keep=False)
        for job, _ in self._pending:
            jobs[id(job)] = job
        self._pending.clear()
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                jobs[id(item)] = item
        for each in jobs.values():
            resolve(each, error=error)

    def _drop_cancelled(self) -> None:
        for seq in self._running():
            if seq.job.cancelled or seq.job.failed:
                self._vacate(seq, keep=True)

    def _vacate(self, seq: Sequence, *, keep: bool) -> None:
        """Free a sequence's slot; with `keep`, the slot remembers its KV for reuse."""
        slot = self._slots[seq.seq_id]
        slot.seq = None
        self._clock += 1
        slot.last_used = self._clock
        if keep and self.prefix_cache:
            # Only prompt tokens: generated ones were read one per ubatch, which
            # does not round like reading them as part of a later prompt.
            slot.cached = seq.tokens[: min(seq.n_past, seq.prompt_len)]
        else:
            slot.cached = []
            self.lib.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
        seq.sampler.close()

    # -- admission and prefix reuse ----------------------------------------------

    def _admit(self) -> None:
        deferred: list[tuple[GenerateJob, int]] = []
        # Copies between streams happen at the next decode. A stream filled this round
        # holds nothing yet, so it is no source; a stream copied from may serve many
        # new sequences this round (all of them at once when a batch starts) but is
        # not overwritten before its copies are made.
        sources: set[int] = set()
        filled: set[int] = set()
        while self._pending:
            free = [
                slot
                for slot in self._slots
                if slot.seq is None and slot.seq_id not in filled and slot.seq_id not in sources
            ]
            if not free:
                break
            job, unit = self._pending.popleft()
            if job.cancelled or job.failed:
                continue
            placed = self._place(job.prompt, free, filled)
            if placed is None:
                deferred.append((job, unit))
                continue
            slot, donor, reuse = placed
            try:
                sampler = SequenceSampler(self.model, job.sampling, unit)
            except RequestRejected as exc:
                job.failed = True
                resolve(job, error=exc)
                continue
            if donor is not None:  # the whole stream is copied, then trimmed
                self.lib.llama_memory_seq_cp(self._mem, donor.seq_id, slot.seq_id, -1, -1)
                self.stats.prefix_copies += 1
                sources.add(donor.seq_id)
            self.lib.llama_memory_seq_rm(self._mem, slot.seq_id, reuse if reuse else -1, -1)
            self.stats.prompt_tokens_reused += reuse
            slot.seq = Sequence(job, unit, slot.seq_id, sampler, reuse)
            slot.cached = []
            filled.add(slot.seq_id)
        self._pending.extendleft(reversed(deferred))

    def _place(
        self, prompt: list[int], free: list[Slot], filled: set[int]
    ) -> tuple[Slot, Slot | None, int] | None:
        """(slot, slot to copy from or None, tokens reused), or None to wait a step."""
        if not self.prefix_cache:
            return free[0], None, 0
        # At least the last two prompt tokens are read again: the last for its
        # logits, and a chunk of one token would round differently (see _step).
        limit = len(prompt) - 2
        # The free slot that already holds the longest prefix; on a tie, the one
        # least recently used, so that the caches of the others live longer.
        slot, own = free[0], -1
        for candidate in free:
            n = common_prefix(candidate.cached, prompt, limit)
            if n > own or (n == own and candidate.last_used < slot.last_used):
                slot, own = candidate, n
        donor, donated, coming = None, 0, 0
        for other in self._slots:
            if other is slot:
                continue
            tokens, held = other.tokens()
            if other.seq is not None:  # a prompt still being read will hold more soon
                reading = min(limit, other.seq.prompt_len)
                coming = max(coming, common_prefix(tokens, prompt, reading))
            if other.seq_id in filled:
                continue
            n = common_prefix(tokens, prompt, min(limit, held))
            if n > donated:
                donor, donated = other, n
        if coming - max(own, donated) >= WAIT_FOR_PREFIX_TOKENS:
            return None
        if donated - own >= self.copy_min_tokens:
            return slot, donor, donated
        return slot, None, own

    # -- one decode step ----------------------------------------------------------

    def _fill(self, plan: list[tuple[Sequence, int, int, bool]]) -> list[int]:
        batch = self._batch
        outputs: list[int] = []
        i = 0
        for seq, start, count, wants_logits in plan:
            tokens = seq.tokens
            sid = seq.seq_id
            for pos in range(start, start + count):
                batch.token[i] = tokens[pos]
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = sid
                batch.logits[i] = 0
                i += 1
            if wants_logits:
                batch.logits[i - 1] = 1
            outputs.append(i - 1 if wants_logits else -1)
        batch.n_tokens = i
        return outputs

    def _step(self) -> None:
        """Prompt chunks first, then one llama_decode for every generating sequence.

        Prompts are never read in the same llama_decode as generated tokens, nor
        in pieces of one token: llama.cpp would split them into ubatches whose
        rounding differs from reading the prompt alone, and answers would then
        depend on the traffic. Prompts waiting to be read are read together, in
        chunks of one length per decode: llama.cpp cuts a decode into ubatches
        holding as many tokens of each sequence, so equal chunks are never cut
        into one-token pieces. Prompts go first so that a sequence admitted into
        a free slot already generates in this step's decode: llama.cpp puts only
        consecutive, increasing seq ids in one ubatch, and a hole in the running
        slots would split the decode in two.
        """
        budget = self.n_batch
        while budget >= 2:
            plan = self._prompt_chunks(budget)
            if not plan:
                break
            budget -= sum(count for _, _, count, _ in plan)
            if not self._decode(plan):
                return
        self._compact()
        generating = [(s, s.n_past, 1, True) for s in self._running() if s.n_past >= s.prompt_len]
        if generating:
            ids = [s.seq_id for s, *_ in generating]
            self.stats.split_decodes += ids[-1] - ids[0] + 1 != len(ids)
            self._decode(generating)

    def _prompt_chunks(self, budget: int) -> list[tuple[Sequence, int, int, bool]]:
        """One decode's worth of prompt reading: the same number of tokens from each prompt.

        A prompt never has a single token left over for a later chunk (see
        `_step`); the prompts whose rest would be one token wait for the next
        decode, where they are read whole.
        """
        todo = {
            s: s.prompt_len - s.n_past
            for s in self._running()
            if s.n_past < s.prompt_len and not s.job.cancelled
        }
        if not todo:
            return []
        length = min(min(todo.values()), budget)
        while length >= 2:
            members = [s for s, t in todo.items() if t == length or t >= length + 2]
            if members:
                members = members[: budget // length]
                return [(s, s.n_past, length, todo[s] == length) for s in members]
            length -= 1
        return []

    def _compact(self) -> None:
        """Once nothing waits for a slot, close the holes between running slots.

        The highest running sequence moves into the lowest hole (its stream is
        copied, which keeps its cell layout and so its answer); the slot it
        leaves keeps its prompt as a prefix cache. A copy costs a few ms, a hole
        costs an extra ubatch in every decode until the batch drains.
        """
        if self._pending:
            return
        while True:
            running = [slot for slot in self._slots if slot.seq is not None]
            if not running or running[-1].seq_id - running[0].seq_id + 1 == len(running):
                return
            top, first = running[-1], running[0].seq_id
            hole = next(slot for slot in self._slots[first:] if slot.seq is None)
            seq = top.seq
            assert seq is not None
            self.lib.llama_memory_seq_cp(self._mem, top.seq_id, hole.seq_id, -1, -1)
            hole.seq, hole.cached, seq.seq_id = seq, [], hole.seq_id
            top.seq = None
            top.cached = seq.tokens[: min(seq.n_past, seq.prompt_len)] if self.prefix_cache else []
            self._clock += 1
            top.last_used = self._clock
            self.stats.compactions += 1

    def _decode(self, plan: list[tuple[Sequence, int, int, bool]]) -> bool:
        outputs = self._fill(plan)
        ret = self.lib.llama_decode(self._ctx, self._batch)
        if ret != 0:
            self._fail_running(ret)
            return False
        self.stats.steps += 1
        self.stats.max_batch_sequences = max(self.stats.max_batch_sequences, len(plan))
        for (seq, _start, count, _), out in zip(plan, outputs, strict=True):
            if seq.n_past < seq.prompt_len:
                self.stats.prompt_tokens_evaluated += count
            seq.n_past += count
            if out >= 0 and self._sample(seq, out):
                self._vacate(seq, keep=True)
        return True

    def _fail_running(self, ret: int) -> None:
        error = TransientError(f"llama_decode failed with status {ret}", code="engine_error")
        for seq in self._running():
            seq.job.failed = True
            resolve(seq.job, error=error)
            self._vacate(seq, keep=False)

    def _sample(self, seq: Sequence, out: int) -> bool:
        """Sample the next token of `seq`; True when the sequence is finished."""
        token = seq.sampler.sample(self._ctx, out, self._scratch, self.model.is_eog)
        seq.n_generated += 1
        self.stats.generated_tokens += 1
        sampling = seq.job.sampling
        if self.model.is_eog(token):
            self._finish(seq, seq.text + seq.decoder.decode(b"", final=True), "stop")
            return True
        seq.tokens.append(token)
        before = len(seq.text)
        seq.text += seq.decoder.decode(self.model.piece(token))
        if sampling.stop:
            start = max(0, before - max(len(s) for s in sampling.stop) + 1)
            hits = [i for i in (seq.text.find(s, start) for s in sampling.stop) if i >= 0]
            if hits:
                self._finish(seq, seq.text[: min(hits)], "stop")
                return True
        if seq.n_generated >= sampling.max_new or len(seq.tokens) >= self.n_ctx:
            self._finish(seq, seq.text + seq.decoder.decode(b"", final=True), "length")
            return True
        return False

    def _finish(self, seq: Sequence, text: str, reason: str) -> None:
        job = seq.job
        if seq.unit == 0:
            job.cached_tokens = seq.reused
        job.choices[seq.unit] = Choice(text, reason, seq.n_generated)
        job.remaining -= 1
        if job.remaining == 0 and not job.failed:
            choices = [c for c in job.choices if c is not None]
            resolve(job, Generation(len(job.prompt), job.cached_tokens, choices))

    def _embed(self, job: EmbedJob) -> None:
        if job.cancelled:
            return
        try:
            # One input per decode: a vector never depends on what else was sent.
            vectors = [self._embedder.embed(tokens) for tokens in job.inputs]
        except (RequestRejected, TransientError) as exc:
            resolve(job, error=exc)
            return
        resolve(job, vectors)

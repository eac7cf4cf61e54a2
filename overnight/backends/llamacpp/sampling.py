"""How the next token of a sequence is chosen: the request's settings and the sampler."""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from typing import Any

from overnight.backends.llamacpp.model import LocalModel, RequestRejected


@dataclass(slots=True)
class Sampling:
    max_new: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    grammar: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


class Candidates:
    """A reusable llama_token_data_array over the whole vocabulary (one per engine thread)."""

    def __init__(self, model: LocalModel) -> None:
        import numpy as np

        lib = model.lib
        self.lib = lib
        self.n_vocab = model.n_vocab
        self.data = (lib.llama_token_data * self.n_vocab)()
        self.view = np.ctypeslib.as_array(self.data)
        self.ids = np.arange(self.n_vocab, dtype=np.int32)
        pointer = ctypes.cast(self.data, lib.llama_token_data_p)
        self.array = lib.llama_token_data_array(pointer, self.n_vocab, -1, False)
        self.one_data = (lib.llama_token_data * 1)()
        one_pointer = ctypes.cast(self.one_data, lib.llama_token_data_p)
        self.one = lib.llama_token_data_array(one_pointer, 1, -1, False)
        self._as_array = np.ctypeslib.as_array

    def load(self, ctx: Any, idx: int) -> Any:
        logits = self.lib.llama_get_logits_ith(ctx, idx)
        self.view["id"] = self.ids
        self.view["logit"] = self._as_array(logits, shape=(self.n_vocab,))
        self.view["p"] = 0.0
        self.array.size, self.array.selected, self.array.sorted = self.n_vocab, -1, False
        return ctypes.byref(self.array)

    def selected(self) -> int:
        return int(self.data[self.array.selected].id)

    def single(self, token: int) -> Any:
        self.one_data[0].id, self.one_data[0].logit, self.one_data[0].p = token, 0.0, 0.0
        self.one.size, self.one.selected, self.one.sorted = 1, -1, False
        return ctypes.byref(self.one)


class SequenceSampler:
    """How one sequence picks its tokens: a llama.cpp sampler chain and a grammar.

    The grammar is not in the chain: checking all 49k tokens against it at every
    step is slow, so (as llama.cpp's own common sampler does) the chain picks a
    token first, the grammar checks that one token, and only when it refuses
    are the logits filtered by the grammar and sampled again. Under greedy
    decoding this picks exactly what grammar-first sampling would.
    """

    def __init__(self, model: LocalModel, sampling: Sampling, unit: int) -> None:
        lib = self.lib = model.lib
        self.chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        self.grammar: Any = None
        if sampling.grammar is not None:
            self.grammar = lib.llama_sampler_init_grammar(
                model.vocab, sampling.grammar.encode("utf-8"), b"root"
            )
            if not self.grammar:
                self.close()
                raise RequestRejected("llama.cpp could not parse the grammar for response_format")
        add = lib.llama_sampler_chain_add
        if sampling.presence_penalty or sampling.frequency_penalty:
            penalties = lib.llama_sampler_init_penalties(
                model.n_vocab,
                -1,  # the whole output so far
                1.0,
                sampling.frequency_penalty,
                sampling.presence_penalty,
            )
            add(self.chain, penalties)
        if sampling.temperature <= 0:
            add(self.chain, lib.llama_sampler_init_greedy())
            return
        # Temperature first, then nucleus on the scaled distribution (OpenAI's order).
        add(self.chain, lib.llama_sampler_init_temp(sampling.temperature))
        if sampling.top_p < 1.0:
            add(self.chain, lib.llama_sampler_init_top_p(sampling.top_p, 1))
        if sampling.seed is None:
            seed = lib.LLAMA_DEFAULT_SEED  # llama.cpp picks a random one
        else:
            seed = (sampling.seed + unit) & 0xFFFFFFFF
            if seed == lib.LLAMA_DEFAULT_SEED:
                seed = 0
        add(self.chain, lib.llama_sampler_init_dist(seed))

    def sample(self, ctx: Any, idx: int, scratch: Candidates, is_eog: Any) -> int:
        """The next token from the `idx`-th output of the last decode."""
        lib = self.lib
        if self.grammar is None:
            return int(lib.llama_sampler_sample(self.chain, ctx, idx))
        lib.llama_sampler_apply(self.chain, scratch.load(ctx, idx))
        token = scratch.selected()
        lib.llama_sampler_apply(self.grammar, scratch.single(token))
        if math.isinf(scratch.one_data[0].logit):  # refused: filter, then sample again
            array = scratch.load(ctx, idx)
            lib.llama_sampler_apply(self.grammar, array)
            lib.llama_sampler_apply(self.chain, array)
            token = scratch.selected()
        if not is_eog(token):  # the sequence ends on EOG: the grammar never sees it
            lib.llama_sampler_accept(self.grammar, token)
        lib.llama_sampler_accept(self.chain, token)
        return token

    def close(self) -> None:
        for sampler in (self.chain, self.grammar):
            if sampler:
                self.lib.llama_sampler_free(sampler)
        self.chain = self.grammar = None

"""What the event loop hands the decoder thread, and what it gets back."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from overnight.backends.llamacpp.sampling import Sampling


@dataclass(slots=True)
class Choice:
    text: str
    finish_reason: str  # "stop" | "length"
    tokens: int


@dataclass(slots=True)
class Generation:
    prompt_tokens: int
    cached_tokens: int
    choices: list[Choice]


@dataclass(eq=False)
class GenerateJob:
    prompt: list[int]
    sampling: Sampling
    n: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    cancelled: bool = False  # set by the event loop when the caller gives up
    failed: bool = False
    cached_tokens: int = 0
    choices: list[Choice | None] = field(default_factory=list)
    remaining: int = 0

    def __post_init__(self) -> None:
        self.choices = [None] * self.n
        self.remaining = self.n


@dataclass(eq=False)
class EmbedJob:
    inputs: list[list[int]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    cancelled: bool = False


@dataclass
class EngineStats:
    steps: int = 0
    prompt_tokens_evaluated: int = 0
    prompt_tokens_reused: int = 0
    prefix_copies: int = 0
    generated_tokens: int = 0
    max_batch_sequences: int = 0
    split_decodes: int = 0  # decodes llama.cpp cut in several ubatches (holes in seq ids)
    compactions: int = 0  # sequences moved down to close such a hole

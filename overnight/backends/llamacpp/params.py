"""What every endpoint of the embedded model checks in a request body, and the plan a
checked request becomes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from overnight.backends.llamacpp.jobs import Generation
from overnight.backends.llamacpp.sampling import Sampling
from overnight.errors import InvalidRequest

TEXT_PARTS = {"text", "input_text", "output_text", "refusal"}
IMAGE_PARTS = {"image_url", "input_image", "image"}
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
MAX_N = 128


@dataclass
class Plan:
    """A checked, tokenized request: what to generate and how to answer."""

    prompts: list[list[int]]
    sampling: Sampling
    n: int
    answer: Callable[[list[Generation]], dict[str, Any]]


def bad(message: str, param: str | None, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def number(body: dict[str, Any], key: str, lo: float, hi: float, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise bad(f"'{key}' must be a number between {lo} and {hi}", key)
    return float(value)


def integer(body: dict[str, Any], key: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise bad(f"'{key}' must be an integer of at least {lo}", key)
    if hi is not None and value > hi:
        raise bad(f"'{key}' must be at most {hi}", key)
    return value


def stops(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise bad("'stop' must be a string or an array of strings", "stop")
    return tuple(s for s in stop if s)


def is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

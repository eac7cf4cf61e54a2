"""A backend that answers from a Python function, for tests of the engine.

As httpx's `MockTransport`: the handler gets what would go upstream and returns the
answer (a `Response`, or a dict taken as a 200 body), or raises what a real upstream's
trouble is turned into (`TransientError`, `UnusableAnswer`). Every call is recorded,
so a test can say what was sent and how often.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from overnight.backends.base import Backend, Response

Answer: TypeAlias = Response | dict[str, Any]
Handler: TypeAlias = Callable[[str, dict[str, Any]], Answer | Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class Call:
    endpoint: str
    body: dict[str, Any]


class MockBackend(Backend):
    def __init__(self, handler: Handler, name: str = "mock") -> None:
        self.handler = handler
        self.name = name
        self.calls: list[Call] = []
        self.started = self.closed = False

    async def send(self, endpoint: str, body: dict[str, Any]) -> Response:
        self.calls.append(Call(endpoint, body))
        answer = self.handler(endpoint, body)
        if inspect.isawaitable(answer):
            answer = await answer
        if isinstance(answer, Response):
            return answer
        return Response(200, answer)

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    def describe(self) -> str:
        return f"mock backend {self.name!r}"

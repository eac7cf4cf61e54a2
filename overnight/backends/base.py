"""The one interface the engine uses to execute a request.

A backend takes the JSON body of one batch line and answers with what the
synchronous endpoint would have answered. Transient trouble (connection
errors, timeouts, 429, 5xx, garbage bodies) is raised as `TransientError` so
the engine can retry with backoff and shrink its concurrency; anything else is
a final answer, success or not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from overnight.backends.load import Load
from overnight.errors import UpstreamError

# The canonical spelling of every endpoint the engine knows. Azure's spelling
# without "/v1" is mapped onto these by `jsonl.normalize_endpoint`.
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
MODERATIONS = "/v1/moderations"
IMAGES_GENERATIONS = "/v1/images/generations"
IMAGES_EDITS = "/v1/images/edits"
VIDEOS = "/v1/videos"
# The openai SDK's `batch_create_params` list (3.57), in its order of the error message.
ENDPOINTS = (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    RESPONSES,
    MODERATIONS,
    IMAGES_GENERATIONS,
    IMAGES_EDITS,
    VIDEOS,
)


@dataclass(slots=True)
class Response:
    """A final answer from the model: a 2xx success or a non-retryable error."""

    status_code: int
    body: dict[str, Any]
    request_id: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # `body` as compact one-line JSON, when already at hand

    def compact_body(self) -> bytes:
        import orjson

        return self.raw if self.raw is not None else orjson.dumps(self.body)


class TransientError(UpstreamError):
    """The request may succeed if sent again later.

    `retry_after` (seconds) is the upstream's own hint, when it gave one.
    `response` is the last answer received, kept so that a request that
    exhausts its retries is reported with what the upstream actually said.
    `overloaded` marks signals that the upstream is past its capacity
    (429, 503, timeouts): the concurrency limiter backs off on those.
    `unsent`: no connection could be made, so nothing was sent and no attempt is
    spent; `route_down`: no replica of the route can be reached (its breaker opens).
    """

    code: str = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        response: Response | None = None,
        overloaded: bool = False,
        code: str = "upstream_error",
        unsent: bool = False,
        route_down: bool = False,
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after
        self.response = response
        self.overloaded = overloaded
        self.unsent = unsent
        self.route_down = route_down


class UnusableAnswer(UpstreamError):
    """The upstream answered in full with a 2xx status, but not with a JSON object.

    A 2xx answer is a finished (and billed) generation, so it is never sent again:
    the request fails once, with an excerpt of what came back.
    """

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message, code="invalid_upstream_response")
        self.headers = headers or {}


class Backend(ABC):
    """Executes one request body against one endpoint of one model."""

    @abstractmethod
    async def send(self, endpoint: str, body: dict[str, Any]) -> Response:
        """Answer `body` as `endpoint` would; raise `TransientError` to ask for a retry."""

    async def send_raw(self, endpoint: str, body: bytes) -> Response:
        """Like `send`, with the body as JSON bytes; HTTP backends forward them untouched."""
        import orjson

        return await self.send(endpoint, orjson.loads(body))

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections or load weights before the first request."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections, threads and memory."""

    async def load(self) -> Load | None:
        """What the model server says about its own load, where it says (see
        backends/load.py); None: no signal."""
        return None

    def describe(self) -> str:
        """One line for logs and the startup banner; never includes secrets."""
        return type(self).__name__

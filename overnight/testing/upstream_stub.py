"""A real OpenAI-compatible model server for tests and benchmarks.

It answers chat/completions, completions, embeddings and responses (under `/v1`, without
it, and in Azure's `/openai/deployments/{name}/...` spelling) with deterministic echoes
and realistic `usage`, and misbehaves on demand: latency, 500s, garbage bodies, dropped
connections, hangs, RPM/TPM limits with `retry-after`, a concurrency cap, a wrong API key,
and "fail the first N attempts of each body" for retry tests. It is a bare ASGI callable
on uvicorn's httptools protocol (no framework, no per-request logging) because the
dispatch benchmark pushes tens of thousands of requests through it on a small machine.

Three ways to run it::

    async with StubServer(StubConfig(latency=0.01)) as stub:      # in the test's loop
        ...  stub.url == "http://127.0.0.1:PORT/v1"
    with StubServer.in_thread(StubConfig(rpm=60)) as stub:       # background thread
        ...
    python -m overnight.testing.upstream_stub --port 9000 --latency 0.05 --rpm 600

Control and observation (not counted as model requests): `GET /_stats`,
`GET /_received?limit=N[&raw=1]`, `GET /_counts`, `POST /_reset`, `GET|POST /_config`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import math
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

import orjson
import uvicorn
from uvicorn.server import ServerState

HOST = "127.0.0.1"
READY_PREFIX = "stub listening on "
ENDPOINTS = frozenset({"chat/completions", "completions", "embeddings", "responses"})
IMAGE_TOKENS = 85  # what OpenAI bills for one low-detail image
ECHO_CHARS = 200

_T = TypeVar("_T")


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(slots=True)
class StubConfig:
    """How the stub behaves; every field is also a CLI flag and a `POST /_config` key."""

    port: int = _opt(0, "TCP port on 127.0.0.1 (0 picks a free one; not changeable live)")
    latency: float = _opt(0.0, "seconds to wait before answering a model request")
    latency_jitter: float = _opt(0.0, "extra random latency, uniform in [0, jitter] seconds")
    fail_rate: float = _opt(0.0, "fraction of requests answered with fail_status (500)")
    fail_status: int = _opt(500, "status used by fail_rate and fail_first_n")
    status_override: int | None = _opt(None, "answer every model request with this status")
    garbage_rate: float = _opt(0.0, "fraction answered 200 with a body that is not JSON")
    reset_rate: float = _opt(0.0, "fraction whose connection is reset without an answer")
    hang_rate: float = _opt(0.0, "fraction never answered (until the client gives up)")
    fail_first_n: int = _opt(0, "the first N receipts of each distinct body answer 500")
    rpm: int | None = _opt(None, "requests per rate_window before 429")
    tpm: int | None = _opt(None, "tokens (prompt + max/completion) per rate_window before 429")
    rate_window: float = _opt(60.0, "length of the sliding rate-limit window, seconds")
    max_concurrency: int | None = _opt(None, "answer 429 while more requests are in flight")
    require_api_key: str | None = _opt(None, "401 unless `Authorization: Bearer` or api-key")
    seed: int | None = _opt(None, "seed for the random choices (latency jitter, fault rates)")
    embedding_dim: int = _opt(16, "embedding length when the request has no `dimensions`")
    max_received: int = _opt(10000, "how many received requests /_received keeps")
    max_lifetime: float | None = _opt(None, "the process exits by itself after this (CLI)")

    def validate(self) -> StubConfig:
        rates = ("fail_rate", "garbage_rate", "reset_rate", "hang_rate")
        for name in rates:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if sum(getattr(self, name) for name in rates) > 1.0:
            raise ValueError(f"{' + '.join(rates)} must not exceed 1")
        for name in ("latency", "latency_jitter", "fail_first_n", "port"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("rpm", "tpm", "max_concurrency", "max_lifetime"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive (or null for no limit)")
        if self.rate_window <= 0 or self.max_received < 1 or self.embedding_dim < 1:
            raise ValueError("rate_window, max_received and embedding_dim must be positive")
        for name in ("status_override", "fail_status"):
            value = getattr(self, name)
            if value is not None and not 100 <= value <= 599:
                raise ValueError(f"{name} must be an HTTP status code")
        return self

    def merged(self, changes: Mapping[str, Any]) -> StubConfig:
        """A copy with `changes` applied (the `POST /_config` semantics)."""
        values: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in _FIELD_TYPES or name == "port":
                raise ValueError(f"unknown or read-only setting: {name!r}")
            values[name] = _coerce(name, value)
        return dataclasses.replace(self, **values).validate()

    def to_argv(self) -> list[str]:
        """The CLI flags that rebuild this config in a child process."""
        argv: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default and value is not None:
                argv += ["--" + f.name.replace("_", "-"), str(value)]
        return argv

    @classmethod
    def from_argv(cls, argv: Sequence[str] | None = None) -> StubConfig:
        parser = argparse.ArgumentParser(
            prog="python -m overnight.testing.upstream_stub",
            description="OpenAI-compatible upstream stub on 127.0.0.1.",
        )
        for f in dataclasses.fields(cls):
            kind, _ = _FIELD_TYPES[f.name]
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                type=kind,
                default=f.default,
                help=f.metadata.get("help"),
            )
        args = parser.parse_args(argv)
        try:
            return cls(**vars(args)).validate()
        except ValueError as exc:
            parser.error(str(exc))
            raise  # unreachable: parser.error exits


def _field_types() -> dict[str, tuple[type, bool]]:
    kinds = {"int": int, "float": float, "str": str}
    out = {}
    for f in dataclasses.fields(StubConfig):
        annotation = str(f.type)
        out[f.name] = (kinds[annotation.split("|")[0].strip()], "None" in annotation)
    return out


_FIELD_TYPES = _field_types()


def _coerce(name: str, value: Any) -> Any:
    kind, optional = _FIELD_TYPES[name]
    if value is None:
        if optional:
            return None
    elif kind is str and isinstance(value, str):
        return value
    elif kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif (
        kind is int
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and float(value).is_integer()
    ):
        return int(value)
    raise ValueError(f"{name} must be {kind.__name__}{' or null' if optional else ''}")


# --- reading requests and building answers ----------------------------------------------


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _tokens(text: str) -> int:
    return len(text) // 4 + 1


def _content(content: Any) -> tuple[str, int]:
    """The text of a message's content (string or parts) and how many images it holds."""
    if isinstance(content, str):
        return content, 0
    texts: list[str] = []
    images = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                kind = part.get("type")
                if kind in ("text", "input_text", "output_text"):
                    texts.append(str(part.get("text", "")))
                elif kind in ("image_url", "input_image", "image"):
                    images += 1
    return " ".join(texts), images


def _strings(value: Any) -> list[Any]:
    """completions' `prompt` / embeddings' `input`: a string, strings, tokens or token lists."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(x, int) for x in value):
            return [value]
        if all(isinstance(x, str | list) for x in value):
            return value
    return []


def _user_text(endpoint: str, body: dict[str, Any]) -> str:
    """The text of the last user message: what the answer echoes and /_counts counts."""
    if endpoint == "chat/completions" or endpoint == "responses":
        items = body.get("messages") if endpoint == "chat/completions" else body.get("input")
        if isinstance(items, str):
            return items
        if isinstance(items, list):
            for item in reversed(items):
                if isinstance(item, dict) and item.get("role") == "user":
                    return _content(item.get("content"))[0]
        return ""
    key = "prompt" if endpoint == "completions" else "input"
    return "\n".join(x for x in _strings(body.get(key)) if isinstance(x, str))


def _limit(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _echo(text: str, limit: int | None) -> tuple[str, int, bool]:
    """The answer text, its token count, and whether max tokens cut it short."""
    content = "echo: " + text[:ECHO_CHARS]
    tokens = _tokens(content)
    if limit is not None and tokens > limit:
        return content[: limit * 4], limit, True
    return content, tokens, False


def _chat(body: dict[str, Any], model: str, text: str, rid: str, cfg: StubConfig) -> Any:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array", "messages")
    texts, images = [], 0
    for message in messages:
        if isinstance(message, dict):
            t, i = _content(message.get("content"))
            texts.append(t)
            images += i
    prompt = _tokens("\n".join(texts)) + IMAGE_TOKENS * images
    limit = _limit(body, "max_completion_tokens", "max_tokens")
    content, completion, cut = _echo(text, limit)
    n = min(max(_limit(body, "n") or 1, 1), 128)
    message = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
    choice = {"message": message, "logprobs": None, "finish_reason": "length" if cut else "stop"}
    answer = {
        "id": "chatcmpl-" + rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": i, **choice} for i in range(n)],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion * n,
            "total_tokens": prompt + completion * n,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_stub",
    }
    return answer, prompt + (limit if limit is not None else completion) * n


def _completions(body: dict[str, Any], model: str, text: str, rid: str, cfg: StubConfig) -> Any:
    prompts = _strings(body.get("prompt"))
    if not prompts:
        raise _BadRequest("'prompt' is a required property", "prompt")
    limit = _limit(body, "max_tokens")
    choices, prompt, completion = [], 0, 0
    for i, p in enumerate(prompts):
        prompt += _tokens(p) if isinstance(p, str) else len(p)
        content, tokens, cut = _echo(p if isinstance(p, str) else f"{len(p)} tokens", limit)
        completion += tokens
        choices.append(
            {
                "text": content,
                "index": i,
                "logprobs": None,
                "finish_reason": "length" if cut else "stop",
            }
        )
    answer = {
        "id": "cmpl-" + rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
        "system_fingerprint": "fp_stub",
    }
    return answer, prompt + (limit * len(prompts) if limit is not None else completion)


def _vector(item: Any, dim: int) -> list[float]:
    seed = item.encode() if isinstance(item, str) else orjson.dumps(item)
    raw = hashlib.shake_128(seed).digest(dim)
    vec = [(b - 127.5) / 127.5 for b in raw]
    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
    return [x / norm for x in vec]


def _embeddings(body: dict[str, Any], model: str, text: str, rid: str, cfg: StubConfig) -> Any:
    items = _strings(body.get("input"))
    if not items:
        raise _BadRequest("'input' is a required property and must not be empty", "input")
    dim = _limit(body, "dimensions") or cfg.embedding_dim
    as_base64 = body.get("encoding_format") == "base64"
    data, prompt = [], 0
    for i, item in enumerate(items):
        prompt += _tokens(item) if isinstance(item, str) else len(item)
        vec: Any = _vector(item, dim)
        if as_base64:
            vec = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vec})
    answer = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }
    return answer, prompt


def _responses(body: dict[str, Any], model: str, text: str, rid: str, cfg: StubConfig) -> Any:
    items = body.get("input")
    if isinstance(items, str):
        texts, images = [items], 0
    elif isinstance(items, list) and items:
        texts, images = [], 0
        for item in items:
            t, i = _content(item.get("content") if isinstance(item, dict) else item)
            texts.append(t)
            images += i
    else:
        raise _BadRequest("'input' is a required property", "input")
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        texts.append(instructions)
    prompt = _tokens("\n".join(texts)) + IMAGE_TOKENS * images
    limit = _limit(body, "max_output_tokens")
    content, completion, cut = _echo(text, limit)
    output_text = {"type": "output_text", "text": content, "annotations": [], "logprobs": []}
    answer = {
        "id": "resp_" + rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if cut else "completed",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": instructions,
        "max_output_tokens": limit,
        "model": model,
        "output": [
            {
                "type": "message",
                "id": "msg_" + rid,
                "status": "incomplete" if cut else "completed",
                "role": "assistant",
                "content": [output_text],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        },
        "user": None,
        "metadata": body.get("metadata") or {},
    }
    return answer, prompt + (limit if limit is not None else completion)


_BUILDERS: dict[str, Callable[..., Any]] = {
    "chat/completions": _chat,
    "completions": _completions,
    "embeddings": _embeddings,
    "responses": _responses,
}


def _route(path: str) -> tuple[str, str | None] | None:
    """`(endpoint, azure deployment or None)` for a model route, else None."""
    rest, deployment = path.strip("/"), None
    if rest.startswith("openai/"):
        rest = rest[len("openai/") :]
        if rest.startswith("deployments/"):
            parts = rest.split("/", 2)
            if len(parts) < 3:
                return None
            deployment, rest = parts[1], parts[2]
    if rest.startswith("v1/"):
        rest = rest[len("v1/") :]
    return (rest, deployment) if rest in ENDPOINTS else None


def _error(message: str, kind: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


_STATUS_ERRORS = {
    400: ("The stub was told to reject this request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to use this model.", "invalid_request_error", "permission_denied"),
    404: (
        "The model does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    429: ("Rate limit reached. Please try again later.", "requests", "rate_limit_exceeded"),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
}


def _status_error(status: int) -> bytes:
    default = (
        f"The stub answered {status}.",
        "server_error" if status >= 500 else "invalid_request_error",
        None,
    )
    message, kind, code = _STATUS_ERRORS.get(status, default)
    return _error(message, kind, None, code)


def _duration(seconds: float) -> str:
    """OpenAI's spelling of a reset time: "20ms", "1s", "1.5s", "6m0s", "1h2m3s"."""
    ms = math.ceil(seconds * 1000) if seconds > 0 else 0
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "")
    return out + f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"


class _Window:
    """A sliding-window log of (time, amount) for one limit."""

    __slots__ = ("events", "used")

    def __init__(self) -> None:
        self.events: deque[tuple[float, int]] = deque()
        self.used = 0

    def prune(self, now: float, span: float) -> None:
        events, horizon = self.events, now - span
        while events and events[0][0] <= horizon:
            self.used -= events.popleft()[1]

    def wait_for(self, amount: int, limit: int, now: float, span: float) -> float:
        """Seconds until `amount` more fits under `limit`; 0 when it fits now."""
        excess = self.used + amount - limit
        if excess <= 0:
            return 0.0
        if amount > limit:
            return span
        freed = 0
        for at, used in self.events:
            freed += used
            if freed >= excess:
                return max(at + span - now, 0.001)
        return span

    def reset_in(self, now: float, span: float) -> float:
        """Seconds until the oldest counted use leaves the window (remaining grows)."""
        return self.events[0][0] + span - now if self.events else 0.0


# --- the ASGI application ---------------------------------------------------------------

_JSON = (b"content-type", b"application/json")
_GARBAGE = b"<html><body><h1>502 Bad Gateway</h1>upstream stub garbage</body></html>"
_Send = Callable[[dict[str, Any]], Any]
_Receive = Callable[[], Any]


async def _read_body(receive: _Receive) -> bytes | None:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body if message["type"] == "http.request" else None
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _drop(receive: _Receive) -> None:
    """Reset the connection without answering (RST), then wait until uvicorn sees it."""
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if transport is None:  # not uvicorn's cycle: let uvicorn close it instead
        raise ConnectionAbortedError("upstream stub reset")
    sock = transport.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    while (await receive())["type"] != "http.disconnect":
        pass


async def _respond(
    send: _Send, rid: str, status: int, payload: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                _JSON,
                (b"content-length", str(len(payload)).encode()),
                (b"x-request-id", b"req_" + rid.encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class StubApp:
    """The ASGI callable with all counters; `StubServer` owns one per run."""

    def __init__(self, config: StubConfig) -> None:
        self.config = config.validate()
        self.rng = random.Random(config.seed)
        self.closed = asyncio.Event()  # set by StubServer.stop: hanging requests give up
        self.in_flight = 0
        self._id_prefix = os.urandom(4).hex()
        self._seq = 0
        self._routes: dict[str, tuple[str, str | None] | None] = {}
        self.reset()

    def reset(self) -> None:
        self.received = 0
        self.by_status: dict[int, int] = {}
        self.by_endpoint: dict[str, int] = {}
        self.max_in_flight = self.in_flight
        self.attempts: dict[int, int] = {}
        self.counts: dict[str, int] = {}
        self.log: deque[tuple[str, list[tuple[bytes, bytes]], Any, bytes, float]] = deque(
            maxlen=self.config.max_received
        )
        self.resets = self.hangs = self.garbage = 0
        self.request_window = _Window()
        self.token_window = _Window()

    def configure(self, changes: Mapping[str, Any]) -> StubConfig:
        new = self.config.merged(changes)
        if "seed" in changes:
            self.rng = random.Random(new.seed)
        if new.max_received != self.config.max_received:
            self.log = deque(self.log, maxlen=new.max_received)
        self.config = new
        return new

    def stats(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_endpoint": dict(self.by_endpoint),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "bodies_seen": len(self.attempts),
            "resets": self.resets,
            "hangs": self.hangs,
            "garbage": self.garbage,
        }

    def received_requests(self, limit: int | None = None, raw: bool = False) -> list[Any]:
        entries = list(self.log)[-limit:] if limit else list(self.log)
        out = []
        for path, headers, body, raw_body, at in entries:
            item = {
                "path": path,
                "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in headers},
                "body": body,
                "received_at": at,
            }
            if raw or body is None:
                item["raw"] = raw_body.decode("utf-8", "replace")
            out.append(item)
        return out

    async def __call__(self, scope: dict[str, Any], receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        try:
            route = self._routes[path]
        except KeyError:
            route = _route(path)
            if len(self._routes) < 4096:
                self._routes[path] = route
        if route is None:
            await self._other(scope, receive, send)
        elif scope["method"] != "POST":
            await self._reply(
                send,
                405,
                _error(f"Method not allowed ({scope['method']}).", "invalid_request_error"),
            )
        else:
            body = await _read_body(receive)
            if body is None:
                return
            self.in_flight += 1
            if self.in_flight > self.max_in_flight:
                self.max_in_flight = self.in_flight
            try:
                await self._model(route, scope, body, receive, send)
            finally:
                self.in_flight -= 1

    async def _model(
        self,
        route: tuple[str, str | None],
        scope: dict[str, Any],
        raw: bytes,
        receive: _Receive,
        send: _Send,
    ) -> None:
        cfg = self.config
        endpoint, deployment = route
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        ok = isinstance(body, dict)
        text = _user_text(endpoint, body) if ok else ""
        attempt = self._record(scope, endpoint, body, raw, text)
        rid = self._next_id()

        if cfg.require_api_key is not None and not _authorized(
            scope["headers"], cfg.require_api_key
        ):
            message = "Incorrect API key provided. You can find your API key in the stub config."
            return await self._answer(
                send, rid, 401, _error(message, "invalid_request_error", None, "invalid_api_key")
            )
        if not ok:
            message = (
                "We could not parse the JSON body of your request. (HINT: This likely "
                "means you aren't using your HTTP library correctly.)"
            )
            return await self._answer(send, rid, 400, _error(message, "invalid_request_error"))
        assert isinstance(body, dict)
        model = body.get("model") or deployment or "stub-model"
        try:
            answer, cost = _BUILDERS[endpoint](body, str(model), text, rid, cfg)
        except _BadRequest as exc:
            return await self._answer(
                send, rid, 400, _error(str(exc), "invalid_request_error", exc.param, None)
            )
        if cfg.max_concurrency is not None and self.in_flight > cfg.max_concurrency:
            message = f"Too many concurrent requests (limit {cfg.max_concurrency})."
            return await self._answer(
                send, rid, 429, _error(message, "requests", None, "rate_limit_exceeded")
            )
        headers: list[tuple[bytes, bytes]] = []
        if cfg.rpm is not None or cfg.tpm is not None:
            refusal = self._rate_limit(cfg, cost, str(model), headers)
            if refusal is not None:
                return await self._answer(send, rid, 429, refusal, headers)

        delay = cfg.latency
        if cfg.latency_jitter:
            delay += self.rng.uniform(0.0, cfg.latency_jitter)
        if delay > 0:
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                if not self.closed.is_set():
                    raise
                return await _drop(receive)
        if attempt <= cfg.fail_first_n:
            return await self._answer(send, rid, cfg.fail_status, _status_error(cfg.fail_status))
        if cfg.status_override is not None:
            status = cfg.status_override
            payload = _status_error(status) if status >= 400 else orjson.dumps(answer)
            return await self._answer(send, rid, status, payload, headers)
        if cfg.reset_rate or cfg.hang_rate or cfg.garbage_rate or cfg.fail_rate:
            roll = self.rng.random()
            if roll < cfg.reset_rate:
                self.resets += 1
                return await _drop(receive)
            roll -= cfg.reset_rate
            if roll < cfg.hang_rate:
                self.hangs += 1
                return await self._hang(receive)
            roll -= cfg.hang_rate
            if roll < cfg.garbage_rate:
                self.garbage += 1
                return await self._answer(send, rid, 200, _GARBAGE, headers)
            roll -= cfg.garbage_rate
            if roll < cfg.fail_rate:
                return await self._answer(
                    send, rid, cfg.fail_status, _status_error(cfg.fail_status), headers
                )
        await self._answer(send, rid, 200, orjson.dumps(answer), headers)

    def _record(
        self, scope: dict[str, Any], endpoint: str, body: Any, raw: bytes, text: str
    ) -> int:
        """Count an arrival, whatever its answer will be; return its attempt number."""
        self.received += 1
        self.by_endpoint[endpoint] = self.by_endpoint.get(endpoint, 0) + 1
        self.log.append((scope["path"], scope["headers"], body, raw, time.time()))
        digest = hash(raw)
        attempt = self.attempts[digest] = self.attempts.get(digest, 0) + 1
        metadata = body.get("metadata") if isinstance(body, dict) else None
        marker = metadata.get("marker") if isinstance(metadata, dict) else None
        key = str(marker) if marker is not None else text
        if key:
            self.counts[key] = self.counts.get(key, 0) + 1
        return attempt

    def _next_id(self) -> str:
        self._seq += 1
        return f"{self._id_prefix}{self._seq:08x}"

    def _rate_limit(
        self, cfg: StubConfig, cost: int, model: str, headers: list[tuple[bytes, bytes]]
    ) -> bytes | None:
        """Count this request, or say why it is refused; fill the x-ratelimit headers."""
        now, span = time.monotonic(), cfg.rate_window
        checks = []
        if cfg.rpm is not None:
            checks.append(("requests", "RPM", self.request_window, cfg.rpm, 1))
        if cfg.tpm is not None:
            checks.append(("tokens", "TPM", self.token_window, cfg.tpm, cost))
        wait, refused = 0.0, None
        for check in checks:
            window, limit, amount = check[2], check[3], check[4]
            window.prune(now, span)
            needed = window.wait_for(amount, limit, now, span)
            if needed > wait:
                wait, refused = needed, check
        if refused is None:
            for _, _, window, _, amount in checks:
                window.events.append((now, amount))
                window.used += amount
        for kind, _, window, limit, _ in checks:
            headers.append((f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()))
            remaining = max(limit - window.used, 0)
            headers.append((f"x-ratelimit-remaining-{kind}".encode(), str(remaining).encode()))
            reset = _duration(window.reset_in(now, span))
            headers.append((f"x-ratelimit-reset-{kind}".encode(), reset.encode()))
        if refused is None:
            return None
        kind, unit, window, limit, amount = refused
        headers.append((b"retry-after", str(math.ceil(wait)).encode()))
        headers.append((b"retry-after-ms", str(math.ceil(wait * 1000)).encode()))
        message = (
            f"Rate limit reached for {model} in organization org-stub on {kind} per "
            f"min ({unit}): Limit {limit}, Used {window.used}, Requested {amount}. "
            f"Please try again in {_duration(wait)}."
        )
        return _error(message, kind, None, "rate_limit_exceeded")

    async def _hang(self, receive: _Receive) -> None:
        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        gone = asyncio.ensure_future(until_disconnect())
        closing = asyncio.ensure_future(self.closed.wait())
        await asyncio.wait((gone, closing), return_when=asyncio.FIRST_COMPLETED)
        closing.cancel()
        if not gone.done():
            gone.cancel()
            await _drop(receive)

    async def _answer(
        self,
        send: _Send,
        rid: str,
        status: int,
        payload: bytes,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """A model request's answer (counted in by_status)."""
        self.by_status[status] = self.by_status.get(status, 0) + 1
        await _respond(send, rid, status, payload, headers)

    async def _reply(self, send: _Send, status: int, payload: bytes) -> None:
        """Any other route's answer."""
        await _respond(send, self._next_id(), status, payload)

    async def _other(self, scope: dict[str, Any], receive: _Receive, send: _Send) -> None:
        """Control routes (/_stats ...), /v1/models, /health; 404 for the rest."""
        path, method = scope["path"].rstrip("/") or "/", scope["method"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        body = await _read_body(receive) if method == "POST" else b""
        if body is None:
            return
        result: Any
        if path == "/_stats" and method == "GET":
            result = self.stats()
        elif path == "/_counts" and method == "GET":
            result = dict(self.counts)
        elif path == "/_received" and method == "GET":
            try:
                limit = int(query.get("limit", ["0"])[0])
            except ValueError:
                limit = 0
            raw = query.get("raw", ["0"])[0] not in ("0", "false", "")
            result = {"data": self.received_requests(limit, raw), "total": self.received}
        elif path == "/_reset" and method == "POST":
            self.reset()
            result = self.stats()
        elif path == "/_config" and method in ("GET", "POST"):
            if method == "POST":
                try:
                    changes = orjson.loads(body or b"{}")
                    if not isinstance(changes, dict):
                        raise ValueError("the body must be a JSON object")
                    self.configure(changes)
                except (ValueError, orjson.JSONDecodeError) as exc:
                    return await self._reply(send, 400, _error(str(exc), "invalid_request_error"))
            result = dataclasses.asdict(self.config)
        elif path in ("/v1/models", "/models", "/openai/models") and method == "GET":
            model = {"id": "stub-model", "object": "model", "created": 0, "owned_by": "stub"}
            result = {"object": "list", "data": [model]}
        elif path == "/health" and method == "GET":
            result = {"status": "ok"}
        else:
            message = f"Invalid URL ({method} {scope['path']})"
            return await self._reply(send, 404, _error(message, "invalid_request_error"))
        await self._reply(send, 200, orjson.dumps(result))


def _authorized(headers: list[tuple[bytes, bytes]], key: str) -> bool:
    expected_bearer, expected = b"Bearer " + key.encode(), key.encode()
    for name, value in headers:
        if (name == b"authorization" and value == expected_bearer) or (
            name == b"api-key" and value == expected
        ):
            return True
    return False


# --- running it -------------------------------------------------------------------------


def _http_protocol() -> str:
    try:
        import httptools  # noqa: F401
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return "h11"
    return "httptools"


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop
    return uvloop.new_event_loop


class StubServer:
    """The stub on 127.0.0.1, in the running event loop or in a background thread."""

    def __init__(self, config: StubConfig | None = None) -> None:
        self._initial = (config or StubConfig()).validate()
        self.app: StubApp | None = None
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._state: ServerState | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`: Azure-style paths and the /_ control routes hang here."""
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT/v1`: what an OpenAI client takes as base_url."""
        return self.base_url + "/v1"

    @property
    def config(self) -> StubConfig:
        return self.app.config if self.app is not None else self._initial

    async def start(self) -> StubServer:
        if self._server is not None:
            raise RuntimeError("the stub is already running")
        loop = asyncio.get_running_loop()
        app = StubApp(self._initial)
        # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on sockets that say so,
        # and without it uvicorn's two writes (head, body) meet delayed ACKs: 40 ms a request.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((HOST, self._initial.port))
        sock.setblocking(False)
        # log_config/log_level None and access_log True: leave the host's logging alone;
        # the access log is switched off per connection below instead.
        config = uvicorn.Config(
            app,
            host=HOST,
            port=self._initial.port,
            http=_http_protocol(),
            ws="none",
            lifespan="off",
            interface="asgi3",
            loop="none",
            log_config=None,
            log_level=None,
            access_log=True,
            proxy_headers=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=75,
        )
        config.load()
        state = ServerState()
        protocol_class: Any = config.http_protocol_class

        def protocol() -> asyncio.Protocol:
            conn = protocol_class(config=config, server_state=state, app_state={}, _loop=loop)
            conn.access_log = False
            return conn

        try:
            self._server = await loop.create_server(protocol, sock=sock, backlog=2048)
        except BaseException:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self.app, self._state, self._loop = app, state, loop
        return self

    async def stop(self, grace: float = 1.0) -> None:
        """Stop listening, wake hanging requests, let others finish for `grace` seconds."""
        server, state, app = self._server, self._state, self.app
        if server is None or state is None or app is None:
            return
        self._server = None
        app.closed.set()
        server.close()
        for conn in list(state.connections):
            conn.shutdown()
        if state.tasks:
            await asyncio.wait(list(state.tasks), timeout=grace)
        if state.tasks:
            for task in list(state.tasks):
                task.cancel()
            await asyncio.wait(list(state.tasks), timeout=grace)
        for conn in list(state.connections):
            conn.transport.abort()
        await asyncio.sleep(0)

    async def __aenter__(self) -> StubServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # In a background thread, for synchronous tests and fixtures.

    @classmethod
    @contextlib.contextmanager
    def in_thread(cls, config: StubConfig | None = None) -> Iterator[StubServer]:
        stub = cls(config)
        stub.start_in_thread()
        try:
            yield stub
        finally:
            stub.stop_thread()

    def start_in_thread(self, timeout: float = 10.0) -> StubServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = _loop_factory()()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                loop.close()
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.stop())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="upstream-stub", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("the upstream stub did not start in time")
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop_thread(self, timeout: float = 10.0) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = None

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Run `fn` on the server's loop thread (counters are not shared across threads)."""
        if self._thread is None or threading.current_thread() is self._thread:
            return fn()
        assert self._loop is not None
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout=10)

    def _running_app(self) -> StubApp:
        if self.app is None:
            raise RuntimeError("the stub is not running")
        return self.app

    # The same observations as the HTTP control routes, without HTTP.

    def stats(self) -> dict[str, Any]:
        return self._call(self._running_app().stats)

    def counts(self) -> dict[str, int]:
        app = self._running_app()
        return self._call(lambda: dict(app.counts))

    def received(self, limit: int | None = None, raw: bool = False) -> list[Any]:
        app = self._running_app()
        return self._call(lambda: app.received_requests(limit, raw))

    def reset(self) -> None:
        self._call(self._running_app().reset)

    def configure(self, **changes: Any) -> StubConfig:
        app = self._running_app()
        return self._call(lambda: app.configure(changes))


class StubProcess:
    """The stub as a child process: `with StubProcess(StubConfig(...)) as stub: stub.url`."""

    def __init__(self, config: StubConfig | None = None, startup_timeout: float = 30.0) -> None:
        self.config = (config or StubConfig()).validate()
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    @property
    def base_url(self) -> str:
        return self.url.removesuffix("/v1")

    def start(self) -> str:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        argv = [sys.executable, "-m", "overnight.testing.upstream_stub", *self.config.to_argv()]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], self.startup_timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line.startswith(READY_PREFIX):
            self.stop()
            raise RuntimeError(f"the upstream stub did not start (said {line!r})")
        self.url = line[len(READY_PREFIX) :].strip()
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> StubProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _serve(config: StubConfig) -> None:
    stub = await StubServer(config).start()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    if config.max_lifetime is not None:
        loop.call_later(config.max_lifetime, done.set)
    print(READY_PREFIX + stub.url, flush=True)
    try:
        await done.wait()
    finally:
        await stub.stop()


def main(argv: Sequence[str] | None = None) -> None:
    config = StubConfig.from_argv(argv)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(config))


if __name__ == "__main__":
    main()

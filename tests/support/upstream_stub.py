"""A real OpenAI-compatible model server for tests and benchmarks.

It answers chat/completions, completions, embeddings and responses (under `/v1`, without
it, and in Azure's `/openai/deployments/{name}/...` spelling) with deterministic echoes
and realistic `usage`, and misbehaves on demand: latency, 500s, garbage bodies, dropped
connections, hangs, RPM/TPM limits with `retry-after`, a concurrency cap, a wrong API key,
and "fail the first N attempts of each body" for retry tests. With `slots = k` it is a
model server of finite capacity: k requests generate at once, each for `latency` seconds,
and the rest wait in a queue (FIFO, or by the body's `priority`, lower first, as vLLM's
priority scheduling); `GET /metrics` reports that queue in vLLM's Prometheus format.
It is a bare ASGI callable on uvicorn's httptools protocol (no framework, no per-request
logging) because the dispatch benchmark pushes tens of thousands of requests through it
on a small machine.

Three ways to run it::

    async with StubServer(StubConfig(latency=0.01)) as stub:      # in the test's loop
        ...  stub.url == "http://127.0.0.1:PORT/v1"
    with StubServer.in_thread(StubConfig(rpm=60)) as stub:       # background thread
        ...
    python -m tests.support.upstream_stub --port 9000 --latency 0.05 --rpm 600

Control and observation (not counted as model requests): `GET /_stats`,
`GET /_received?limit=N[&raw=1]`, `GET /_counts`, `POST /_reset`, `GET|POST /_config`,
and `GET /metrics` (vLLM's gauges; 404 with `metrics = false`).

This module is the server (routing, misbehaviour, lifecycle); its settings are in
`stub_config` and the answers it builds in `stub_answers`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import heapq
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
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

import orjson
import uvicorn
from uvicorn.server import ServerState

from tests.support.stub_answers import BUILDERS, BadRequest, sse_events, user_text
from tests.support.stub_config import StubConfig

__all__ = ["StubConfig", "StubProcess", "StubServer", "main"]

_T = TypeVar("_T")

HOST = "127.0.0.1"
READY_PREFIX = "stub listening on "
ENDPOINTS = frozenset(BUILDERS)


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
        """Seconds until the window is empty again, i.e. until `remaining` is back to the
        full limit: OpenAI's documented meaning of `x-ratelimit-reset-*` ("the time until
        the rate limit resets to its initial state"), the newest counted use + span."""
        return max(self.events[-1][0] + span - now, 0.0) if self.events else 0.0


class _Slots:
    """`capacity` generation slots; requests beyond them wait, in arrival order or, with
    `by_priority`, by priority (lower first, ties by arrival). Running requests are never
    preempted. A released slot passes straight to the next waiter. capacity None: any
    number run (used when `slots` is switched off live, to let the waiters go)."""

    __slots__ = (
        "_queue",
        "_seq",
        "by_priority",
        "capacity",
        "peak_running",
        "peak_waiting",
        "running",
        "waiting",
    )

    def __init__(self, capacity: int | None, by_priority: bool) -> None:
        self.capacity, self.by_priority = capacity, by_priority
        self.running = self.waiting = self.peak_running = self.peak_waiting = 0
        self._queue: list[tuple[int, int, asyncio.Future[None]]] = []  # a heap
        self._seq = 0

    def _free(self) -> bool:
        return self.capacity is None or self.running < self.capacity

    async def acquire(self, priority: int = 0) -> None:
        if not self.waiting and self._free():
            self.running += 1
            if self.running > self.peak_running:
                self.peak_running = self.running
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._queue, (priority if self.by_priority else 0, self._seq, future))
        self.waiting += 1
        if self.waiting > self.peak_waiting:
            self.peak_waiting = self.waiting
        try:
            await future
        except asyncio.CancelledError:
            if future.cancelled():  # gave up while waiting; its heap entry is skipped
                self.waiting -= 1
                if len(self._queue) > 2 * self.waiting + 64:
                    self._queue = [e for e in self._queue if not e[2].done()]
                    heapq.heapify(self._queue)
            else:  # granted, then cancelled before it ran: pass the slot on
                self.release()
            raise

    def release(self) -> None:
        if self.capacity is None or self.running <= self.capacity:
            while self._queue:
                future = heapq.heappop(self._queue)[2]
                if not future.done():
                    self.waiting -= 1
                    future.set_result(None)  # the slot changes hands: running unchanged
                    return
        self.running -= 1

    def close(self) -> None:
        """The server stops: every waiter gives up (running requests end as they will)."""
        for _, _, future in self._queue:
            future.cancel()

    def resize(self, capacity: int | None, by_priority: bool) -> None:
        """New settings, live: more slots let waiters in at once, fewer drain as they end."""
        self.capacity, self.by_priority = capacity, by_priority
        while self.waiting and self._free():
            self.running += 1
            self.release()
        if self.running > self.peak_running:
            self.peak_running = self.running


class _Watch:
    """Cancels the task that made it when the client disconnects, as vLLM aborts a
    request whose client has gone (its slot or queue place is freed)."""

    __slots__ = ("_owner", "_task", "gone")

    def __init__(self, receive: _Receive) -> None:
        self.gone = False
        self._owner = asyncio.current_task()
        self._task = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: _Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self._owner is not None:
            self._owner.cancel()

    def stop(self) -> None:
        self._task.cancel()

    def uncancel(self) -> None:
        if self._owner is not None:
            self._owner.uncancel()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


_METRICS = (
    ("vllm:num_requests_running", "Number of requests in model execution batches."),
    ("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
    ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
)
_PROMETHEUS = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")


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


_ENDLESS_BODY_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
)
_ENDLESS_CHUNK = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
_ENDLESS_HEADER_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"


async def _endless(receive: _Receive, head: bytes, repeat: bytes) -> None:
    """Write `head`, then `repeat` forever, on the raw connection, until the client leaves
    (an upstream that never finishes its body, or its headers)."""
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if transport is None:
        raise RuntimeError("endless answers need uvicorn's connection")
    transport.write(head)
    while not transport.is_closing():
        if transport.get_write_buffer_size() > 1 << 20:
            await asyncio.sleep(0.001)
            continue
        transport.write(repeat * 16)
        await asyncio.sleep(0)


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
        self.slots = _Slots(self.config.slots, self.config.scheduling == "priority")
        self.served_model: str | None = None  # the first model asked for: /metrics' label
        self._id_prefix = os.urandom(4).hex()
        self._seq = 0
        self._routes: dict[str, tuple[str, str | None] | None] = {}
        self.reset()

    def reset(self) -> None:
        self.received = 0
        self.by_status: dict[int, int] = {}
        self.started_at = time.monotonic()
        # When the first refusals (429) went out, seconds after the reset: a bench reads
        # whether a pacer's refusals come at its start or all along.
        self.refused_at: list[float] = []
        self.by_endpoint: dict[str, int] = {}
        self.max_in_flight = self.in_flight
        self.slots.peak_running, self.slots.peak_waiting = self.slots.running, self.slots.waiting
        self.completed_by_user: dict[str, int] = {}
        self.attempts: dict[int, int] = {}
        self.counts: dict[str, int] = {}
        self.log: deque[tuple[str, list[tuple[bytes, bytes]], Any, bytes, float]] = deque(
            maxlen=self.config.max_received
        )
        self.resets = self.hangs = self.garbage = self.abandoned = 0
        self.request_window = _Window()
        self.token_window = _Window()

    def configure(self, changes: Mapping[str, Any]) -> StubConfig:
        new = self.config.merged(changes)
        if "seed" in changes:
            self.rng = random.Random(new.seed)
        if new.max_received != self.config.max_received:
            self.log = deque(self.log, maxlen=new.max_received)
        self.config = new
        self.slots.resize(new.slots, new.scheduling == "priority")
        return new

    def gauges(self) -> tuple[int, int, float]:
        """(running, waiting, KV-cache use 0..1), as a vLLM server reports them."""
        slots = self.config.slots
        if slots is None:
            return self.in_flight, 0, 0.0
        running = self.slots.running
        return running, self.slots.waiting, min(running / slots, 1.0)

    def stats(self) -> dict[str, Any]:
        running, waiting, _ = self.gauges()
        limited = self.config.slots is not None
        return {
            "received": self.received,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_endpoint": dict(self.by_endpoint),
            "refused_at": self.refused_at,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "running": running,
            "waiting": waiting,
            "max_running": self.slots.peak_running if limited else self.max_in_flight,
            "max_waiting": self.slots.peak_waiting if limited else 0,
            # 200 answers by the body's `user` field ("-" without one)
            "completed_by_user": dict(self.completed_by_user),
            "bodies_seen": len(self.attempts),
            "resets": self.resets,
            "hangs": self.hangs,
            "garbage": self.garbage,
            "abandoned": self.abandoned,  # clients that left while queued or generating
        }

    def metrics(self) -> bytes:
        """vLLM's scheduler gauges in Prometheus' text format (as prometheus_client
        writes them: HELP, TYPE, one sample with engine and model_name labels)."""
        running, waiting, kv = self.gauges()
        labels = f'{{engine="0",model_name="{_label(self.served_model or "stub-model")}"}}'
        lines = []
        for (name, help_text), value in zip(_METRICS, (running, waiting, kv), strict=True):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            lines.append(f"{name}{labels} {float(value)!r}")
        return ("\n".join(lines) + "\n").encode()

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
        text = user_text(endpoint, body) if ok else ""
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
        if self.served_model is None:
            self.served_model = str(model)
        try:
            answer, cost = BUILDERS[endpoint](body, str(model), text, rid, cfg)
        except BadRequest as exc:
            return await self._answer(
                send, rid, 400, _error(str(exc), "invalid_request_error", exc.param, None)
            )
        usage = answer.get("usage") if cfg.usage_tokens is not None else None
        if isinstance(usage, dict):  # an upstream whose numbers cannot be trusted
            for name in ("prompt_tokens", "input_tokens"):
                if name in usage:
                    usage[name] = cfg.usage_tokens
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
        if cfg.slots is not None or delay > 0:
            held, watch = False, None
            if cfg.slots is not None:  # like vLLM, abort a request whose client has left
                watch = _Watch(receive)
            try:
                if cfg.slots is not None:  # wait for a slot, then generate in it
                    await self.slots.acquire(_priority(body))
                    held = True
                if delay > 0:
                    await asyncio.sleep(delay)
            except asyncio.CancelledError:
                if held:
                    held = False
                    self.slots.release()
                if watch is not None:
                    watch.stop()  # before _drop below, which reads the disconnect itself
                    if watch.gone:
                        self.abandoned += 1
                        watch.uncancel()
                        return  # nobody left to answer
                if not self.closed.is_set():
                    raise
                return await _drop(receive)
            finally:
                if watch is not None:
                    watch.stop()
                if held:
                    self.slots.release()
        if attempt <= cfg.fail_first_n:
            return await self._answer(send, rid, cfg.fail_status, _status_error(cfg.fail_status))
        if cfg.status_override is not None:
            status = cfg.status_override
            if status == 200:
                self._completed(body)
            payload = _status_error(status) if status >= 400 else orjson.dumps(answer)
            return await self._answer(send, rid, status, payload, headers)
        if cfg.endless_body_rate or cfg.endless_header_rate:
            roll = self.rng.random()
            if roll < cfg.endless_body_rate:
                return await _endless(receive, _ENDLESS_BODY_HEAD, _ENDLESS_CHUNK)
            if roll < cfg.endless_body_rate + cfg.endless_header_rate:
                return await _endless(receive, _ENDLESS_HEADER_HEAD, b"X-Again: again\r\n")
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
        self._completed(body)
        if cfg.stream == "always" or (cfg.stream == "honour" and body.get("stream") is True):
            return await self._stream(send, rid, answer, headers)
        await self._answer(send, rid, 200, orjson.dumps(answer), headers)

    def _completed(self, body: dict[str, Any]) -> None:
        user = body.get("user")
        key = user if isinstance(user, str) and user else "-"
        self.completed_by_user[key] = self.completed_by_user.get(key, 0) + 1

    async def _stream(
        self, send: _Send, rid: str, answer: Any, headers: Sequence[tuple[bytes, bytes]]
    ) -> None:
        """The answer as server-sent events, chunked, as a streaming model server sends it."""
        self.by_status[200] = self.by_status.get(200, 0) + 1
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-request-id", b"req_" + rid.encode()),
                    *headers,
                ],
            }
        )
        for event in sse_events(answer):
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

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
        if status == 429 and len(self.refused_at) < 1000:
            self.refused_at.append(round(time.monotonic() - self.started_at, 3))
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
        elif path == "/metrics" and method == "GET" and self.config.metrics:
            payload = self.metrics()
            head = [_PROMETHEUS, (b"content-length", str(len(payload)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": head})
            return await send({"type": "http.response.body", "body": payload})
        else:
            message = f"Invalid URL ({method} {scope['path']})"
            return await self._reply(send, 404, _error(message, "invalid_request_error"))
        await self._reply(send, 200, orjson.dumps(result))


def _priority(body: dict[str, Any]) -> int:
    """The request's vLLM `priority` (lower runs first; 0 without one)."""
    value = body.get("priority", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


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
        app.slots.close()
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
        argv = [sys.executable, "-m", "tests.support.upstream_stub", *self.config.to_argv()]
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

"""An OpenAI-compatible model server over HTTP (vLLM, SGLang, llama.cpp, Ollama, OpenAI, Azure).

One keep-alive connection pool per replica (`http1.ConnectionPool`). A route
may list several replicas of the same server: each request goes to the healthy
replica with the fewest requests outstanding, and a replica that fails to
connect is avoided for a while.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import orjson

from overnight import tracing
from overnight.backends.base import Backend, Response, TransientError, UnusableAnswer
from overnight.backends.http1 import ConnectFailed, ConnectionPool, ProtocolError
from overnight.backends.load import Load, add
from overnight.backends.load_reader import LoadReader

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524})
OVERLOAD_STATUS = frozenset({429, 503})
MAX_ERROR_TEXT = 2000
EXCERPT = 200  # bytes of an unusable answer quoted in the error line
_URL_SAFE = "/%:@!$&'()*+,;=~-._?"


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait, from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class _Replica:
    base: str
    path: str  # the base URL's path, without a trailing slash
    query: str
    pool: ConnectionPool
    outstanding: int = 0
    failures: int = 0
    down_until: float = 0.0

    @classmethod
    def from_url(cls, url: str) -> _Replica:
        parts = urlsplit(url)
        base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        origin = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        # Percent-encode what a config may hold raw, so the request line stays valid HTTP.
        path = quote(parts.path.rstrip("/"), safe=_URL_SAFE)
        return cls(base, path, quote(parts.query, safe=_URL_SAFE), ConnectionPool(origin))


def redact_url(url: str) -> str:
    """A URL fit for logs: no user:password@, no query string (keys hide in both)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class OpenAIHTTPBackend(Backend):
    def __init__(
        self,
        urls: tuple[str, ...] | list[str],
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        upstream_model: str | None = None,
        priority: int | None = None,
        metrics_url: str | None = None,
    ) -> None:
        if not urls:
            raise ValueError("an HTTP backend needs at least one URL")
        self.replicas = [_Replica.from_url(u) for u in urls]
        self.timeout = timeout
        self.upstream_model = upstream_model
        self.priority = priority
        # First in the body, so that a `priority` the request line has itself wins
        # (JSON parsers keep the last of repeated names).
        self._priority_field = b'"priority":%d' % priority if priority is not None else b""
        self.metrics_url = metrics_url
        self._readers: list[LoadReader] | None = None
        lines = ["Content-Type: application/json", "User-Agent: overnight"]
        if api_key:
            if any(c in api_key for c in "\r\n\0"):
                raise ValueError("the upstream API key holds a line break or NUL")
            lines += [f"Authorization: Bearer {api_key}", f"api-key: {api_key}"]
        self._headers = "".join(f"{line}\r\n" for line in lines).encode("latin-1")

    async def close(self) -> None:
        for replica in self.replicas:
            await replica.pool.close()
        for reader in self._readers or ():
            await reader.close()

    async def load(self) -> Load | None:
        if self._readers is None:
            one = self.metrics_url if len(self.replicas) == 1 else None
            self._readers = [LoadReader(r.base, self._headers, one) for r in self.replicas]
        total: Load | None = None
        for replica, reader in zip(self.replicas, self._readers, strict=True):
            ours = replica.outstanding  # before the read: what the server counts includes them
            got = await reader.read()
            if got is not None:
                got = Load(got.kind, got.running, got.waiting, got.cache_usage, ours)
            total = add(total, got)
        return total

    def describe(self) -> str:
        return "OpenAI-compatible HTTP " + ", ".join(redact_url(r.base) for r in self.replicas)

    def _pick(self) -> _Replica:
        if len(self.replicas) == 1:
            return self.replicas[0]
        now = time.monotonic()
        healthy = [r for r in self.replicas if r.down_until <= now] or self.replicas
        return min(healthy, key=lambda r: (r.outstanding, r.failures))

    async def send(self, endpoint: str, body: dict[str, Any]) -> Response:
        if self.upstream_model:
            body = {**body, "model": self.upstream_model}
        if self.priority is not None and "priority" not in body:
            body = {"priority": self.priority, **body}
        return await self._post(endpoint, orjson.dumps(body))

    async def send_raw(self, endpoint: str, body: bytes) -> Response:
        if self.upstream_model:
            return await self.send(endpoint, orjson.loads(body))
        if self._priority_field:
            body = self._with_priority(body)
        return await self._post(endpoint, body)

    def _with_priority(self, body: bytes) -> bytes:
        start = body.find(b"{")
        if start < 0:
            return body  # not an object: the upstream answers it as it is
        rest = body[start + 1 :]
        sep = b"" if rest.lstrip().startswith(b"}") else b","
        return body[: start + 1] + self._priority_field + sep + rest

    @staticmethod
    def _mark_down(replica: _Replica) -> float:
        """Avoid a replica that failed, for longer each time in a row; returns now."""
        now = time.monotonic()
        replica.failures += 1
        replica.down_until = now + min(30.0, 0.5 * 2 ** min(replica.failures, 6))
        return now

    async def _post(self, endpoint: str, data: bytes) -> Response:
        replica = self._pick()
        path = endpoint[3:] if endpoint.startswith("/v1/") else endpoint
        target = replica.path + path + (f"?{replica.query}" if replica.query else "")
        headers = self._headers
        if tracing.enabled:
            headers += tracing.trace_headers()
        replica.outstanding += 1
        try:
            answer = await replica.pool.post(target, headers, data, self.timeout)
        except TimeoutError:
            raise TransientError(
                f"The upstream did not answer within {self.timeout:g} s.",
                overloaded=True,
                code="request_timeout",
            ) from None
        except ConnectFailed as exc:
            now = self._mark_down(replica)
            raise TransientError(
                f"Could not connect to the upstream ({exc}).",
                code="upstream_unreachable",
                unsent=True,
                route_down=all(r.down_until > now for r in self.replicas),
            ) from None
        except ProtocolError as exc:
            # It answered, but not in usable HTTP (cut off: too large, endless, garbage).
            raise TransientError(
                f"The upstream's answer was unusable: {exc}.", code="invalid_upstream_response"
            ) from None
        except OSError as exc:
            self._mark_down(replica)
            raise TransientError(
                f"Could not reach the upstream: {type(exc).__name__}.", code="upstream_unreachable"
            ) from None
        finally:
            replica.outstanding -= 1
        replica.failures = 0
        replica.down_until = 0.0
        if tracing.enabled:
            tracing.upstream_status(answer.status)
        return _interpret(answer.status, answer.body, answer.headers)


def _interpret(status: int, raw: bytes, headers: Any) -> Response:
    request_id = (headers.get("x-request-id", "") or headers.get("apim-request-id", ""))[:128]
    try:
        parsed = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        parsed = None
    if 200 <= status < 300:
        if not isinstance(parsed, dict):
            excerpt = raw[:EXCERPT].decode("utf-8", "replace")
            kind = headers.get("content-type", "no content-type")[:100]
            raise UnusableAnswer(
                f"The upstream answered HTTP {status} ({kind}) with a body that is not a JSON "
                f"object ({len(raw)} bytes): {excerpt!r}",
                headers,
            )
        # Pretty-printed answers must be re-encoded to fit on one output line.
        compact = raw if b"\n" not in raw and b"\r" not in raw else None
        return Response(status, parsed, request_id, headers, compact)
    if not isinstance(parsed, dict):
        text = raw[:MAX_ERROR_TEXT].decode("utf-8", "replace")
        parsed = {
            "error": {
                "message": text or f"HTTP {status}",
                "type": "upstream_error",
                "param": None,
                "code": None,
            }
        }
    response = Response(status, parsed, request_id, headers)
    if status in RETRYABLE_STATUS:
        raise TransientError(
            f"The upstream answered HTTP {status}.",
            retry_after=parse_retry_after(headers),
            response=response,
            overloaded=status in OVERLOAD_STATUS,
            code="rate_limited" if status == 429 else "upstream_error",
        )
    return response

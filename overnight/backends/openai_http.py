"""An OpenAI-compatible model server over HTTP (vLLM, SGLang, llama.cpp, Ollama, OpenAI, Azure).

One aiohttp session per route. A route may list several replicas of the same
server: each request goes to the healthy replica with the fewest requests
outstanding, and a replica that fails to connect is avoided for a while.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from overnight.backends.base import Backend, Response, TransientError

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524})
OVERLOAD_STATUS = frozenset({429, 503})
MAX_ERROR_TEXT = 2000


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
    query: str
    outstanding: int = 0
    failures: int = 0
    down_until: float = 0.0


def redact_url(url: str) -> str:
    """A URL fit for logs: no user:password@, no query string (keys hide in both)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _split_base(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    return base, parts.query


class OpenAIHTTPBackend(Backend):
    def __init__(
        self,
        urls: tuple[str, ...] | list[str],
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        upstream_model: str | None = None,
    ) -> None:
        if not urls:
            raise ValueError("an HTTP backend needs at least one URL")
        self.replicas = [_Replica(*_split_base(u)) for u in urls]
        self.timeout = timeout
        self.upstream_model = upstream_model
        self._headers = {"content-type": "application/json", "user-agent": "overnight"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
            self._headers["api-key"] = api_key
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=10),
                json_serialize=lambda o: orjson.dumps(o).decode(),
                skip_auto_headers=("User-Agent",),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        return await self._post(endpoint, orjson.dumps(body))

    async def send_raw(self, endpoint: str, body: bytes) -> Response:
        if self.upstream_model:
            return await self.send(endpoint, orjson.loads(body))
        return await self._post(endpoint, body)

    async def _post(self, endpoint: str, data: bytes) -> Response:
        if self._session is None:
            await self.start()
        assert self._session is not None
        replica = self._pick()
        path = endpoint[3:] if endpoint.startswith("/v1/") else endpoint
        url = replica.base + path + (f"?{replica.query}" if replica.query else "")
        replica.outstanding += 1
        try:
            async with self._session.post(url, data=data, headers=self._headers) as resp:
                raw = await resp.read()
                status = resp.status
                headers = resp.headers
        except TimeoutError:
            raise TransientError(
                f"The upstream did not answer within {self.timeout:g} s.",
                overloaded=True,
                code="request_timeout",
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            replica.failures += 1
            replica.down_until = time.monotonic() + min(30.0, 0.5 * 2 ** min(replica.failures, 6))
            raise TransientError(
                f"Could not reach the upstream: {type(exc).__name__}.", code="upstream_unreachable"
            ) from None
        finally:
            replica.outstanding -= 1
        replica.failures = 0
        replica.down_until = 0.0
        return _interpret(status, raw, headers)


def _interpret(status: int, raw: bytes, headers: Any) -> Response:
    request_id = (headers.get("x-request-id", "") or headers.get("apim-request-id", ""))[:128]
    try:
        parsed = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        parsed = None
    if 200 <= status < 300:
        if not isinstance(parsed, dict):
            raise TransientError(
                "The upstream answered with a body that is not a JSON object.",
                code="invalid_upstream_response",
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

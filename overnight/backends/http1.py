"""A lean HTTP/1.1 client for the engine's one hot call: POST a JSON body, read the answer.

aiohttp's general-purpose request path cost more CPU per request than all the
rest of the engine together (profiled in bench/README.md), and on a small
machine that CPU is taken from the model server next door. This client does
only what an upstream call needs: keep-alive connections per origin, llhttp
(through httptools) to parse, content-length / chunked / read-to-close bodies,
gzip and deflate, TLS, a cap on the answer's size and one deadline per request.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
import zlib
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

from overnight.errors import UpstreamError

DEFAULT_MAX_BODY = 64 * 1024 * 1024
# What all answers of one pool may hold in memory at once, however many are in flight.
DEFAULT_MAX_BUFFERED = 256 * 1024 * 1024
# An answer's head, as h11 and Node bound it: a server repeating a header forever is cut off.
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 256
KEEPALIVE_SECONDS = 30.0
CONNECT_TIMEOUT = 10.0


class ProtocolError(UpstreamError):
    """The upstream's bytes are not a usable HTTP answer (garbage, too large, cut short)."""


class ConnectFailed(OSError):
    """No connection could be opened: the request was never sent."""


class _Budget:
    """Bytes held by the answers of one pool that are still being received."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


@dataclass(slots=True)
class HTTPResponse:
    status: int
    headers: dict[str, str]  # names in lower case; repeated headers joined with ", "
    body: bytes


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; carries one exchange at a time."""

    def __init__(self, max_body: int, budget: _Budget) -> None:
        self.max_body = max_body
        self.budget = budget
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[HTTPResponse] | None = None
        self.closed = False
        self.idle_since = 0.0
        self._headers: dict[str, list[str]] = {}
        self._header_bytes = 0
        self._header_count = 0
        self._chunks: list[bytes] = []
        self._size = 0
        self._held = 0  # bytes of `_chunks` counted in the pool's budget
        self._headers_done = False
        self._to_close = False  # the answer's end is the end of the connection
        self._keep_alive = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self._headers_done and self._to_close:
                self._keep_alive = False
                self._finish()
            else:
                self._fail(ConnectionResetError("the upstream closed the connection mid-answer"))
        # The parser and this protocol point at each other: drop the parser and what was
        # buffered now, not when the garbage collector finds the cycle.
        self._drop_body()
        self.parser = None

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.parser is None:
            # Bytes nobody asked for: the connection's framing can no longer be trusted.
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("the upstream switched protocols"))
            self.close()
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"the upstream's answer is not valid HTTP: {exc}"))
            self.close()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if self.waiter is None:
            # A second answer to one request: the framing can no longer be trusted.
            raise ProtocolError("unsolicited answer")  # data_received closes
        self._headers = {}
        self._header_bytes = 0
        self._header_count = 0
        self._drop_body()
        self._headers_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        self._header_count += 1
        if self._header_bytes > MAX_HEADER_BYTES or self._header_count > MAX_HEADERS:
            self._fail(
                ProtocolError(
                    f"the upstream's answer head is over {MAX_HEADER_BYTES} bytes "
                    f"or {MAX_HEADERS} headers"
                )
            )
            raise ProtocolError("head too large")  # stops the parser; data_received closes
        # Repeated headers are collected and joined once (joining as they come is quadratic).
        self._headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        h = self._headers
        self._to_close = "content-length" not in h and "transfer-encoding" not in h

    def on_body(self, body: bytes) -> None:
        size = len(body)
        self._size += size
        if self._size > self.max_body:
            self._fail(ProtocolError(f"the upstream's answer is larger than {self.max_body} bytes"))
            raise ProtocolError("answer too large")  # stops the parser; data_received closes
        budget = self.budget
        if budget.used + size > budget.limit:
            self._fail(
                ProtocolError(
                    f"the answers in flight from this upstream hold over {budget.limit} bytes"
                )
            )
            raise ProtocolError("too much buffered")
        budget.used += size
        self._held += size
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        assert self.parser is not None
        if 100 <= self.parser.get_status_code() < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        self._keep_alive = self.parser.should_keep_alive()
        self._finish()

    # -- the exchange

    def _drop_body(self) -> None:
        self.budget.used -= self._held
        self._held = 0
        self._chunks = []
        self._size = 0

    def _finish(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done() or self.parser is None:
            self._drop_body()
            return
        body = b"".join(self._chunks)
        self._drop_body()
        headers = {k: ", ".join(v) for k, v in self._headers.items()}
        try:
            body = _decode(body, headers.get("content-encoding"), self.max_body)
        except zlib.error:
            waiter.set_exception(ProtocolError("the upstream's compressed answer is corrupt"))
            return
        except ProtocolError as exc:
            waiter.set_exception(exc)
            return
        waiter.set_result(HTTPResponse(self.parser.get_status_code(), headers, body))

    def _fail(self, exc: BaseException) -> None:
        self._drop_body()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, data: list[bytes]) -> asyncio.Future[HTTPResponse]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.writelines(data)
        return self.waiter

    @property
    def reusable(self) -> bool:
        return self._keep_alive and not self.closed

    def close(self) -> None:
        self.closed = True
        self._drop_body()
        if self.transport is not None:
            self.transport.abort()


def _decode(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo a content-encoding, never inflating past `limit` bytes (no decompression bombs)."""
    if not encoding or encoding == "identity":
        return body
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return _inflate(body, 16 + zlib.MAX_WBITS, limit)
    if encoding == "deflate":
        try:
            return _inflate(body, zlib.MAX_WBITS, limit)
        except zlib.error:
            return _inflate(body, -zlib.MAX_WBITS, limit)  # raw deflate, as some servers send
    raise zlib.error(f"unsupported content-encoding {encoding!r}")


def _inflate(body: bytes, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(body, limit + 1)
    if len(out) > limit:
        raise ProtocolError(f"the upstream's answer inflates past {limit} bytes")
    if not inflater.eof:
        raise zlib.error("truncated compressed answer")
    return out


class ConnectionPool:
    """Keep-alive connections to one origin (scheme, host, port); no limit on their number.

    The engine bounds concurrency itself, so the pool opens a connection whenever
    none is idle. The most recently used idle connection is taken first: it is
    the least likely to have been closed by the server's keep-alive timer.
    """

    def __init__(
        self,
        origin: str,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        connect_timeout: float = CONNECT_TIMEOUT,
        keepalive: float = KEEPALIVE_SECONDS,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {origin!r}")
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = (host if default_port else f"{host}:{self.port}").encode("idna")
        self.max_body = max_body
        self.budget = _Budget(max(max_buffered, max_body))
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self._ssl = (ssl_context or ssl.create_default_context()) if self.tls else None
        self._idle: collections.deque[_Connection] = collections.deque()
        self._all: set[_Connection] = set()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        max_body, budget = self.max_body, self.budget
        try:
            async with asyncio.timeout(self.connect_timeout):
                _transport, conn = await loop.create_connection(
                    lambda: _Connection(max_body, budget),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self.tls else None,
                )
        except ssl.SSLError:
            raise  # reached, but the TLS handshake failed: not an outage
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from None
        self._all.add(conn)
        return conn

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
            self._all.discard(conn)
        return None

    def _put_back(self, conn: _Connection) -> None:
        now = time.monotonic()
        conn.idle_since = now
        idle = self._idle
        idle.append(conn)
        while idle and now - idle[0].idle_since > self.keepalive:
            old = idle.popleft()
            old.close()
            self._all.discard(old)

    async def post(self, target: str, headers: bytes, body: bytes, timeout: float) -> HTTPResponse:
        """POST `body` to `target` (path and query); `headers` are complete CRLF-ended lines."""
        head = b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n%s\r\n" % (
            target.encode("latin-1"),
            self.host_header,
            len(body),
            headers,
        )
        return await self._exchange([head, body], timeout)

    async def get(self, target: str, headers: bytes, timeout: float) -> HTTPResponse:
        head = b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (
            target.encode("latin-1"),
            self.host_header,
            headers,
        )
        return await self._exchange([head], timeout)

    async def _exchange(self, data: list[bytes], timeout: float) -> HTTPResponse:
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(timeout):
                conn = self._take_idle() or await self._connect()
                response = await conn.send(data)
        except BaseException:
            # An exchange that did not finish leaves the connection's framing unknown.
            if conn is not None:
                conn.close()
                self._all.discard(conn)
            raise
        if conn.reusable:
            self._put_back(conn)
        else:
            conn.close()
            self._all.discard(conn)
        return response

    async def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()

"""The engine's HTTP/1.1 client against real servers on loopback that misbehave on purpose."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from overnight.backends.http1 import ConnectionPool, ProtocolError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    """A TCP server whose every connection is answered by `handler` (one coroutine each)."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.connections = 0
        self.port = 0
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body)
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer, self)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        self.requests.append((head, body))
        return body


def ok(body: bytes, *extra: str) -> bytes:
    headers = "".join(f"{h}\r\n" for h in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        headers.encode(),
        body,
    )


async def echo_forever(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
    while True:
        body = await s.read_request(r)
        w.write(ok(body, "X-Request-Id: abc", "X-Multi: 1", "x-multi: 2"))
        await w.drain()


async def test_answers_reuse_one_keep_alive_connection() -> None:
    async with Server(echo_forever) as server:
        pool = ConnectionPool(server.url())
        for i in range(5):
            answer = await pool.post("/v1/x?q=1", b"X-Key: k\r\n", b'{"n":%d}' % i, 5.0)
            assert answer.status == 200
            assert answer.body == b'{"n":%d}' % i
            assert answer.headers["x-request-id"] == "abc"
            assert answer.headers["x-multi"] == "1, 2"
        await pool.close()
    assert server.connections == 1
    head = server.requests[0][0].decode()
    assert head.startswith("POST /v1/x?q=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n" in head
    assert "Content-Length: 7\r\n" in head and "X-Key: k\r\n" in head


async def test_concurrent_requests_open_a_connection_each() -> None:
    async with Server(echo_forever) as server:
        pool = ConnectionPool(server.url())
        answers = await asyncio.gather(*(pool.post("/", b"", b"%d" % i, 5.0) for i in range(8)))
        assert sorted(a.body for a in answers) == sorted(b"%d" % i for i in range(8))
        await asyncio.gather(*(pool.post("/", b"", b"again", 5.0) for _ in range(8)))
        await pool.close()
    assert server.connections == 8


async def test_chunked_answer() -> None:
    async def chunked(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b'{"a":', b"1", b"}"):
            w.write(b"%x\r\n%s\r\n" % (len(part), part))
            await w.drain()
            await asyncio.sleep(0.01)
        w.write(b"0\r\n\r\n")
        await echo_forever(r, w, s)

    async with Server(chunked) as server:
        pool = ConnectionPool(server.url())
        assert (await pool.post("/", b"", b"x", 5.0)).body == b'{"a":1}'
        assert (await pool.post("/", b"", b"y", 5.0)).body == b"y"  # same connection, reused
        await pool.close()
    assert server.connections == 1


async def test_answer_that_ends_with_the_connection() -> None:
    async def until_close(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(r)
        w.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"done":')
        await w.drain()
        await asyncio.sleep(0.01)
        w.write(b"true}")
        await w.drain()

    async with Server(until_close) as server:
        pool = ConnectionPool(server.url())
        for _ in range(2):
            assert (await pool.post("/", b"", b"x", 5.0)).body == b'{"done":true}'
        await pool.close()
    assert server.connections == 2


async def test_connection_close_header_is_honoured() -> None:
    async def close_after(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        body = await s.read_request(r)
        w.write(ok(body, "Connection: close"))
        await w.drain()
        await asyncio.sleep(0.2)  # the client must not wait for this close to reuse anything

    async with Server(close_after) as server:
        pool = ConnectionPool(server.url())
        for i in range(3):
            assert (await pool.post("/", b"", b"%d" % i, 5.0)).body == b"%d" % i
        await pool.close()
    assert server.connections == 3


async def test_idle_connection_closed_by_the_server_is_replaced() -> None:
    async def one_then_close(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        body = await s.read_request(r)
        w.write(ok(body))
        await w.drain()  # then the handler returns and the server closes: a keep-alive timeout

    async with Server(one_then_close) as server:
        pool = ConnectionPool(server.url())
        assert (await pool.post("/", b"", b"1", 5.0)).body == b"1"
        await asyncio.sleep(0.1)
        assert (await pool.post("/", b"", b"2", 5.0)).body == b"2"
        await pool.close()
    assert server.connections == 2


async def test_reset_mid_answer_is_a_connection_error() -> None:
    async def cut(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(r)
        w.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial')
        await w.drain()
        w.transport.abort()

    async with Server(cut) as server:
        pool = ConnectionPool(server.url())
        with pytest.raises(ConnectionResetError):
            await pool.post("/", b"", b"x", 5.0)
        await pool.close()


async def test_garbage_is_a_protocol_error() -> None:
    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(r)
        w.write(b"\x00\x01 this is not HTTP at all\r\n\r\n")
        await w.drain()
        await asyncio.sleep(1)

    async with Server(garbage) as server:
        pool = ConnectionPool(server.url())
        with pytest.raises(ProtocolError, match="not valid HTTP"):
            await pool.post("/", b"", b"x", 5.0)
        await pool.close()


async def test_answer_larger_than_the_cap_is_refused() -> None:
    async def huge(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
        for _ in range(100):
            w.write(b"x" * 65536)
            await w.drain()

    async with Server(huge) as server:
        pool = ConnectionPool(server.url(), max_body=1_000_000)
        with pytest.raises(ProtocolError, match="larger than 1000000"):
            await pool.post("/", b"", b"x", 5.0)
        await pool.close()


async def test_gzip_and_interim_answers() -> None:
    async def zipped(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        body = await s.read_request(r)
        w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        w.write(ok(gzip.compress(body), "Content-Encoding: gzip"))
        await echo_forever(r, w, s)

    async with Server(zipped) as server:
        pool = ConnectionPool(server.url())
        assert (await pool.post("/", b"", b'{"z":1}', 5.0)).body == b'{"z":1}'
        assert (await pool.post("/", b"", b"plain", 5.0)).body == b"plain"
        await pool.close()
    assert server.connections == 1


async def test_compressed_answer_that_inflates_past_the_cap_is_refused() -> None:
    bomb = gzip.compress(b"0" * 5_000_000)  # about 5 KB on the wire

    async def zipped(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(r)
        w.write(ok(bomb, "Content-Encoding: gzip"))
        await w.drain()
        await asyncio.sleep(1)

    async with Server(zipped) as server:
        pool = ConnectionPool(server.url(), max_body=1_000_000)
        with pytest.raises(ProtocolError, match="inflates past 1000000"):
            await pool.post("/", b"", b"x", 5.0)
        await pool.close()


async def test_timeout_drops_the_connection_and_the_pool_goes_on() -> None:
    async def slow_first(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        body = await s.read_request(r)
        if s.connections == 1:
            await asyncio.sleep(0.5)
        w.write(ok(body))
        await echo_forever(r, w, s)

    async with Server(slow_first) as server:
        pool = ConnectionPool(server.url())
        with pytest.raises(TimeoutError):
            await pool.post("/", b"", b"late", 0.1)
        # The late answer must never be read as the answer to the next request.
        assert (await pool.post("/", b"", b"next", 5.0)).body == b"next"
        await asyncio.sleep(0.6)
        assert (await pool.post("/", b"", b"after", 5.0)).body == b"after"
        await pool.close()
    assert server.connections == 2


async def test_unsolicited_bytes_on_an_idle_connection_retire_it() -> None:
    async def chatty(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        body = await s.read_request(r)
        w.write(ok(body) + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra")
        await echo_forever(r, w, s)

    async with Server(chatty) as server:
        pool = ConnectionPool(server.url())
        assert (await pool.post("/", b"", b"1", 5.0)).body == b"1"
        await asyncio.sleep(0.05)
        assert (await pool.post("/", b"", b"2", 5.0)).body == b"2"
        await pool.close()
    assert server.connections == 2


async def test_refused_connection_is_an_os_error() -> None:
    async with Server(echo_forever) as server:
        url = server.url()
    pool = ConnectionPool(url)
    with pytest.raises(OSError):
        await pool.post("/", b"", b"x", 5.0)


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_verifies_the_server(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    async with Server(echo_forever, ssl_context=server_ctx) as server:
        trusting = ssl.create_default_context(cafile=str(cert))
        pool = ConnectionPool(server.url("https"), ssl_context=trusting)
        for i in range(3):
            assert (await pool.post("/", b"", b"%d" % i, 5.0)).body == b"%d" % i
        await pool.close()
        # The system's trust store does not know this certificate: refused, not ignored.
        strict = ConnectionPool(server.url("https"))
        with pytest.raises(ssl.SSLError):
            await strict.post("/", b"", b"x", 5.0)
        await strict.close()
    assert server.connections >= 1


def test_only_http_urls() -> None:
    with pytest.raises(ValueError):
        ConnectionPool("ftp://example.invalid/")
    pool = ConnectionPool("http://[::1]:8080")
    assert pool.host_header == b"[::1]:8080"
    assert ConnectionPool("https://api.example.invalid").host_header == b"api.example.invalid"

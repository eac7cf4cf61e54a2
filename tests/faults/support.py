"""What the fault tests share: overnight as a real process, a TCP proxy that can go down."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from openai import OpenAI

from overnight.server_process import OvernightProcess
from tests.acceptance.helpers import wait_batch
from tests.integration.engine_harness import chat_lines

KEY = "fault-key"
TERMINAL = ("completed", "failed", "expired", "cancelled")


@contextlib.contextmanager
def overnight(
    data_dir: Path, env: dict[str, str], args: list[str] | None = None, log: Path | None = None
) -> Iterator[OvernightProcess]:
    """`overnight serve` as a child process with one API key, stopped at the end."""
    full = {"PYTHONUNBUFFERED": "1", "OVERNIGHT_API_KEYS": f"faults:{KEY}", **env}
    process = OvernightProcess(data_dir, env=full, args=args or [], log_path=log)
    process.start(timeout=60)
    try:
        yield process
    finally:
        process.stop(timeout=30)


lines = chat_lines  # the .jsonl of n chat requests, custom_ids tag0.. tagN-1


def client(process: OvernightProcess, **options: Any) -> OpenAI:
    return OpenAI(
        base_url=f"{process.url}/v1",
        api_key=KEY,
        max_retries=options.pop("max_retries", 0),
        timeout=30,
        **options,
    )


def submit(c: OpenAI, data: bytes) -> str:
    f = c.files.create(file=("in.jsonl", data), purpose="batch")
    batch = c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return batch.id


def wait(
    c: OpenAI, batch_id: str, until: Callable[[Any], bool] | None = None, timeout: float = 120.0
) -> Any:
    return wait_batch(c, batch_id, until, timeout, interval=0.1).batch


def outputs(c: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [orjson.loads(x) for x in c.files.content(file_id).text.splitlines() if x.strip()]


def assert_each_once(c: OpenAI, batch: Any, n: int, tag: str = "q") -> None:
    """Every request is in the output file exactly once, and none failed."""
    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (n, 0), batch
    ids = [line["custom_id"] for line in outputs(c, batch.output_file_id)]
    assert sorted(ids) == sorted(f"{tag}{i}" for i in range(n))
    assert batch.error_file_id is None


class TcpProxy:
    """Forwards 127.0.0.1:port to a target; `down()` refuses and cuts every connection,
    `up()` listens again on the same port (an endpoint that goes away and comes back)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                downstream, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                downstream.close()
                continue
            with self._lock:
                self._conns |= {downstream, upstream}
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

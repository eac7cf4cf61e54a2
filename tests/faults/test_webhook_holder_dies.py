"""kill -9 of the process that holds a webhook delivery: the event is neither lost nor
turned into two events; the next process sends it again under the same id."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from tests.batch_lines import chat_lines, numbered
from tests.support.upstream_stub import StubConfig, StubServer

from .support import client, overnight, submit, wait

SECRET = "whsec_" + base64.b64encode(b"overnight-test-signing-secret-32b").decode()


class HangingReceiver:
    """Holds the first delivery open (its sender is killed meanwhile); answers 200 after."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.arrived: list[tuple[str, bytes]] = []  # (webhook-id, body), every attempt
        self.accepted: list[tuple[str, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    first = not receiver.arrived
                    receiver.arrived.append((self.headers["webhook-id"], body))
                if first:
                    receiver.release.wait(60)
                    return  # no answer: its sender is gone by now
                with receiver.lock:
                    receiver.accepted.append((self.headers["webhook-id"], body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    @contextmanager
    def running(self) -> Iterator[HangingReceiver]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.release.set()
            self.server.shutdown()
            self.server.server_close()

    def wait(self, what: str, check: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if check():
                    return
            assert time.monotonic() < deadline, f"{what}: arrived {self.arrived}"
            time.sleep(0.05)


def test_a_killed_holder_s_event_is_sent_once_more_under_its_id(tmp_path: Path) -> None:
    data = tmp_path / "data"
    receiver = HangingReceiver()
    config = tmp_path / "overnight.toml"
    config.write_text(
        f'[webhooks.faults]\nurl = "{receiver.url}"\nsecret_env = "HOOK_SECRET"\n'
        "timeout = 30\nretry_base_seconds = 0.2\n"
    )
    args = ["--config", str(config)]
    with StubServer.in_thread(StubConfig()) as stub, receiver.running():
        env = {"OVERNIGHT_UPSTREAM_URL": stub.url, "HOOK_SECRET": SECRET}
        with overnight(data, env, args, log=tmp_path / "first.log") as first:
            c = client(first)
            batch_id = submit(c, chat_lines(numbered(3)))
            assert wait(c, batch_id).status == "completed"
            receiver.wait("the first delivery", lambda: len(receiver.arrived) == 1)
            first.kill()  # mid-delivery: its lease (timeout + 30 s) is still running
        with overnight(data, env, args, log=tmp_path / "second.log"):
            receiver.wait("the delivery after the restart", lambda: receiver.accepted)
            time.sleep(0.5)  # room for a wrong extra delivery to show up
    [(held_id, held_body)] = receiver.arrived[:1]
    assert receiver.accepted == [(held_id, held_body)]
    assert len(receiver.arrived) == 2
    event = orjson.loads(held_body)
    assert (event["type"], event["data"]["id"]) == ("batch.completed", batch_id)

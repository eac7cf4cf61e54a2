"""Webhooks: signed OpenAI-shaped events, delivered to a real receiver, retried, durable."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from overnight.settings import WebhookTarget
from overnight.store import open_store
from overnight.webhooks import Webhooks, event_body, event_id, sign, take_in_files
from tests.live_server import API_KEY, PROJECT, chat_line, running_server, wait_status
from tests.support.upstream_stub import StubConfig, StubServer

SECRET = "whsec_" + base64.b64encode(b"overnight-test-signing-secret-32b").decode()


class Receiver:
    """A webhook endpoint on 127.0.0.1 that answers 500 to the first `fail_first` deliveries."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.deliveries: list[tuple[int, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    status = 500 if len(receiver.deliveries) < receiver.fail_first else 200
                    receiver.deliveries.append((status, dict(self.headers.items()), body))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def accepted(self) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(h, b) for status, h, b in self.deliveries if status == 200]

    def wait_for(self, n: int, timeout: float = 30.0) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.accepted()) < n:
            assert time.monotonic() < deadline, f"only {self.deliveries} after {timeout} s"
            time.sleep(0.05)
        return self.accepted()


def _waiting_events(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM webhook_events").fetchone()[0])


def unwrap(headers: dict[str, str], body: bytes) -> Any:
    """What a receiver written with the openai SDK does: verify the signature, parse the event."""
    client = openai.OpenAI(api_key="unused", webhook_secret=SECRET)
    lowered = {k.lower(): v for k, v in headers.items()}
    return client.webhooks.unwrap(body, lowered)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer.in_thread(StubConfig(seed=2)) as server:
        yield server


def test_batch_events_are_signed_retried_and_verifiable_with_the_sdk(
    tmp_path: Path, stub: StubServer
) -> None:
    with Receiver(fail_first=1) as receiver:
        config = (
            f'[webhooks.{PROJECT}]\nurl = "{receiver.url}"\nsecret_env = "HOOK_SECRET"\n'
            "retry_base_seconds = 0.2\n"
        )
        env = {"HOOK_SECRET": SECRET}
        with running_server(tmp_path, stub.url, config=config, env=env) as server:
            http = httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {API_KEY}"})

            def create(lines: str) -> str:
                files = {"file": ("w.jsonl", lines)}
                f = http.post("/v1/files", files=files, data={"purpose": "batch"}).json()
                body = {
                    "input_file_id": f["id"],
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                }
                return str(http.post("/v1/batches", json=body).json()["id"])

            good = "".join(json.dumps(chat_line(f"w{i}")) + "\n" for i in range(3))
            completed = create(good)
            wait_status(http, completed, {"completed"})
            [(headers, body)] = receiver.wait_for(1)
            event = unwrap(headers, body)
            assert event.type == "batch.completed" and event.data.id == completed
            assert event.object == "event" and event.id.startswith("evt_")
            raw = json.loads(body)
            assert set(raw) == {"id", "object", "type", "created_at", "data"}
            assert raw["data"] == {"id": completed} and isinstance(raw["created_at"], int)
            # The first attempt got a 500; the retry carried the same event id and body.
            first_status, first_headers, first_body = receiver.deliveries[0]
            assert first_status == 500 and first_body == body
            assert first_headers["webhook-id"] == headers["webhook-id"] == raw["id"]

            failed = create(good + "{not json\n")
            wait_status(http, failed, {"failed"})
            stub.configure(latency=2.0)
            cancelled = create(good)
            wait_status(http, cancelled, {"in_progress"})
            assert http.post(f"/v1/batches/{cancelled}/cancel").status_code == 200
            wait_status(http, cancelled, {"cancelled"})
            events = [unwrap(h, b) for h, b in receiver.wait_for(3)]
            assert [(e.type, e.data.id) for e in events[1:]] == [
                ("batch.failed", failed),
                ("batch.cancelled", cancelled),
            ]
            assert len({e.id for e in events}) == 3
            http.close()
        assert _waiting_events(tmp_path / "data" / "overnight.db") == 0  # outbox drained


async def test_pending_events_survive_a_restart(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/overnight.db"
    with Receiver() as receiver:
        down = WebhookTarget("p", "http://127.0.0.1:9/hooks", SECRET, retry_base_seconds=0.05)
        store = await open_store(url)
        hooks = Webhooks((down,), store.events, "first")  # unreachable: nothing is sent
        await hooks.emit("p", "batch_abc", "expired")
        await hooks.emit("p", "batch_abc", "expired")  # the same event twice: one event
        await hooks.emit("nobody-listens", "batch_xyz", "completed")  # no webhook: no event
        await hooks.deliver_due()
        await hooks.close()
        assert await store.events.counts() == (1, 0)
        await store.close()

        up = WebhookTarget("p", receiver.url, SECRET, retry_base_seconds=0.05)
        store = await open_store(url)  # a new process, the same database
        restarted = Webhooks((up,), store.events, "second", single_process=True)
        restarted.start()
        try:
            deadline = time.monotonic() + 30
            while not receiver.accepted() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)  # the sender runs on this event loop
            [(headers, body)] = receiver.accepted()
            while await store.events.counts() != (0, 0) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert await store.events.counts() == (0, 0)
        finally:
            await restarted.close()
            await store.close()
    event = unwrap(headers, body)
    assert (event.type, event.data.id) == ("batch.expired", "batch_abc")
    assert event.id == event_id("batch_abc", "batch.expired")


async def test_files_an_older_outbox_left_are_taken_in(tmp_path: Path) -> None:
    outbox = tmp_path / "webhooks"
    outbox.mkdir()
    eid, body = event_body("batch.completed", "batch_old", 1_700_000_000)
    entry = {"project": "p", "body": body.decode(), "attempts": 3, "next_at": 0.0}
    (outbox / f"{eid}.json").write_text(json.dumps(entry))
    (outbox / "evt_broken.json").write_text("{not json")
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path}/overnight.db")
    try:
        assert await take_in_files(outbox, store.events) == 1
        [event] = await store.events.claim_due("me", time.time(), time.time() + 60, 10)
        assert (event.id, event.body, event.attempts) == (eid, body, 3)
        assert not (outbox / f"{eid}.json").exists()
    finally:
        await store.close()


def test_signature_matches_the_standard_webhooks_example() -> None:
    # The worked example of the Standard Webhooks specification.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected

"""Deadlines, batch priorities and the upstream priority field, on a real server against a
real (stub) upstream, through the openai SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.live_server import API_KEY, chat_line, running_server
from tests.support.upstream_stub import StubConfig, StubServer

pytestmark = pytest.mark.timeout(180)
ROUTE = "gpt-test"


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)


def _submit(client: openai.OpenAI, n: int, tag: str, window: str = "24h", **kw: Any) -> Any:
    data = "".join(
        json.dumps(chat_line(f"{tag}{i}", f"{tag}{i}", model=ROUTE)) + "\n" for i in range(n)
    )
    f = client.files.create(file=("in.jsonl", data.encode()), purpose="batch")
    return client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window=window,  # type: ignore[arg-type]
        **kw,
    )


def _wait(client: openai.OpenAI, batch_id: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        b = client.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "expired", "cancelled"):
            return b
        assert time.monotonic() < deadline, b
        time.sleep(0.1)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    # 4 at once, 50 ms each: 80 requests a second at most.
    with StubServer.in_thread(StubConfig(seed=3, latency=0.05)) as server:
        yield server


def _server(tmp_path: Path, stub: StubServer, extra: str = "") -> Any:
    config = f'[models."{ROUTE}"]\nurl = "{stub.url}"\nmax_concurrency = 4\n{extra}'
    env = {"OVERNIGHT_COMPLETION_WINDOWS": "24h,12s"}
    return running_server(tmp_path, stub.url, config=config, env=env)


def test_a_batch_near_its_deadline_gets_more_than_an_equal_share(
    tmp_path: Path, stub: StubServer
) -> None:
    with _server(tmp_path, stub) as server:
        client = _client(server.url)
        long = _submit(client, 3000, "long-")
        while client.batches.retrieve(long.id).request_counts.completed < 200:  # type: ignore[union-attr]
            time.sleep(0.05)  # running, and the lane's throughput measured
        # 560 requests in 12 s need ~52/s at 0.9 of the window; an equal share of ~80/s
        # is 40/s, which would take 14 s: past the window.
        short = _submit(client, 560, "short-", window="12s")
        assert short.completion_window == "12s"
        assert short.expires_at - short.created_at == 12
        done = _wait(client, short.id, timeout=60)
        assert done.status == "completed", done
        assert done.request_counts.completed == 560
        # The long batch kept going meanwhile (its floor), and is not finished.
        assert client.batches.retrieve(long.id).request_counts.completed > 200  # type: ignore[union-attr]
        client.batches.cancel(long.id)


def test_priority_from_extra_body_or_metadata_runs_sooner(tmp_path: Path, stub: StubServer) -> None:
    with _server(tmp_path, stub) as server:
        client = _client(server.url)
        low = _submit(client, 400, "low-")
        high = _submit(client, 400, "high-", extra_body={"priority": 3})
        meta = _submit(client, 400, "meta-", metadata={"overnight_priority": "3"})
        first = {b.id: _wait(client, b.id) for b in (high, meta)}
        low_then = client.batches.retrieve(low.id).request_counts.completed  # type: ignore[union-attr]
        assert all(b.status == "completed" for b in first.values()), first
        # Weighed 8:8:1 beyond the floors: the low batch had done about a quarter of its
        # requests when the others ended (an equal share would have done all of them).
        assert low_then < 250, low_then
        assert _wait(client, low.id).status == "completed"
        assert first[meta.id].metadata == {"overnight_priority": "3"}  # echoed untouched
        counts = stub.counts()
        assert sum(1 for k in counts if k.startswith("low-")) == 400


def test_bad_priority_and_windows_are_refused_in_the_envelope(
    tmp_path: Path, stub: StubServer
) -> None:
    with _server(tmp_path, stub) as server:
        http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"})
        f = http.post(
            "/v1/files",
            files={"file": ("a.jsonl", json.dumps(chat_line("x", model=ROUTE)) + "\n")},
            data={"purpose": "batch"},
        ).json()
        base = {"input_file_id": f["id"], "endpoint": "/v1/chat/completions"}
        for extra, param in (
            ({"priority": 11}, "priority"),
            ({"priority": "soon"}, "priority"),
            ({"priority": True}, "priority"),
            ({"metadata": {"overnight_priority": "1.5"}}, "metadata.overnight_priority"),
        ):
            r = http.post("/v1/batches", json={**base, "completion_window": "24h", **extra})
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["param"] == param and err["code"] == "invalid_value", err
        r = http.post("/v1/batches", json={**base, "completion_window": "1h"})
        assert r.status_code == 400
        assert "Supported values are: '24h', and '12s'." in r.json()["error"]["message"]


def test_the_route_sends_its_priority_upstream(tmp_path: Path, stub: StubServer) -> None:
    with _server(tmp_path, stub, extra="priority = 7\n") as server:
        client = _client(server.url)
        done = _wait(client, _submit(client, 5, "p-").id)
        assert done.status == "completed"
    received = [r for r in stub.received() if r.get("body", {}).get("model") == ROUTE]
    assert len(received) == 5
    assert all(r["body"]["priority"] == 7 for r in received), received[0]

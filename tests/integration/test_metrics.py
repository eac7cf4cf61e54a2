"""GET /metrics scraped while a real batch runs on a real server against a real upstream."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from overnight.server_process import OvernightProcess
from tests.live_server import API_KEY, PRICES, chat_line, running_server, wait_status
from tests.support.upstream_stub import StubConfig, StubServer

ROUTE = "gpt-test"


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer.in_thread(StubConfig(seed=5, latency=0.2)) as server:
        yield server


@pytest.fixture
def server(tmp_path: Path, stub: StubServer) -> Iterator[OvernightProcess]:
    config = PRICES + f'[models."{ROUTE}"]\nurl = "{stub.url}"\nmax_concurrency = 4\n'
    env = {"OVERNIGHT_MAX_ATTEMPTS": "2"}
    with running_server(tmp_path, stub.url, config=config, env=env) as process:
        yield process


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{url}/metrics", timeout=10)  # no key: operators' numbers only
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def submit(http: httpx.Client, n: int, tag: str, model: str = ROUTE) -> str:
    data = "".join(json.dumps(chat_line(f"{tag}{i}", model=model)) + "\n" for i in range(n))
    f = http.post("/v1/files", files={"file": ("m.jsonl", data)}, data={"purpose": "batch"}).json()
    body = {
        "input_file_id": f["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    return str(http.post("/v1/batches", json=body).json()["id"])


def test_metrics_during_and_after_a_batch(server: OvernightProcess, stub: StubServer) -> None:
    http = httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {API_KEY}"})
    batch_id = submit(http, 40, "ok")  # 40 x 0.2 s at 4 at a time: about 2 s of work
    wait_status(http, batch_id, {"in_progress"})

    # During the run: the batch is counted as in progress, with work in flight or waiting.
    deadline = time.monotonic() + 30
    while True:
        during = scrape(server.url)
        sent = value(during, "overnight_upstream_latency_seconds_count", route=ROUTE)
        if sent > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert value(during, "overnight_batches", status="in_progress") == 1
    in_flight = value(during, "overnight_upstream_in_flight", route=ROUTE)
    assert 0 <= in_flight <= 4
    backlog = value(during, "overnight_ledger_backlog", state="pending") + value(
        during, "overnight_ledger_backlog", state="leased"
    )
    assert 0 < backlog <= 40 - sent + in_flight
    assert value(during, "overnight_route_concurrency", route=ROUTE) == 4

    batch = wait_status(http, batch_id, {"completed"})
    after = scrape(server.url)
    ok = value(after, "overnight_upstream_requests_total", route=ROUTE, outcome="ok")
    assert ok == 40
    assert value(after, "overnight_upstream_latency_seconds_count", route=ROUTE) == 40
    assert value(after, "overnight_upstream_latency_seconds_bucket", route=ROUTE, le="+Inf") == 40
    assert value(after, "overnight_upstream_latency_seconds_sum", route=ROUTE) > 0
    assert value(after, "overnight_upstream_in_flight", route=ROUTE) == 0
    assert value(after, "overnight_ledger_backlog", state="pending") == 0
    assert value(after, "overnight_ledger_backlog", state="leased") == 0
    assert value(after, "overnight_batches", status="completed") == 1
    assert value(after, "overnight_batches", status="in_progress") == 0
    usage = batch["usage"]
    assert (
        value(after, "overnight_tokens_total", route=ROUTE, kind="input") == usage["input_tokens"]
    )
    assert (
        value(after, "overnight_tokens_total", route=ROUTE, kind="output") == usage["output_tokens"]
    )
    assert value(after, "overnight_batch_tokens_total", kind="output") == usage["output_tokens"]
    assert ("process_cpu_seconds_total", ()) in after  # the process collector comes along

    # Durations: the batch from creation to completed, its phases, the API's answers.
    assert value(after, "overnight_batch_duration_seconds_count", status="completed") == 1
    closed_in = value(after, "overnight_batch_duration_seconds_sum", status="completed")
    assert 0 <= closed_in <= batch["completed_at"] - batch["created_at"] + 1
    for phase in ("validate", "run", "finalize"):
        assert value(after, "overnight_batch_phase_duration_seconds_count", phase=phase) == 1
    created = value(
        after,
        "overnight_api_request_duration_seconds_count",
        method="POST",
        handler="/v1/batches",
        status="200",
    )
    assert created == 1
    polls = value(
        after,
        "overnight_api_request_duration_seconds_count",
        method="GET",
        handler="/v1/batches/{batch_id}",  # the template: no series per batch id
        status="200",
    )
    assert polls >= 2
    assert not [k for k in after if batch_id in str(k)]
    http.get("/no/such/path")
    missing = scrape(server.url)
    labels = {"method": "GET", "handler": "unmatched", "status": "404"}
    assert value(missing, "overnight_api_request_duration_seconds_count", **labels) == 1

    # A model without a route of its own goes to the catch-all upstream: labelled "default".
    other = submit(http, 3, "other", model="some-other-model")
    wait_status(http, other, {"completed"})
    default = scrape(server.url)
    assert value(default, "overnight_upstream_requests_total", route="default", outcome="ok") == 3
    assert not [k for k in default if ("route", "*") in k[1]]

    # Transient failures: each request is retried once (OVERNIGHT_MAX_ATTEMPTS=2), then given up.
    stub.configure(status_override=503, latency=0.0)
    failing = submit(http, 5, "bad")
    wait_status(http, failing, {"completed"})
    final = scrape(server.url)
    assert value(final, "overnight_upstream_requests_total", route=ROUTE, outcome="retried") == 5
    assert value(final, "overnight_upstream_requests_total", route=ROUTE, outcome="gave_up") == 5
    assert value(final, "overnight_upstream_requests_total", route=ROUTE, outcome="ok") == 40
    assert value(final, "overnight_batch_duration_seconds_count", status="completed") == 3
    http.close()

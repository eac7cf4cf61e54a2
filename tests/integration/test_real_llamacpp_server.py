"""A route with a short timeout against llama-cpp-python's real server, which runs one
request at a time and queues the rest.

From the issue: before the fix, concurrency grew from 16 to 41 although throughput could
not grow; the requests queued in the server past the route's timeout, timed out, and were
sent again, and the server ran more generations than there were requests. overnight's
own answer times (engine/latency.py: no load gauge here, the server has no /metrics)
must bring concurrency back before that happens: every request is sent exactly once.

Sizing, from latencies measured on two cores (SmolLM2-135M, 40-token prompt, greedy):
max_tokens 16 / 32 / 64 take about 0.24 / 0.41 / 0.75 s alone. The test measures the
time `s` of one 32-token request alone and gives the route a timeout of 30 x s (~12 s):
the initial concurrency of 16 keeps 16 x s queued, well inside it, and slow start adds a
request per answer, so 60 requests would put ~38 in the server (38 x s queued) were
nothing to stop it. The second test shows that: with yield = "off" the same batch times
out and is sent again.

The server is started with `--n_ubatch 1`: see tests/support/llamacpp_server.py for
the crash that avoids.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from overnight.metrics import OUTCOMES
from tests.live_server import API_KEY, chat_line, running_server
from tests.support.llamacpp_server import MODEL_ALIAS, LlamaCppServer, llamacpp_process

pytestmark = [pytest.mark.timeout(300), pytest.mark.local_model]

ROUTE = MODEL_ALIAS
N = 60
MAX_TOKENS = 32
TIMEOUT_IN_REQUESTS = 30  # the route's timeout, in times of one request alone


@pytest.fixture
def llama(tmp_path: Path) -> Iterator[LlamaCppServer]:
    with llamacpp_process(log_path=tmp_path / "llama-server.log") as server:
        yield server


@dataclass
class Run:
    batch: Any
    timeout: float
    outcomes: dict[str, float]
    max_concurrency: float = 0.0
    max_in_flight: float = 0.0
    concurrency: list[float] = field(default_factory=list)
    seconds: float = 0.0
    generations: int = 0  # that the server ran for the batch

    def report(self) -> str:
        return (
            f"timeout={self.timeout}s outcomes={self.outcomes} "
            f"max concurrency={self.max_concurrency} max in flight={self.max_in_flight} "
            f"generations={self.generations} for {N} requests, in {self.seconds:.1f}s"
        )


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _get(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def run_batch(tmp_path: Path, llama: LlamaCppServer, *, yield_mode: str = "auto") -> Run:
    """N chat requests in one batch through a route to `llama`; what became of them."""
    timeout = round(TIMEOUT_IN_REQUESTS * llama.time_chat(MAX_TOKENS), 1)
    generated_before = llama.generations()
    config = (
        f'[models."{ROUTE}"]\nurl = "{llama.url}"\ntimeout = {timeout}\nyield = "{yield_mode}"\n'
    )
    with running_server(tmp_path, llama.url, config=config) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
        data = "".join(
            json.dumps(
                chat_line(
                    f"q{i}",
                    f"Tell me a fact about the number {i}.",
                    model=ROUTE,
                    max_tokens=MAX_TOKENS,
                    temperature=0,
                )
            )
            + "\n"
            for i in range(N)
        )
        f = client.files.create(file=("in.jsonl", data.encode()), purpose="batch")
        started = time.monotonic()
        batch = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        run = Run(batch, timeout, {})
        deadline = started + 240
        while True:
            samples = _samples(server.url)
            current = _get(samples, "overnight_route_concurrency", route=ROUTE)
            if current:
                run.concurrency.append(current)
            run.max_concurrency = max(run.max_concurrency, current)
            run.max_in_flight = max(
                run.max_in_flight, _get(samples, "overnight_upstream_in_flight", route=ROUTE)
            )
            batch = client.batches.retrieve(batch.id)
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                break
            assert time.monotonic() < deadline, batch
            time.sleep(0.2)
        run.seconds = time.monotonic() - started
        run.generations = llama.generations() - generated_before
        run.batch = batch
        samples = _samples(server.url)
        run.outcomes = {
            o: _get(samples, "overnight_upstream_requests_total", route=ROUTE, outcome=o)
            for o in OUTCOMES
        }
        if batch.output_file_id:
            lines = client.files.content(batch.output_file_id).text.splitlines()
            assert all(json.loads(line)["response"]["status_code"] == 200 for line in lines)
    return run


def test_requests_queued_in_a_one_at_a_time_server_are_sent_once(
    tmp_path: Path, llama: LlamaCppServer
) -> None:
    run = run_batch(tmp_path, llama)
    report = run.report()
    print(report)
    assert run.batch.status == "completed", report
    assert run.batch.request_counts.completed == N, report
    assert run.batch.request_counts.failed == 0, report
    # Each request sent exactly once: no timeout, no resend.
    assert sum(run.outcomes.values()) == N, report
    assert run.outcomes["ok"] == N, report
    assert run.outcomes["retried"] == 0, report
    assert run.outcomes["gave_up"] == 0, report
    # And the server ran as many generations as there were requests.
    assert run.generations == N, report


def test_without_yield_the_same_batch_times_out_and_is_sent_again(
    tmp_path: Path, llama: LlamaCppServer
) -> None:
    """The scenario of the issue, kept as it was: what the first test guards against."""
    run = run_batch(tmp_path, llama, yield_mode="off")
    report = run.report()
    print(report)
    assert run.batch.status == "completed", report
    assert run.max_in_flight > TIMEOUT_IN_REQUESTS, report  # queued past the timeout
    assert run.outcomes["retried"] > 0, report  # timed out, sent again
    assert run.generations > N, report  # and some were generated twice

"""Results while a batch runs (extension routes): follow, filter, summarize, retry."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from tests.support.upstream_stub import StubServer

from .helpers import (
    AZURE_API_VERSION,
    BATCH_TIMEOUT,
    TERMINAL,
    Server,
    chat_line,
    jsonl,
    read_lines,
    run_batch,
    upload,
    wait_batch,
)


def _bad(custom_id: str, model: str = "gpt-test") -> dict[str, Any]:
    line = chat_line(custom_id, model=model)
    line["body"]["messages"] = ["not an object"]  # the stub answers this one with a 400
    return line


def _page(http: httpx.Client, path: str, **params: Any) -> tuple[list[dict[str, Any]], Any]:
    response = http.get(path, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(raw) for raw in response.text.splitlines()]
    return lines, response.headers


def _follow(http: httpx.Client, batch_id: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Every line as a follower gets it, and the batch status seen with each non-empty page."""
    got: list[dict[str, Any]] = []
    seen_while: list[str] = []
    after = 0
    deadline = time.monotonic() + BATCH_TIMEOUT
    while time.monotonic() < deadline:
        lines, headers = _page(http, f"/v1/batches/{batch_id}/results", after=after, limit=3)
        after = int(headers["x-overnight-next-after"])
        if lines:
            seen_while.append(headers["x-overnight-batch-status"])
        got += lines
        if headers["x-overnight-has-more"] == "false":
            if headers["x-overnight-batch-status"] in TERMINAL:
                return got, seen_while
            time.sleep(0.05)
    raise AssertionError(f"never ended; got {len(got)} lines")


def test_follow_a_running_batch_line_by_line(server: Server, stub: StubServer) -> None:
    stub.configure(latency=0.1, slots=2)  # 14 requests two at a time: about 0.7 s of work
    client = server.openai()
    lines = [chat_line(f"r{i}", text=f"q{i}") for i in range(12)] + [_bad("b0"), _bad("b1")]
    f = upload(client, jsonl(lines))
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    got, seen_while = _follow(server.http(), batch.id)
    final = wait_batch(client, batch.id).batch
    assert final.status == "completed"
    # Each finished line exactly once, and the very lines of the files written at the end.
    assert sorted(g["custom_id"] for g in got) == sorted(ln["custom_id"] for ln in lines)
    files = read_lines(client, final.output_file_id) + read_lines(client, final.error_file_id)
    assert sorted(got, key=lambda x: x["id"]) == sorted(files, key=lambda x: x["id"])
    assert "in_progress" in seen_while, "no line was seen before the batch ended"
    # Failed lines look as in the error file: the answer and its coded error.
    bad = [g for g in got if g["custom_id"].startswith("b")]
    assert {g["response"]["status_code"] for g in bad} == {400}
    assert all(g["error"]["code"] == "invalid_request_error" for g in bad)


def test_filters_paging_and_the_azure_twin(server: Server, stub: StubServer) -> None:
    client = server.openai()
    lines = [chat_line(f"r{i}") for i in range(5)] + [_bad("b0")]
    batch = run_batch(client, lines)
    http = server.http()
    path = f"/v1/batches/{batch.id}/results"
    failed, _ = _page(http, path, outcome="failed")
    assert [x["custom_id"] for x in failed] == ["b0"]
    ok, _ = _page(http, path, outcome="succeeded")
    assert sorted(x["custom_id"] for x in ok) == [f"r{i}" for i in range(5)]
    assert all(x["response"]["status_code"] == 200 and x["error"] is None for x in ok)
    picked, _ = _page(http, path, custom_id=["r3", "b0", "nope"])
    assert sorted(x["custom_id"] for x in picked) == ["b0", "r3"]
    # Pages of two: the cursor moves on and has-more says when to stop.
    seen, after, pages = [], 0, 0
    while True:
        page, headers = _page(http, path, after=after, limit=2)
        seen += [x["custom_id"] for x in page]
        after, pages = int(headers["x-overnight-next-after"]), pages + 1
        if headers["x-overnight-has-more"] == "false":
            break
    assert sorted(seen) == sorted(ln["custom_id"] for ln in lines) and pages == 3
    # Azure's routes answer the same.
    azure = http.get(
        f"/openai/batches/{batch.id}/results", params={"api-version": AZURE_API_VERSION}
    )
    assert azure.status_code == 200 and len(azure.text.splitlines()) == 6


def test_bad_results_queries_get_the_error_envelope(server: Server) -> None:
    client = server.openai()
    batch = run_batch(client, [chat_line("r0")])
    http = server.http()
    for params in ({"after": -1}, {"limit": 0}, {"limit": 10001}, {"outcome": "maybe"}):
        r = http.get(f"/v1/batches/{batch.id}/results", params=params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    for path in ("/v1/batches/batch_nope/results", "/v1/batches/batch_nope/results/summary"):
        r = http.get(path)
        assert r.status_code == 404 and r.json()["error"]["message"]
    r = http.post("/v1/batches/batch_nope/retry")
    assert r.status_code == 404
    anonymous = httpx.get(f"{server.url}/v1/batches/{batch.id}/results")
    assert anonymous.status_code == 401


def test_summary_groups_failures_by_code_with_the_model_named(
    server: Server, stub: StubServer
) -> None:
    client = server.openai()
    # Served by the catch-all route "*": the summary names the model the lines wrote.
    lines = [chat_line("r0", model="my-model"), _bad("b0", "my-model"), _bad("b1", "my-model")]
    batch = run_batch(client, lines)
    summary: Any = client.get(f"/batches/{batch.id}/results/summary", cast_to=object)
    assert summary["object"] == "batch.results_summary" and summary["batch_id"] == batch.id
    assert summary["status"] == "completed"
    assert summary["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    assert summary["finished"] == 3
    [group] = summary["failures"]
    assert (group["code"], group["model"], group["count"]) == (
        "invalid_request_error",
        "my-model",
        2,
    )
    assert group["message"]


def test_retry_sends_again_only_what_failed_or_never_ran(server: Server, stub: StubServer) -> None:
    stub.configure(latency=0.2, slots=1)
    client = server.openai()
    lines = [chat_line(f"r{i}", text=f"q{i}") for i in range(8)] + [_bad("b0")]
    f = upload(client, jsonl(lines))
    batch = client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"team": "search"},
    )
    http = server.http()
    r = http.post(f"/v1/batches/{batch.id}/retry")
    assert r.status_code == 409 and r.json()["error"]["code"] == "batch_not_finished"
    wait_batch(client, batch.id, until=lambda b: (b.request_counts or b).completed >= 2)
    client.batches.cancel(batch.id)
    cancelled = wait_batch(client, batch.id).batch
    assert cancelled.status == "cancelled"
    done = {x["custom_id"] for x in read_lines(client, cancelled.output_file_id)}
    assert done and "b0" not in done
    stub.configure(latency=0.0, slots=None)
    r = http.post(f"/v1/batches/{batch.id}/retry")
    assert r.status_code == 200, r.text
    retry = r.json()
    assert retry["object"] == "batch" and retry["status"] == "validating"
    assert retry["metadata"] == {"team": "search", "overnight_retry_of": batch.id}
    assert retry["input_file_id"] != f.id
    resent = {
        json.loads(x)["custom_id"]
        for x in client.files.content(retry["input_file_id"]).text.splitlines()
    }
    assert resent == {ln["custom_id"] for ln in lines} - done
    second = wait_batch(client, retry["id"]).batch
    assert second.request_counts is not None and second.request_counts.total == len(resent)
    # A batch whose every line succeeded has nothing to retry.
    clean = run_batch(client, [chat_line("ok")])
    r = http.post(f"/v1/batches/{clean.id}/retry")
    assert r.status_code == 400 and r.json()["error"]["code"] == "nothing_to_retry"

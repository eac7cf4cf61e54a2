"""Stopping a batch early: cancel, and the completion window running out."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.support.upstream_stub import StubServer

from .helpers import (
    TERMINAL,
    Server,
    StartServer,
    assert_timestamps_int,
    by_custom_id,
    chat_line,
    config_routes,
    jsonl,
    raw_batch,
    read_lines,
    run_batch,
    upload,
    wait_batch,
)

EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


def _split_results(
    client: openai.OpenAI, batch: Any, ids: set[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Output and error lines by custom_id; every id exactly once across both files."""
    outputs = by_custom_id(read_lines(client, batch.output_file_id))
    errors = by_custom_id(read_lines(client, batch.error_file_id))
    assert not set(outputs) & set(errors), "a custom_id is in both files"
    assert set(outputs) | set(errors) == ids
    for line in outputs.values():
        assert line["response"]["status_code"] == 200
        assert line["error"] is None
    assert batch.request_counts is not None
    assert batch.request_counts.total == len(ids)
    assert batch.request_counts.completed == len(outputs)
    assert batch.request_counts.failed == len(errors)
    return outputs, errors


def test_cancel(start_server: StartServer, stub: StubServer) -> None:
    # Two requests at a time, half a second each: 20 requests take 5 s, so the cancel
    # below lands with most of them not yet sent.
    stub.configure(latency=0.5)
    config = config_routes(stub, {"*": {"max_concurrency": 2}})
    server = start_server(
        config=config, upstream=False, env={"OVERNIGHT_CANCEL_GRACE_SECONDS": "10"}
    )
    client = server.openai()
    ids = {f"r{i:02d}" for i in range(20)}
    f = upload(client, jsonl([chat_line(i, text=f"slow {i}") for i in sorted(ids)]))
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    # Wait until it runs and something has finished, so there is a result to keep.
    running = wait_batch(
        client,
        batch.id,
        until=lambda b: b.status == "in_progress" and b.request_counts.completed >= 1,
        interval=0.05,
    ).batch
    assert running.request_counts.total == 20

    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling", cancelling
    assert cancelling.cancelling_at is not None

    polled = wait_batch(client, batch.id)
    done = polled.batch
    assert done.status == "cancelled", done
    assert set(polled.statuses) <= {"cancelling", "cancelled"}, polled.statuses
    wire = raw_batch(client, batch.id)
    assert_timestamps_int(wire)
    assert wire["cancelled_at"] is not None and wire["cancelling_at"] is not None
    assert wire["cancelling_at"] <= wire["cancelled_at"]
    assert wire["completed_at"] is None and wire["expired_at"] is None

    outputs, errors = _split_results(client, done, ids)
    assert len(outputs) >= 1, "results finished before the cancel were lost"
    assert errors, "nothing was cancelled"
    for line in errors.values():
        assert line["response"] is None
        assert line["error"]["code"] == "batch_cancelled"
        assert line["error"]["message"]
    # Requests in flight at the cancel finish (the grace is long) and are kept; nothing
    # cancelled was sent upstream; nothing is sent twice.
    sent = [r["body"]["messages"][0]["content"] for r in stub.received()]
    assert len(sent) == len(set(sent))
    assert set(sent) == {f"slow {i}" for i in outputs}

    # Cancel again: same answer, no error.
    again = client.batches.with_raw_response.cancel(batch.id)
    assert again.status_code == 200
    assert again.parse().status == "cancelled"

    # A finished batch cannot be cancelled: OpenAI answers 409 "Cannot cancel a batch with
    # status 'completed'." (clients such as LiteLLM catch openai.ConflictError for it).
    stub.configure(latency=0.0)
    finished = run_batch(client, [chat_line("x")])
    assert finished.status == "completed"
    with pytest.raises(openai.ConflictError) as info:
        client.batches.cancel(finished.id)
    assert info.value.status_code == 409
    assert "completed" in info.value.message
    assert info.value.response.headers.get("x-request-id")
    body = info.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    assert client.batches.retrieve(finished.id).status == "completed"


def test_cancel_while_validating_or_running_via_azure(server: Server, stub: StubServer) -> None:
    """Cancel straight after create (Azure client): the batch ends cancelled, never failed."""
    stub.configure(latency=0.3)
    client = server.azure()
    f = upload(client, jsonl([chat_line(f"r{i}") for i in range(40)]))
    batch = client.batches.create(
        input_file_id=f.id,
        endpoint="/chat/completions",  # type: ignore[arg-type]
        completion_window="24h",
    )
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_batch(client, batch.id).batch
    assert done.status == "cancelled", done
    ids = {f"r{i}" for i in range(40)}
    outputs = by_custom_id(read_lines(client, done.output_file_id))
    errors = by_custom_id(read_lines(client, done.error_file_id))
    assert not set(outputs) & set(errors)
    # Cancelled while validating there may be no ledger at all; otherwise all ids appear.
    if outputs or errors:
        assert set(outputs) | set(errors) == ids
        assert all(e["error"]["code"] == "batch_cancelled" for e in errors.values())


def test_expiry(start_server: StartServer, stub: StubServer) -> None:
    # Two at a time, a second each: 30 requests need 15 s, the window is 3 s.
    stub.configure(latency=1.0)
    config = config_routes(stub, {"*": {"max_concurrency": 2}})
    server = start_server(
        config=config, upstream=False, env={"OVERNIGHT_COMPLETION_WINDOW_SECONDS": "3"}
    )
    client = server.openai()
    ids = {f"r{i:02d}" for i in range(30)}
    f = upload(client, jsonl([chat_line(i, text=f"expire {i}") for i in sorted(ids)]))
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.completion_window == "24h"
    assert batch.expires_at == batch.created_at + 3

    polled = wait_batch(client, batch.id, interval=0.1)
    done = polled.batch
    assert done.status == "expired", done
    assert "in_progress" in polled.statuses or done.in_progress_at is not None
    wire = raw_batch(client, batch.id)
    assert_timestamps_int(wire)
    assert wire["expired_at"] is not None
    assert wire["expired_at"] >= wire["expires_at"]
    assert wire["completed_at"] is None and wire["cancelled_at"] is None

    outputs, errors = _split_results(client, done, ids)
    assert len(outputs) >= 1, "results finished inside the window were lost"
    assert errors
    for line in errors.values():
        assert line["response"] is None
        assert line["error"]["code"] == "batch_expired"
        assert line["error"]["message"] == EXPIRED_MESSAGE
    # What was in flight at the deadline finished and was kept; the rest was never sent.
    sent = [r["body"]["messages"][0]["content"] for r in stub.received()]
    assert len(sent) == len(set(sent))
    assert set(sent) == {f"expire {i}" for i in outputs}

    # Expired is terminal: cancel is refused and the status stays.
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)
    assert client.batches.retrieve(batch.id).status in TERMINAL
    # And the files stay downloadable by plain HTTP too.
    with httpx.Client(headers={"authorization": "Bearer test"}) as http:
        r = http.get(f"{server.url}/v1/files/{done.error_file_id}/content")
        assert r.status_code == 200 and r.headers.get("x-request-id")

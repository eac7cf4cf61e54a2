"""The seed walkthrough (Azure's vision batch tutorial), with every client spelling."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import openai

from tests.support.upstream_stub import StubServer

from .helpers import (
    API_KEY,
    BATCH_TIMEOUT,
    Server,
    assert_timestamps_int,
    by_custom_id,
    raw_batch,
    read_lines,
    wait_batch,
    wait_file_processed,
)

# /work/shared/examples/azure_vision_test.jsonl, byte for byte (the apostrophe is U+2019).
SEED_LINES = [
    '{"custom_id": "request-1", "method": "POST", "url": "/chat/completions", "body": '
    '{"model": "<deployment-name>", "messages": [{"role": "system", "content": "You are a '
    'helpful assistant."}, {"role": "user", "content": [{"type": "text", "text": "What\u2019s '
    'in this image?"}, {"type": "image_url", "image_url": {"url": "https://www.investopedia.com'
    "/thmb/g6tXiy8r7-C1D2hmfq64HCGqZps=/4835x1792/filters:no_upscale():max_bytes(150000):"
    'strip_icc()/AStockTicker3-b2e09bfee6254daca63b0374104144fc.png"}}]}], "max_tokens": 1000}}',
    '{"custom_id": "request-2", "method": "POST", "url": "/chat/completions", "body": '
    '{"model": "<deployment-name>", "messages": [{"role": "system", "content": "You are a '
    'helpful assistant."}, {"role": "user", "content": [{"type": "text", "text": "What\u2019s '
    'in this image?"}, {"type": "image_url", "image_url": {"url": "https://ca-times.brightspotcdn'
    ".com/dims4/default/f2a296b/2147483647/strip/true/crop/4032x3024+0+0/resize/1200x900!/format"
    "/webp/quality/75/?url=https%3A%2F%2Fcalifornia-times-brightspot.s3.amazonaws.com%2F00%2F57"
    '%2F6b62e0e84a738cd3ac7c6d45b77a%2Fla-me-abcarian-column.jpg"}}]}], "max_tokens": 1000}}',
]
SEED_FILE = ("\n".join(SEED_LINES) + "\n").encode()
SEED_EXAMPLE = Path(__file__).resolve().parents[3] / "shared/examples/azure_vision_test.jsonl"

ORDER = ["validating", "in_progress", "finalizing", "completed"]


def test_embedded_seed_matches_the_shared_example() -> None:
    # The CI checkout has ../shared beside the repo; elsewhere there is nothing to compare.
    if SEED_EXAMPLE.is_file():
        assert SEED_EXAMPLE.read_bytes().splitlines() == SEED_FILE.splitlines()


def _seed_walkthrough(
    client: openai.OpenAI,
    stub: StubServer,
    *,
    endpoint: str,
    upload_status: int,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Upload, poll the file, create, poll the batch, read results; check it all."""
    # A second per request keeps in_progress long enough for the poll to see it.
    stub.configure(latency=1.0)

    raw = client.files.with_raw_response.create(
        file=("azure_vision_test.jsonl", SEED_FILE), purpose="batch"
    )
    assert raw.status_code == upload_status
    assert raw.headers.get("x-request-id")
    uploaded = raw.parse()
    assert uploaded.object == "file"
    assert uploaded.purpose == "batch"
    assert uploaded.bytes == len(SEED_FILE)
    assert uploaded.filename == "azure_vision_test.jsonl"

    # The Azure tutorial's loop: poll until processed.
    f = client.files.retrieve(uploaded.id)
    deadline = time.monotonic() + BATCH_TIMEOUT
    while f.status != "processed":
        assert f.status != "error", f.status_details
        assert time.monotonic() < deadline
        time.sleep(0.1)
        f = client.files.retrieve(uploaded.id)

    kwargs: dict[str, Any] = {}
    if metadata is not None:
        kwargs["metadata"] = metadata
    created = client.batches.create(
        input_file_id=f.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        **kwargs,
    )
    assert created.object == "batch"
    assert created.status == "validating"
    assert created.endpoint == endpoint
    assert created.input_file_id == f.id
    assert created.completion_window == "24h"
    assert created.request_counts is not None
    assert (created.request_counts.total, created.request_counts.completed) == (0, 0)
    assert created.metadata == metadata

    polled = wait_batch(client, created.id, interval=0.05)
    batch = polled.batch
    assert batch.status == "completed", batch
    statuses = ["validating", *polled.statuses]
    # Statuses only move forward, and the batch was seen running.
    seen = [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]
    assert seen == sorted(seen, key=ORDER.index), seen
    assert "in_progress" in seen, seen

    assert batch.errors is None
    assert batch.request_counts is not None
    assert batch.request_counts.total == 2
    assert batch.request_counts.completed == 2
    assert batch.request_counts.failed == 0
    assert batch.output_file_id
    assert batch.error_file_id is None
    assert batch.metadata == metadata

    wire = raw_batch(client, batch.id)
    assert_timestamps_int(wire)
    assert wire["object"] == "batch"
    assert wire["expires_at"] == wire["created_at"] + 86400
    assert wire["in_progress_at"] is not None
    assert wire["finalizing_at"] is not None
    assert wire["completed_at"] is not None
    assert wire["created_at"] <= wire["in_progress_at"] <= wire["finalizing_at"]
    assert wire["finalizing_at"] <= wire["completed_at"]
    for name in ("failed_at", "expired_at", "cancelling_at", "cancelled_at"):
        assert wire[name] is None, name

    # The output, joined by custom_id as the vendors tell clients to.
    text = client.files.content(batch.output_file_id).text
    outputs = by_custom_id([json.loads(line) for line in text.splitlines() if line.strip()])
    assert set(outputs) == {"request-1", "request-2"}
    inputs = {json.loads(line)["custom_id"]: json.loads(line) for line in SEED_LINES}
    for custom_id, line in outputs.items():
        assert line["id"].startswith("batch_req_")
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert inputs[custom_id]["body"]["model"] == body["model"]

    # Upstream got each body with its image parts unchanged.
    received = [r for r in stub.received() if r["path"].endswith("/chat/completions")]
    assert len(received) == 2
    sent_bodies = {json.dumps(r["body"]["messages"], sort_keys=True): r["body"] for r in received}
    for line in inputs.values():
        key = json.dumps(line["body"]["messages"], sort_keys=True)
        assert key in sent_bodies, "the messages did not reach upstream unchanged"
        got = sent_bodies[key]
        assert got["messages"] == line["body"]["messages"]
        assert got["messages"][1]["content"][1] == line["body"]["messages"][1]["content"][1]
        assert got["max_tokens"] == 1000
        assert got["model"] == "<deployment-name>"

    # Usage is the sum of what upstream reported.
    usages = [line["response"]["body"]["usage"] for line in outputs.values()]
    assert batch.usage is not None
    assert batch.usage.input_tokens == sum(u["prompt_tokens"] for u in usages)
    assert batch.usage.output_tokens == sum(u["completion_tokens"] for u in usages)
    assert batch.usage.total_tokens == sum(u["total_tokens"] for u in usages)
    assert batch.usage.input_tokens > 0 and batch.usage.output_tokens > 0
    return wire


def test_seed_flow_azure(azure_client: openai.AzureOpenAI, stub: StubServer) -> None:
    wire = _seed_walkthrough(azure_client, stub, endpoint="/chat/completions", upload_status=201)
    assert wire["model"] == "<deployment-name>"
    # The caller's key authenticates it to overnight only; it is never sent upstream.
    for r in stub.received():
        assert r["headers"].get("api-key") != API_KEY
        assert r["headers"].get("authorization") != f"Bearer {API_KEY}"


def test_seed_flow_openai(openai_client: openai.OpenAI, stub: StubServer) -> None:
    client = openai_client
    metadata = {"project": "acceptance", "run": "seed-openai", "note": "caf\u00e9 \u2713"}
    wire = _seed_walkthrough(
        client, stub, endpoint="/v1/chat/completions", upload_status=200, metadata=metadata
    )
    assert wire["model"] == "<deployment-name>"
    assert wire["metadata"] == metadata
    listed = client.batches.list(limit=5)
    assert [b.id for b in listed.data] == [wire["id"]]
    assert listed.data[0].metadata == metadata


def test_azure_v1_style_routes(server: Server, stub: StubServer) -> None:
    """The newer Azure spelling: /openai/v1/..., `api-version=preview` appended."""
    client = server.openai(
        base_url=f"{server.url}/openai/v1", default_query={"api-version": "preview"}
    )
    lines = [json.loads(line) for line in SEED_LINES]
    content = ("\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n").encode()
    uploaded = client.files.create(file=("vision.jsonl", content), purpose="batch")
    assert wait_file_processed(client, uploaded.id).bytes == len(content)
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/chat/completions",  # type: ignore[arg-type]
        completion_window="24h",
    )
    done = wait_batch(client, batch.id).batch
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert done.request_counts.completed == 2
    outputs = by_custom_id(read_lines(client, done.output_file_id))
    assert set(outputs) == {"request-1", "request-2"}
    assert all(line["response"]["status_code"] == 200 for line in outputs.values())

    # The same objects through the AzureOpenAI client given the v1 base_url.
    azure_v1 = openai.AzureOpenAI(
        base_url=f"{server.url}/openai/v1/",
        api_version="preview",
        api_key=API_KEY,
        max_retries=0,
        timeout=30.0,
    )
    with azure_v1:
        assert azure_v1.batches.retrieve(batch.id).status == "completed"
        assert (
            azure_v1.files.content(done.output_file_id).text
            == client.files.content(done.output_file_id).text
        )
        second = azure_v1.files.create(file=("again.jsonl", content), purpose="batch")
        again = azure_v1.batches.create(
            input_file_id=second.id,
            endpoint="/chat/completions",  # type: ignore[arg-type]
            completion_window="24h",
        )
        assert wait_batch(azure_v1, again.id).batch.status == "completed"


def test_azure_client_with_a_deployment(server: Server, stub: StubServer) -> None:
    """Files and batches never go under /openai/deployments/, even with azure_deployment."""
    client = server.azure(azure_deployment="my-gpt-4o")
    uploaded = client.files.create(file=("vision.jsonl", SEED_FILE), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/chat/completions",  # type: ignore[arg-type]
        completion_window="24h",
    )
    done = wait_batch(client, batch.id).batch
    assert done.status == "completed", done
    assert {line["custom_id"] for line in read_lines(client, done.output_file_id)} == {
        "request-1",
        "request-2",
    }

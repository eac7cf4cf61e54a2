"""What lands in the output and error files: failures, retries, every endpoint."""

from __future__ import annotations

import json
from collections import Counter

from tests.support.upstream_stub import StubServer

from .helpers import (
    Server,
    StartServer,
    assert_timestamps_int,
    by_custom_id,
    chat_line,
    raw_batch,
    read_lines,
    run_batch,
)


def test_non_2xx_answers_go_to_the_error_file(server: Server, stub: StubServer) -> None:
    stub.configure(status_override=400)
    client = server.openai()
    lines = [chat_line(f"r{i}", text=f"q{i}") for i in range(4)]
    batch = run_batch(client, lines)
    # A batch whose every request failed is still completed, with only an error file.
    assert batch.status == "completed", batch
    assert batch.errors is None
    assert batch.output_file_id is None
    assert batch.error_file_id
    assert batch.request_counts is not None
    assert batch.request_counts.total == 4
    assert batch.request_counts.failed == 4
    assert batch.request_counts.completed == 0
    errors = by_custom_id(read_lines(client, batch.error_file_id))
    assert set(errors) == {f"r{i}" for i in range(4)}
    for line in errors.values():
        assert line["response"]["status_code"] == 400
        error = line["response"]["body"]["error"]
        assert error["message"]
        assert error["type"] == "invalid_request_error"
        # Filled for clients that read `error` of every failed line (docs/compatibility.md).
        assert line["error"] == {"code": "invalid_request_error", "message": error["message"]}
    # A 400 is final: each request went upstream once.
    assert stub.stats()["received"] == 4
    assert_timestamps_int(raw_batch(client, batch.id))


def test_mixed_results_split_between_files(server: Server, stub: StubServer) -> None:
    client = server.openai()
    bad = chat_line("bad")
    bad["body"]["messages"] = ["not an object"]  # the upstream rejects this one with a 400
    lines = [chat_line("ok-1"), bad, chat_line("ok-2")]
    batch = run_batch(client, lines, output_expires_after={"anchor": "created_at", "seconds": 3600})
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert batch.request_counts.total == 3
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
    outputs = by_custom_id(read_lines(client, batch.output_file_id))
    errors = by_custom_id(read_lines(client, batch.error_file_id))
    assert set(outputs) == {"ok-1", "ok-2"}
    assert set(errors) == {"bad"}
    assert errors["bad"]["response"]["status_code"] == 400
    assert errors["bad"]["response"]["body"]["error"]["param"] == "messages"
    assert errors["bad"]["error"]["code"] == "invalid_request_error"
    ids = [line["id"] for line in [*outputs.values(), *errors.values()]]
    assert len(set(ids)) == 3 and all(i.startswith("batch_req_") for i in ids)
    # Only successful requests count toward usage... and the usage of all of them does.
    usages = [line["response"]["body"]["usage"] for line in outputs.values()]
    assert batch.usage is not None
    assert batch.usage.input_tokens == sum(u["prompt_tokens"] for u in usages)
    # output_expires_after sets how long the result files live.
    for file_id in (batch.output_file_id, batch.error_file_id):
        assert file_id is not None
        f = client.files.retrieve(file_id)
        assert f.expires_at == f.created_at + 3600


def test_transient_failures_are_retried(server: Server, stub: StubServer) -> None:
    stub.configure(fail_first_n=2)
    client = server.openai()
    lines = [chat_line(f"r{i}", text=f"retry me {i}") for i in range(5)]
    batch = run_batch(client, lines)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (5, 0)
    assert batch.error_file_id is None
    outputs = by_custom_id(read_lines(client, batch.output_file_id))
    assert set(outputs) == {f"r{i}" for i in range(5)}
    assert all(line["response"]["status_code"] == 200 for line in outputs.values())
    # Two 500s then a 200, for every request; nothing more.
    receipts = Counter(r["body"]["messages"][0]["content"] for r in stub.received())
    assert receipts == {f"retry me {i}": 3 for i in range(5)}
    stats = stub.stats()
    assert stats["by_status"] == {"200": 5, "500": 10}


def test_retries_exhausted_keep_the_last_answer(
    start_server: StartServer, stub: StubServer
) -> None:
    server = start_server(env={"OVERNIGHT_MAX_ATTEMPTS": "3"})
    stub.configure(status_override=503)
    client = server.openai()
    batch = run_batch(client, [chat_line("a", text="always 503"), chat_line("b", text="also")])
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 2)
    errors = by_custom_id(read_lines(client, batch.error_file_id))
    assert set(errors) == {"a", "b"}
    for line in errors.values():
        # Upstream did answer: the answer is kept, as for any non-2xx.
        assert line["error"]["code"] == "server_error"
        assert line["response"]["status_code"] == 503
        assert line["response"]["body"]["error"]["message"]
    receipts = Counter(r["body"]["messages"][0]["content"] for r in stub.received())
    assert receipts == {"always 503": 3, "also": 3}


def test_no_answer_at_all_is_an_error_line(start_server: StartServer, stub: StubServer) -> None:
    server = start_server(env={"OVERNIGHT_MAX_ATTEMPTS": "2"})
    stub.configure(reset_rate=1.0)
    client = server.openai()
    batch = run_batch(client, [chat_line("a"), chat_line("b")])
    assert batch.status == "completed", batch
    assert batch.output_file_id is None
    errors = by_custom_id(read_lines(client, batch.error_file_id))
    assert set(errors) == {"a", "b"}
    for line in errors.values():
        assert line["response"] is None
        assert set(line["error"]) >= {"code", "message"}
        assert line["error"]["code"] and line["error"]["message"]
    assert stub.stats()["resets"] == 4


def test_embeddings_batch(server: Server, stub: StubServer) -> None:
    client = server.openai()
    lines = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": f"embed this text number {i}"},
        }
        for i in range(3)
    ]
    lines.append(
        {
            "custom_id": "e-multi",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": ["one", "two"], "dimensions": 8},
        }
    )
    batch = run_batch(client, lines, endpoint="/v1/embeddings")
    assert batch.status == "completed", batch
    assert batch.endpoint == "/v1/embeddings"
    assert batch.model == "text-embedding-3-small"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (4, 4)
    outputs = by_custom_id(read_lines(client, batch.output_file_id))
    assert set(outputs) == {"e0", "e1", "e2", "e-multi"}
    for line in outputs.values():
        body = line["response"]["body"]
        assert line["response"]["status_code"] == 200
        assert body["object"] == "list"
        assert body["data"] and all(d["object"] == "embedding" for d in body["data"])
    assert len(outputs["e-multi"]["response"]["body"]["data"]) == 2
    assert len(outputs["e-multi"]["response"]["body"]["data"][0]["embedding"]) == 8
    usages = [line["response"]["body"]["usage"] for line in outputs.values()]
    assert batch.usage is not None
    assert batch.usage.input_tokens == sum(u["prompt_tokens"] for u in usages) > 0
    assert batch.usage.output_tokens == 0
    assert batch.usage.total_tokens == sum(u["total_tokens"] for u in usages)
    assert {r["path"] for r in stub.received()} == {"/v1/embeddings"}


def test_responses_batch(server: Server, stub: StubServer) -> None:
    client = server.azure()
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": "gpt-4.1-mini", "input": f"Tell me about {i}", "instructions": "Be"},
        }
        for i in range(2)
    ]
    lines.append(
        {
            "custom_id": "r-parts",
            "method": "POST",
            "url": "/responses",
            "body": {
                "model": "gpt-4.1-mini",
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "What is this?"},
                            {"type": "input_image", "image_url": "https://example.com/a.png"},
                        ],
                    }
                ],
            },
        }
    )
    batch = run_batch(client, lines, endpoint="/v1/responses")
    assert batch.status == "completed", batch
    assert batch.model == "gpt-4.1-mini"
    outputs = by_custom_id(read_lines(client, batch.output_file_id))
    assert set(outputs) == {"r0", "r1", "r-parts"}
    for line in outputs.values():
        body = line["response"]["body"]
        assert body["object"] == "response"
        assert body["output"][0]["content"][0]["type"] == "output_text"
    usages = [line["response"]["body"]["usage"] for line in outputs.values()]
    assert batch.usage is not None
    assert batch.usage.input_tokens == sum(u["input_tokens"] for u in usages) > 0
    assert batch.usage.output_tokens == sum(u["output_tokens"] for u in usages) > 0
    assert batch.usage.total_tokens == sum(u["total_tokens"] for u in usages)
    parts_sent = [r["body"] for r in stub.received() if isinstance(r["body"]["input"], list)]
    assert parts_sent == [lines[2]["body"]]
    assert json.dumps(parts_sent[0], sort_keys=True) == json.dumps(lines[2]["body"], sort_keys=True)


def test_completions_batch(server: Server) -> None:
    client = server.openai()
    lines = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "gpt-3.5-turbo-instruct", "prompt": f"Once {i}", "max_tokens": 3},
        }
        for i in range(2)
    ]
    batch = run_batch(client, lines, endpoint="/v1/completions")
    assert batch.status == "completed", batch
    outputs = by_custom_id(read_lines(client, batch.output_file_id))
    assert {line["response"]["body"]["object"] for line in outputs.values()} == {"text_completion"}
    usages = [line["response"]["body"]["usage"] for line in outputs.values()]
    assert batch.usage is not None
    assert batch.usage.input_tokens == sum(u["prompt_tokens"] for u in usages)
    assert batch.usage.output_tokens == sum(u["completion_tokens"] for u in usages)

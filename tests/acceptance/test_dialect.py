"""The vendors' own words: validation codes and messages, 404s, 409s, error lines, streaming.

Every expected message below is what OpenAI's API answered in a recorded public test
suite or what Azure's batch documentation gives; docs/compatibility.md names the source.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.support.upstream_stub import StubServer

from .helpers import (
    Server,
    StartServer,
    by_custom_id,
    chat_line,
    jsonl,
    read_lines,
    run_batch,
    upload,
    wait_batch,
)

Client = openai.OpenAI | openai.AzureOpenAI


def _client(server: Server, which: str) -> Any:
    return server.openai() if which == "openai" else server.azure()


def _endpoint(which: str) -> str:
    return "/v1/chat/completions" if which == "openai" else "/chat/completions"


def _errors(batch: Any) -> list[tuple[str, str | None, int | None]]:
    assert batch.status == "failed", batch
    return [(e.code, e.param, e.line) for e in batch.errors.data]


# --- streaming lines never reach the upstream ------------------------------------------


@pytest.mark.parametrize("which", ["openai", "azure"])
def test_a_streaming_line_fails_validation_and_nothing_is_sent(
    server: Server, stub: StubServer, which: str
) -> None:
    stub.configure(stream="honour")  # a real streaming server: stream=true gets SSE
    client = _client(server, which)
    alone = run_batch(client, [chat_line("a", stream=True)], endpoint=_endpoint(which))
    assert _errors(alone) == [("streaming_unsupported", "body.stream", 1)]
    assert alone.errors.data[0].message == (
        "Chat Completions: Streaming is not supported in the Batch API."
    )
    mixed = run_batch(
        client,
        [chat_line("a"), chat_line("b", stream=True), chat_line("c", stream=False)],
        endpoint=_endpoint(which),
    )
    assert _errors(mixed) == [("streaming_unsupported", "body.stream", 2)]
    assert mixed.request_counts.total == 0
    assert stub.stats()["received"] == 0


def test_an_upstream_that_always_streams_is_called_once_per_request(
    server: Server, stub: StubServer
) -> None:
    """A 2xx is a billed generation: a complete answer that is not JSON fails once."""
    stub.configure(stream="always")
    client = server.openai()
    batch = run_batch(client, [chat_line(f"r{i}") for i in range(6)])
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 6)
    assert stub.stats()["received"] == 6  # never re-sent
    lines = read_lines(client, batch.error_file_id)
    assert len(lines) == 6
    for line in lines:
        assert line["response"] is None
        assert line["error"]["code"] == "invalid_upstream_response"
        assert "text/event-stream" in line["error"]["message"]
        assert "data: {" in line["error"]["message"]  # an excerpt of what came back


def test_a_200_with_garbage_is_reported_once(server: Server, stub: StubServer) -> None:
    stub.configure(garbage_rate=1.0)
    client = server.openai()
    batch = run_batch(client, [chat_line(f"r{i}") for i in range(4)])
    assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 4)
    assert stub.stats()["received"] == 4
    line = read_lines(client, batch.error_file_id)[0]
    assert "Bad Gateway" in line["error"]["message"]


# --- every missing body field, in line order -------------------------------------------


def test_every_missing_field_is_an_error_with_its_param(server: Server, stub: StubServer) -> None:
    client = server.openai()
    no_model_no_messages = {"custom_id": "b", "method": "POST", "url": "/v1/chat/completions"}
    no_model_no_messages["body"] = {"temperature": 0}  # type: ignore[assignment]
    no_custom_id = {k: v for k, v in chat_line("x").items() if k != "custom_id"}
    empty_messages = chat_line("d")
    empty_messages["body"]["messages"] = []
    batch = run_batch(client, [chat_line("a"), no_model_no_messages, no_custom_id, empty_messages])
    assert _errors(batch) == [
        ("invalid_request", "body.model", 2),
        ("invalid_request", "body.messages", 2),
        ("missing_required_parameter", "custom_id", 3),
        ("invalid_request", "body.messages", 4),
    ]
    messages = [e.message for e in batch.errors.data]
    assert messages[:3] == [
        "Model parameter is required.",
        "Messages parameter is required.",
        "Missing required parameter: 'custom_id'.",
    ]
    assert stub.stats()["received"] == 0


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        ("/v1/completions", {"model": "m"}, "body.prompt"),
        ("/v1/embeddings", {"model": "m"}, "body.input"),
        ("/v1/responses", {"model": "m"}, "body.input"),
        ("/v1/moderations", {"model": "m"}, "body.input"),
    ],
)
def test_each_endpoint_requires_its_input(
    server: Server, endpoint: str, body: dict[str, Any], param: str
) -> None:
    line = {"custom_id": "a", "method": "POST", "url": endpoint, "body": body}
    batch = run_batch(server.openai(), [line], endpoint=endpoint)
    assert _errors(batch) == [("invalid_request", param, 1)]


# --- OpenAI and Azure each in their own words ------------------------------------------


@pytest.mark.parametrize(
    ("which", "code", "message"),
    [
        (
            "openai",
            "invalid_url",
            "The URL provided for this request does not match the batch endpoint.",
        ),
        (
            "azure",
            "url_mismatch",
            "The URL specified in the input file doesn't match the expected endpoint URL "
            "'/v1/chat/completions'.",
        ),
    ],
)
def test_url_mismatch_in_each_vendors_words(
    server: Server, which: str, code: str, message: str
) -> None:
    client = _client(server, which)
    lines = [chat_line("a"), chat_line("b", url="/v1/embeddings")]
    batch = run_batch(client, lines, endpoint=_endpoint(which))
    assert _errors(batch) == [(code, "url", 2)]
    assert batch.errors.data[0].message == message


def test_unknown_model_in_openai_words(start_server: StartServer, stub: StubServer) -> None:
    server = start_server(config=f'[models."known"]\nurl = "{stub.url}"\n', upstream=False)
    batch = run_batch(
        server.openai(), [chat_line("a", model="known-not"), chat_line("b", model="known-not")]
    )
    assert batch.status == "failed"
    [error] = batch.errors.data
    assert (error.code, error.param, error.line) == ("model_not_found", "body.model", 1)
    assert error.message.startswith(
        "The provided model 'known-not' is not supported by the Batch API."
    )


@pytest.mark.parametrize("which", ["openai", "azure"])
def test_an_unknown_input_file_fails_the_batch_as_openai_does(server: Server, which: str) -> None:
    client = _client(server, which)
    batch = client.batches.create(
        input_file_id="file-doesnotexist",
        endpoint=_endpoint(which),
        completion_window="24h",
    )
    assert batch.status == "validating"
    failed = wait_batch(client, batch.id).batch
    [error] = failed.errors.data
    assert (error.code, error.param, error.line) == ("invalid_request", "file_id", None)
    assert error.message == (
        f"Cannot find file file-doesnotexist, or organization {server.project} "
        "does not have access to it."
    )


def test_create_errors_in_openai_words(server: Server) -> None:
    client = server.openai()
    f = upload(client, jsonl([chat_line("a")]))
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(
            input_file_id=f.id,
            endpoint="/v1/nope",  # type: ignore[arg-type]
            completion_window="24h",
        )
    assert (info.value.code, info.value.param) == ("invalid_value", "endpoint")
    assert info.value.body["message"] == (  # type: ignore[index]
        "Invalid value: '/v1/nope'. Supported values are: '/v1/chat/completions', "
        "'/v1/completions', '/v1/embeddings', '/v1/responses', '/v1/moderations', "
        "'/v1/images/generations', '/v1/images/edits', and '/v1/videos'."
    )
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="1h",  # type: ignore[arg-type]
        )
    assert (info.value.code, info.value.param) == ("invalid_value", "completion_window")
    assert info.value.body["message"] == (  # type: ignore[index]
        "Invalid value: '1h'. Supported values are: '24h'."
    )
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/batches", body={"endpoint": "/v1/chat/completions"}, cast_to=object)
    assert info.value.code == "missing_required_parameter"
    assert info.value.body["message"] == (  # type: ignore[index]
        "Missing required parameter: 'input_file_id'."
    )


@pytest.mark.parametrize("which", ["openai", "azure"])
def test_not_found_and_conflict_in_openai_words(server: Server, which: str) -> None:
    client = _client(server, which)
    with pytest.raises(openai.NotFoundError) as missing:
        client.batches.retrieve("batch_nope")
    assert missing.value.body == {  # type: ignore[comparison-overlap]
        "message": "No batch found with id 'batch_nope'.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.BadRequestError) as bad:
        client.batches.cancel("invalid")
    assert (bad.value.code, bad.value.param) == ("invalid_value", "batch_id")
    assert bad.value.message.endswith(
        "Invalid 'batch_id': 'invalid'. Expected an ID that begins with 'batch'."
    )
    with pytest.raises(openai.NotFoundError) as no_file:
        client.files.retrieve("file-nope")
    assert no_file.value.body == {  # type: ignore[comparison-overlap]
        "message": "No such File object: file-nope",
        "type": "invalid_request_error",
        "param": "id",
        "code": None,
    }
    done = run_batch(client, [chat_line("a")], endpoint=_endpoint(which))
    assert done.status == "completed"
    with pytest.raises(openai.ConflictError) as conflict:
        client.batches.cancel(done.id)
    assert conflict.value.body == {  # type: ignore[comparison-overlap]
        "message": "Cannot cancel a batch with status 'completed'.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_unknown_routes_answer_as_each_vendor(server: Server) -> None:
    http = server.http()
    openai_404 = http.get("/v1/nothing-here")
    assert openai_404.status_code == 404
    assert openai_404.json()["error"]["message"] == "Invalid URL (GET /v1/nothing-here)"
    azure_404 = http.get("/openai/nothing-here", params={"api-version": "2024-10-21"})
    assert azure_404.status_code == 404
    assert azure_404.json() == {"error": {"code": "404", "message": "Resource not found"}}


# --- error lines: `response` as the model answered, and `error` for clients that read it


def test_a_model_error_line_keeps_the_response_and_fills_error(
    server: Server, stub: StubServer
) -> None:
    stub.configure(status_override=400)
    client = server.openai()
    batch = run_batch(client, [chat_line("a")])
    [line] = read_lines(client, batch.error_file_id)
    assert line["response"]["status_code"] == 400
    assert line["response"]["body"]["error"]["message"] == (
        "The stub was told to reject this request."
    )
    assert line["error"] == {
        "code": "invalid_request_error",
        "message": "The stub was told to reject this request.",
    }


# --- the endpoints the SDK lists ---------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "body", "key"),
    [
        ("/v1/moderations", {"input": "is this fine?"}, "results"),
        ("/v1/images/generations", {"model": "gpt-image-1", "prompt": "a cat"}, "data"),
        ("/v1/images/edits", {"prompt": "a hat", "images": [{"file_id": "file-x"}]}, "data"),
        ("/v1/videos", {"model": "sora-2", "prompt": "waves"}, "status"),
    ],
)
def test_newer_endpoints_pass_through_unchanged(
    server: Server, stub: StubServer, endpoint: str, body: dict[str, Any], key: str
) -> None:
    client = server.openai()
    lines = [{"custom_id": "a", "method": "POST", "url": endpoint, "body": body}]
    batch = run_batch(client, lines, endpoint=endpoint)
    assert batch.status == "completed" and batch.request_counts.completed == 1, batch
    out = by_custom_id(read_lines(client, batch.output_file_id))["a"]
    assert key in out["response"]["body"]
    [sent] = stub.received()
    assert sent["body"] == body
    assert sent["path"] == endpoint

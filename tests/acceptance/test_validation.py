"""Every validation code: the batch ends `failed` with errors.data[0].{code, line}."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.support.upstream_stub import StubServer

from .helpers import (
    Server,
    StartServer,
    assert_timestamps_int,
    by_custom_id,
    chat_line,
    config_routes,
    jsonl,
    raw_batch,
    read_lines,
    upload,
    wait_batch,
)


def _without(line: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in line.items() if k != key}


def _body_without_model(custom_id: str) -> dict[str, Any]:
    line = chat_line(custom_id)
    line["body"] = _without(line["body"], "model")
    return line


def _nested_line(custom_id: str, depth: int) -> str:
    """A request line whose body nests `depth` objects deep (built as text: json recurses)."""
    deep = '{"d":' * depth + "1" + "}" * depth
    return (
        f'{{"custom_id": "{custom_id}", "method": "POST", "url": "/v1/chat/completions", '
        f'"body": {{"model": "gpt-test", "messages": [], "deep": {deep}}}}}'
    )


CASES: dict[str, tuple[bytes, str, int | None]] = {
    "invalid_json_line": (
        jsonl([chat_line("a"), '{"custom_id": "b", "method": "POST",', chat_line("c")]),
        "invalid_json_line",
        2,
    ),
    "json_not_an_object": (jsonl([chat_line("a"), "[1, 2, 3]"]), "invalid_json_line", 2),
    "missing_custom_id": (
        jsonl([chat_line("a"), _without(chat_line("b"), "custom_id")]),
        "missing_required_parameter",
        2,
    ),
    "method_get": (
        jsonl([{**chat_line("a"), "method": "GET"}]),
        "invalid_request",
        1,
    ),
    "body_not_object": (
        jsonl([chat_line("a"), chat_line("b"), {**chat_line("c"), "body": "hello"}]),
        "invalid_request",
        3,
    ),
    "missing_body_model": (
        jsonl([chat_line("a"), _body_without_model("b")]),
        "invalid_request",
        2,
    ),
    "duplicate_custom_id": (
        jsonl([chat_line("a"), chat_line("b"), chat_line("a")]),
        "duplicate_custom_id",
        3,
    ),
    "url_mismatch": (
        jsonl([chat_line("a"), chat_line("b", url="/v1/embeddings")]),
        "invalid_url",
        2,
    ),
    "model_mismatch": (
        jsonl([chat_line("a", model="m1"), chat_line("b", model="m1"), chat_line("c", model="m2")]),
        "model_mismatch",
        3,
    ),
    "empty_file": (b"\n\n   \n\n", "empty_file", None),
    "line_numbers_count_blank_lines": (
        jsonl([chat_line("a"), "", "   ", chat_line("b", url="/v1/completions")]),
        "invalid_url",
        4,
    ),
    "missing_url": (jsonl([_without(chat_line("a"), "url")]), "missing_required_parameter", 1),
    "custom_id_not_a_string": (jsonl([{**chat_line("a"), "custom_id": 7}]), "invalid_request", 1),
    "custom_id_too_long": (jsonl([chat_line("x" * 600)]), "invalid_request", 1),
    "nested_too_deep": (
        jsonl([chat_line("a"), _nested_line("b", 2000)]),
        "invalid_json_line",
        2,
    ),
    "not_utf8": (
        jsonl([chat_line("a")]) + b'{"custom_id": "\xff\xfe", "method": "POST"}\n',
        "invalid_json_line",
        2,
    ),
}
# Where Azure's codes differ from OpenAI's (docs/compatibility.md).
AZURE_CODES = {
    "missing_custom_id": "invalid_request",
    "url_mismatch": "url_mismatch",
    "line_numbers_count_blank_lines": "url_mismatch",
    "missing_url": "invalid_request",
}


def _create(client: openai.OpenAI, content: bytes) -> Any:
    f = upload(client, content)
    endpoint = (
        "/chat/completions" if isinstance(client, openai.AzureOpenAI) else "/v1/chat/completions"
    )
    return client.batches.create(
        input_file_id=f.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
    )


def _assert_failed(
    client: openai.OpenAI, batch_id: str, code: str, line: int | None
) -> dict[str, Any]:
    polled = wait_batch(client, batch_id)
    batch = polled.batch
    assert batch.status == "failed", batch
    assert "in_progress" not in polled.statuses
    assert batch.errors is not None
    assert batch.errors.object == "list"
    assert batch.errors.data, batch.errors
    first = batch.errors.data[0]
    assert first.code == code, batch.errors
    assert first.line == line, batch.errors
    assert first.message
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.request_counts is not None
    wire = raw_batch(client, batch_id)
    assert_timestamps_int(wire)
    assert wire["failed_at"] is not None
    assert wire["in_progress_at"] is None
    assert set(wire["errors"]["data"][0]) >= {"code", "message", "param", "line"}
    return wire


@pytest.mark.parametrize("which", ["openai", "azure"])
def test_every_validation_code(server: Server, stub: StubServer, which: str) -> None:
    """One server, one file per case: each batch fails with its own code and line, in the
    words of the vendor whose API created it."""
    client = server.openai() if which == "openai" else server.azure()
    batches = {name: _create(client, content).id for name, (content, _, _) in CASES.items()}
    for name, (_, code, line) in CASES.items():
        if which == "azure":
            code = AZURE_CODES.get(name, code)
        _assert_failed(client, batches[name], code, line)
    assert stub.stats()["received"] == 0, "a failed batch sent requests upstream"


@pytest.mark.parametrize("content", [b"\n\n   \n", b"\xff\xfe\x00not utf-8\n"])
def test_unusable_upload_is_marked_error(server: Server, content: bytes) -> None:
    """A blank-only or non-UTF-8 batch file is accepted, but its status says it is unusable."""
    client = server.openai()
    f = upload(client, content)
    assert f.status == "error"
    assert f.status_details
    assert client.files.retrieve(f.id).status == "error"


def test_too_many_tasks(start_server: StartServer, stub: StubServer) -> None:
    server = start_server(env={"OVERNIGHT_MAX_REQUESTS_PER_BATCH": "5"})
    client = server.openai()
    five = _create(client, jsonl([chat_line(f"r{i}") for i in range(5)]))
    six = _create(client, jsonl([chat_line(f"r{i}") for i in range(6)]))
    _assert_failed(client, six.id, "too_many_tasks", 6)
    done = wait_batch(client, five.id).batch
    assert done.status == "completed", done
    assert done.request_counts is not None and done.request_counts.completed == 5
    assert stub.stats()["received"] == 5


def test_model_not_found(start_server: StartServer, stub: StubServer) -> None:
    # Only model "known" is routed: no default upstream, no embedded model.
    config = config_routes(stub, {"known": {}})
    server = start_server(config=config, upstream=False)
    client = server.openai()
    unknown = _create(
        client, jsonl([chat_line("a", model="unknown"), chat_line("b", model="unknown")])
    )
    known = _create(client, jsonl([chat_line("a", model="known"), chat_line("b", model="known")]))
    wire = _assert_failed(client, unknown.id, "model_not_found", 1)
    assert wire["model"] in (None, "unknown")
    done = wait_batch(client, known.id).batch
    assert done.status == "completed", done
    assert done.model == "known"
    assert {r["body"]["model"] for r in stub.received()} == {"known"}


def test_bom_and_crlf_complete(server: Server) -> None:
    client = server.openai()
    lines = [json.dumps(chat_line(f"r{i}", text=f"line {i}")) for i in range(3)]
    content = b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n"
    batch = _create(client, content)
    done = wait_batch(client, batch.id).batch
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (3, 3)
    outputs = by_custom_id(read_lines(client, done.output_file_id))
    assert set(outputs) == {"r0", "r1", "r2"}
    for custom_id, line in outputs.items():
        assert line["response"]["status_code"] == 200
        content_text = line["response"]["body"]["choices"][0]["message"]["content"]
        assert content_text == f"echo: line {custom_id[1:]}"


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/chat/completions"])
def test_both_endpoint_spellings_accept_both_line_urls(server: Server, endpoint: str) -> None:
    """Azure sends /chat/completions, OpenAI /v1/chat/completions: the same endpoint."""
    client = server.openai()
    content = jsonl([chat_line("a", url="/chat/completions"), chat_line("b")])
    f = upload(client, content)
    batch = client.batches.create(
        input_file_id=f.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
    )
    done = wait_batch(client, batch.id).batch
    assert done.status == "completed", done
    assert done.endpoint == endpoint

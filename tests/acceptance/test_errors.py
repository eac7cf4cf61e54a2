"""Error envelopes: status, the four `error` keys, and `x-request-id`, on every failure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from .helpers import Server, chat_line, jsonl, upload, wait_batch

ENVELOPE_KEYS = {"message", "type", "param", "code"}


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers.get("x-request-id"), dict(response.headers)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == ENVELOPE_KEYS, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    return error


def _raises(
    kind: type[openai.APIStatusError], call: Callable[[], Any], status: int
) -> dict[str, Any]:
    with pytest.raises(kind) as info:
        call()
    exc = info.value
    assert exc.status_code == status
    assert exc.request_id, "the SDK found no x-request-id"
    error = _error(exc.response, status)
    # The SDK reads body["error"] into the exception.
    assert exc.message and error["message"] in exc.message
    assert exc.code == error["code"]
    assert exc.param == error["param"]
    assert exc.type == error["type"]
    return error


def test_unknown_batch_is_404(server: Server) -> None:
    client = server.openai()
    error = _raises(openai.NotFoundError, lambda: client.batches.retrieve("batch_nope"), 404)
    assert "batch_nope" in error["message"]
    _raises(openai.NotFoundError, lambda: client.batches.cancel("batch_nope"), 404)
    azure = server.azure()
    _raises(openai.NotFoundError, lambda: azure.batches.retrieve("batch_nope"), 404)
    long_id = "batch_" + "x" * 500
    _raises(openai.NotFoundError, lambda: client.batches.retrieve(long_id), 404)


@pytest.mark.parametrize("which", ["openai", "azure"])
def test_unknown_file_is_404(server: Server, which: str) -> None:
    client = server.openai() if which == "openai" else server.azure()
    for call in (
        lambda: client.files.retrieve("file-nope"),
        lambda: client.files.content("file-nope"),
        lambda: client.files.delete("file-nope"),
    ):
        error = _raises(openai.NotFoundError, call, 404)
        assert "file-nope" in error["message"]


def test_create_batch_errors(server: Server) -> None:
    client = server.openai()
    http = server.http()
    f = upload(client, jsonl([chat_line("a")]))

    # Missing input_file_id: the SDK cannot omit it, so send the JSON by hand.
    r = http.post(
        "/v1/batches", json={"endpoint": "/v1/chat/completions", "completion_window": "24h"}
    )
    error = _error(r, 400)
    assert error["code"] == "missing_required_parameter"
    assert error["param"] == "input_file_id"
    assert error["type"] == "invalid_request_error"
    for missing in ("endpoint", "completion_window"):
        body = {
            "input_file_id": f.id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        del body[missing]
        error = _error(http.post("/v1/batches", json=body), 400)
        assert (error["code"], error["param"]) == ("missing_required_parameter", missing)

    def create(**overrides: Any) -> Any:
        kwargs: dict[str, Any] = {
            "input_file_id": f.id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        kwargs.update(overrides)
        return lambda: client.batches.create(**kwargs)

    error = _raises(openai.BadRequestError, create(endpoint="/v1/nope"), 400)
    assert error["param"] == "endpoint"
    error = _raises(openai.BadRequestError, create(completion_window="48h"), 400)
    assert error["param"] == "completion_window"
    error = _raises(openai.BadRequestError, create(input_file_id="not-a-file-id"), 400)
    assert (error["code"], error["param"]) == ("invalid_value", "input_file_id")
    metadata = {f"k{i}": "v" for i in range(17)}
    error = _raises(openai.BadRequestError, create(metadata=metadata), 400)
    assert error["param"] == "metadata"
    # 16 pairs is the limit, not over it.
    ok = client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={f"k{i}": "v" for i in range(16)},
    )
    assert ok.metadata is not None and len(ok.metadata) == 16
    assert wait_batch(client, ok.id).batch.status == "completed"
    _raises(openai.BadRequestError, create(metadata={"k" * 65: "v"}), 400)
    too_short = {"anchor": "created_at", "seconds": 60}
    _raises(openai.BadRequestError, create(output_expires_after=too_short), 400)
    # The input file must be a batch file.
    other = client.files.create(file=("notes.jsonl", jsonl([chat_line("a")])), purpose="user_data")
    error = _raises(openai.BadRequestError, create(input_file_id=other.id), 400)
    assert error["param"] in ("input_file_id", "file_id")
    _raises(openai.BadRequestError, create(metadata={"k": "v" * 513}), 400)

    # Not JSON at all, or JSON of the wrong shape: 400, never 422 or 500.
    error = _error(
        http.post(
            "/v1/batches", content=b"{not json", headers={"content-type": "application/json"}
        ),
        400,
    )
    error = _error(http.post("/v1/batches", json=["a", "list"]), 400)
    error = _error(
        http.post(
            "/v1/batches",
            json={
                "input_file_id": 7,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        ),
        400,
    )


def test_upload_errors(server: Server) -> None:
    client = server.openai()
    content = jsonl([chat_line("a")])
    error = _raises(
        openai.BadRequestError,
        lambda: client.files.create(file=("notes.txt", content), purpose="batch"),
        400,
    )
    assert error["message"] == "Invalid file format for Batch API. Must be .jsonl"

    # Raw bytes: the SDK names the part "upload", no extension. Accepted, and usable.
    f = client.files.create(file=content, purpose="batch")
    assert f.status == "processed"
    assert f.bytes == len(content)
    assert f.filename == "upload"
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "validating"
    assert wait_batch(client, batch.id).batch.status == "completed"

    _raises(
        openai.BadRequestError,
        lambda: client.files.create(file=("a.jsonl", content), purpose="nonsense"),  # type: ignore[arg-type]
        400,
    )
    http = server.http()
    error = _error(http.post("/v1/files", files={"file": ("a.jsonl", content)}), 400)
    assert error["param"] == "purpose"
    error = _error(http.post("/v1/files", data={"purpose": "batch"}, files={}), 400)
    error = _error(http.post("/v1/files", json={"purpose": "batch"}), 400)


def test_query_errors_are_400(server: Server) -> None:
    http = server.http()
    for path in (
        "/v1/files?limit=0",
        "/v1/files?limit=10001",
        "/v1/files?order=sideways",
        "/v1/batches?limit=0",
        "/v1/batches?limit=101",
        "/v1/batches?limit=abc",
        "/openai/files?limit=0&api-version=2024-10-21",
    ):
        error = _error(http.get(path), 400)
        assert error["param"] in ("limit", "order"), (path, error)
    client = server.openai()
    _raises(openai.BadRequestError, lambda: client.files.list(limit=0), 400)


def test_every_response_has_a_request_id(server: Server) -> None:
    http = server.http()
    error = _error(http.get("/v1/no-such-route"), 404)
    assert error["code"] is None or isinstance(error["code"], str)
    _error(http.get("/nothing/here"), 404)
    for path in ("/healthz", "/v1/files", "/v1/batches", "/openai/batches?api-version=x"):
        r = http.get(path)
        assert r.status_code == 200, (path, r.text)
        assert r.headers.get("x-request-id"), path
    ids = {http.get("/v1/files").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3, "request ids repeat"
    client = server.openai()
    raw = client.files.with_raw_response.list()
    assert raw.headers.get("x-request-id")
    f = client.files.with_raw_response.create(
        file=("a.jsonl", jsonl([chat_line("a")])), purpose="batch"
    )
    assert f.headers.get("x-request-id")
    content = client.files.with_raw_response.content(f.parse().id)
    assert content.headers.get("x-request-id")
    # Wrong method on a known route: an envelope too.
    r = http.delete("/v1/batches")
    assert r.status_code in (404, 405)
    _error(r, r.status_code)


def test_wrong_api_key_is_401(server: Server) -> None:
    client = server.openai(api_key="not-the-key")
    error = _raises(openai.AuthenticationError, lambda: client.batches.list(), 401)
    assert error["code"] == "invalid_api_key"
    azure = server.azure(api_key="not-the-key")
    _raises(openai.AuthenticationError, lambda: azure.files.list(), 401)


def test_create_accepts_nulls_and_extra_fields(server: Server) -> None:
    """Clients send `metadata: null` and fields newer than this server: both are fine."""
    client = server.openai()
    http = server.http()
    f = upload(client, jsonl([chat_line("a")]))
    r = http.post(
        "/v1/batches",
        json={
            "input_file_id": f.id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": None,
            "output_expires_after": None,
            "some_future_field": {"x": 1},
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers.get("x-request-id")
    body = r.json()
    assert body["object"] == "batch" and body["metadata"] is None
    assert body["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert wait_batch(client, body["id"]).batch.status == "completed"

"""The Files API around a batch: objects, downloads through both clients, delete."""

from __future__ import annotations

import openai
import pytest

from tests.support.upstream_stub import StubServer

from .helpers import Server, chat_line, jsonl, read_lines, run_batch, upload, wait_batch


def test_file_objects_download_and_delete(server: Server) -> None:
    client = server.openai()
    azure = server.azure()
    content = jsonl([chat_line("a", text="first"), chat_line("b", text="second")])
    uploaded = upload(client, content, name="my batch.jsonl")
    assert uploaded.id.startswith("file-")
    assert uploaded.object == "file"
    assert uploaded.purpose == "batch"
    assert uploaded.status == "processed"
    assert uploaded.bytes == len(content)
    assert uploaded.filename == "my batch.jsonl"
    assert isinstance(uploaded.created_at, int)
    # The input file's bytes come back unchanged.
    assert client.files.content(uploaded.id).content == content
    assert azure.files.content(uploaded.id).content == content
    wire = client.files.with_raw_response.retrieve(uploaded.id).http_response.json()
    assert set(wire) >= {
        "id",
        "object",
        "bytes",
        "created_at",
        "expires_at",
        "filename",
        "purpose",
        "status",
        "status_details",
    }
    assert type(wire["created_at"]) is int and type(wire["bytes"]) is int

    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_batch(client, batch.id).batch
    assert done.status == "completed", done
    assert done.output_file_id

    out = client.files.retrieve(done.output_file_id)
    assert out.purpose == "batch_output"
    assert out.status == "processed"
    assert out.object == "file"
    text_openai = client.files.content(done.output_file_id).text
    text_azure = azure.files.content(done.output_file_id).text
    assert text_openai == text_azure
    assert out.bytes == len(text_openai.encode())
    assert azure.files.retrieve(done.output_file_id).bytes == out.bytes
    assert {line["custom_id"] for line in read_lines(client, done.output_file_id)} == {"a", "b"}
    assert done.output_file_id in [f.id for f in client.files.list(purpose="batch_output")]

    # Delete: the exact answer, then 404 everywhere.
    raw = client.files.with_raw_response.delete(done.output_file_id)
    assert raw.status_code == 200
    assert raw.http_response.json() == {
        "id": done.output_file_id,
        "object": "file",
        "deleted": True,
    }
    deleted = raw.parse()
    assert deleted.deleted is True and deleted.id == done.output_file_id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(done.output_file_id)
    with pytest.raises(openai.NotFoundError):
        azure.files.content(done.output_file_id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(done.output_file_id)
    assert done.output_file_id not in [f.id for f in client.files.list()]

    # Through the Azure routes too.
    other = azure.files.create(file=("x.jsonl", content), purpose="batch")
    gone = azure.files.delete(other.id)
    assert (gone.id, gone.deleted) == (other.id, True)
    with pytest.raises(openai.NotFoundError):
        azure.files.retrieve(other.id)


def test_error_file_object(server: Server, stub: StubServer) -> None:
    stub.configure(status_override=422)
    client = server.openai()
    done = run_batch(client, [chat_line("a"), chat_line("b")])
    assert done.status == "completed"
    assert done.output_file_id is None and done.error_file_id
    err = client.files.retrieve(done.error_file_id)
    assert err.purpose == "batch_output"
    assert err.status == "processed"
    body = client.files.content(done.error_file_id).content
    assert err.bytes == len(body)
    assert body.endswith(b"\n") and body.count(b"\n") == 2


def test_upload_with_expiry(server: Server) -> None:
    client = server.openai()
    content = jsonl([chat_line("a")])
    f = client.files.create(
        file=("e.jsonl", content),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert f.expires_at == f.created_at + 3600
    with pytest.raises(openai.BadRequestError):
        client.files.create(
            file=("e.jsonl", content),
            purpose="batch",
            expires_after={"anchor": "created_at", "seconds": 10},
        )
    azure = server.azure()
    g = azure.files.create(
        file=("e.jsonl", content),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 7200},
    )
    assert g.expires_at == g.created_at + 7200

"""`Idempotency-Key` on the creates: a retried POST returns the first object, never a second."""

from __future__ import annotations

import threading
import uuid

import httpx
import openai
import pytest

from tests.support.upstream_stub import StubServer

from .helpers import API_KEY, Server, StartServer, chat_line, jsonl, upload, wait_batch


def _key() -> dict[str, str]:
    return {"Idempotency-Key": f"test-{uuid.uuid4()}"}


@pytest.mark.parametrize("which", ["openai", "azure"])
def test_same_key_same_parameters_is_the_same_batch(
    server: Server, stub: StubServer, which: str
) -> None:
    client = server.openai() if which == "openai" else server.azure()
    key = _key()
    # Texts of this test alone: the stub is shared, and other tests' batches may still run.
    texts = [f"{which}-{key['Idempotency-Key']}-{n}" for n in ("a", "b")]
    f = upload(client, jsonl([chat_line("a", texts[0]), chat_line("b", texts[1])]))
    endpoint = "/v1/chat/completions" if which == "openai" else "/chat/completions"
    first = client.batches.create(
        input_file_id=f.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        metadata={"team": "x", "run": "1"},
        extra_headers=key,
    )
    again = client.batches.with_raw_response.create(
        input_file_id=f.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        metadata={"run": "1", "team": "x"},  # same pairs, another order
        extra_headers=key,
    )
    assert again.headers["idempotent-replayed"] == "true"
    second = again.parse()
    assert (second.id, second.created_at) == (first.id, first.created_at)
    assert len(client.batches.list().data) == 1
    done = wait_batch(client, first.id).batch
    assert done.status == "completed"
    counts = stub.counts()
    assert [counts.get(t, 0) for t in texts] == [1, 1]  # each request ran once
    # Without a key, the same call is a new batch (the vendors' behaviour).
    other = client.batches.create(
        input_file_id=f.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
    )
    assert other.id != first.id


def test_same_key_other_parameters_is_a_conflict(server: Server) -> None:
    client = server.openai()
    f = upload(client, jsonl([chat_line("a")]))
    key = _key()
    client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "1"},
        extra_headers=key,
    )
    with pytest.raises(openai.ConflictError) as info:
        client.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"run": "2"},
            extra_headers=key,
        )
    assert "conflict" in info.value.message
    assert info.value.response.headers["x-should-retry"] == "false"
    assert len(client.batches.list().data) == 1


def test_a_retried_upload_is_the_same_file(server: Server) -> None:
    client = server.openai()
    key = _key()
    content = jsonl([chat_line("a")])
    first = client.files.create(file=("in.jsonl", content), purpose="batch", extra_headers=key)
    second = client.files.create(file=("in.jsonl", content), purpose="batch", extra_headers=key)
    assert (second.id, second.created_at) == (first.id, first.created_at)
    assert [x.id for x in client.files.list().data] == [first.id]
    with pytest.raises(openai.ConflictError):
        client.files.create(
            file=("in.jsonl", jsonl([chat_line("b")])), purpose="batch", extra_headers=key
        )
    assert client.files.content(first.id).content == content


def test_keys_belong_to_a_project(start_server: StartServer) -> None:
    server = start_server(env={"OVERNIGHT_API_KEYS": f"one:{API_KEY},two:other-key"})
    one, two = server.openai(), server.openai(api_key="other-key")
    key = _key()
    content = jsonl([chat_line("a")])
    a = one.files.create(file=("in.jsonl", content), purpose="batch", extra_headers=key)
    b = two.files.create(file=("in.jsonl", content), purpose="batch", extra_headers=key)
    assert a.id != b.id


def test_a_failed_create_keeps_nothing(server: Server) -> None:
    client = server.openai()
    key = _key()
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id="not-a-file",
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_headers=key,
        )
    f = upload(client, jsonl([chat_line("a")]))
    # The same key, now with parameters that work: it runs (the failure was not kept).
    batch = client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_headers=key,
    )
    assert batch.status == "validating"


def test_concurrent_retries_make_one_batch(server: Server) -> None:
    f = upload(server.openai(), jsonl([chat_line("a")]))
    key = _key()
    body = {"input_file_id": f.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    statuses: list[int] = []
    ids: set[str] = set()

    def post() -> None:
        with httpx.Client(base_url=server.url, timeout=30.0) as http:
            r = http.post(
                "/v1/batches",
                json=body,
                headers={"authorization": f"Bearer {API_KEY}", **key},
            )
        statuses.append(r.status_code)
        if r.status_code == 200:
            ids.add(r.json()["id"])

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 1, (statuses, ids)
    assert set(statuses) <= {200, 409}  # 409: the first was still running; the SDK retries
    assert len(server.openai().batches.list().data) == 1


def test_a_bad_key_is_a_clear_400(server: Server) -> None:
    http = server.http()
    r = http.post(
        "/v1/batches",
        json={
            "input_file_id": "file-x",
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
        headers={"Idempotency-Key": "x" * 300},
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "Idempotency-Key"

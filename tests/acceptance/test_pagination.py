"""Cursor pagination of batches and files, by hand and with the SDK's auto-pagination."""

from __future__ import annotations

from typing import Any, Literal

from .helpers import Server, chat_line, jsonl, upload, wait_batch


def _pages(fetch: Any, limit: int) -> list[Any]:
    """Page by hand as the SDK does: after=<last id>, until has_more is false."""
    pages, after = [], None
    for _ in range(50):
        kwargs: dict[str, Any] = {"limit": limit}
        if after is not None:
            kwargs["after"] = after
        page = fetch(**kwargs)
        pages.append(page)
        if not page.has_more:
            return pages
        after = page.data[-1].id
    raise AssertionError("pagination never ended")


def _check_page_shape(page: Any, limit: int) -> None:
    assert page.object == "list"
    assert len(page.data) <= limit
    if page.data:
        assert page.first_id == page.data[0].id
        assert page.last_id == page.data[-1].id


def test_batches_pagination(server: Server) -> None:
    client = server.openai()
    f = upload(client, jsonl([chat_line("a")]))
    created = [
        client.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"n": str(i)},
        ).id
        for i in range(5)
    ]
    for batch_id in created:
        assert wait_batch(client, batch_id).batch.status == "completed"

    pages = _pages(client.batches.list, 2)
    assert [len(p.data) for p in pages] == [2, 2, 1]
    assert [p.has_more for p in pages] == [True, True, False]
    for page in pages:
        _check_page_shape(page, 2)
    listed = [b.id for p in pages for b in p.data]
    assert listed == created[::-1], "batches are listed newest first"

    # The raw wire shape of one page.
    raw = client.batches.with_raw_response.list(limit=2).http_response.json()
    assert set(raw) >= {"object", "data", "first_id", "last_id", "has_more"}
    assert raw["has_more"] is True

    auto = [b.id for b in client.batches.list(limit=2)]
    assert auto == listed
    assert len(set(auto)) == 5

    # Past the end: an empty page that says so.
    last = client.batches.list(limit=2, after=created[0])
    assert last.data == [] and last.has_more is False
    everything = client.batches.list(limit=100)
    assert [b.id for b in everything.data] == listed and everything.has_more is False


def test_batches_pagination_azure(server: Server) -> None:
    client = server.azure()
    f = upload(client, jsonl([chat_line("a")]))
    created = [
        client.batches.create(
            input_file_id=f.id,
            endpoint="/chat/completions",  # type: ignore[arg-type]
            completion_window="24h",
        ).id
        for _ in range(3)
    ]
    auto = [b.id for b in client.batches.list(limit=1)]
    assert auto == created[::-1]
    for batch_id in created:
        wait_batch(client, batch_id)


def test_files_pagination(server: Server) -> None:
    client = server.openai()
    uploaded: list[tuple[str, str]] = []
    for i in range(5):
        purpose: Literal["batch", "user_data"] = "batch" if i % 2 == 0 else "user_data"
        name = f"f{i}.jsonl"
        f = client.files.create(file=(name, jsonl([chat_line(f"r{i}")])), purpose=purpose)
        uploaded.append((f.id, purpose))
    ids = [file_id for file_id, _ in uploaded]

    def listed(**kwargs: Any) -> list[str]:
        return [f.id for f in client.files.list(**kwargs)]

    assert listed(limit=2, order="asc") == ids
    assert listed(limit=2, order="desc") == ids[::-1]
    assert listed(limit=2) == ids[::-1], "files default to newest first"
    assert listed(limit=10_000) == ids[::-1]
    batch_ids = [file_id for file_id, purpose in uploaded if purpose == "batch"]
    assert listed(purpose="batch", limit=1, order="asc") == batch_ids
    assert listed(purpose="user_data", order="desc") == [
        file_id for file_id, purpose in uploaded[::-1] if purpose == "user_data"
    ]
    assert listed(purpose="batch_output") == []

    for order, expected in (("asc", ids), ("desc", ids[::-1])):
        pages = _pages(lambda order=order, **kw: client.files.list(order=order, **kw), 2)
        assert [len(p.data) for p in pages] == [2, 2, 1]
        assert [p.has_more for p in pages] == [True, True, False]
        for page in pages:
            _check_page_shape(page, 2)
        assert [f.id for p in pages for f in p.data] == expected

    raw = client.files.with_raw_response.list(limit=2, order="asc").http_response.json()
    assert raw["object"] == "list"
    assert raw["first_id"] == ids[0] and raw["last_id"] == ids[1]
    assert raw["has_more"] is True


def test_files_listing_through_azure(server: Server) -> None:
    openai_client = server.openai()
    azure = server.azure()
    a = upload(openai_client, jsonl([chat_line("a")]))
    b = azure.files.create(file=("b.jsonl", jsonl([chat_line("b")])), purpose="batch")
    # Both clients see the same files (same key, same project).
    assert [f.id for f in azure.files.list(limit=1, order="asc")] == [a.id, b.id]
    assert [f.id for f in openai_client.files.list(order="desc")] == [b.id, a.id]


def test_delete_while_paginating_files(server: Server) -> None:
    """The common clean-up loop: the SDK asks for the next page after a file just deleted."""
    client = server.openai()
    for i in range(5):
        upload(client, jsonl([chat_line(f"r{i}")]), name=f"f{i}.jsonl")
    deleted = []
    for f in client.files.list(limit=2):
        client.files.delete(f.id)
        deleted.append(f.id)
    assert len(deleted) == 5
    assert client.files.list().data == []

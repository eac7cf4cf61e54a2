"""One contract for every blob driver: the memory store used by unit tests behaves as the
local directory does (the S3 driver runs its own suite against a real S3 API)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from overnight.blobs import BlobStore, open_blobs
from overnight.blobs.memory import MemoryBlobStore


@pytest.fixture(params=["memory", "local"])
async def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    store = open_blobs("memory://" if request.param == "memory" else f"file://{tmp_path}/b")
    yield store
    await store.close()


async def test_an_object_appears_only_when_committed(blobs: BlobStore) -> None:
    w = await blobs.writer("files/a")
    await w.write(b"one ")
    await w.write(b"two")
    with pytest.raises(FileNotFoundError):
        await blobs.read_all("files/a")
    assert await w.commit() == 7
    assert await blobs.read_all("files/a") == b"one two"


async def test_reads_stream_in_chunks_of_the_asked_size(blobs: BlobStore) -> None:
    await blobs.put("files/big", bytes(range(256)) * 10)
    chunks = [c async for c in blobs.read("files/big", chunk_size=1000)]
    assert [len(c) for c in chunks] == [1000, 1000, 560]
    assert b"".join(chunks) == bytes(range(256)) * 10


async def test_abort_leaves_nothing_and_delete_is_idempotent(blobs: BlobStore) -> None:
    w = await blobs.writer("files/gone")
    await w.write(b"x")
    await w.abort()
    with pytest.raises(FileNotFoundError):
        await blobs.read_all("files/gone")
    await blobs.put("files/gone", b"y")
    await blobs.delete("files/gone")
    await blobs.delete("files/gone")
    with pytest.raises(FileNotFoundError):
        await blobs.read_all("files/gone")


async def test_an_empty_object_is_an_object(blobs: BlobStore) -> None:
    assert await blobs.put("files/empty", b"") == 0
    assert await blobs.read_all("files/empty") == b""


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "", "files/../../x"])
async def test_keys_that_could_escape_are_refused(blobs: BlobStore, key: str) -> None:
    with pytest.raises(ValueError):
        await blobs.writer(key)


async def test_the_memory_store_shows_what_is_being_written() -> None:
    store = MemoryBlobStore()
    w = await store.writer("files/x")
    assert store.partial == {"files/x"}
    await w.commit()
    assert store.partial == set() and store.objects == {"files/x": b""}

"""File bytes in a dict: the blob store for unit tests and throwaway servers.

It keeps the contract of the real drivers (an object is invisible until its writer
commits, a missing key reads as FileNotFoundError, keys are checked the same way), so
code tested on it behaves the same on a directory or a bucket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from overnight.blobs.base import BlobStore, BlobWriter, check_key


class _MemoryWriter(BlobWriter):
    def __init__(self, store: MemoryBlobStore, key: str) -> None:
        self.store = store
        self.key = key
        self.parts: list[bytes] | None = []
        store.partial.add(key)

    async def write(self, data: bytes) -> None:
        if self.parts is None:
            raise ValueError(f"blob {self.key!r}: written after commit or abort")
        self.parts.append(bytes(data))

    async def commit(self) -> int:
        if self.parts is None:
            raise ValueError(f"blob {self.key!r}: committed twice")
        data, self.parts = b"".join(self.parts), None
        self.store.objects[self.key] = data
        self.store.partial.discard(self.key)
        return len(data)

    async def abort(self) -> None:
        self.parts = None
        self.store.partial.discard(self.key)


class MemoryBlobStore(BlobStore):
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.partial: set[str] = set()  # keys being written, for tests to look at

    async def writer(self, key: str) -> BlobWriter:
        return _MemoryWriter(self, check_key(key))

    async def read(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        try:
            data = self.objects[check_key(key)]
        except KeyError:
            raise FileNotFoundError(key) from None
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]

    async def delete(self, key: str) -> None:
        self.objects.pop(check_key(key), None)

    def describe(self) -> str:
        return "memory"

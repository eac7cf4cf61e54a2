"""Where file bytes live: a small streaming interface; the drivers implement it."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

# Keys are made by overnight from ids, never from client filenames; this
# pattern is the last line of defence against a path escaping the store.
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-./]{0,250}$")


def check_key(key: str) -> str:
    if not KEY_PATTERN.match(key) or ".." in key or "//" in key:
        raise ValueError(f"invalid blob key {key!r}")
    return key


class BlobWriter(ABC):
    """An object being written in parts; invisible to readers until `commit()`."""

    @abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abstractmethod
    async def commit(self) -> int:
        """Publish the object; returns its size in bytes."""

    @abstractmethod
    async def abort(self) -> None: ...


class BlobStore(ABC):
    @abstractmethod
    async def writer(self, key: str) -> BlobWriter: ...

    @abstractmethod
    def read(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]: ...

    @abstractmethod
    async def delete(self, key: str) -> None: ...

    async def put(self, key: str, data: bytes) -> int:
        w = await self.writer(key)
        try:
            await w.write(data)
        except BaseException:
            await w.abort()
            raise
        return await w.commit()

    async def read_all(self, key: str) -> bytes:
        return b"".join([c async for c in self.read(key)])

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    async def problem(self) -> str | None:
        """Why the store cannot take new bytes now (unreachable, full), or None."""
        return None

    async def remove_partial(self, older_than: float) -> int:
        """Remove objects begun before `older_than` (unix s) and never committed, left by
        a process that died while writing; returns how many."""
        return 0

    def describe(self) -> str:
        return type(self).__name__

"""File bytes in a local directory (the embedded default)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from overnight.blobs.base import BlobStore, BlobWriter, check_key
from overnight.disk import disk_problem


class _LocalWriter(BlobWriter):
    def __init__(self, final: Path) -> None:
        self.final = final
        self.tmp = final.with_name(f".{final.name}.{os.getpid()}.{id(self)}.part")
        self.size = 0
        self.fh: BinaryIO = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        if len(data) > 256 * 1024:
            await asyncio.to_thread(self.fh.write, data)
        else:
            self.fh.write(data)

    async def commit(self) -> int:
        def _finish() -> None:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
            os.replace(self.tmp, self.final)

        await asyncio.to_thread(_finish)
        return self.size

    async def abort(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


class LocalBlobStore(BlobStore):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if self.root not in path.parents:
            raise ValueError(f"invalid blob key {key!r}")
        return path

    async def writer(self, key: str) -> BlobWriter:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return _LocalWriter(path)

    async def read(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        path = self._path(key)
        fh = await asyncio.to_thread(open, path, "rb")
        try:
            while True:
                chunk = await asyncio.to_thread(fh.read, chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            fh.close()

    async def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    async def problem(self) -> str | None:
        return await asyncio.to_thread(disk_problem, self.root)

    async def remove_partial(self, older_than: float) -> int:
        def sweep() -> int:
            removed = 0
            for path in self.root.rglob(".*.part"):
                try:
                    if path.stat().st_mtime < older_than:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
            return removed

        return await asyncio.to_thread(sweep)

    def describe(self) -> str:
        return f"local directory {self.root}"

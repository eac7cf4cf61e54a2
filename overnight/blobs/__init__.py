"""Where file bytes live: local directory, S3, or memory, behind `BlobStore`."""

from __future__ import annotations

from overnight.blobs.base import BlobStore, BlobWriter


def open_blobs(url: str, *, create_bucket: bool = False) -> BlobStore:
    """`file:///dir` (default), `s3://bucket/prefix`, or `memory://` (nothing kept).

    `create_bucket`: an S3 bucket that does not exist is created (first-time setups)."""
    if url.startswith("s3://"):
        from overnight.blobs.s3 import S3BlobStore

        return S3BlobStore.from_url(url, create_bucket=create_bucket)
    if url.startswith("memory://"):
        from overnight.blobs.memory import MemoryBlobStore

        return MemoryBlobStore()
    from overnight.blobs.local import LocalBlobStore

    path = url[len("file://") :] if url.startswith("file://") else url
    return LocalBlobStore(path)


__all__ = ["BlobStore", "BlobWriter", "open_blobs"]

"""S3BlobStore against a real S3 API (moto's server mode on loopback)."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import boto3
import pytest

from overnight.blobs import open_blobs
from overnight.blobs.s3 import PART_SIZE, S3BlobStore
from overnight.errors import ConfigError

MiB = 1024 * 1024


def _boto(aws: dict[str, str]) -> Any:
    return boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1")


@pytest.fixture
async def store(aws: dict[str, str]) -> AsyncIterator[S3BlobStore]:
    bucket = f"ovt-{uuid.uuid4().hex[:10]}"
    s = S3BlobStore.from_url(f"s3://{bucket}/some/prefix", create_bucket=True)
    yield s
    await s.close()


async def test_multipart_upload_in_parts_then_streamed_read(store: S3BlobStore, aws) -> None:
    size = 2 * PART_SIZE + 3 * MiB + 123  # three parts, the last one short
    data = os.urandom(size)
    w = await store.writer("files/file-big")
    largest_buffer = 0
    for i in range(0, size, 700_000):  # uneven writes, like an upload stream
        await w.write(data[i : i + 700_000])
        largest_buffer = max(largest_buffer, len(w.buffer))  # type: ignore[attr-defined]
    assert largest_buffer < PART_SIZE  # only up to one part is ever held
    # Invisible until committed.
    s3 = _boto(aws)
    listed = s3.list_objects_v2(Bucket=store.bucket).get("Contents", [])
    assert listed == []
    assert await w.commit() == size

    head = s3.head_object(Bucket=store.bucket, Key="some/prefix/files/file-big")
    assert head["ContentLength"] == size
    assert head["ETag"].strip('"').endswith("-3")  # a three-part multipart upload

    store.read_window = 5 * MiB  # several ranged GETs
    digest = hashlib.sha256()
    n = 0
    async for chunk in store.read("files/file-big", chunk_size=MiB):
        assert 0 < len(chunk) <= MiB
        digest.update(chunk)
        n += len(chunk)
    assert n == size
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


async def test_small_and_empty_objects(store: S3BlobStore) -> None:
    assert await store.put("files/small", b"hello\n") == 6
    assert await store.read_all("files/small") == b"hello\n"
    assert await store.put("files/empty", b"") == 0
    assert await store.read_all("files/empty") == b""


async def test_abort_leaves_nothing(store: S3BlobStore, aws) -> None:
    w = await store.writer("files/aborted")
    await w.write(os.urandom(PART_SIZE + 1))  # a multipart upload is started
    await w.abort()
    s3 = _boto(aws)
    assert s3.list_objects_v2(Bucket=store.bucket).get("Contents", []) == []
    assert s3.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []


async def test_delete_and_missing(store: S3BlobStore) -> None:
    await store.put("files/gone", b"x")
    await store.delete("files/gone")
    with pytest.raises(FileNotFoundError):
        await store.read_all("files/gone")
    await store.delete("files/gone")  # deleting twice is fine
    with pytest.raises(ValueError):
        await store.writer("../escape")


async def test_open_blobs_picks_s3_and_missing_bucket_is_explained(
    aws: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVERNIGHT_S3_CREATE_BUCKET", "1")  # only Settings reads it
    s = open_blobs(f"s3://ovt-missing-{uuid.uuid4().hex[:8]}/p")
    assert isinstance(s, S3BlobStore) and not s.create_bucket
    with pytest.raises(ConfigError, match="OVERNIGHT_S3_CREATE_BUCKET=1"):
        await s.put("files/x", b"x")
    await s.close()


async def test_missing_credentials_are_explained(
    aws: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    # Keep botocore off the network and away from the developer's own files.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    s = S3BlobStore.from_url("s3://whatever/p")
    with pytest.raises(ConfigError, match="AWS_ACCESS_KEY_ID"):
        await s.put("files/x", b"x")
    await s.close()


def test_bad_url() -> None:
    with pytest.raises(ConfigError, match="OVERNIGHT_STORAGE_URL"):
        S3BlobStore.from_url("s3:///no-bucket")

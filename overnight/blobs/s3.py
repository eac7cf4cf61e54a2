"""File bytes in an S3-compatible object store (AWS S3, MinIO, R2, Ceph), for scale-out.

`s3://bucket/prefix` selects it; endpoint, credentials and region come from the usual
AWS environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION, AWS_PROFILE...), read by botocore itself.

Nothing is held whole in memory: writes go out as a multipart upload in parts of
`part_size` bytes (only one part is buffered), and reads fetch ranged windows that
are streamed on in chunks. An upload stays invisible until `commit()` completes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlsplit

from overnight.blobs.base import BlobStore, BlobWriter, check_key
from overnight.errors import ConfigError, StorageUnavailable

log = logging.getLogger("overnight.blobs.s3")

PART_SIZE = 8 * 1024 * 1024  # S3 wants >= 5 MiB for every part but the last
READ_WINDOW = 8 * 1024 * 1024  # one ranged GET; streamed on in `chunk_size` pieces
CREATE_BUCKET_ENV = "OVERNIGHT_S3_CREATE_BUCKET"

_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "ExpiredToken",
        "InvalidToken",
        "InvalidClientTokenId",
        "AuthorizationHeaderMalformed",
        "403",
        "Forbidden",
    }
)
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3BlobStore(BlobStore):
    """`S3BlobStore.from_url("s3://bucket/prefix")`; the client opens on first use."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        create_bucket: bool = False,
        part_size: int = PART_SIZE,
        read_window: int = READ_WINDOW,
    ) -> None:
        if part_size < 5 * 1024 * 1024:
            raise ValueError("S3 multipart parts must be at least 5 MiB")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.create_bucket = create_bucket
        self.part_size = part_size
        self.read_window = read_window
        self._client: Any = None
        self._stack: AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, *, create_bucket: bool = False) -> S3BlobStore:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(
                f"storage URL {url!r} is not s3://bucket[/prefix]; set OVERNIGHT_STORAGE_URL "
                "(or --storage-url) to s3://bucket/prefix"
            )
        return cls(parts.netloc, parts.path, create_bucket=create_bucket)

    # --- the client ---------------------------------------------------------------------

    def _object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self) -> str:
        endpoint = getattr(getattr(self._client, "meta", None), "endpoint_url", None)
        region = getattr(getattr(self._client, "meta", None), "region_name", None)
        return (
            f"s3://{self.bucket}/{self.prefix} "
            f"(endpoint {endpoint or 'AWS default'}, region {region or 'unset'})"
        )

    @contextlib.contextmanager
    def _explained(self) -> Iterator[None]:
        """Turn the SDK's configuration failures into a message naming what to set."""
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            HTTPClientError,
            NoCredentialsError,
            NoRegionError,
            PartialCredentialsError,
        )

        try:
            yield
        except (NoCredentialsError, PartialCredentialsError):
            raise ConfigError(
                f"S3 storage {self._where()}: no usable AWS credentials. Set AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)."
            ) from None
        except NoRegionError:
            raise ConfigError(
                f"S3 storage {self._where()}: no region. Set AWS_DEFAULT_REGION."
            ) from None
        except (EndpointConnectionError, HTTPClientError) as exc:
            # Down for now, or never reachable: the same answer (503), and the message
            # names what to check if it lasts.
            raise StorageUnavailable(
                f"S3 storage {self._where()}: cannot connect ({exc}). If this lasts, check "
                "AWS_ENDPOINT_URL (for MinIO, R2, Ceph or a local test server) and "
                "AWS_DEFAULT_REGION."
            ) from None
        except ClientError as exc:
            if _error_code(exc) in _CREDENTIAL_CODES:
                raise ConfigError(
                    f"S3 storage {self._where()}: the credentials were refused "
                    f"({_error_code(exc)}). Check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                    "AWS_SESSION_TOKEN, AWS_DEFAULT_REGION and AWS_ENDPOINT_URL."
                ) from None
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if isinstance(status, int) and status >= 500:
                raise StorageUnavailable(
                    f"S3 storage {self._where()}: the server answered {status} "
                    f"({_error_code(exc)})."
                ) from None
            raise

    async def client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                await self._open()
        return self._client

    async def _open(self) -> None:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        # botocore's own variables (it reads them too): a custom endpoint means a local
        # server, which wants path-style addressing. Not overnight settings.
        custom_endpoint = bool(
            os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
        config = AioConfig(
            # Path-style addressing is what MinIO, Ceph and local servers expect.
            s3={"addressing_style": "path" if custom_endpoint else "auto"},
            retries={"mode": "standard", "max_attempts": 5},
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=32,
            # Newer SDKs add CRC checksums by default, which several S3-compatible
            # servers reject; only send them where the API requires one.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        stack = AsyncExitStack()
        client = await stack.enter_async_context(get_session().create_client("s3", config=config))
        self._client, self._stack = client, stack
        try:
            await self._check_bucket()
        except BaseException:
            self._client, self._stack = None, None
            await stack.aclose()
            raise

    async def _check_bucket(self) -> None:
        from botocore.exceptions import ClientError

        with self._explained():
            try:
                await self._client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                    raise
            if not self.create_bucket:
                raise ConfigError(
                    f"S3 storage {self._where()}: bucket {self.bucket!r} does not exist. "
                    f"Create it, or set {CREATE_BUCKET_ENV}=1 to let overnight create it."
                )
            try:
                await self._client.create_bucket(Bucket=self.bucket)
                log.info("created S3 bucket %s", self.bucket)
            except ClientError as exc:
                # Several processes starting at once race to create it; one wins.
                if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    # --- the interface ------------------------------------------------------------------

    async def writer(self, key: str) -> BlobWriter:
        return _S3Writer(self, await self.client(), self._object_key(key))

    async def read(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        from botocore.exceptions import ClientError

        client = await self.client()
        name = self._object_key(key)
        with self._explained():
            try:
                head = await client.head_object(Bucket=self.bucket, Key=name)
            except ClientError as exc:
                if _error_code(exc) in _MISSING_CODES:
                    missing = f"no object {name!r} in bucket {self.bucket!r}"
                    raise FileNotFoundError(missing) from None
                raise
        size, etag = int(head["ContentLength"]), head.get("ETag")
        offset = 0
        while offset < size:
            end = min(size, offset + self.read_window) - 1
            extra = {"IfMatch": etag} if etag else {}
            with self._explained():
                response = await client.get_object(
                    Bucket=self.bucket, Key=name, Range=f"bytes={offset}-{end}", **extra
                )
            async with response["Body"] as body:
                while True:
                    chunk = await body.read(chunk_size)
                    if not chunk:
                        break
                    offset += len(chunk)
                    yield chunk
            if offset <= end:
                raise OSError(f"S3 object {name!r} ended at {offset} bytes, expected {size}")

    async def delete(self, key: str) -> None:
        client = await self.client()
        with self._explained():
            await client.delete_object(Bucket=self.bucket, Key=self._object_key(key))

    async def problem(self) -> str | None:
        try:
            client = await self.client()
            await client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            return f"unreachable: {type(exc).__name__}: {str(exc)[:200]}"
        return None

    async def remove_partial(self, older_than: float) -> int:
        client = await self.client()
        removed = 0
        with self._explained():
            pages = client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else ""
            )
            async for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].timestamp() >= older_than:
                        continue
                    await client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    removed += 1
        return removed

    async def close(self) -> None:
        stack, self._client, self._stack = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def describe(self) -> str:
        return f"S3 bucket {self.bucket!r}, prefix {self.prefix!r}"


class _S3Writer(BlobWriter):
    """A multipart upload started only once a full part exists; small objects use one PUT."""

    def __init__(self, store: S3BlobStore, client: Any, name: str) -> None:
        self.store = store
        self.client = client
        self.name = name
        self.buffer = bytearray()
        self.size = 0
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    async def write(self, data: bytes) -> None:
        self.buffer += data
        self.size += len(data)
        part_size = self.store.part_size
        while len(self.buffer) >= part_size:
            part = bytes(self.buffer[:part_size])
            del self.buffer[:part_size]
            await self._upload_part(part)

    async def _upload_part(self, data: bytes) -> None:
        bucket = self.store.bucket
        with self.store._explained():
            if self.upload_id is None:
                started = await self.client.create_multipart_upload(Bucket=bucket, Key=self.name)
                self.upload_id = started["UploadId"]
            number = len(self.parts) + 1
            answer = await self.client.upload_part(
                Bucket=bucket, Key=self.name, UploadId=self.upload_id, PartNumber=number, Body=data
            )
        self.parts.append({"ETag": answer["ETag"], "PartNumber": number})

    async def commit(self) -> int:
        bucket = self.store.bucket
        if self.upload_id is None:
            with self.store._explained():
                await self.client.put_object(Bucket=bucket, Key=self.name, Body=bytes(self.buffer))
        else:
            if self.buffer:
                await self._upload_part(bytes(self.buffer))
            with self.store._explained():
                await self.client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=self.name,
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": self.parts},
                )
        self.buffer = bytearray()
        return self.size

    async def abort(self) -> None:
        self.buffer = bytearray()
        if self.upload_id is None:
            return
        upload_id, self.upload_id = self.upload_id, None
        try:
            await self.client.abort_multipart_upload(
                Bucket=self.store.bucket, Key=self.name, UploadId=upload_id
            )
        except Exception:
            # A bucket lifecycle rule (AbortIncompleteMultipartUpload) cleans up what is left.
            log.warning("could not abort multipart upload of %s", self.name, exc_info=True)

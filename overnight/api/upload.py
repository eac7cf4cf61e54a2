"""Stream a multipart upload straight into blob storage, never holding the file in memory."""

from __future__ import annotations

import codecs
import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from overnight.blobs.base import BlobStore, BlobWriter
from overnight.errors import InvalidRequest, PayloadTooLarge

MAX_FIELD_BYTES = 4096
MAX_FIELDS = 32
MAX_PART_HEADER_BYTES = 8192  # one part's header name or value
MAX_PARTS = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clean_filename(raw: str) -> str:
    """A display name only (storage keys never use it): last path part, no control characters."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = _CONTROL.sub("", name).strip()
    return name[:255] or "upload"


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    content_type: str | None = None
    size: int = 0
    utf8_ok: bool = True
    has_content: bool = False
    sha256: str | None = None  # of the file's bytes, when asked for


class _Parse:
    """Callbacks of python-multipart's push parser, buffering what async code must write."""

    def __init__(self, max_bytes: int, digest: bool = False) -> None:
        self.max_bytes = max_bytes
        self.hasher = hashlib.sha256() if digest else None
        self.result = Upload()
        self.file_chunks: list[bytes] = []
        self._headers: dict[bytes, bytes] = {}
        self._hname = b""
        self._hvalue = b""
        self._part: str | None = None  # field name of the current part
        self._is_file = False
        self._field_buf = bytearray()
        self._file_seen = False
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._parts = 0
        self.ended = False  # the closing boundary was seen

    def on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise InvalidRequest("Too many parts in the multipart body.")
        self._headers = {}
        self._part = None
        self._is_file = False
        self._field_buf = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]
        if len(self._hname) > MAX_PART_HEADER_BYTES:
            raise InvalidRequest("A multipart part header is too long.")

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]
        if len(self._hvalue) > MAX_PART_HEADER_BYTES:
            raise InvalidRequest("A multipart part header is too long.")

    def on_header_end(self) -> None:
        self._headers[self._hname.lower()] = self._hvalue
        self._hname = b""
        self._hvalue = b""

    def on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data":
            raise InvalidRequest("Each multipart part needs Content-Disposition: form-data.")
        name = params.get(b"name", b"").decode("utf-8", "replace")
        self._part = name
        if name == "file":
            if self._file_seen:
                raise InvalidRequest("Only one file may be uploaded at a time.", param="file")
            self._file_seen = True
            self._is_file = True
            raw_name = params.get(b"filename", b"upload").decode("utf-8", "replace")
            self.result.filename = clean_filename(raw_name)
            ctype = self._headers.get(b"content-type")
            self.result.content_type = ctype.decode("latin-1") if ctype else None
        elif len(self.result.fields) >= MAX_FIELDS:
            raise InvalidRequest("Too many form fields.")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._is_file:
            self.result.size += len(chunk)
            if self.result.size > self.max_bytes:
                raise PayloadTooLarge(
                    f"The file is larger than the {self.max_bytes // (1024 * 1024)} MB limit."
                )
            if chunk.strip():
                self.result.has_content = True
            if self.result.utf8_ok:
                try:
                    self._decoder.decode(chunk)
                except UnicodeDecodeError:
                    self.result.utf8_ok = False
            if self.hasher is not None:
                self.hasher.update(chunk)
            self.file_chunks.append(chunk)
        else:
            self._field_buf += chunk
            if len(self._field_buf) > MAX_FIELD_BYTES:
                raise InvalidRequest(
                    f"The form field {self._part!r} is too long.", param=self._part
                )

    def on_end(self) -> None:
        self.ended = True

    def on_part_end(self) -> None:
        if self._is_file:
            if self.result.utf8_ok:
                try:
                    self._decoder.decode(b"", final=True)
                except UnicodeDecodeError:
                    self.result.utf8_ok = False
        elif self._part is not None:
            try:
                self.result.fields[self._part] = self._field_buf.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest(
                    f"The form field {self._part!r} is not valid UTF-8.", param=self._part
                ) from None


async def receive_upload(
    content_type: str | None,
    stream: AsyncIterator[bytes],
    blobs: BlobStore,
    key: str,
    max_bytes: int,
    digest: bool = False,
) -> Upload:
    """Parse the request body; the file part is written to `key` (left uncommitted on error).

    `digest`: also hash the file's bytes (for Idempotency-Key fingerprints)."""
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data":
        raise InvalidRequest(
            "Uploads must be sent as multipart/form-data with a 'file' part and a 'purpose' field."
        )
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise InvalidRequest("The multipart body has no valid boundary.")
    state = _Parse(max_bytes, digest)
    callbacks = {
        name: getattr(state, name)
        for name in (
            "on_part_begin",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_part_data",
            "on_part_end",
            "on_end",
        )
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    writer: BlobWriter | None = None
    try:
        async for chunk in stream:
            try:
                parser.write(chunk)
            except MultipartParseError:
                raise InvalidRequest("The multipart body is malformed.") from None
            if state.file_chunks:
                if writer is None:
                    writer = await blobs.writer(key)
                await writer.write(b"".join(state.file_chunks))
                state.file_chunks.clear()
        try:
            parser.finalize()
        except MultipartParseError:
            raise InvalidRequest("The multipart body is malformed.") from None
        if not state.ended:
            raise InvalidRequest("The multipart body is truncated (no closing boundary).")
        if state.result.filename is None:
            raise InvalidRequest("The upload has no 'file' part.", param="file")
        if writer is None:
            writer = await blobs.writer(key)
        await writer.commit()
        writer = None
    finally:
        if writer is not None:
            await writer.abort()
    if state.hasher is not None:
        state.result.sha256 = state.hasher.hexdigest()
    return state.result

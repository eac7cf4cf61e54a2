"""Parse and validate batch input lines; build output and error lines.

Input is read as a stream of byte chunks and split into lines here, so a
200 MB file never sits in memory. Output lines are assembled from the stored
JSON text of each answer without parsing it again.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from overnight.backends.base import ENDPOINTS
from overnight.models import BatchError

BOM = b"\xef\xbb\xbf"
MAX_CUSTOM_ID = 512
MAX_MODEL = 256  # the width of batches.model


@functools.lru_cache(maxsize=64)
def normalize_endpoint(value: str) -> str | None:
    """Map the vendors' spellings ("/v1/chat/completions", "/chat/completions") to one."""
    if not isinstance(value, str):
        return None
    path = value.strip()
    if not path.startswith("/"):
        path = "/" + path
    if not path.startswith("/v1/"):
        path = "/v1" + path
    return path if path in ENDPOINTS else None


@dataclass(slots=True)
class Line:
    number: int
    custom_id: str
    model: str
    body: bytes  # compact JSON of the request body
    prefix: bytes = b""  # what this prompt shares with others: the cache-friendly sort key


class LineTooLong(Exception):
    def __init__(self, number: int) -> None:
        self.number = number


async def split_lines(
    chunks: AsyncIterator[bytes], max_line_bytes: int
) -> AsyncIterator[tuple[int, bytes]]:
    """Yield (1-based line number, line bytes without the line end), skipping no line."""
    pending = b""
    number = 0
    async for chunk in chunks:
        if not chunk:
            continue
        data = pending + chunk if pending else chunk
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            number += 1
            line = data[start:end]
            if len(line) > max_line_bytes:
                raise LineTooLong(number)
            yield number, line
            start = end + 1
        pending = data[start:]
        if len(pending) > max_line_bytes:
            raise LineTooLong(number + 1)
    if pending:
        yield number + 1, pending


def parse_line(number: int, raw: bytes, endpoint: str) -> Line | BatchError | None:
    """One input line to a `Line`, a coded `BatchError`, or None for a blank line."""
    if number == 1 and raw.startswith(BOM):
        raw = raw[len(BOM) :]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if not raw.strip():
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        text = str(exc).lower()
        if "depth" in text or "recursion" in text:
            reason = "nested too deeply (more than 1024 levels)"
        elif "utf-8" in text or "surrogate" in text:
            reason = "not valid UTF-8"
        else:
            reason = "not valid JSON"
        return BatchError("invalid_json_line", f"Line {number} is {reason}.", None, number)
    if not isinstance(doc, dict):
        return BatchError("invalid_json_line", f"Line {number} is not a JSON object.", None, number)

    def bad(param: str, message: str, code: str = "invalid_request") -> BatchError:
        return BatchError(code, message, param, number)

    custom_id = doc.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return bad("custom_id", "custom_id is required and must be a non-empty string.")
    if len(custom_id) > MAX_CUSTOM_ID:
        return bad("custom_id", f"custom_id must be at most {MAX_CUSTOM_ID} characters.")
    if "\x00" in custom_id:
        # PostgreSQL text cannot hold U+0000; refused everywhere so both stores agree.
        return bad("custom_id", "custom_id must not contain NUL (U+0000) characters.")
    method = doc.get("method")
    if method != "POST":
        return bad("method", "method must be 'POST'.")
    url = doc.get("url")
    if not isinstance(url, str):
        return bad("url", "url is required and must be a string.")
    if normalize_endpoint(url) != endpoint:
        return bad(
            "url",
            f"The url {url[:200]!r} does not match the batch endpoint {endpoint!r}.",
            "url_mismatch",
        )
    body = doc.get("body")
    if not isinstance(body, dict):
        return bad("body", "body is required and must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return bad("body.model", "body.model is required and must be a non-empty string.")
    if len(model) > MAX_MODEL or "\x00" in model:
        return bad("body.model", f"body.model must be at most {MAX_MODEL} characters, without NUL.")
    return Line(number, custom_id, model, orjson.dumps(body), prefix_key(body))


def prefix_key(body: dict[str, Any]) -> bytes:
    """The leading part of the prompt that model servers can cache (vLLM, SGLang, llama.cpp).

    Chat: every message but the last; responses: instructions and all but the last
    input item; completions: the start of the prompt. Sorting by it sends requests
    that share a prefix one after another.
    """
    lead: Any = None
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        lead = messages[:-1]
    elif ("input" in body and "instructions" in body) or isinstance(body.get("input"), list):
        items = body.get("input")
        lead = [body.get("instructions"), items[:-1] if isinstance(items, list) else None]
    elif isinstance(body.get("prompt"), str):
        lead = body["prompt"][:256]
    if not lead:
        return b""
    try:
        encoded = orjson.dumps(lead)
    except TypeError:
        return b""
    return hashlib.blake2b(encoded, digest_size=8).digest()


def custom_id_digest(custom_id: str) -> bytes:
    """A compact key for duplicate detection: 100k ids cost a few MB, however long they are."""
    return hashlib.blake2b(custom_id.encode(), digest_size=16).digest()


def request_id(batch_id: str, line: int) -> str:
    digest = hashlib.blake2b(f"{batch_id}:{line}".encode(), digest_size=12).hexdigest()
    return f"batch_req_{digest}"


def result_line(
    req_id: str,
    custom_id: str,
    status_code: int | None,
    upstream_request_id: str | None,
    body_json: bytes | None,
    error: dict[str, Any] | None,
) -> bytes:
    """One output/error file line; `body_json` is already compact JSON."""
    head = b'{"id":' + orjson.dumps(req_id) + b',"custom_id":' + orjson.dumps(custom_id)
    if status_code is None:
        return head + b',"response":null,"error":' + orjson.dumps(error) + b"}\n"
    response = (
        b'{"status_code":'
        + str(int(status_code)).encode()
        + b',"request_id":'
        + orjson.dumps(upstream_request_id or "")
        + b',"body":'
        + (body_json or b"{}")
        + b"}"
    )
    return head + b',"response":' + response + b',"error":null}\n'

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

from overnight.backends.base import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    ENDPOINTS,
    IMAGES_EDITS,
    IMAGES_GENERATIONS,
    MODERATIONS,
    RESPONSES,
    VIDEOS,
)
from overnight.dialect import Dialect, invalid, line_error
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


@dataclass(frozen=True, slots=True)
class BodyRules:
    """What one endpoint's request body must hold (the synchronous API's required fields)."""

    label: str  # how OpenAI names the endpoint in "<label>: Streaming is not supported..."
    required: tuple[str, ...]  # besides `model`
    default_model: str | None = None  # set where the endpoint itself defaults `model`
    one_of: tuple[str, ...] = ()  # at least one of these (images/edits: image or images)
    non_empty: tuple[str, ...] = ()  # arrays that must hold something


BODY_RULES = {
    CHAT: BodyRules("Chat Completions", ("messages",), non_empty=("messages",)),
    COMPLETIONS: BodyRules("Completions", ("prompt",)),
    EMBEDDINGS: BodyRules("Embeddings", ("input",)),
    RESPONSES: BodyRules("Responses", ("input",)),
    # OpenAI's documented defaults when `model` is left out.
    MODERATIONS: BodyRules("Moderations", ("input",), "omni-moderation-latest"),
    IMAGES_GENERATIONS: BodyRules("Images", ("prompt",), "dall-e-2"),
    IMAGES_EDITS: BodyRules("Images", ("prompt",), "dall-e-2", one_of=("image", "images")),
    VIDEOS: BodyRules("Videos", ("prompt",), "sora-2"),
}
_LINE_FIELDS = ("custom_id", "method", "url", "body")
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    for kind, name in _JSON_TYPES.items():
        if isinstance(value, kind):
            return name
    return "a number"


def parse_line(
    number: int, raw: bytes, endpoint: str, dialect: str = Dialect.OPENAI
) -> Line | list[BatchError] | None:
    """One input line to a `Line`, its coded errors (every one, in field order), or None
    for a blank line."""
    if number == 1 and raw.startswith(BOM):
        raw = raw[len(BOM) :]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if not raw.strip():
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return [line_error(dialect, "invalid_json", number)]
    if not isinstance(doc, dict):
        return [line_error(dialect, "invalid_json", number)]
    errors: list[BatchError] = []
    for name in _LINE_FIELDS:
        if doc.get(name) is None:
            errors.append(line_error(dialect, "missing_field", number, name))
    custom_id, method, url, body = (doc.get(name) for name in _LINE_FIELDS)

    def bad(param: str, message: str) -> None:
        errors.append(invalid(message, number, param))

    if custom_id is not None:
        if not isinstance(custom_id, str) or not custom_id:
            bad("custom_id", "custom_id must be a non-empty string.")
        elif len(custom_id) > MAX_CUSTOM_ID:
            bad("custom_id", f"custom_id must be at most {MAX_CUSTOM_ID} characters.")
        elif "\x00" in custom_id:
            # PostgreSQL text cannot hold U+0000; refused everywhere so both stores agree.
            bad("custom_id", "custom_id must not contain NUL (U+0000) characters.")
    if method is not None and method != "POST":
        shown = str(method)[:20] if isinstance(method, str) else _type_name(method)
        bad("method", f"Invalid value: {shown!r}. Supported values are: 'POST'.")
    if url is not None:
        if not isinstance(url, str):
            bad("url", f"Invalid type for 'url': expected a string, but got {_type_name(url)}.")
        elif normalize_endpoint(url) != endpoint:
            errors.append(line_error(dialect, "url_mismatch", number, "url", endpoint=endpoint))
    if body is not None and not isinstance(body, dict):
        bad("body", f"Invalid type for 'body': expected an object, but got {_type_name(body)}.")
        body = None
    model: str | None = None
    if isinstance(body, dict):
        model = _check_body(body, BODY_RULES[endpoint], dialect, number, errors)
    if errors:
        return errors
    assert isinstance(body, dict) and isinstance(custom_id, str) and model is not None
    return Line(number, custom_id, model, orjson.dumps(body), prefix_key(body))


def _check_body(
    body: dict[str, Any], rules: BodyRules, dialect: str, number: int, errors: list[BatchError]
) -> str | None:
    """Check `body` against its endpoint's rules; return the model the line names."""
    model = body.get("model")
    if model is None and rules.default_model is None:
        errors.append(invalid("Model parameter is required.", number, "body.model"))
    elif model is not None and (not isinstance(model, str) or not model):
        errors.append(invalid("body.model must be a non-empty string.", number, "body.model"))
        model = None
    elif isinstance(model, str) and (len(model) > MAX_MODEL or "\x00" in model):
        errors.append(
            invalid(
                f"body.model must be at most {MAX_MODEL} characters, without NUL.",
                number,
                "body.model",
            )
        )
        model = None
    for name in rules.required:
        value = body.get(name)
        param = f"body.{name}"
        if value is None:
            errors.append(invalid(f"{name.capitalize()} parameter is required.", number, param))
        elif name in rules.non_empty and not isinstance(value, list):
            errors.append(
                invalid(
                    f"Invalid type for '{param}': expected an array, but got "
                    f"{_type_name(value)} instead.",
                    number,
                    param,
                )
            )
        elif name in rules.non_empty and not value:
            errors.append(
                invalid(
                    f"Invalid '{param}': empty array. Expected an array with minimum length 1, "
                    "but got an empty array instead.",
                    number,
                    param,
                )
            )
    if rules.one_of and all(body.get(name) is None for name in rules.one_of):
        name = rules.one_of[0]
        errors.append(
            invalid(f"{name.capitalize()} parameter is required.", number, f"body.{name}")
        )
    if body.get("stream") not in (None, False):
        errors.append(line_error(dialect, "streaming", number, "body.stream", label=rules.label))
    if model is None:
        return rules.default_model
    return model if isinstance(model, str) else None


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
    """One output/error file line; `body_json` is already compact JSON.

    A line the model answered with an error has both `response` and `error`."""
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
    tail = orjson.dumps(error) if error else b"null"
    return head + b',"response":' + response + b',"error":' + tail + b"}\n"

"""Batch input lines shared by the test suites."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson


def chat_line(
    custom_id: str,
    text: str = "hello",
    model: str = "gpt-test",
    url: str = "/v1/chat/completions",
    **body: Any,
) -> dict[str, Any]:
    """One chat request line; extra keyword arguments go into the body."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": url,
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    }


def chat_lines(
    ids: Iterable[str], model: str = "m", texts: Iterable[str] | None = None
) -> bytes:
    """A .jsonl of one chat request per custom_id; the user text is the id unless given
    (the stub's /_counts keys on it)."""
    ids = list(ids)
    return b"".join(
        orjson.dumps(chat_line(cid, text, model)) + b"\n"
        for cid, text in zip(ids, texts if texts is not None else ids, strict=True)
    )


def numbered(n: int, tag: str = "q") -> list[str]:
    return [f"{tag}{i}" for i in range(n)]

"""Batch input lines shared by the test suites."""

from __future__ import annotations

from typing import Any


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

"""The stub upstream's answers: deterministic echoes with realistic `usage` (see upstream_stub)."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
from collections.abc import Callable
from typing import Any

import orjson

from tests.support.stub_config import StubConfig

IMAGE_TOKENS = 85  # what OpenAI bills for one low-detail image
ECHO_CHARS = 200

# --- reading requests and building answers ----------------------------------------------


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _tokens(text: str) -> int:
    return len(text) // 4 + 1


def _content(content: Any) -> tuple[str, int]:
    """The text of a message's content (string or parts) and how many images it holds."""
    if isinstance(content, str):
        return content, 0
    texts: list[str] = []
    images = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                kind = part.get("type")
                if kind in ("text", "input_text", "output_text"):
                    texts.append(str(part.get("text", "")))
                elif kind in ("image_url", "input_image", "image"):
                    images += 1
    return " ".join(texts), images


def _strings(value: Any) -> list[Any]:
    """completions' `prompt` / embeddings' `input`: a string, strings, tokens or token lists."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(x, int) for x in value):
            return [value]
        if all(isinstance(x, str | list) for x in value):
            return value
    return []


def user_text(endpoint: str, body: dict[str, Any]) -> str:
    """The text of the last user message: what the answer echoes and /_counts counts."""
    if endpoint == "chat/completions" or endpoint == "responses":
        items = body.get("messages") if endpoint == "chat/completions" else body.get("input")
        if isinstance(items, str):
            return items
        if isinstance(items, list):
            for item in reversed(items):
                if isinstance(item, dict) and item.get("role") == "user":
                    return _content(item.get("content"))[0]
        return ""
    key = "input" if endpoint in ("embeddings", "moderations") else "prompt"
    return "\n".join(x for x in _strings(body.get(key)) if isinstance(x, str))


def _limit(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _echo(text: str, limit: int | None) -> tuple[str, int, bool]:
    """The answer text, its token count, and whether max tokens cut it short."""
    content = "echo: " + text[:ECHO_CHARS]
    tokens = _tokens(content)
    if limit is not None and tokens > limit:
        return content[: limit * 4], limit, True
    return content, tokens, False


def _chat(body: dict[str, Any], model: str, text: str, rid: str, cfg: StubConfig) -> Any:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", "messages")
    if not all(isinstance(m, dict) for m in messages):
        raise BadRequest("Invalid type for 'messages': expected an array of objects", "messages")
    texts, images = [], 0
    for message in messages:
        if isinstance(message, dict):
            t, i = _content(message.get("content"))
            texts.append(t)
            images += i
    prompt = _tokens("\n".join(texts)) + IMAGE_TOKENS * images
    limit = _limit(body, "max_completion_tokens", "max_tokens")
    content, completion, cut = _echo(text, limit)
    n = min(max(_limit(body, "n") or 1, 1), 128)
    message = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
    choice = {"message": message, "logprobs": None, "finish_reason": "length" if cut else "stop"}
    answer = {
        "id": "chatcmpl-" + rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": i, **choice} for i in range(n)],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion * n,
            "total_tokens": prompt + completion * n,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_stub",
    }
    return answer, prompt + (limit if limit is not None else completion) * n


def _completions(body: dict[str, Any], model: str, text: str, rid: str, cfg: StubConfig) -> Any:
    prompts = _strings(body.get("prompt"))
    if not prompts:
        raise BadRequest("'prompt' is a required property", "prompt")
    limit = _limit(body, "max_tokens")
    choices, prompt, completion = [], 0, 0
    for i, p in enumerate(prompts):
        prompt += _tokens(p) if isinstance(p, str) else len(p)
        content, tokens, cut = _echo(p if isinstance(p, str) else f"{len(p)} tokens", limit)
        completion += tokens
        choices.append(
            {
                "text": content,
                "index": i,
                "logprobs": None,
                "finish_reason": "length" if cut else "stop",
            }
        )
    answer = {
        "id": "cmpl-" + rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
        "system_fingerprint": "fp_stub",
    }
    return answer, prompt + (limit * len(prompts) if limit is not None else completion)


def _vector(item: Any, dim: int) -> list[float]:
    seed = item.encode() if isinstance(item, str) else orjson.dumps(item)
    raw = hashlib.shake_128(seed).digest(dim)
    vec = [(b - 127.5) / 127.5 for b in raw]
    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
    return [x / norm for x in vec]


def _embeddings(body: dict[str, Any], model: str, text: str, rid: str, cfg: StubConfig) -> Any:
    items = _strings(body.get("input"))
    if not items:
        raise BadRequest("'input' is a required property and must not be empty", "input")
    dim = _limit(body, "dimensions") or cfg.embedding_dim
    as_base64 = body.get("encoding_format") == "base64"
    data, prompt = [], 0
    for i, item in enumerate(items):
        prompt += _tokens(item) if isinstance(item, str) else len(item)
        vec: Any = _vector(item, dim)
        if as_base64:
            vec = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vec})
    answer = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }
    return answer, prompt


def _responses(body: dict[str, Any], model: str, text: str, rid: str, cfg: StubConfig) -> Any:
    items = body.get("input")
    if isinstance(items, str):
        texts, images = [items], 0
    elif isinstance(items, list) and items:
        texts, images = [], 0
        for item in items:
            t, i = _content(item.get("content") if isinstance(item, dict) else item)
            texts.append(t)
            images += i
    else:
        raise BadRequest("'input' is a required property", "input")
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        texts.append(instructions)
    prompt = _tokens("\n".join(texts)) + IMAGE_TOKENS * images
    limit = _limit(body, "max_output_tokens")
    content, completion, cut = _echo(text, limit)
    output_text = {"type": "output_text", "text": content, "annotations": [], "logprobs": []}
    answer = {
        "id": "resp_" + rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if cut else "completed",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": instructions,
        "max_output_tokens": limit,
        "model": model,
        "output": [
            {
                "type": "message",
                "id": "msg_" + rid,
                "status": "incomplete" if cut else "completed",
                "role": "assistant",
                "content": [output_text],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        },
        "user": None,
        "metadata": body.get("metadata") or {},
    }
    return answer, prompt + (limit if limit is not None else completion)


def _moderations(body: dict[str, Any], model: str, text: str, rid: str, cfg: StubConfig) -> Any:
    items = _strings(body.get("input"))
    if not items:
        raise BadRequest("'input' is a required property", "input")
    categories = ("harassment", "hate", "self-harm", "sexual", "violence")
    results = [
        {
            "flagged": False,
            "categories": dict.fromkeys(categories, False),
            "category_scores": dict.fromkeys(categories, 0.0001),
        }
        for _ in items
    ]
    prompt = sum(_tokens(x) if isinstance(x, str) else 1 for x in items)
    return {"id": "modr-" + rid, "model": model, "results": results}, prompt


def _images(body: dict[str, Any], model: str, text: str, rid: str, cfg: StubConfig) -> Any:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("'prompt' is a required property", "prompt")
    n = min(max(_limit(body, "n") or 1, 1), 10)
    # A 1x1 transparent PNG per image: answers stay small, and they are real images.
    pixel = (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kg"
        "AAAABJRU5ErkJggg=="
    )
    tokens = _tokens(prompt)
    answer = {
        "created": int(time.time()),
        "data": [{"b64_json": pixel, "revised_prompt": prompt[:ECHO_CHARS]} for _ in range(n)],
        "usage": {
            "input_tokens": tokens,
            "input_tokens_details": {"text_tokens": tokens, "image_tokens": 0},
            "output_tokens": 272 * n,
            "total_tokens": tokens + 272 * n,
        },
    }
    return answer, tokens + 272 * n


def _videos(body: dict[str, Any], model: str, text: str, rid: str, cfg: StubConfig) -> Any:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("'prompt' is a required property", "prompt")
    answer = {
        "id": "video_" + rid,
        "object": "video",
        "model": model,
        "status": "queued",
        "progress": 0,
        "created_at": int(time.time()),
        "seconds": str(body.get("seconds", "4")),
        "size": str(body.get("size", "720x1280")),
    }
    return answer, _tokens(prompt)


BUILDERS: dict[str, Callable[..., Any]] = {
    "chat/completions": _chat,
    "completions": _completions,
    "embeddings": _embeddings,
    "responses": _responses,
    "moderations": _moderations,
    "images/generations": _images,
    "images/edits": _images,
    "videos": _videos,
}


def sse_events(answer: dict[str, Any]) -> list[bytes]:
    """An answer cut into `data:` events the way streaming servers send it (one per choice
    here, then the usage), without the final `data: [DONE]`."""
    head = {k: v for k, v in answer.items() if k not in ("choices", "usage")}
    events = []
    for choice in answer.get("choices") or [{}]:
        message = choice.get("message") or {}
        delta = {"role": "assistant", "content": message.get("content", choice.get("text", ""))}
        chunk = {
            **head,
            "object": "chat.completion.chunk",
            "choices": [{"index": choice.get("index", 0), "delta": delta, "finish_reason": "stop"}],
        }
        events.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    if "usage" in answer:
        usage = {**head, "object": "chat.completion.chunk", "choices": [], "usage": answer["usage"]}
        events.append(b"data: " + orjson.dumps(usage) + b"\n\n")
    return events

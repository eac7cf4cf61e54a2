"""Chat completions, completions and responses on the embedded model: each request
body checked into a plan, and the plan's answer in the endpoint's own shape."""

from __future__ import annotations

import time
from typing import Any

from overnight.backends.base import CHAT, COMPLETIONS
from overnight.backends.llamacpp.jobs import Generation
from overnight.backends.llamacpp.params import MAX_N, Plan, bad, integer, new_id
from overnight.backends.llamacpp.reader import Reader


def prepare(reader: Reader, endpoint: str, body: dict[str, Any]) -> Plan:
    if endpoint == CHAT:
        return prepare_chat(reader, body)
    if endpoint == COMPLETIONS:
        return prepare_completions(reader, body)
    return prepare_responses(reader, body)


def prepare_chat(reader: Reader, body: dict[str, Any]) -> Plan:
    messages = body.get("messages")
    if messages is None:
        raise bad("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty array", "messages")
    conversation = [
        reader.message(m, i, "messages", reader.model_name(body)) for i, m in enumerate(messages)
    ]
    grammar = reader.grammar(body.get("response_format"), "response_format", nested=True)
    sampling = reader.sampling(body, grammar)
    n = integer(body, "n", 1, MAX_N) or 1
    prompt = reader.chat_prompt(conversation, "messages")
    requested = integer(body, "max_completion_tokens", 1)
    if requested is None:
        requested = integer(body, "max_tokens", 1)
    sampling.max_new = reader.max_new(len(prompt), requested, "messages", "max_completion_tokens")
    model = reader.model_name(body)

    def answer(generations: list[Generation]) -> dict[str, Any]:
        (gen,) = generations
        return {
            "id": new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(gen.choices)
            ],
            "usage": _chat_usage(generations),
        }

    return Plan([prompt], sampling, n, answer)


def prepare_completions(reader: Reader, body: dict[str, Any]) -> Plan:
    prompts = reader.completion_prompts(body.get("prompt"))
    if body.get("suffix"):
        raise bad("'suffix' (fill in the middle) is not supported by this model", "suffix")
    best_of = integer(body, "best_of", 1)
    n = integer(body, "n", 1, MAX_N) or 1
    if best_of not in (None, 1, n):
        raise bad("'best_of' is not supported by the embedded model", "best_of")
    sampling = reader.sampling(body, None)
    requested = integer(body, "max_tokens", 1)
    longest = max(len(p) for p in prompts)
    sampling.max_new = reader.max_new(longest, requested or 16, "prompt", "max_tokens")
    echo = bool(body.get("echo"))
    model_name = reader.model_name(body)
    model = reader.model

    def answer(generations: list[Generation]) -> dict[str, Any]:
        choices = []
        for p, gen in enumerate(generations):
            prefix = model.detokenize(prompts[p]) if echo else ""
            for j, c in enumerate(gen.choices):
                choices.append(
                    {
                        "text": prefix + c.text,
                        "index": p * n + j,
                        "logprobs": None,
                        "finish_reason": c.finish_reason,
                    }
                )
        return {
            "id": new_id("cmpl-"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": choices,
            "usage": _chat_usage(generations),
        }

    return Plan(prompts, sampling, n, answer)


def prepare_responses(reader: Reader, body: dict[str, Any]) -> Plan:
    if body.get("previous_response_id"):
        raise bad(
            "'previous_response_id' is not supported: send the whole conversation in 'input'",
            "previous_response_id",
        )
    raw = body.get("input")
    if raw is None:
        raise bad("'input' is required", "input", "missing_required_parameter")
    if isinstance(raw, str):
        items: list[Any] = [{"role": "user", "content": raw}]
    elif isinstance(raw, list) and raw:
        items = raw
    else:
        raise bad("'input' must be a string or a non-empty array of messages", "input")
    conversation = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise bad("'instructions' must be a string", "instructions")
        conversation.append({"role": "system", "content": instructions})
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("type", "message") != "message":
            raise bad(
                f"input[{i}] has type {item.get('type')!r}: only messages are supported",
                "input",
                "unsupported_content_type",
            )
        conversation.append(reader.message(item, i, "input", reader.model_name(body)))
    text = body.get("text")
    if text is not None and not isinstance(text, dict):
        raise bad("'text' must be an object", "text")
    fmt = (text or {}).get("format")
    grammar = reader.grammar(fmt, "text.format", nested=False)
    sampling = reader.sampling(body, grammar)
    prompt = reader.chat_prompt(conversation, "input")
    requested = integer(body, "max_output_tokens", 1)
    sampling.max_new = reader.max_new(len(prompt), requested, "input", "max_output_tokens")
    model = reader.model_name(body)

    def answer(generations: list[Generation]) -> dict[str, Any]:
        (gen,) = generations
        (choice,) = gen.choices
        complete = choice.finish_reason == "stop"
        return {
            "id": new_id("resp_"),
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed" if complete else "incomplete",
            "incomplete_details": None if complete else {"reason": "max_output_tokens"},
            "error": None,
            "model": model,
            "instructions": instructions,
            "max_output_tokens": requested,
            "metadata": body.get("metadata") or {},
            "output": [
                {
                    "type": "message",
                    "id": new_id("msg_"),
                    "status": "completed" if complete else "incomplete",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": choice.text, "annotations": []}],
                }
            ],
            "parallel_tool_calls": True,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "text": {"format": fmt or {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": gen.prompt_tokens,
                "input_tokens_details": {"cached_tokens": gen.cached_tokens},
                "output_tokens": choice.tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": gen.prompt_tokens + choice.tokens,
            },
        }

    return Plan([prompt], sampling, 1, answer)


def _chat_usage(generations: list[Generation]) -> dict[str, Any]:
    prompt = sum(g.prompt_tokens for g in generations)
    completion = sum(c.tokens for g in generations for c in g.choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(g.cached_tokens for g in generations)},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }

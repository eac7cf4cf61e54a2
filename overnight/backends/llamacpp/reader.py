"""The checks and tokenization shared by the embedded model's endpoints."""

from __future__ import annotations

from typing import Any

from overnight.backends.llamacpp.grammar import json_object_grammar, json_schema_grammar
from overnight.backends.llamacpp.model import LocalModel
from overnight.backends.llamacpp.params import (
    IMAGE_PARTS,
    ROLES,
    TEXT_PARTS,
    bad,
    is_token,
    number,
    stops,
)
from overnight.backends.llamacpp.sampling import Sampling


class Reader:
    """Reads request bodies for one loaded model: its tokens, its context, its name."""

    def __init__(self, model: LocalModel, n_ctx: int, name: str) -> None:
        self.model = model
        self.n_ctx = n_ctx
        self.name = name

    def model_name(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        return model if isinstance(model, str) and model else self.name

    def max_new(self, prompt_len: int, requested: int | None, param: str, max_param: str) -> int:
        if prompt_len + (requested or 1) > self.n_ctx:
            asked = f"{prompt_len} in the prompt" + (
                f" + {requested} for the output" if requested else ""
            )
            raise bad(
                f"This model's maximum context length is {self.n_ctx} tokens, "
                f"but the request needs {asked}. Shorten the input or lower '{max_param}'.",
                param,
                "context_length_exceeded",
            )
        return requested if requested else self.n_ctx - prompt_len

    def sampling(self, body: dict[str, Any], grammar: str | None) -> Sampling:
        if body.get("stream"):
            raise bad("streaming is not available in a batch", "stream")
        for key in ("logprobs", "top_logprobs", "tools", "functions"):
            if body.get(key):  # refused rather than silently answered without them
                raise bad(
                    f"'{key}' is not supported by the embedded model '{self.model_name(body)}'",
                    key,
                    "unsupported_parameter",
                )
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise bad("'seed' must be an integer", "seed")
        return Sampling(
            max_new=0,  # set once the prompt is measured
            temperature=number(body, "temperature", 0.0, 2.0, 1.0),
            top_p=number(body, "top_p", 0.0, 1.0, 1.0),
            seed=seed,
            stop=stops(body),
            grammar=grammar,
            presence_penalty=number(body, "presence_penalty", -2.0, 2.0, 0.0),
            frequency_penalty=number(body, "frequency_penalty", -2.0, 2.0, 0.0),
        )

    def grammar(self, fmt: Any, param: str, *, nested: bool) -> str | None:
        """GBNF for a response_format (chat) or text.format (responses)."""
        if fmt is None:
            return None
        if not isinstance(fmt, dict):
            raise bad(f"'{param}' must be an object", param)
        kind = fmt.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            return json_object_grammar()
        if kind != "json_schema":
            raise bad(f"'{param}.type' must be text, json_object or json_schema", param)
        holder = fmt.get("json_schema") if nested else fmt
        if not isinstance(holder, dict):
            raise bad(f"'{param}.json_schema' must be an object", param)
        schema = holder.get("schema")
        if schema is None:
            return json_object_grammar()
        if not isinstance(schema, dict):
            raise bad(f"'{param}' schema must be a JSON object", param)
        try:
            return json_schema_grammar(schema)
        except ValueError as exc:
            raise bad(f"unsupported JSON schema: {exc}", param, "invalid_json_schema") from exc

    def message(self, message: Any, index: int, param: str, model: str) -> dict[str, Any]:
        if not isinstance(message, dict):
            raise bad(f"{param}[{index}] must be an object", param)
        role = message.get("role", "user" if param == "input" else None)
        if role not in ROLES:
            raise bad(f"{param}[{index}].role must be one of {sorted(ROLES)}", param)
        return {
            "role": "system" if role == "developer" else role,
            "content": self.content(message.get("content"), index, param, model),
        }

    def content(self, content: Any, index: int, param: str, model: str) -> str:
        """`model`: the name the request wrote, for messages in the user's own terms."""
        if content is None or isinstance(content, str):
            return content or ""
        if not isinstance(content, list):
            raise bad(f"{param}[{index}].content must be a string or an array of parts", param)
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in IMAGE_PARTS:
                raise bad(
                    f"The model '{model}' is text-only and does not accept image input "
                    f"({param}[{index}] has an image part). Send text only, or route this "
                    "request to a vision model.",
                    param,
                    "image_input_not_supported",
                )
            if kind not in TEXT_PARTS or not isinstance(part.get("text", part.get("refusal")), str):
                raise bad(
                    f"{param}[{index}] has a content part of type {kind!r}, which the model "
                    f"'{model}' does not accept: only text parts are supported",
                    param,
                    "unsupported_content_type",
                )
            texts.append(part.get("text", part.get("refusal")))
        return "\n".join(texts)

    def chat_prompt(self, messages: list[dict[str, Any]], param: str) -> list[int]:
        try:
            return self.model.chat_tokens(messages)
        except ValueError as exc:
            raise bad(str(exc), param) from exc

    def completion_prompts(self, prompt: Any) -> list[list[int]]:
        if prompt is None:
            raise bad("'prompt' is required", "prompt", "missing_required_parameter")
        if isinstance(prompt, str):
            items: list[Any] = [prompt]
        elif isinstance(prompt, list) and prompt and all(is_token(t) for t in prompt):
            items = [prompt]
        elif isinstance(prompt, list) and prompt:
            items = prompt
        else:
            raise bad("'prompt' must be a string, an array of strings or of tokens", "prompt")
        prompts = []
        for item in items:
            if isinstance(item, str):
                tokens = self.model.text_tokens(item)
            elif isinstance(item, list) and item and all(is_token(t) for t in item):
                tokens = self.tokens_in_vocab(item, "prompt")
            else:
                raise bad("'prompt' must be a string, an array of strings or of tokens", "prompt")
            if not tokens:
                tokens = [self.model.bos] if self.model.bos >= 0 else []
            if not tokens:
                raise bad("'prompt' must not be empty", "prompt")
            prompts.append(tokens)
        return prompts

    def tokens_in_vocab(self, tokens: list[int], param: str) -> list[int]:
        if any(t < 0 or t >= self.model.n_vocab for t in tokens):
            raise bad(f"'{param}' holds token ids outside the vocabulary", param)
        return list(tokens)

    def embedding_inputs(self, raw: Any, limit: int) -> list[list[int]]:
        if raw is None:
            raise bad("'input' is required", "input", "missing_required_parameter")
        if isinstance(raw, str) or (isinstance(raw, list) and raw and all(map(is_token, raw))):
            raw = [raw]
        if not isinstance(raw, list) or not raw or len(raw) > 2048:
            raise bad("'input' must be a string or a non-empty array of at most 2048", "input")
        inputs = []
        for item in raw:
            if isinstance(item, str) and item:
                tokens = self.model.text_tokens(item)
            elif isinstance(item, list) and item and all(map(is_token, item)):
                tokens = self.tokens_in_vocab(item, "input")
            else:
                raise bad("each input must be a non-empty string or array of tokens", "input")
            if not tokens:
                raise bad("an input holds no tokens", "input")
            if len(tokens) > limit:
                raise bad(
                    f"an input has {len(tokens)} tokens; this model embeds at most {limit}",
                    "input",
                    "context_length_exceeded",
                )
            inputs.append(tokens)
        return inputs

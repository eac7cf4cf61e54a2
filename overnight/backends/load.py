"""What a model server says about its own load: vLLM's, SGLang's and llama.cpp's metrics.

Only gauges are read, by name, from Prometheus text or llama.cpp's `/slots`:

- vLLM: `vllm:num_requests_running`, `vllm:num_requests_waiting`,
  `vllm:kv_cache_usage_perc` (`vllm:gpu_cache_usage_perc` before 0.9);
- SGLang: `sglang:num_running_reqs`, `sglang:num_queue_reqs`, `sglang:token_usage`;
- llama.cpp: `llamacpp:requests_processing`, `llamacpp:requests_deferred` (no cache gauge).

A server with several engines (vLLM's `engine` label, data parallel) is summed.
Sources are in docs/scheduling.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_NAMES = {
    "vllm": (
        ("vllm:num_requests_running",),
        ("vllm:num_requests_waiting",),
        ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    ),
    "sglang": (("sglang:num_running_reqs",), ("sglang:num_queue_reqs",), ("sglang:token_usage",)),
    "llamacpp": (("llamacpp:requests_processing",), ("llamacpp:requests_deferred",), ()),
}
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+([^\s]+)", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Load:
    """One reading of an upstream: requests it runs, requests it queues, and how many
    of them were overnight's own when it was read."""

    kind: str  # "vllm", "sglang", "llamacpp"
    running: float
    waiting: float
    cache_usage: float | None = None  # 0..1 (KV cache or token pool), where told
    ours: int = 0

    @property
    def foreign(self) -> float:
        """Requests in the server that are not overnight's: the interactive load."""
        return max(0.0, self.running + self.waiting - self.ours)


def parse_metrics(text: str) -> Load | None:
    """A Load from Prometheus text exposition, or None if no known server's gauges are in it."""
    values: dict[str, float] = {}
    for name, raw in _SAMPLE.findall(text):
        if ":" not in name:
            continue  # the servers' own gauges all carry a "prefix:" namespace
        try:
            value = float(raw)
        except ValueError:
            continue
        values[name] = values.get(name, 0.0) + value
    for kind, (running, waiting, cache) in _NAMES.items():
        got_running = next((values[n] for n in running if n in values), None)
        got_waiting = next((values[n] for n in waiting if n in values), None)
        if got_running is None or got_waiting is None:
            continue
        usage = next((values[n] for n in cache if n in values), None)
        return Load(kind, got_running, got_waiting, usage)
    return None


def parse_slots(slots: Any) -> Load | None:
    """llama.cpp server's `/slots` (a JSON array; `is_processing` per slot): how many
    are busy. It does not say what waits, so `waiting` is 0 unless every slot is busy."""
    if not isinstance(slots, list) or not slots:
        return None
    busy = sum(1 for s in slots if isinstance(s, dict) and s.get("is_processing"))
    return Load("llamacpp", float(busy), 0.0, busy / len(slots))


def add(a: Load | None, b: Load | None) -> Load | None:
    """Replicas of one route, read as one server."""
    if a is None or b is None:
        return a or b
    usage = None
    if a.cache_usage is not None and b.cache_usage is not None:
        usage = (a.cache_usage + b.cache_usage) / 2
    return Load(a.kind, a.running + b.running, a.waiting + b.waiting, usage, a.ours + b.ours)

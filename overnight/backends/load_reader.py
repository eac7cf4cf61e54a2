"""Reading one replica's load signal, found by trying what model servers expose.

`/metrics` first (vLLM always, SGLang with `--enable-metrics`, llama.cpp with
`--metrics`; llama.cpp answers 501 without it), then llama.cpp's `/slots`.
A replica with neither (llama-cpp-python's server, OpenAI, a gateway) has no
signal; it is asked again every few minutes, in case it restarts with one.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit, urlunsplit

import orjson

from overnight.backends.http1 import ConnectionPool
from overnight.backends.load import Load, parse_metrics, parse_slots

log = logging.getLogger("overnight.load")

READ_TIMEOUT = 2.0
RETRY_NONE = 300.0  # seconds before a replica without a signal is asked again
MAX_METRICS = 8 * 1024 * 1024


def origin_of(base_url: str) -> str:
    parts = urlsplit(base_url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


class LoadReader:
    def __init__(self, base_url: str, headers: bytes, metrics_url: str | None = None) -> None:
        self.metrics_url = metrics_url or origin_of(base_url) + "/metrics"
        self.slots_url = origin_of(base_url) + "/slots"
        self.pool = ConnectionPool(origin_of(self.metrics_url), max_body=MAX_METRICS)
        self.headers = headers
        self.found: str | None = None  # "metrics" or "slots" once one answered
        self._none_until = 0.0
        self._told = False

    async def read(self) -> Load | None:
        now = time.monotonic()
        if self.found is None and now < self._none_until:
            return None
        for way in (self.found,) if self.found else ("metrics", "slots"):
            load = await self._read(way)
            if load is not None:
                if self.found is None:
                    log.info("load signal of %s: %s (%s)", self.metrics_url, way, load.kind)
                self.found = way
                return load
        if self.found is not None:
            return None  # it answered before: a passing failure, try again next time
        if not self._told:
            self._told = True
            log.info(
                "%s exposes no load signal (/metrics or /slots); overnight reads queueing "
                "from its own answer times instead",
                self.metrics_url,
            )
        self._none_until = now + RETRY_NONE
        return None

    async def _read(self, way: str | None) -> Load | None:
        url = self.metrics_url if way == "metrics" else self.slots_url
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            answer = await self.pool.get(target, self.headers, READ_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            log.debug("could not read %s: %s", url, exc)
            return None
        except Exception as exc:  # a garbled answer is no signal, never an engine failure
            log.debug("could not read %s: %s", url, exc)
            return None
        if answer.status != 200:
            return None
        if way == "metrics":
            return parse_metrics(answer.body.decode("utf-8", "replace"))
        try:
            return parse_slots(orjson.loads(answer.body))
        except orjson.JSONDecodeError:
            return None

    async def close(self) -> None:
        await self.pool.close()

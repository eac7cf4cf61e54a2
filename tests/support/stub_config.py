"""The stub upstream's settings: what it answers and how it misbehaves (see upstream_stub)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(slots=True)
class StubConfig:
    """How the stub behaves; every field is also a CLI flag and a `POST /_config` key."""

    port: int = _opt(0, "TCP port on 127.0.0.1 (0 picks a free one; not changeable live)")
    latency: float = _opt(0.0, "seconds to wait before answering a model request")
    latency_jitter: float = _opt(0.0, "extra random latency, uniform in [0, jitter] seconds")
    fail_rate: float = _opt(0.0, "fraction of requests answered with fail_status (500)")
    fail_status: int = _opt(500, "status used by fail_rate and fail_first_n")
    status_override: int | None = _opt(None, "answer every model request with this status")
    garbage_rate: float = _opt(0.0, "fraction answered 200 with a body that is not JSON")
    stream: str = _opt(
        "honour", "SSE answers: 'honour' body.stream, 'always' stream, 'never' stream"
    )
    reset_rate: float = _opt(0.0, "fraction whose connection is reset without an answer")
    hang_rate: float = _opt(0.0, "fraction never answered (until the client gives up)")
    endless_body_rate: float = _opt(0.0, "fraction answered 200 with a body that never ends")
    endless_header_rate: float = _opt(0.0, "fraction answered 200, then one header forever")
    fail_first_n: int = _opt(0, "the first N receipts of each distinct body answer 500")
    rpm: int | None = _opt(None, "requests per rate_window before 429")
    tpm: int | None = _opt(None, "tokens (prompt + max/completion) per rate_window before 429")
    rate_window: float = _opt(60.0, "length of the sliding rate-limit window, seconds")
    max_concurrency: int | None = _opt(None, "answer 429 while more requests are in flight")
    slots: int | None = _opt(
        None, "model requests generating at once; more wait in a queue (null: no limit)"
    )
    scheduling: str = _opt(
        "fifo", "waiting queue order: 'fifo', or 'priority' (body.priority, lower first)"
    )
    metrics: bool = _opt(True, "GET /metrics answers vLLM's gauges (false: 404, no signal)")
    require_api_key: str | None = _opt(None, "401 unless `Authorization: Bearer` or api-key")
    seed: int | None = _opt(None, "seed for the random choices (latency jitter, fault rates)")
    usage_tokens: int | None = _opt(None, "claim this many input tokens in every usage")
    embedding_dim: int = _opt(16, "embedding length when the request has no `dimensions`")
    max_received: int = _opt(10000, "how many received requests /_received keeps")
    max_lifetime: float | None = _opt(None, "the process exits by itself after this (CLI)")

    def validate(self) -> StubConfig:
        rates = (
            "fail_rate",
            "garbage_rate",
            "reset_rate",
            "hang_rate",
            "endless_body_rate",
            "endless_header_rate",
        )
        for name in rates:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if sum(getattr(self, name) for name in rates) > 1.0:
            raise ValueError(f"{' + '.join(rates)} must not exceed 1")
        for name in ("latency", "latency_jitter", "fail_first_n", "port"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("rpm", "tpm", "max_concurrency", "slots", "max_lifetime"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive (or null for no limit)")
        if self.stream not in ("honour", "always", "never"):
            raise ValueError("stream must be 'honour', 'always' or 'never'")
        if self.scheduling not in ("fifo", "priority"):
            raise ValueError("scheduling must be 'fifo' or 'priority'")
        if self.rate_window <= 0 or self.max_received < 1 or self.embedding_dim < 1:
            raise ValueError("rate_window, max_received and embedding_dim must be positive")
        for name in ("status_override", "fail_status"):
            value = getattr(self, name)
            if value is not None and not 100 <= value <= 599:
                raise ValueError(f"{name} must be an HTTP status code")
        return self

    def merged(self, changes: Mapping[str, Any]) -> StubConfig:
        """A copy with `changes` applied (the `POST /_config` semantics)."""
        values: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in _FIELD_TYPES or name == "port":
                raise ValueError(f"unknown or read-only setting: {name!r}")
            values[name] = _coerce(name, value)
        return dataclasses.replace(self, **values).validate()

    def to_argv(self) -> list[str]:
        """The CLI flags that rebuild this config in a child process."""
        argv: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default and value is not None:
                argv += ["--" + f.name.replace("_", "-"), str(value)]
        return argv

    @classmethod
    def from_argv(cls, argv: Sequence[str] | None = None) -> StubConfig:
        parser = argparse.ArgumentParser(
            prog="python -m tests.support.upstream_stub",
            description="OpenAI-compatible upstream stub on 127.0.0.1.",
        )
        for f in dataclasses.fields(cls):
            kind, _ = _FIELD_TYPES[f.name]
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                type=_flag if kind is bool else kind,
                default=f.default,
                help=f.metadata.get("help"),
            )
        args = parser.parse_args(argv)
        try:
            return cls(**vars(args)).validate()
        except ValueError as exc:
            parser.error(str(exc))
            raise  # unreachable: parser.error exits


def _flag(raw: str) -> bool:
    """A boolean CLI value: true/false, yes/no, on/off, 1/0."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {raw!r}")


def _field_types() -> dict[str, tuple[type, bool]]:
    kinds = {"int": int, "float": float, "str": str, "bool": bool}
    out = {}
    for f in dataclasses.fields(StubConfig):
        annotation = str(f.type)
        out[f.name] = (kinds[annotation.split("|")[0].strip()], "None" in annotation)
    return out


_FIELD_TYPES = _field_types()


def _coerce(name: str, value: Any) -> Any:
    kind, optional = _FIELD_TYPES[name]
    if value is None:
        if optional:
            return None
    elif isinstance(value, str | bool) and type(value) is kind:
        return value
    elif kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif (
        kind is int
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and float(value).is_integer()
    ):
        return int(value)
    raise ValueError(f"{name} must be {kind.__name__}{' or null' if optional else ''}")

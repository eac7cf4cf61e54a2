"""One Settings object, built once at the entry point from flags, env and a TOML file.

Precedence: command-line flag, then environment variable, then config file,
then default. Nothing else in the package reads the environment.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overnight.config_tables import named_tables
from overnight.cost import Price, prices_from_toml
from overnight.errors import ConfigError

DEFAULT_ROUTE = "*"
# A project name: what API keys map to and what owns files and batches.
PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


EVENTS = ("batch.completed", "batch.failed", "batch.expired", "batch.cancelled")


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    project: str
    url: str
    secret: str = field(repr=False)
    events: tuple[str, ...] = EVENTS
    max_attempts: int = 12
    retry_base_seconds: float = 5.0
    timeout: float = 10.0


def webhooks_from_toml(doc: dict[str, Any], env: dict[str, str]) -> tuple[WebhookTarget, ...]:
    known = {"url", "secret_env", "events", "max_attempts", "retry_base_seconds", "timeout"}
    out = []
    for project, spec, where in named_tables(doc, "webhooks", known, "a table of project names"):
        url = spec.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f'{where} needs url = "https://..."')
        secret_env = spec.get("secret_env")
        if not isinstance(secret_env, str) or not secret_env:
            raise ConfigError(
                f"{where} needs secret_env, the name of the variable holding the signing secret"
            )
        secret = env.get(secret_env)
        if not secret:
            raise ConfigError(f"{where} reads its secret from ${secret_env}, which is not set")
        events = tuple(spec.get("events", EVENTS))
        bad = [e for e in events if e not in EVENTS]
        if bad:
            raise ConfigError(f"{where} has unknown events {bad}; known events are {list(EVENTS)}")
        try:
            max_attempts = int(spec.get("max_attempts", 12))
            base = float(spec.get("retry_base_seconds", 5.0))
            timeout = float(spec.get("timeout", 10.0))
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: max_attempts and the seconds must be numbers") from None
        if max_attempts < 1 or base <= 0 or timeout <= 0:
            raise ConfigError(f"{where}: max_attempts, retry_base_seconds, timeout must be > 0")
        out.append(WebhookTarget(project, url, secret, events, max_attempts, base, timeout))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Route:
    """Where requests for one model (or deployment) name go."""

    name: str
    url: str | None = None  # OpenAI-compatible base URL, e.g. http://host:8000/v1
    urls: tuple[str, ...] = ()  # replicas of the same model server
    api_key: str | None = field(default=None, repr=False)
    max_concurrency: int | None = None  # static ceiling; adaptive below it
    timeout: float = 600.0
    upstream_model: str | None = None  # rewrite body.model to this
    gguf: str | None = None  # a local GGUF file: run in process
    embedded: bool = False  # the embedded default model
    n_ctx: int | None = None  # in-process models: tokens per sequence (prompt + answer)
    rpm: int | None = None
    tpm: int | None = None
    # Sharing the upstream with interactive users (docs/scheduling.md):
    yield_mode: str = "auto"  # `yield`: "auto" gives way to others' requests, "off" never
    max_share: float = 1.0  # of the upstream's capacity, at most, when it is known
    priority: int | None = None  # sent as the body's `priority` (vLLM, SGLang)
    metrics_url: str | None = None  # where the load signal is read; default: the origin's
    load_interval: float = 0.1  # seconds between readings of it

    @property
    def replicas(self) -> tuple[str, ...]:
        return self.urls or ((self.url,) if self.url else ())


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path(".overnight")
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str | None = None
    storage_url: str | None = None
    s3_create_bucket: bool = False  # OVERNIGHT_S3_CREATE_BUCKET=1: first-time setups, tests
    upstream_url: str | None = None
    upstream_api_key: str | None = field(default=None, repr=False)
    routes: tuple[Route, ...] = ()
    embedded_by_default: bool = True
    run_executor: bool = True
    max_requests_per_batch: int = 50_000
    completion_window_seconds: int = 86_400  # what "24h" means (tests shorten it)
    # Windows a batch may ask for. The vendors accept only "24h"; an operator may allow
    # others (e.g. "1h", "7d") for their own users.
    completion_windows: tuple[str, ...] = ("24h",)
    # Batches that would expire at an equal share get the rate they need, earliest
    # deadline first (engine/deadlines.py). Off: a plain share weighed by priority only.
    deadline_scheduling: bool = True
    max_upload_bytes: int = 512 * 1024 * 1024
    max_batch_file_bytes: int = 200 * 1024 * 1024
    max_line_bytes: int = 8 * 1024 * 1024
    max_open_batches: int = 1000
    lease_seconds: float = 60.0
    claim_chunk: int = 256
    flush_interval: float = 0.05
    flush_max: int = 512
    max_attempts: int = 5
    retry_base_delay: float = 0.5
    retry_max_delay: float = 60.0
    initial_concurrency: int = 16
    max_concurrency: int = 256
    cancel_grace_seconds: float = 30.0
    # On SIGTERM: how long requests already sent may take to answer before the process
    # exits (below Kubernetes' terminationGracePeriodSeconds, 30 by default).
    shutdown_grace_seconds: float = 25.0
    # Ledger rows of a finished batch (its results are in the output files) and deleted
    # files' tombstones are removed this many days after the batch or file was created.
    retention_days: int = 30
    poll_interval: float = 0.2
    api_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    key_cache_seconds: float = 5.0  # a revoked database key stops working within this
    log_level: str = "info"
    log_format: str = "text"  # OVERNIGHT_LOG_FORMAT=json: one JSON object per line
    # `overnight worker --metrics-port`: /metrics of a worker (off without a port).
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    # OpenTelemetry traces (the `otel` extra), docs/observability.md. The endpoint and the
    # service name come from the OTel spec's own variables.
    tracing: bool = False
    otlp_traces_endpoint: str = "http://localhost:4318/v1/traces"
    service_name: str = "overnight"
    prices: tuple[Price, ...] = ()  # [prices."model"]: estimated cost of batches
    webhooks: tuple[WebhookTarget, ...] = field(default=(), repr=False)  # [webhooks.project]

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return normalize_database_url(self.database_url)
        return f"sqlite+aiosqlite:///{(self.data_dir / 'overnight.db').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{(self.data_dir / 'files').resolve()}"

    def route_for(self, model: str) -> Route | None:
        """The route serving `model`: its own, else the default upstream, else embedded."""
        for route in self.routes:
            if route.name == model:
                return route
        for route in self.routes:
            if route.name == DEFAULT_ROUTE:
                return route
        if self.upstream_url:
            return Route(name=DEFAULT_ROUTE, url=self.upstream_url, api_key=self.upstream_api_key)
        if self.embedded_by_default and not self.routes:
            return Route(name=DEFAULT_ROUTE, embedded=True)
        return None


def normalize_database_url(url: str) -> str:
    """Accept the URLs people write (postgresql://, sqlite:///) and pick async drivers."""
    if url.startswith(("postgres://", "postgresql://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    return url


_ROUTE_KEYS = {
    "url",
    "urls",
    "api_key_env",
    "max_concurrency",
    "timeout",
    "model",
    "gguf",
    "rpm",
    "tpm",
    "embedded",
    "n_ctx",
    "yield",
    "max_share",
    "priority",
    "metrics_url",
    "load_interval",
}


def _is_number(value: Any) -> bool:
    """A TOML integer or float (TOML's booleans are ints to Python)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _routes_from_toml(doc: dict[str, Any], env: dict[str, str]) -> tuple[Route, ...]:
    routes = []
    for name, spec, where in named_tables(doc, "models", _ROUTE_KEYS, "a table of model names"):
        key_env = spec.get("api_key_env")
        if key_env and key_env not in env:
            raise ConfigError(f"{where} reads its key from ${key_env}, which is not set")
        urls = spec.get("urls", [])
        if not (spec.get("url") or urls or spec.get("gguf") or spec.get("embedded")):
            raise ConfigError(f"{where} needs one of url, urls, gguf or embedded = true")
        n_ctx = spec.get("n_ctx")
        if n_ctx is not None and (
            not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx < 64
        ):
            raise ConfigError(f"{where} n_ctx must be a whole number >= 64")
        yield_mode = spec.get("yield", "auto")
        if yield_mode not in ("auto", "off"):
            raise ConfigError(f'{where} yield must be "auto" or "off", not {yield_mode!r}')
        max_share = spec.get("max_share", 1.0)
        if not _is_number(max_share) or not 0 < max_share <= 1:
            raise ConfigError(f"{where} max_share must be a fraction in (0, 1], e.g. 0.5")
        priority = spec.get("priority")
        if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)):
            raise ConfigError(
                f"{where} priority must be a whole number (vLLM: higher runs later; "
                "SGLang: lower runs later by default)"
            )
        metrics_url = spec.get("metrics_url")
        if metrics_url is not None and not (
            isinstance(metrics_url, str) and metrics_url.startswith(("http://", "https://"))
        ):
            raise ConfigError(f'{where} metrics_url must be "http(s)://host:port/metrics"')
        load_interval = spec.get("load_interval", 0.1)
        if not _is_number(load_interval) or not 0.01 <= load_interval <= 60:
            raise ConfigError(f"{where} load_interval must be seconds from 0.01 to 60")
        routes.append(
            Route(
                name=name,
                url=spec.get("url"),
                urls=tuple(urls),
                api_key=env.get(key_env) if key_env else None,
                max_concurrency=spec.get("max_concurrency"),
                timeout=float(spec.get("timeout", 600.0)),
                upstream_model=spec.get("model"),
                gguf=spec.get("gguf"),
                embedded=bool(spec.get("embedded", False)),
                n_ctx=n_ctx,
                rpm=spec.get("rpm"),
                tpm=spec.get("tpm"),
                yield_mode=yield_mode,
                max_share=float(max_share),
                priority=priority,
                metrics_url=metrics_url,
                load_interval=float(load_interval),
            )
        )
    return tuple(routes)


def _parse_api_keys(raw: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        project, sep, key = item.partition(":")
        if not sep or not project or not key:
            raise ConfigError("OVERNIGHT_API_KEYS must be comma-separated project:key pairs")
        if not PROJECT_NAME.match(project):
            raise ConfigError(
                f"OVERNIGHT_API_KEYS: project {project[:40]!r} is not a valid name (letters, "
                "digits and . _ @ -, at most 128 characters)"
            )
        pairs.append((project, key))
    return tuple(pairs)


def load(
    config_file: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build Settings from env, an optional TOML file and explicit overrides (CLI flags)."""
    env = dict(os.environ) if env is None else env
    doc: dict[str, Any] = {}
    config_file = config_file or env.get("OVERNIGHT_CONFIG")
    if config_file:
        try:
            doc = tomllib.loads(Path(config_file).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {config_file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from None

    server = doc.get("server", {})
    values: dict[str, Any] = {}
    for key in ("data_dir", "database_url", "storage_url", "upstream_url", "host", "port"):
        if key in server:
            values[key] = server[key]
    for key in ("max_requests_per_batch", "completion_window_seconds", "max_attempts"):
        if key in server:
            values[key] = int(server[key])
    windows = env.get("OVERNIGHT_COMPLETION_WINDOWS") or server.get("completion_windows")
    if windows:
        values["completion_windows"] = _parse_windows(windows)
    env_map = {
        "OVERNIGHT_DATA_DIR": "data_dir",
        "OVERNIGHT_DATABASE_URL": "database_url",
        "OVERNIGHT_STORAGE_URL": "storage_url",
        "OVERNIGHT_UPSTREAM_URL": "upstream_url",
        "OVERNIGHT_UPSTREAM_API_KEY": "upstream_api_key",
        "OVERNIGHT_LOG_LEVEL": "log_level",
    }
    for var, key in env_map.items():
        if env.get(var):
            values[key] = env[var]
    int_env = {
        "OVERNIGHT_MAX_REQUESTS_PER_BATCH": "max_requests_per_batch",
        "OVERNIGHT_COMPLETION_WINDOW_SECONDS": "completion_window_seconds",
        "OVERNIGHT_MAX_ATTEMPTS": "max_attempts",
        "OVERNIGHT_MAX_OPEN_BATCHES": "max_open_batches",
        "OVERNIGHT_MAX_UPLOAD_BYTES": "max_upload_bytes",
        "OVERNIGHT_MAX_BATCH_FILE_BYTES": "max_batch_file_bytes",
        "OVERNIGHT_MAX_LINE_BYTES": "max_line_bytes",
        "OVERNIGHT_RETENTION_DAYS": "retention_days",
    }
    float_env = {
        "OVERNIGHT_RETRY_BASE_DELAY": "retry_base_delay",
        "OVERNIGHT_LEASE_SECONDS": "lease_seconds",
        "OVERNIGHT_CANCEL_GRACE_SECONDS": "cancel_grace_seconds",
        "OVERNIGHT_SHUTDOWN_GRACE_SECONDS": "shutdown_grace_seconds",
        "OVERNIGHT_KEY_CACHE_SECONDS": "key_cache_seconds",
    }
    for var, key in int_env.items():
        if env.get(var):
            values[key] = _number(var, env[var], int)
    for var, key in float_env.items():
        if env.get(var):
            values[key] = _number(var, env[var], float)
    if env.get("OVERNIGHT_S3_CREATE_BUCKET"):
        values["s3_create_bucket"] = env["OVERNIGHT_S3_CREATE_BUCKET"].lower() in (
            "1",
            "true",
            "yes",
        )
    values.update(_observability(env))
    if env.get("OVERNIGHT_DEADLINE_SCHEDULING"):
        values["deadline_scheduling"] = _switch(
            "OVERNIGHT_DEADLINE_SCHEDULING", env["OVERNIGHT_DEADLINE_SCHEDULING"]
        )
    if env.get("OVERNIGHT_API_KEYS"):
        values["api_keys"] = _parse_api_keys(env["OVERNIGHT_API_KEYS"])
    values["routes"] = _routes_from_toml(doc, env)
    values["prices"] = prices_from_toml(doc)
    values["webhooks"] = webhooks_from_toml(doc, env)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "data_dir" in values:
        values["data_dir"] = Path(values["data_dir"])
    return Settings(**values)


LOG_FORMATS = ("text", "json")


def _flag(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _observability(env: dict[str, str]) -> dict[str, Any]:
    """Log format, a worker's metrics port, and tracing (OVERNIGHT_* and the OTEL_* names)."""
    values: dict[str, Any] = {}
    log_format = env.get("OVERNIGHT_LOG_FORMAT", "").strip().lower()
    if log_format:
        if log_format not in LOG_FORMATS:
            raise ConfigError(f"OVERNIGHT_LOG_FORMAT must be text or json, got {log_format[:40]!r}")
        values["log_format"] = log_format
    if env.get("OVERNIGHT_METRICS_HOST"):
        values["metrics_host"] = env["OVERNIGHT_METRICS_HOST"]
    if env.get("OVERNIGHT_METRICS_PORT"):
        port = _number("OVERNIGHT_METRICS_PORT", env["OVERNIGHT_METRICS_PORT"], int)
        if not 1 <= port <= 65535:
            raise ConfigError(f"OVERNIGHT_METRICS_PORT must be a port from 1 to 65535, got {port}")
        values["metrics_port"] = port
    if env.get("OVERNIGHT_TRACING"):
        values["tracing"] = _flag(env["OVERNIGHT_TRACING"])
    # The OTLP/HTTP exporter's spec: the signal's own endpoint is used as it is; the
    # general one is a base to which /v1/traces is added.
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        values["otlp_traces_endpoint"] = env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    elif env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        base = env["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/")
        values["otlp_traces_endpoint"] = base + "/v1/traces"
    if env.get("OTEL_SERVICE_NAME"):
        values["service_name"] = env["OTEL_SERVICE_NAME"]
    return values


_WINDOW = re.compile(r"^([1-9][0-9]{0,6})(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def window_seconds(window: str) -> int | None:
    """ "90s", "30m", "24h", "7d" in seconds; None if it is none of those."""
    match = _WINDOW.match(window)
    return int(match[1]) * _UNIT_SECONDS[match[2]] if match else None


def _parse_windows(raw: str | list[Any]) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else raw
    out = []
    for item in items:
        window = str(item).strip()
        if window and window_seconds(window) is None:
            raise ConfigError(
                f"completion window {window[:40]!r} is not a number and a unit (s, m, h, d), "
                'e.g. "24h" or "7d"'
            )
        if window:
            out.append(window)
    if not out:
        raise ConfigError("OVERNIGHT_COMPLETION_WINDOWS lists no window")
    return tuple(out)


def _switch(var: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{var} must be on or off (1/0, true/false), got {raw[:40]!r}")


def _number(var: str, raw: str, kind: type) -> Any:
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{var} must be a number, got {raw!r}") from None

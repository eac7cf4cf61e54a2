"""Server-side commands: serve, worker, demo."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from overnight import settings as settings_mod
from overnight import task_dump
from overnight.cli.app import app
from overnight.errors import ConfigError
from overnight.loopback import is_loopback
from overnight.settings import Settings

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML config file.")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Where the SQLite database and files live [env OVERNIGHT_DATA_DIR]."
    ),
]
UpstreamOpt = Annotated[
    str | None,
    typer.Option(
        "--upstream",
        help="OpenAI-compatible base URL serving every model [env OVERNIGHT_UPSTREAM_URL].",
    ),
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url", help="postgresql://... for scale-out [env OVERNIGHT_DATABASE_URL]."
    ),
]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage-url", help="s3://bucket/prefix for scale-out [env OVERNIGHT_STORAGE_URL]."
    ),
]


class WorkerExit(Exception):
    """The worker cannot start; the message says why."""


def _load(**overrides: object) -> Settings:
    try:
        return settings_mod.load(**overrides)  # type: ignore[arg-type]
    except ConfigError as exc:
        typer.echo(f"overnight: {exc.message}", err=True)
        raise typer.Exit(2) from None


def _setup_observability(s: Settings) -> None:
    """Logging (text or JSON) and, if turned on, tracing; before anything logs."""
    from overnight import logs, tracing

    logs.setup(s.log_level, s.log_format)
    try:
        tracing.configure(s)
    except ConfigError as exc:
        typer.echo(f"overnight: {exc.message}", err=True)
        raise typer.Exit(2) from None


def _database_has_keys(s: Settings) -> bool:
    """Whether `overnight keys create` made a key in this store (then auth is on)."""
    from overnight.store import open_store

    async def check() -> bool:
        store = await open_store(s.resolved_database_url)
        try:
            return await store.keys.any_configured()
        finally:
            await store.close()

    return asyncio.run(check())


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    upstream: UpstreamOpt = None,
    database_url: DatabaseOpt = None,
    storage_url: StorageOpt = None,
    no_executor: Annotated[
        bool, typer.Option("--no-executor", help="Serve the API only; workers run batches.")
    ] = False,
) -> None:
    """Run the HTTP API and the executor in one process."""
    import uvicorn

    from overnight.api.app import create_app
    from overnight.backends.router import Router

    s = _load(
        config_file=config,
        data_dir=data_dir,
        upstream_url=upstream,
        host=host,
        port=port,
        database_url=database_url,
        storage_url=storage_url,
        run_executor=False if no_executor else None,
    )
    _setup_observability(s)
    if not s.api_keys and not is_loopback(s.host) and not _database_has_keys(s):
        typer.echo(
            f"overnight: refusing to listen on {s.host} without API keys. Set "
            "OVERNIGHT_API_KEYS=project:key (or create one with `overnight keys create "
            "--project NAME`), or bind 127.0.0.1.",
            err=True,
        )
        raise typer.Exit(2)
    log = logging.getLogger("overnight")
    log.info("overnight listening on http://%s:%d (data dir %s)", s.host, s.port, s.data_dir)
    log.info("routing: %s", Router(s).describe())
    api = create_app(s)
    uvicorn_config = uvicorn.Config(
        api,
        host=s.host,
        port=s.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        # h11 bounds a request's head (request line and headers); httptools buffers a
        # header of any length, so one connection could grow the process without limit.
        http="h11",
        h11_max_incomplete_event_size=64 * 1024,
        # JSON logs: uvicorn's loggers go through overnight's handler, not their own.
        log_config=None if s.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # uvicorn closes HTTP connections first and runs the app's shutdown after:
            # the executor must stop sending now, not seconds later.
            scheduler = getattr(api.state, "scheduler", None)
            if scheduler is not None:
                with contextlib.suppress(RuntimeError):  # no loop yet: nothing runs
                    asyncio.get_running_loop().call_soon(scheduler.begin_drain)
            super().handle_exit(sig, frame)

    try:
        Server(uvicorn_config).run()
    finally:
        from overnight import tracing

        tracing.shutdown()  # the last spans: the batches' ends


@app.command()
def worker(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    upstream: UpstreamOpt = None,
    database_url: DatabaseOpt = None,
    storage_url: StorageOpt = None,
    metrics_host: Annotated[
        str | None,
        typer.Option(
            help="Address for --metrics-port to bind [env OVERNIGHT_METRICS_HOST; "
            "default 127.0.0.1]."
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Serve GET /metrics (Prometheus) and /healthz on this port; off without it "
            "[env OVERNIGHT_METRICS_PORT].",
        ),
    ] = None,
) -> None:
    """Run the executor only (no HTTP API), against a shared database and storage."""
    from overnight import tracing
    from overnight.engine.scheduler import Scheduler
    from overnight.metrics_server import MetricsServer
    from overnight.services import Services

    s = _load(
        config_file=config,
        data_dir=data_dir,
        upstream_url=upstream,
        database_url=database_url,
        storage_url=storage_url,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
    )
    _setup_observability(s)
    log = logging.getLogger("overnight")

    async def run() -> None:
        svc = await Services.open(s)
        scheduler = Scheduler(svc)
        exporter = None
        if s.metrics_port is not None:
            # Bound before any work is claimed: a taken port stops the worker cleanly.
            exporter = MetricsServer(svc, scheduler, s.metrics_host, s.metrics_port)
            try:
                await exporter.start()
            except OSError as exc:
                await svc.close()
                where = f"{s.metrics_host}:{s.metrics_port}"
                raise WorkerExit(
                    f"cannot serve metrics on {where}: {exc.strerror or exc}"
                ) from None
            log.info("metrics on http://%s:%d/metrics", s.metrics_host, s.metrics_port)
        await scheduler.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        task_dump.install(loop)
        log.info("worker %s running", svc.owner)
        await stop.wait()
        scheduler.begin_drain()
        await scheduler.stop()
        if exporter is not None:
            await exporter.stop()
        await svc.close()

    try:
        asyncio.run(run())
    except WorkerExit as exc:
        typer.echo(f"overnight: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        tracing.shutdown()


@app.command()
def demo() -> None:
    """Run a small batch on the embedded model, start to finish, and show the answers."""
    from overnight.demo import run_demo

    raise typer.Exit(run_demo())

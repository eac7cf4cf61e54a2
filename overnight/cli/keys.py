"""`overnight keys create | list | revoke`: API keys kept (hashed) in the database.

These commands open the same store as `overnight serve` (same --data-dir,
--database-url, --config and environment), and a running server sees a new or
revoked key within a few seconds, without a restart.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from overnight.cli.app import app
from overnight.cli.server import ConfigOpt, DatabaseOpt, DataDirOpt, _load
from overnight.settings import PROJECT_NAME

if TYPE_CHECKING:
    from overnight.store import Store

keys_app = typer.Typer(
    help="Create, list and revoke API keys (each key belongs to one project).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")

T = TypeVar("T")


def _with_store(
    data_dir: object, config: object, database_url: object, work: Callable[[Store], Awaitable[T]]
) -> T:
    from overnight.store import open_store  # not at import: keeps every other command fast

    s = _load(config_file=config, data_dir=data_dir, database_url=database_url)

    async def run() -> T:
        store = await open_store(s.resolved_database_url)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (OSError, ConnectionError) as exc:
        typer.echo(
            f"overnight: cannot open the database: {type(exc).__name__}. Check --data-dir or "
            "OVERNIGHT_DATABASE_URL (or --database-url).",
            err=True,
        )
        raise typer.Exit(1) from None


def _when(stamp: int | None) -> str:
    if stamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@keys_app.command("create")
def create(
    project: Annotated[str, typer.Option("--project", help="The project the key acts for.")],
    name: Annotated[
        str | None, typer.Option("--name", help="A label to recognise the key by.")
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Create a key and print it, once: only its hash is stored."""
    if not PROJECT_NAME.match(project):
        typer.echo(
            "overnight: --project must be 1-128 letters, digits or . _ @ - "
            "(starting with a letter or digit).",
            err=True,
        )
        raise typer.Exit(2)
    if name is not None and not 0 < len(name) <= 128:
        typer.echo("overnight: --name must be 1-128 characters.", err=True)
        raise typer.Exit(2)
    record, key = _with_store(
        data_dir, config, database_url, lambda store: store.keys.create(project, name)
    )
    typer.echo(key)
    typer.echo(
        f"Created {record.id} for project '{project}'. This is the only time the key is "
        "shown: store it now. Send it as 'Authorization: Bearer KEY' (or 'api-key: KEY').",
        err=True,
    )


@keys_app.command("list")
def list_keys(
    project: Annotated[
        str | None, typer.Option("--project", help="Only this project's keys.")
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Show the keys in the database (never the keys themselves)."""
    keys = _with_store(data_dir, config, database_url, lambda store: store.keys.list(project))
    rows = [("ID", "PROJECT", "PREFIX", "NAME", "CREATED", "REVOKED")]
    rows += [
        (k.id, k.project, k.prefix + "...", k.name or "-", _when(k.created_at), _when(k.revoked_at))
        for k in keys
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if not keys:
        typer.echo("(no keys; keys set in OVERNIGHT_API_KEYS are not listed here)", err=True)


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id, as `overnight keys list` shows.")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Revoke a key: running servers refuse it within a few seconds."""
    record = _with_store(data_dir, config, database_url, lambda store: store.keys.revoke(key_id))
    if record is None:
        typer.echo(f"overnight: no key with id {key_id!r} (see `overnight keys list`).", err=True)
        raise typer.Exit(1)
    typer.echo(f"Revoked {record.id} (project '{record.project}', {record.prefix}...).")

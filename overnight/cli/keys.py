"""`overnight keys create | list | revoke`: API keys kept (hashed) in the database.

These commands open the same store as `overnight serve` (same --data-dir,
--database-url, --config and environment), and a running server sees a new or
revoked key within a few seconds, without a restart.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from overnight.cli.app import app
from overnight.cli.server import ConfigOpt, DatabaseOpt, DataDirOpt, _load
from overnight.settings import PROJECT_NAME, Settings

if TYPE_CHECKING:
    from overnight.models import ApiKey
    from overnight.store import Store

keys_app = typer.Typer(
    help="Create, list and revoke API keys (each key belongs to one project).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")

T = TypeVar("T")


def _settings(data_dir: object, config: object, database_url: object) -> Settings:
    return _load(config_file=config, data_dir=data_dir, database_url=database_url)


def _missing_database(s: Settings) -> Path | None:
    """The SQLite file these settings name, when it does not exist yet (None otherwise):
    reading keys must not create a data directory where there was none."""
    url = s.resolved_database_url
    prefix = "sqlite+aiosqlite:///"
    if not url.startswith(prefix):
        return None
    path = Path(url[len(prefix) :])
    return None if path.exists() else path


def _with_store(s: Settings, work: Callable[[Store], Awaitable[T]]) -> T:
    from overnight.store import open_store  # not at import: keeps every other command fast

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


@dataclass(frozen=True)
class _Created:
    record: ApiKey
    key: str
    first: bool  # no key was in the database before (revoked ones count)
    anonymous_batches: int  # in the project of calls made without a key (capped)
    anonymous_files: int


ANONYMOUS_COUNT_CAP = 1000


async def _create(store: Store, project: str, name: str | None) -> _Created:
    from overnight.api.auth import ANONYMOUS_PROJECT

    first = not await store.keys.any_configured()
    batches = files = 0
    if first:
        cap = ANONYMOUS_COUNT_CAP
        found, _ = await store.batches.page(ANONYMOUS_PROJECT, limit=cap, after=None)
        batches = len(found)
        made, _ = await store.files.page(
            ANONYMOUS_PROJECT, purpose=None, limit=cap, order="desc", after=None
        )
        files = len(made)
    record, key = await store.keys.create(project, name)
    return _Created(record, key, first, batches, files)


def _first_key_warning(created: _Created) -> str:
    from overnight.api.auth import ANONYMOUS_PROJECT

    project = created.record.project
    lines = [
        "This is the first key, so authentication is now on: within a second, every server "
        "on this database refuses calls without a valid key, from this machine too."
    ]
    if created.anonymous_batches or created.anonymous_files:
        cap = ANONYMOUS_COUNT_CAP

        def n(count: int) -> str:
            return f"{count}+" if count >= cap else str(count)

        owned = (
            f"The {n(created.anonymous_batches)} batch(es) and {n(created.anonymous_files)} "
            f"file(s) made without a key belong to project '{ANONYMOUS_PROJECT}'"
        )
        if project == ANONYMOUS_PROJECT:
            lines.append(f"{owned}, this key's project: it sees them.")
        else:
            lines.append(
                f"{owned} and stay there: a key of project '{project}' does not see them. To "
                f"reach them, create a key for that project: overnight keys create "
                f"--project {ANONYMOUS_PROJECT}"
            )
    return "\n".join(lines)


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
    s = _settings(data_dir, config, database_url)
    created = _with_store(s, lambda store: _create(store, project, name))
    typer.echo(created.key)
    typer.echo(
        f"Created {created.record.id} for project '{project}'. This is the only time the key "
        "is shown: store it now. Send it as 'Authorization: Bearer KEY' (or 'api-key: KEY').",
        err=True,
    )
    if created.first and not s.api_keys:  # with OVERNIGHT_API_KEYS, auth was on already
        typer.echo(_first_key_warning(created), err=True)


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
    s = _settings(data_dir, config, database_url)
    missing = _missing_database(s)
    if missing is not None:
        typer.echo(f"(no keys: there is no database at {missing} yet)", err=True)
        return
    keys = _with_store(s, lambda store: store.keys.list(project))
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
    s = _settings(data_dir, config, database_url)

    async def work(store: Store) -> tuple[ApiKey | None, int]:
        record = await store.keys.revoke(key_id)
        active = [k for k in await store.keys.list() if k.revoked_at is None]
        return record, len(active)

    record, active = (None, 0) if _missing_database(s) else _with_store(s, work)
    if record is None:
        typer.echo(f"overnight: no key with id {key_id!r} (see `overnight keys list`).", err=True)
        raise typer.Exit(1)
    typer.echo(f"Revoked {record.id} (project '{record.project}', {record.prefix}...).")
    if active == 0 and not s.api_keys:
        typer.echo(
            "That was the last active key. Authentication stays on (revoked keys still count "
            "as set up): every call is refused, from this machine too, until you create a key "
            "with `overnight keys create --project NAME`.",
            err=True,
        )

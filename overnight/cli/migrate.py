"""`overnight migrate`: create or upgrade the database schema, then exit.

Every `overnight serve` and `overnight worker` does the same on start; this command
lets a deployment run it once, before rolling out new processes.
"""

from __future__ import annotations

import asyncio

import typer
from sqlalchemy.engine import make_url

from overnight.cli.app import app
from overnight.cli.server import ConfigOpt, DatabaseOpt, DataDirOpt, _load


@app.command()
def migrate(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Bring the database schema up to date (also done on every start)."""
    from overnight.store.database import (
        create_engine,
        create_schema,
        current_revision,
        head_revision,
    )

    s = _load(config_file=config, data_dir=data_dir, database_url=database_url)
    url = s.resolved_database_url
    shown = make_url(url).render_as_string(hide_password=True)

    async def run() -> tuple[str | None, str | None]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                before = await conn.run_sync(current_revision)
            await create_schema(engine)
            async with engine.connect() as conn:
                after = await conn.run_sync(current_revision)
            return before, after
        finally:
            await engine.dispose()

    try:
        before, after = asyncio.run(run())
    except (OSError, ConnectionError) as exc:
        typer.echo(
            f"overnight: cannot reach the database {shown}: {exc}. "
            "Check OVERNIGHT_DATABASE_URL (or --database-url).",
            err=True,
        )
        raise typer.Exit(1) from None
    if before == after:
        typer.echo(f"{shown}: schema at revision {after} (head {head_revision()}), nothing to do")
    else:
        typer.echo(f"{shown}: schema upgraded from {before or 'empty'} to {after}")

"""The one Typer application every command module registers on."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    help="overnight: a self-hosted Batch API for LLM workloads (OpenAI and Azure compatible).",
    no_args_is_help=True,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from overnight import __version__

        typer.echo(f"overnight {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """overnight: a self-hosted Batch API for LLM workloads (OpenAI and Azure compatible)."""

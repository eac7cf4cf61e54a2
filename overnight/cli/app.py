"""The one Typer application every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="overnight: a self-hosted Batch API for LLM workloads (OpenAI and Azure compatible).",
    no_args_is_help=True,
    add_completion=False,
)

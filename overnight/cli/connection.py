"""What every client command shares: the options naming the server, the SDK client,
and one line on stderr (never a traceback) when the API refuses or cannot be reached."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

import typer
from rich.console import Console

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"

BaseUrl = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        envvar="OPENAI_BASE_URL",
        help=f"The Batch API's base URL (default: {DEFAULT_BASE_URL}).",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="OPENAI_API_KEY",
        help="API key (not needed by an overnight server without keys, on this machine).",
        show_default=False,
    ),
]
Poll = Annotated[float, typer.Option("--poll", min=0.05, help="Seconds between status checks.")]
Output = Annotated[
    Path | None,
    typer.Option("-o", "--output", help="Write the merged results here ('-': stdout)."),
]


def _out() -> Console:
    return Console(soft_wrap=True) if sys.stdout.isatty() else Console(width=200)


def _err() -> Console:
    return Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = 1) -> NoReturn:
    _err().print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def base_url_of(value: str | None) -> str:
    """The SDK's base URL; a bare server address (http://host:port) gets /v1."""
    url = (value or DEFAULT_BASE_URL).rstrip("/")
    if urlsplit(url).path in ("", "/"):
        url += "/v1"
    return url


def make_client(base_url: str | None, api_key: str | None) -> Any:
    import openai

    return openai.OpenAI(
        base_url=base_url_of(base_url), api_key=api_key or "-", max_retries=2, timeout=120.0
    )


@contextmanager
def api_errors(base_url: str | None) -> Iterator[None]:
    """Turn the SDK's exceptions into one helpful line and exit status 1."""
    import openai

    try:
        yield
    except openai.AuthenticationError as exc:
        _fail(f"{_message(exc)}\nSet the key with --api-key or OPENAI_API_KEY.")
    except openai.APIConnectionError:
        _fail(
            f"cannot reach {base_url_of(base_url)}: is the server running? "
            "Set the address with --base-url or OPENAI_BASE_URL."
        )
    except openai.APIStatusError as exc:
        _fail(f"{exc.status_code}: {_message(exc)}")


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(getattr(exc, "message", exc))

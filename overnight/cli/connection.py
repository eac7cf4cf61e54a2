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


def sdk_http() -> Any:
    """The HTTP library the installed openai SDK is built on: httpx up to openai 2, httpx2
    from openai 3. Its own Response and errors are what the SDK hands back and expects."""
    import importlib

    import openai

    client = next(c for c in openai.DefaultHttpxClient.__mro__[1:] if c.__name__ == "Client")
    return importlib.import_module(client.__module__.split(".")[0])


class _Transport:
    """The SDK's HTTP transport, with two changes.

    A connection that could not be opened is reported at once: the SDK does not retry an
    error of its own kind, so a server that is not running is said in a moment, not after
    the SDK's backoff. And with no key given the request goes without one (the SDK insists
    on a placeholder), so the server answers as to a call without a key."""

    def __init__(self, send_key: bool) -> None:
        self._http = sdk_http()
        self._inner = self._http.HTTPTransport()
        self._send_key = send_key

    def handle_request(self, request: Any) -> Any:
        import openai

        if not self._send_key:
            request.headers.pop("authorization", None)
        try:
            return self._inner.handle_request(request)
        except self._http.ConnectError as exc:
            raise openai.APIConnectionError(request=request) from exc

    def close(self) -> None:
        self._inner.close()


def make_client(base_url: str | None, api_key: str | None) -> Any:
    import openai

    http = openai.DefaultHttpxClient(
        transport=_Transport(send_key=bool(api_key)),  # type: ignore[arg-type]
        timeout=sdk_http().Timeout(120.0, connect=10.0),
    )
    return openai.OpenAI(
        base_url=base_url_of(base_url), api_key=api_key or "-", max_retries=2, http_client=http
    )


@contextmanager
def api_errors(base_url: str | None, api_key: str | None = None) -> Iterator[None]:
    """Turn the SDK's exceptions (and unusable local paths) into one line and exit status 1."""
    import openai

    url = base_url_of(base_url)
    try:
        yield
    except openai.AuthenticationError as exc:
        if api_key:
            _fail(
                f"the server refused the API key ({_masked(api_key)}): {_message(exc)}\n"
                "Check --api-key or OPENAI_API_KEY: the key may be mistyped, revoked or "
                "another server's."
            )
        _fail(
            f"no API key was given, and the server wants one: {_message(exc)}\n"
            "Set the key with --api-key or OPENAI_API_KEY."
        )
    except openai.APIConnectionError as exc:
        why = " (timed out)" if isinstance(exc, openai.APITimeoutError) else ""
        _fail(
            f"cannot reach {url}{why}: is the server running? "
            "Set the address with --base-url or OPENAI_BASE_URL."
        )
    except openai.NotFoundError as exc:
        if _is_unknown_route(exc):
            _fail(
                f"404: {_message(exc)}. Is the base URL right? It is {url}; an overnight "
                "server answers at http://HOST:PORT/v1 (or give just http://HOST:PORT). "
                "Set it with --base-url or OPENAI_BASE_URL."
            )
        _fail(f"404: {_message(exc)}")
    except openai.APIStatusError as exc:
        _fail(f"{exc.status_code}: {_message(exc)}")
    except OSError as exc:  # a local file: a directory, missing, unreadable, disk full
        where = f" {exc.filename}" if exc.filename else ""
        _fail(f"cannot use{where}: {exc.strerror or exc}")


def _masked(key: str) -> str:
    return f"{key[:6]}..." if len(key) > 10 else "..."


def _is_unknown_route(exc: Any) -> bool:
    """A 404 for a path the server does not serve (not for a missing batch or file)."""
    body = getattr(exc, "body", None)
    if not isinstance(body, dict):
        return True  # not an API's error envelope: some other server
    inner = body.get("error", body)
    message = str(inner.get("message", "")) if isinstance(inner, dict) else ""
    return message.startswith(("Invalid URL", "Resource not found")) or not message


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(getattr(exc, "message", exc))

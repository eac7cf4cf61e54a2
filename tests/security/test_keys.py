"""API keys: both header styles, 401s in the OpenAI envelope, the CLI, revocation, safe defaults."""

from __future__ import annotations

import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from overnight import settings as settings_mod
from overnight.api.app import create_app
from overnight.api.auth import KeyRing, is_loopback
from overnight.errors import ConfigError
from overnight.server_process import OvernightProcess, clean_env

from .helpers import AZURE_VERSION, Secure, cli, create_db_key

KEY_FORMAT = re.compile(r"^ovn-[0-9a-f]{48}$")


def _assert_401(response: httpx.Response, presented: str | None = None) -> dict[str, Any]:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id")
    assert response.headers.get("www-authenticate") == "Bearer"
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    if presented:
        assert presented not in response.text  # a wrong key is never echoed
    return error


def test_both_header_styles_and_every_family(secure: Secure) -> None:
    key = secure.keys["alpha"]
    for path, headers in (
        ("/v1/files", {"authorization": f"Bearer {key}"}),
        ("/v1/files", {"authorization": f"bearer   {key}"}),
        ("/v1/files", {"api-key": key}),
        (f"/openai/files?api-version={AZURE_VERSION}", {"api-key": key}),
        (f"/openai/files?api-version={AZURE_VERSION}", {"authorization": f"Bearer {key}"}),
        ("/openai/v1/batches", {"api-key": key}),
    ):
        r = secure.raw().get(path, headers=headers)
        assert r.status_code == 200, (path, headers, r.text)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer"},
        {"authorization": "Basic YWxwaGE6c2stYWxwaGE="},
        {"authorization": "Bearer sk-alpha-0123456789abcdeX"},
        {"authorization": "Bearer " + "k" * 600},
        {"api-key": "sk-wrong"},
        {"api-key": ""},
        {"authorization": "Token sk-alpha-0123456789abcdef"},
    ],
    ids=[
        "none",
        "empty-bearer",
        "basic",
        "near-miss",
        "long",
        "api-key",
        "empty-api-key",
        "other-scheme",
    ],
)
def test_missing_or_wrong_key_is_401(secure: Secure, headers: dict[str, str]) -> None:
    for path in ("/v1/files", "/v1/batches/batch_x", "/openai/v1/files/file-x/content"):
        presented = headers.get("api-key") or headers.get("authorization", "").partition(" ")[2]
        _assert_401(secure.raw().get(path, headers=headers), presented or None)
    assert secure.raw().get("/healthz").status_code == 200  # health needs no key


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The CLI in this process (fast); `cli()` runs it as a real subprocess."""
    from overnight.cli import app

    for name in set(os.environ) - set(clean_env()):
        monkeypatch.delenv(name)

    def run(*args: str) -> Any:
        return CliRunner().invoke(app, list(args))

    return run


def test_cli_create_list_revoke(tmp_path: Path, run_cli: Any) -> None:
    data = tmp_path / "data"
    # The real command once: the key is the only thing on stdout.
    done = cli("keys", "create", "--project", "team-a", "--name", "ci", "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert KEY_FORMAT.match(key), done.stdout
    assert "only time" in done.stderr and key not in done.stderr

    listed = run_cli("keys", "list", "--data-dir", str(data))
    assert listed.exit_code == 0, listed.output
    assert key not in listed.stdout and key[12:] not in listed.stdout
    row = next(line for line in listed.stdout.splitlines() if "team-a" in line)
    key_id = row.split()[0]
    assert key_id.startswith("key_") and key[:12] in row and "ci" in row
    assert row.rstrip().endswith("-")  # not revoked

    # Only a hash is stored: the key's text is nowhere in the database files.
    for path in data.glob("overnight.db*"):
        assert key.encode() not in path.read_bytes()
    with sqlite3.connect(data / "overnight.db") as db:
        (stored,) = db.execute("select key_hash from api_keys").fetchone()
    assert len(stored) == 64 and stored != key

    revoked = run_cli("keys", "revoke", key_id, "--data-dir", str(data))
    assert revoked.exit_code == 0 and key_id in revoked.stdout
    row = next(
        line
        for line in run_cli("keys", "list", "--data-dir", str(data)).stdout.splitlines()
        if key_id in line
    )
    assert not row.rstrip().endswith("-")  # a revocation time is shown
    assert run_cli("keys", "revoke", key_id, "--data-dir", str(data)).exit_code == 0  # again
    assert run_cli("keys", "revoke", "key_nope", "--data-dir", str(data)).exit_code == 1
    bad = run_cli("keys", "create", "--project", "no spaces/allowed", "--data-dir", str(data))
    assert bad.exit_code == 2
    # A second key for another project, by name; list --project filters.
    other = run_cli("keys", "create", "--project", "team-b", "--data-dir", str(data))
    assert other.exit_code == 0 and KEY_FORMAT.match(other.stdout.strip())
    only_b = run_cli("keys", "list", "--project", "team-b", "--data-dir", str(data)).stdout
    assert "team-b" in only_b and "team-a" not in only_b


def test_db_key_works_without_restart_and_revocation_takes_effect(
    secure: Secure, run_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key made by another process works at once; revoked, it stops within the cache TTL."""
    key = create_db_key(secure.data_dir, "delta", env=secure.store)
    for headers in ({"authorization": f"Bearer {key}"}, {"api-key": key}):
        r = secure.raw().get("/v1/files", headers=headers)
        assert r.status_code == 200, r.text
    # delta is a project of its own: it sees nothing of alpha's.
    uploaded = secure.raw().post(
        "/v1/files",
        headers={"api-key": key},
        data={"purpose": "batch"},
        files={"file": ("d.jsonl", b"{}\n")},
    )
    assert uploaded.status_code == 200
    assert secure.client("alpha").get(f"/v1/files/{uploaded.json()['id']}").status_code == 404

    for var, value in secure.store.items():
        monkeypatch.setenv(var, value)
    listed = run_cli("keys", "list", "--project", "delta", "--data-dir", str(secure.data_dir))
    key_id = listed.stdout.splitlines()[1].split()[0]
    assert run_cli("keys", "revoke", key_id, "--data-dir", str(secure.data_dir)).exit_code == 0
    deadline = time.monotonic() + 5.0  # the server caches keys for 0.5 s here
    while True:
        r = secure.raw().get("/v1/files", headers={"authorization": f"Bearer {key}"})
        if r.status_code == 401:
            break
        assert time.monotonic() < deadline, "a revoked key still works"
        time.sleep(0.1)
    _assert_401(r, key)
    # The other projects are unaffected.
    assert secure.client("gamma").get("/v1/files").status_code == 200


def test_no_keys_means_loopback_only_and_any_db_key_turns_auth_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = OvernightProcess(data, env={"PYTHONUNBUFFERED": "1"})
    with server, httpx.Client(base_url=server.url, timeout=10.0) as http:
        # Anonymous on loopback: allowed, whatever key the SDK happens to send.
        assert http.get("/v1/files").status_code == 200
        assert http.get("/v1/files", headers={"authorization": "Bearer sk-x"}).status_code == 200
        key = create_db_key(data, "owner")
        deadline = time.monotonic() + 5.0
        while http.get("/v1/files").status_code != 401:
            assert time.monotonic() < deadline, "a database key did not turn auth on"
            time.sleep(0.1)
        _assert_401(http.get("/v1/files", headers={"authorization": "Bearer sk-x"}), "sk-x")
        ok = http.get("/v1/files", headers={"authorization": f"Bearer {key}"})
        assert ok.status_code == 200


async def test_no_keys_refuses_callers_from_other_machines(tmp_path: Path) -> None:
    """Even if the app were served on a network address without keys, only loopback gets in."""
    s = settings_mod.load(env={}, data_dir=tmp_path / "d", run_executor=False)
    app = create_app(s)
    async with app.router.lifespan_context(app):
        for client, expected in ((("192.0.2.7", 4000), 401), (("127.0.0.1", 4000), 200)):
            transport = httpx.ASGITransport(app=app, client=client)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                r = await http.get("/v1/files")
            assert r.status_code == expected, r.text
            if expected == 401:
                assert "overnight keys create" in _assert_401(r)["message"]


def test_serve_refuses_a_network_address_without_keys(tmp_path: Path) -> None:
    done = cli("serve", "--host", "0.0.0.0", "--port", "9", "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2
    assert "overnight keys create" in done.stderr and "OVERNIGHT_API_KEYS" in done.stderr


def test_serve_accepts_a_network_address_with_a_database_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is bound here: uvicorn's Server.run is replaced, the check before it is
    what matters."""
    import uvicorn

    from overnight.cli.app import app

    for name in set(os.environ) - set(clean_env()):
        monkeypatch.delenv(name)
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda server, sockets=None: calls.append(vars(server.config))
    )
    data = tmp_path / "d"
    argv = ["serve", "--host", "0.0.0.0", "--port", "9", "--data-dir", str(data)]
    refused = CliRunner().invoke(app, argv)
    assert refused.exit_code == 2 and not calls
    create_db_key(data, "ops")
    accepted = CliRunner().invoke(app, argv)
    assert accepted.exit_code == 0, accepted.output
    assert calls and calls[0]["host"] == "0.0.0.0"


def test_key_configuration_errors() -> None:
    with pytest.raises(ConfigError):
        settings_mod.load(env={"OVERNIGHT_API_KEYS": "no-colon-here"})
    with pytest.raises(ConfigError):
        settings_mod.load(env={"OVERNIGHT_API_KEYS": "bad project:key"})
    with pytest.raises(ConfigError):
        KeyRing((("a", "same-key"), ("b", "same-key")))
    ring = KeyRing((("a", "k1"), ("b", "k2")))
    assert ring._static_project("nope") is None


async def test_keyring_static_lookup() -> None:
    ring = KeyRing((("a", "k1"), ("b", "k2")))
    assert await ring.enabled()
    assert await ring.project_for("k1") == "a"
    assert await ring.project_for("k2") == "b"
    assert await ring.project_for("k3") is None
    assert await ring.project_for("k" * 10_000) is None
    assert await ring.project_for(None) is None
    assert not await KeyRing().enabled()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        (None, True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("testclient", False),
        ("", False),
    ],
)
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback

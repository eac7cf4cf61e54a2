"""Keys as an operator meets them: the first key on a server that served anonymous calls,
the client's words for a missing and a wrong key, revoking the last key, and `keys list`
on a data dir that does not exist."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.cli.runner import cli
from tests.live_server import chat_line, running_server, write_jsonl
from tests.support.upstream_stub import StubServer


def test_first_key_on_an_anonymous_server_then_missing_wrong_and_revoked_keys(
    tmp_path: Path, stub: StubServer
) -> None:
    config = f'[models."gpt-test"]\nurl = "{stub.url}"\n'
    with running_server(tmp_path, stub.url, keys=False, config=config) as server:
        src = write_jsonl(tmp_path / "anon.jsonl", [chat_line("a1"), chat_line("a2")])
        run = cli(server, "submit", str(src), "--wait", "--poll", "0.1", key=None)
        assert run.returncode == 0, run.stderr  # no key anywhere: loopback is let in
        anonymous_batch = run.stdout.strip()
        data = str(server.data_dir)

        created = cli(None, "keys", "create", "--project", "team-a", "--data-dir", data)
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()
        assert "This is the first key, so authentication is now on" in created.stderr
        assert re.search(
            r"The 1 batch\(es\) and \d+ file\(s\) made without a key belong to project "
            r"'default' and stay there: a key of project 'team-a' does not see them",
            created.stderr,
        ), created.stderr
        assert "overnight keys create --project default" in created.stderr
        second = cli(None, "keys", "create", "--project", "team-b", "--data-dir", data)
        assert second.returncode == 0 and "first key" not in second.stderr, second.stderr

        # Servers look for a first key every second: wait until this one does.
        deadline = time.monotonic() + 30
        while (missing := cli(server, "batches", key=None)).returncode == 0:
            assert time.monotonic() < deadline, "the server never turned auth on"
            time.sleep(0.5)
        assert missing.returncode == 1
        assert "no API key was given, and the server wants one" in missing.stderr
        assert "You didn't provide an API key" in missing.stderr
        assert "--api-key or OPENAI_API_KEY" in missing.stderr
        wrong = cli(server, "batches", key="sk-not-a-key-of-this-server")
        assert wrong.returncode == 1
        assert "the server refused the API key (sk-not...)" in wrong.stderr
        assert "Incorrect API key" in wrong.stderr and "sk-not-a-key" not in wrong.stderr
        assert "Traceback" not in missing.stderr + wrong.stderr

        # As documented: team-a does not see the anonymous batch; a `default` key does.
        hidden = cli(server, "show", anonymous_batch, key=key)
        assert hidden.returncode == 1 and "404" in hidden.stderr, hidden.stderr
        default_key = cli(None, "keys", "create", "--project", "default", "--data-dir", data)
        shown = cli(server, "show", anonymous_batch, key=default_key.stdout.strip())
        assert shown.returncode == 0 and "completed" in shown.stdout, shown.stderr

        ids = [
            line.split()[0]
            for line in cli(None, "keys", "list", "--data-dir", data).stdout.splitlines()[1:]
        ]
        assert len(ids) == 3
        for key_id in ids[:-1]:
            revoked = cli(None, "keys", "revoke", key_id, "--data-dir", data)
            assert revoked.returncode == 0 and "last active key" not in revoked.stderr
        last = cli(None, "keys", "revoke", ids[-1], "--data-dir", data)
        assert last.returncode == 0, last.stderr
        assert "That was the last active key. Authentication stays on" in last.stderr
        assert "overnight keys create --project NAME" in last.stderr
        after = cli(server, "batches", key=None)
        assert after.returncode == 1 and "no API key was given" in after.stderr


def test_keys_list_and_revoke_never_create_a_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "nowhere" / "data"
    listed = cli(None, "keys", "list", "--data-dir", str(data))
    assert listed.returncode == 0, listed.stderr
    assert f"no database at {data.resolve() / 'overnight.db'}" in listed.stderr
    revoked = cli(None, "keys", "revoke", "key_nope", "--data-dir", str(data))
    assert revoked.returncode == 1 and "no key with id 'key_nope'" in revoked.stderr
    assert not (tmp_path / "nowhere").exists()

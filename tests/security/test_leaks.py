"""Secrets stay secret: upstream keys, project keys and other projects' data appear in no
answer, no stored file and no log line. (Runs last: it scans what the suite left behind.)"""

from __future__ import annotations

import json
from pathlib import Path

from .helpers import (
    ENV_KEYS,
    UPSTREAM_SECRET,
    WRONG_KEY_MODEL,
    WRONG_SECRET,
    Secure,
    chat_line,
    jsonl,
)


def _secrets(secure: Secure) -> list[str]:
    return [UPSTREAM_SECRET, WRONG_SECRET, *ENV_KEYS.values(), *secure.keys.values()]


def test_upstream_refusal_does_not_leak_the_upstream_key(secure: Secure) -> None:
    f = secure.upload("alpha", jsonl([chat_line("w1", model=WRONG_KEY_MODEL)]))
    b = secure.wait("alpha", secure.create_batch("alpha", f["id"]).json()["id"])
    assert b["status"] == "completed" and b["request_counts"]["failed"] == 1, b
    text = secure.client("alpha").get(f"/v1/files/{b['error_file_id']}/content").text
    (line,) = [json.loads(x) for x in text.splitlines()]
    assert line["response"]["status_code"] == 401
    for secret in _secrets(secure):
        assert secret not in text


def test_nothing_stored_or_served_holds_a_secret(secure: Secure, server_log: Path) -> None:
    for path in ("/openapi.json", "/healthz", "/metrics", "/v1/files", "/v1/batches"):
        body = secure.client("alpha").get(path).text
        for secret in _secrets(secure):
            assert secret not in body, path
    # Every byte overnight wrote: database (keys are stored as hashes), WAL, files.
    # (With `--pg-s3` the database and the files live elsewhere; the directory is still scanned.)
    stored = [p for p in secure.data_dir.rglob("*") if p.is_file()]
    assert secure.store or any(p.name.startswith("overnight.db") for p in stored)
    for p in stored:
        data = p.read_bytes()
        for secret in _secrets(secure):
            assert secret.encode() not in data, p
    log = server_log.read_text(errors="replace")
    for secret in _secrets(secure):
        assert secret not in log
    assert "unhandled error" not in log and "Traceback" not in log, log[-5000:]

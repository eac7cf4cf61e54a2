"""The client commands against a real `overnight serve`, run as the user runs them."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from overnight import __version__
from overnight.server_process import OvernightProcess
from tests.cli.runner import cli, cli_env, jsonl
from tests.live_server import chat_line, wait_status, write_jsonl
from tests.support.upstream_stub import StubServer

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BAR = "━"


def test_submit_wait_prints_plain_progress_and_writes_results_in_input_order(
    server: OvernightProcess, http: httpx.Client, tmp_path: Path
) -> None:
    ids = ["r3", "r10", "r1", "r22", "r2", "r7", "r15", "r4"]  # input order != sorted order
    src = write_jsonl(tmp_path / "requests.jsonl", [chat_line(i, f"say {i}") for i in ids])
    out = tmp_path / "results.jsonl"
    run = cli(server, "submit", str(src), "--wait", "-o", str(out), "--poll", "0.1")
    assert run.returncode == 0, run.stderr
    batch_id = run.stdout.split()[0]
    assert batch_id.startswith("batch_")
    # Not a terminal: plain lines, no bar and no cursor movement.
    assert BAR not in run.stderr and not ANSI.search(run.stderr), run.stderr
    assert f"{batch_id} validating\n" in run.stderr or f"{batch_id} in_progress" in run.stderr
    assert f"{batch_id} completed: 8/8 done, 0 failed" in run.stderr
    assert "completed: 8 completed, 0 failed of 8" in run.stderr
    assert re.search(r"estimated cost \$0\.\d{4}", run.stderr), run.stderr
    assert [line["custom_id"] for line in jsonl(out)] == ids
    assert all(line["response"]["status_code"] == 200 for line in jsonl(out))

    # With the input file gone, results are ordered by custom_id instead.
    assert http.delete(f"/v1/files/{http.get(f'/v1/batches/{batch_id}').json()['input_file_id']}")
    run = cli(server, "results", batch_id)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(x) for x in run.stdout.splitlines()]
    assert [x["custom_id"] for x in lines] == sorted(ids, key=lambda s: int(s[1:]))


def test_batches_show_cancel_and_merged_results(
    server: OvernightProcess, http: httpx.Client, stub: StubServer, tmp_path: Path
) -> None:
    stub.configure(latency=1.0)
    src = write_jsonl(tmp_path / "slow.jsonl", [chat_line(f"s{i}") for i in range(120)])
    run = cli(server, "submit", str(src), "--metadata", "job=nightly")
    assert run.returncode == 0, run.stderr
    batch_id = run.stdout.strip()
    wait_status(http, batch_id, {"in_progress"})

    listed = cli(server, "batches")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if batch_id in line)
    assert "in_progress" in row and "gpt-test" in row and "120" in row

    shown = cli(server, "show", batch_id)
    assert shown.returncode == 0, shown.stderr
    assert "in_progress" in shown.stdout and "metadata.job" in shown.stdout
    raw = json.loads(cli(server, "show", batch_id, "--json").stdout)
    assert raw["id"] == batch_id and raw["metadata"] == {"job": "nightly"}
    assert raw["estimated_cost"]["currency"] == "USD"

    cancelled = cli(server, "cancel", batch_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.split() in ([batch_id, "cancelling"], [batch_id, "cancelled"])

    out = tmp_path / "merged.jsonl"
    run = cli(server, "results", batch_id, "--wait", "--poll", "0.1", "-o", str(out))
    assert run.returncode == 0, run.stderr
    lines = jsonl(out)
    assert [x["custom_id"] for x in lines] == [f"s{i}" for i in range(120)]
    ok = [x for x in lines if x["response"] and x["response"]["status_code"] == 200]
    cancelled_lines = [x for x in lines if x["error"] and x["error"]["code"] == "batch_cancelled"]
    assert ok and cancelled_lines and len(ok) + len(cancelled_lines) == 120
    assert "wrote 120 results" in run.stderr

    # retry takes the cancelled requests too: everything that did not succeed.
    again = cli(server, "retry", batch_id)
    assert again.returncode == 0, again.stderr
    retried = again.stdout.strip()
    total = http.get(f"/v1/batches/{retried}").json()
    assert f"retrying {120 - len(ok)} of 120 requests of {batch_id}" in again.stderr
    assert total["metadata"] == {"job": "nightly", "overnight_retry_of": batch_id}
    assert cli(server, "cancel", retried).returncode == 0


def test_failures_by_code_fail_on_errors_and_retry_of_the_failed_requests(
    server: OvernightProcess, http: httpx.Client, stub: StubServer, tmp_path: Path
) -> None:
    stub.configure(fail_rate=0.5, fail_status=400)  # 400 is final: no retry inside overnight
    src = write_jsonl(tmp_path / "flaky.jsonl", [chat_line(f"f{i}") for i in range(30)])
    run = cli(server, "submit", str(src), "--wait", "--poll", "0.1", "--fail-on-errors")
    first = run.stdout.strip()
    batch = http.get(f"/v1/batches/{first}").json()
    failed = batch["request_counts"]["failed"]
    assert batch["status"] == "completed" and 0 < failed < 30, batch
    assert run.returncode == 3, run.stderr  # completed, but some requests failed
    assert f"retry the failed requests: overnight retry {first}" in run.stderr
    summary = http.get(f"/v1/batches/{first}/results/summary").json()
    for group in summary["failures"]:  # one table row per code: count, model, a sample
        row = next(line for line in run.stderr.splitlines() if f" {group['code']} " in line)
        assert str(group["count"]) in row and "gpt-test" in row, run.stderr
    assert "failures by code" in run.stderr and "'*'" not in run.stderr
    shown = cli(server, "show", first)
    assert shown.returncode == 0 and "failures by code" in shown.stdout, shown.stdout
    assert sum(g["count"] for g in summary["failures"]) == failed
    errors = http.get(f"/v1/files/{batch['error_file_id']}/content").text.splitlines()
    failed_ids = {json.loads(x)["custom_id"] for x in errors}

    stub.configure(fail_rate=0.0)
    out = tmp_path / "retried.jsonl"
    args = ("--wait", "--poll", "0.1", "-o", str(out), "--fail-on-errors")
    run = cli(server, "retry", first, *args)
    assert run.returncode == 0, run.stderr
    second = run.stdout.strip()
    assert second.startswith("batch_") and second != first
    assert f"retrying {failed} of 30 requests of {first} as {second}" in run.stderr
    assert "failures by code" not in run.stderr
    retried = http.get(f"/v1/batches/{second}").json()
    assert retried["metadata"] == {"overnight_retry_of": first}
    assert retried["request_counts"] == {"total": failed, "completed": failed, "failed": 0}
    assert {x["custom_id"] for x in jsonl(out)} == failed_ids

    again = cli(server, "retry", second)
    assert again.returncode == 0 and "nothing to retry" in again.stderr, again.stderr
    # Without --fail-on-errors a completed batch is success, failures or not.
    stub.configure(fail_rate=0.5, fail_status=400)
    plain = cli(server, "submit", str(src), "--wait", "--poll", "0.1")
    assert plain.returncode == 0, plain.stderr


def test_results_follow_writes_lines_as_they_finish_and_resumes(
    server: OvernightProcess, http: httpx.Client, stub: StubServer, tmp_path: Path
) -> None:
    stub.configure(latency=1.0)  # 4 at a time (max_concurrency): 6 s for the batch
    ids = [f"w{i}" for i in range(24)]
    src = write_jsonl(tmp_path / "follow.jsonl", [chat_line(i) for i in ids])
    batch_id = cli(server, "submit", str(src)).stdout.strip()
    deadline = time.monotonic() + 60
    while http.get(f"/v1/batches/{batch_id}").json()["request_counts"]["completed"] < 4:
        assert time.monotonic() < deadline, "the batch never got going"
        time.sleep(0.1)

    # Following, then Ctrl-C: the lines so far are kept and the cursor to resume from is said.
    out = tmp_path / "followed.jsonl"
    follower = subprocess.Popen(
        [sys.executable, "-m", "overnight", "results", batch_id, "-f", "-o", str(out)],
        env=cli_env(server),
        stderr=subprocess.PIPE,
        text=True,
    )
    while not out.exists() or len(out.read_text().splitlines()) < 4:
        assert follower.poll() is None and time.monotonic() < deadline, "no lines came"
        time.sleep(0.05)
    follower.send_signal(signal.SIGINT)
    _, stderr = follower.communicate(timeout=60)
    assert follower.returncode == 130, stderr
    got = len(jsonl(out))
    assert 4 <= got < 24, stderr
    assert f"stopped after {got} lines" in stderr and "Traceback" not in stderr, stderr
    cursor = re.search(rf"overnight results {batch_id} --follow --after (\d+)", stderr)
    assert cursor, stderr

    # Resumed, it appends the rest as it finishes and ends with the batch.
    rest = cli(server, "results", batch_id, "--follow", "--after", cursor[1], "-o", str(out))
    assert rest.returncode == 0, rest.stderr
    assert f"{batch_id} is completed" in rest.stderr and "resume with" not in rest.stderr
    followed = jsonl(out)
    assert sorted(x["custom_id"] for x in followed) == sorted(ids)  # each line once

    # Each line is the output file's line for that request.
    merged = cli(server, "results", batch_id)
    by_id = {x["custom_id"]: x for x in map(json.loads, merged.stdout.splitlines())}
    assert all(x == by_id[x["custom_id"]] for x in followed)

    # --after without -f: what has finished past the cursor, now.
    now = cli(server, "results", batch_id, "--after", "0")
    assert len(now.stdout.splitlines()) == 24 and f"{batch_id} is completed" in now.stderr
    assert "resume with" not in now.stderr

    # -f to stdout: JSONL only; --outcome narrows it.
    piped = cli(server, "results", batch_id, "-f", "--outcome", "failed")
    assert piped.returncode == 0 and piped.stdout == "", piped.stdout
    piped = cli(server, "results", batch_id, "-f", "--outcome", "succeeded")
    assert len(piped.stdout.splitlines()) == 24


def test_progress_bar_on_a_terminal(server: OvernightProcess, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "tty.jsonl", [chat_line(f"t{i}") for i in range(20)])
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "overnight", "submit", str(src), "--wait", "--poll", "0.1"],
        env=cli_env(server),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(10) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert BAR in text, text  # rich's bar
    assert "20/20" in text and "req/s" in text
    assert "completed: 20 completed, 0 failed of 20" in ANSI.sub("", text)


def test_helpful_errors(server: OvernightProcess, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(chat_line("ok")) + "\n{not json\n")
    run = cli(server, "submit", str(bad), "--wait", "--poll", "0.1")
    assert run.returncode == 1  # the batch failed validation
    assert "line 2: invalid_json_line" in run.stderr, run.stderr
    no_results = cli(server, "results", run.stdout.strip())
    assert no_results.returncode == 1 and "without results" in no_results.stderr
    run = cli(server, "batches", key="sk-wrong")
    assert run.returncode == 1
    assert "Incorrect API key" in run.stderr and "OPENAI_API_KEY" in run.stderr
    missing = cli(server, "show", "batch_doesnotexist")
    assert missing.returncode == 1 and "404" in missing.stderr
    assert "Traceback" not in run.stderr + no_results.stderr + missing.stderr


def test_refused_connection_wrong_path_and_version(server: OvernightProcess) -> None:
    env = cli_env(server)
    env["OPENAI_BASE_URL"] = "http://127.0.0.1:9/v1"  # nothing listens on the discard port
    env["OPENAI_LOG"] = "info"  # the SDK says each retry it makes
    run = subprocess.run(
        [sys.executable, "-m", "overnight", "batches"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1 and "cannot reach http://127.0.0.1:9/v1" in run.stderr
    assert "Retrying request" not in run.stderr, run.stderr  # refused: said at once
    assert "Traceback" not in run.stderr

    wrong = cli(server, "batches", base_url=f"{server.url}/api/v2")
    assert wrong.returncode == 1, wrong.stderr
    assert "Invalid URL (GET /api/v2/batches)" in wrong.stderr
    assert f"Is the base URL right? It is {server.url}/api/v2" in wrong.stderr
    assert "--base-url or OPENAI_BASE_URL" in wrong.stderr
    # A missing batch is a 404 too, but the path is right: no hint.
    missing = cli(server, "show", "batch_doesnotexist")
    assert missing.returncode == 1 and "base URL" not in missing.stderr

    version = cli(None, "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"overnight {__version__}"


def test_local_paths_are_one_line_errors(server: OvernightProcess, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "ok.jsonl", [chat_line("p1")])
    cases = [
        (("submit", str(tmp_path)), f"cannot read {tmp_path}: it is a directory"),
        (("submit", str(tmp_path / "absent.jsonl")), "no such file"),
        (("submit", str(src), "-o", str(tmp_path)), "it is a directory; name a file"),
        (("submit", str(src), "-o", str(tmp_path / "no" / "r.jsonl")), "does not exist"),
        (("results", "batch_x", "-o", str(tmp_path)), "it is a directory; name a file"),
    ]
    for args, message in cases:
        run = cli(server, *args)
        assert run.returncode == 2, (args, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, run.stderr)
        assert run.stdout == "", args  # nothing was submitted


def test_dash_o_writes_only_jsonl_to_stdout(server: OvernightProcess, tmp_path: Path) -> None:
    ids = [f"d{i}" for i in range(6)]
    src = write_jsonl(tmp_path / "dash.jsonl", [chat_line(i) for i in ids])
    run = cli(server, "submit", str(src), "-o", "-", "--poll", "0.1")
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]  # every line is JSON
    assert [line["custom_id"] for line in lines] == ids
    assert re.search(r"^batch batch_\w+$", run.stderr, re.M), run.stderr  # the id: on stderr

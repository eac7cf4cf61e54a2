"""The dashboard in headless Chromium while a real batch runs on a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from overnight.server_process import OvernightProcess
from tests.live_server import API_KEY, PRICES, chat_line, running_server, wait_status
from tests.support.upstream_stub import StubConfig, StubServer

pytestmark = pytest.mark.browser

TERMINAL = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture(scope="module")
def stub() -> Iterator[StubServer]:
    with StubServer.in_thread(StubConfig(seed=3)) as server:
        yield server


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, stub: StubServer
) -> Iterator[OvernightProcess]:
    config = PRICES + f'[models."gpt-test"]\nurl = "{stub.url}"\nmax_concurrency = 4\n'
    with running_server(tmp_path_factory.mktemp("browser"), stub.url, config=config) as process:
        yield process


@pytest.fixture(scope="module")
def http(server: OvernightProcess) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


def create(http: httpx.Client, lines: list[Any], name: str = "requests.jsonl") -> str:
    data = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    f = http.post("/v1/files", files={"file": (name, data)}, data={"purpose": "batch"}).json()
    batch = http.post(
        "/v1/batches",
        json={
            "input_file_id": f["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"job": name.removesuffix(".jsonl")},
        },
    ).json()
    return str(batch["id"])


def progress(page: Any, batch_id: str) -> int:
    bar = page.locator(f'tr[data-batch="{batch_id}"] [role=progressbar]')
    return int(bar.get_attribute("aria-valuenow"))


def test_dashboard_follows_a_running_batch_and_downloads_its_output(
    browser: Any, server: OvernightProcess, http: httpx.Client, stub: StubServer, shots: Path
) -> None:
    # Some history first: a batch where a quarter of the answers are 400s, one that fails
    # validation on its last line.
    stub.configure(fail_rate=0.25, fail_status=400, latency=0.01)
    mixed = create(http, [chat_line(f"q{i}", f"question {i}") for i in range(40)], "eval-set.jsonl")
    wait_status(http, mixed, TERMINAL)
    invalid = create(http, [chat_line("a"), chat_line("b"), "{not json"], "broken.jsonl")
    wait_status(http, invalid, TERMINAL)
    stub.configure(fail_rate=0.0, latency=0.25)
    running = create(
        http, [chat_line(f"job-{i}", f"summarize {i}") for i in range(120)], "nightly.jsonl"
    )
    wait_status(http, running, {"in_progress"})

    page = browser.new_page(viewport={"width": 1360, "height": 760})
    page.set_default_timeout(30_000)
    # Keys are configured: the dashboard asks for one, refuses a wrong one.
    page.goto(server.url + "/")
    page.wait_for_url("**/ui/login?next=/")
    page.fill("#key", "sk-wrong")
    page.click("button[type=submit]")
    assert "Incorrect API key" in page.locator(".error").inner_text()
    page.fill("#key", API_KEY)
    page.click("button[type=submit]")
    page.wait_for_url(server.url + "/")

    # The running batch advances on the page without a reload.
    row = page.locator(f'tr[data-batch="{running}"]')
    assert "in progress" in row.inner_text()
    first = progress(page, running)
    assert first < 120
    page.wait_for_function(
        """([id, first]) => {
            const bar = document.querySelector(`tr[data-batch="${id}"] [role=progressbar]`);
            return bar && Number(bar.getAttribute("aria-valuenow")) >= Math.max(first + 8, 40);
        }""",
        arg=[running, first],
    )
    assert "req/s" in row.inner_text()  # throughput while it runs
    mixed_row = page.locator(f'tr[data-batch="{mixed}"]').inner_text()
    assert "completed" in mixed_row and "$0.0" in mixed_row  # estimated cost
    page.screenshot(path=str(shots / "dashboard.png"))

    # Its page: live until completed, then the timeline, the chart and the files.
    row.locator("a").click()
    page.wait_for_url(f"**/ui/batches/{running}")
    page.locator("#status", has_text="completed").wait_for()
    assert page.locator("#completed").inner_text() == "120"
    assert page.locator("#cost").inner_text().startswith("$")
    timeline = page.locator("ol.timeline").inner_text()
    assert "in progress" in timeline and "completed" in timeline
    points = page.locator("svg.chart polyline").get_attribute("points")
    assert points and len(points.split()) >= 3
    page.screenshot(path=str(shots / "batch.png"), full_page=True)
    with page.expect_download() as info:
        page.click("#download-output")
    download = info.value
    assert download.suggested_filename == f"{running}_output.jsonl"
    lines = [json.loads(x) for x in Path(download.path()).read_text().splitlines()]
    assert sorted(x["custom_id"] for x in lines) == sorted(f"job-{i}" for i in range(120))

    # Failures: a sample of the failed requests, and validation errors with line numbers.
    page.goto(f"{server.url}/ui/batches/{mixed}")
    failed = http.get(f"/v1/batches/{mixed}").json()["request_counts"]["failed"]
    assert failed > 0
    sample = page.locator("#failed-sample tbody tr")
    assert sample.count() == min(failed, 20)
    assert "The stub was told to reject this request." in sample.first.inner_text()
    assert page.locator("#download-error").is_visible()
    by_code = page.locator("#failure-codes tbody tr", has_text="invalid_request_error")
    assert by_code.locator("td.num").inner_text() == str(failed)  # grouped by code
    page.screenshot(path=str(shots / "batch-failures.png"), full_page=True)
    page.goto(f"{server.url}/ui/batches/{invalid}")
    errors = page.locator("#validation-errors tbody tr")
    assert errors.count() == 1
    assert errors.first.locator("td").first.inner_text() == "3"
    assert "invalid_json_line" in errors.first.inner_text()

    # Files: every file of the project, downloadable.
    page.goto(f"{server.url}/ui/files")
    assert page.locator("#files tbody tr").count() >= 6  # 3 inputs, 2 outputs, 1 error file
    assert "nightly.jsonl" in page.locator("#files").inner_text()
    page.close()


def accept_dialogs(page: Any) -> list[str]:
    """Accept every confirm() the page asks; returns the questions asked."""
    asked: list[str] = []

    def accept(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    return asked


def test_actions_from_the_browser_reach_the_api(
    browser: Any,
    server: OvernightProcess,
    http: httpx.Client,
    stub: StubServer,
    shots: Path,
    tmp_path: Path,
) -> None:
    stub.configure(fail_rate=0.0, status_override=400, latency=0.01)
    hopeless = create(http, [chat_line(f"h{i}") for i in range(5)], "hopeless.jsonl")
    wait_status(http, hopeless, TERMINAL)
    stub.configure(status_override=None, latency=0.5)

    context = browser.new_context(viewport={"width": 1360, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30_000)
    asked = accept_dialogs(page)
    page.goto(server.url + "/ui/files")
    page.wait_for_url("**/ui/login?next=/ui/files")
    page.fill("#key", API_KEY)
    page.click("button[type=submit]")
    page.wait_for_url(server.url + "/ui/files")
    page.goto(server.url + "/")

    # An all-failed batch is `completed` to the API but wears a red badge, not a green one.
    badge = page.locator(f'tr[data-batch="{hopeless}"] .badge')
    assert badge.inner_text() == "completed · all failed"
    assert "s-all_failed" in (badge.get_attribute("class") or "")

    # A refused upload shows the API's own message on the page.
    notes = tmp_path / "notes.txt"
    notes.write_text(json.dumps(chat_line("x")) + "\n")
    page.click("#new-batch summary")  # closed once there are batches
    page.set_input_files("#new-file", str(notes))
    page.click("#create")
    page.locator("#notice.error", has_text="Must be .jsonl").wait_for()

    # Upload a .jsonl and create a batch from it, with metadata.
    requests = tmp_path / "from-browser.jsonl"
    requests.write_text(
        "".join(json.dumps(chat_line(f"b{i}", f"translate {i}")) + "\n" for i in range(120))
    )
    page.set_input_files("#new-file", str(requests))
    page.fill("#new-metadata", "job=from-browser\nowner=ops")
    assert page.locator("#notice").is_hidden()  # the refusal went with the new choice
    page.screenshot(path=str(shots / "new-batch.png"))
    page.click("#create")
    page.wait_for_url("**/ui/batches/batch_*")
    batch_id = page.url.rsplit("/", 1)[1]
    created = http.get(f"/v1/batches/{batch_id}").json()
    assert created["metadata"] == {"job": "from-browser", "owner": "ops"}
    assert created["endpoint"] == "/v1/chat/completions"
    input_file = http.get(f"/v1/files/{created['input_file_id']}").json()
    assert input_file["filename"] == "from-browser.jsonl" and input_file["purpose"] == "batch"
    assert "from-browser" in page.locator(".kv").inner_text()

    # Cancel it while it runs: the page follows it to cancelled, as the API says.
    page.locator("#status", has_text="in progress").wait_for()
    page.wait_for_function("Number(document.querySelector('#completed').textContent) >= 12")
    page.screenshot(path=str(shots / "batch-running.png"), full_page=True)
    page.click("#cancel")
    page.locator("#status", has_text="cancelled").wait_for()
    assert asked and "Cancel" in asked[-1]
    cancelled = http.get(f"/v1/batches/{batch_id}").json()
    assert cancelled["status"] == "cancelled"
    unfinished = cancelled["request_counts"]["failed"]
    assert 0 < unfinished < 120
    assert page.locator("#cancel").count() == 0

    # Its failures, grouped by code; then retry them: a new batch of just those requests.
    group = page.locator("#failure-codes tbody tr", has_text="batch_cancelled")
    assert group.locator("td.num").inner_text() == str(unfinished)
    page.screenshot(path=str(shots / "batch-cancelled.png"), full_page=True)
    page.click("#retry")
    page.wait_for_url(lambda url: "/ui/batches/batch_" in url and batch_id not in url)
    retry_id = page.url.rsplit("/", 1)[1]
    retry = http.get(f"/v1/batches/{retry_id}").json()
    assert retry["metadata"]["overnight_retry_of"] == batch_id
    assert retry["metadata"]["job"] == "from-browser"
    assert page.locator(".meta-overnight_retry_of a").inner_text() == batch_id
    stub.configure(latency=0.01)
    page.locator("#status", has_text="completed").wait_for()
    assert page.locator("#completed").inner_text() == str(unfinished)

    # Files link to their batches, and one can be deleted.
    page.goto(server.url + "/ui/files")
    row = page.locator(f'tr[data-file="{created["input_file_id"]}"]')
    assert batch_id in row.locator(".batch-links").inner_text()
    page.screenshot(path=str(shots / "files.png"))
    row.locator(".batch-links a").first.click()
    page.wait_for_url(f"**/ui/batches/{batch_id}")
    page.go_back()
    row = page.locator(f'tr[data-file="{created["input_file_id"]}"]')
    row.locator("button", has_text="Delete").click()
    row.wait_for(state="detached")
    assert "Deleted from-browser.jsonl" in page.locator("#notice").inner_text()
    assert http.get(f"/v1/files/{created['input_file_id']}").status_code == 404
    page.reload()
    assert page.locator(f'tr[data-file="{created["input_file_id"]}"]').count() == 0
    context.close()

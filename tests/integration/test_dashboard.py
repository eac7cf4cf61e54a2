"""The dashboard's routes honour project keys exactly like the API (no browser needed here)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from overnight import settings as settings_mod
from overnight.api.app import create_app
from tests.live_server import API_KEY, PROJECT, chat_line, running_server, wait_status
from tests.support.upstream_stub import StubConfig, StubServer

OTHER_KEY = "sk-other-project"
DASHBOARD = {"x-overnight-dashboard": "1"}  # what app.js sends with every action


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer.in_thread(StubConfig(seed=4)) as server:
        yield server


def test_dashboard_routes_use_the_project_keys(tmp_path: Path, stub: StubServer) -> None:
    env = {"OVERNIGHT_API_KEYS": f"{PROJECT}:{API_KEY},other:{OTHER_KEY}"}
    with running_server(tmp_path, stub.url, env=env) as server:
        mine = httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {API_KEY}"})
        data = "".join(json.dumps(chat_line(f"d{i}")) + "\n" for i in range(3))
        f = mine.post("/v1/files", files={"file": ("d.jsonl", data)}, data={"purpose": "batch"})
        body = {
            "input_file_id": f.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        batch_id = mine.post("/v1/batches", json=body).json()["id"]
        batch = wait_status(mine, batch_id, {"completed"})
        output = f"/ui/files/{batch['output_file_id']}/content"

        anonymous = httpx.Client(base_url=server.url)
        page = anonymous.get("/")
        assert page.status_code == 303 and page.headers["location"] == "/ui/login?next=/"
        refused = anonymous.get("/ui/api/batches")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert anonymous.get(output).status_code == 401
        assert anonymous.get("/ui/partials/batches").status_code == 401

        # An Authorization header works as on the API, and the JSON carries cost and progress.
        listing = mine.get("/ui/api/batches").json()
        [row] = listing["data"]
        assert row["id"] == batch_id and row["done"] == 3 and row["percent"] == 100.0
        assert row["estimated_cost"]["currency"] == "USD" and row["estimated_cost"]["amount"] > 0
        detail = mine.get(f"/ui/api/batches/{batch_id}").json()
        assert [t["event"] for t in detail["timeline"]][-1] == "completed"
        assert detail["files"]["output"]["url"] == output

        # The login form: a wrong key is refused, a right one sets a strict HttpOnly cookie.
        wrong = anonymous.post("/ui/login", data={"key": "sk-nope", "next": "/"})
        assert wrong.status_code == 401 and "Incorrect API key" in wrong.text
        login = anonymous.post("/ui/login", data={"key": API_KEY, "next": "//evil.example/"})
        assert login.status_code == 303 and login.headers["location"] == "/"  # no open redirect
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        assert anonymous.get("/").status_code == 200  # the client kept the cookie
        assert batch_id in anonymous.get(f"/ui/batches/{batch_id}").text
        download = anonymous.get(output)
        assert download.status_code == 200 and len(download.text.splitlines()) == 3
        assert anonymous.post("/ui/logout").status_code == 303
        assert anonymous.get("/").status_code == 303

        # Another project sees nothing of this one, through any route.
        other = httpx.Client(base_url=server.url, cookies={"overnight_key": OTHER_KEY})
        assert other.get("/ui/api/batches").json()["data"] == []
        assert other.get(f"/ui/api/batches/{batch_id}").status_code == 404
        assert other.get(f"/ui/batches/{batch_id}").status_code == 404
        assert other.get(output).status_code == 404
        assert batch_id not in other.get("/").text
        assert other.get("/ui/static/app.css").status_code == 200
        assert other.get("/ui/static/..%2Fviews.py").status_code == 404
        for client in (mine, anonymous, other):
            client.close()


def test_without_keys_loopback_needs_no_login(tmp_path: Path, stub: StubServer) -> None:
    with running_server(tmp_path, stub.url, keys=False) as server:
        page = httpx.get(f"{server.url}/")
        assert page.status_code == 200 and "No batches yet" in page.text
        assert httpx.get(f"{server.url}/ui/api/batches").json()["data"] == []
        # Its actions need no login either: the API lets loopback in without a key.
        upload = httpx.post(
            f"{server.url}/ui/v1/files",
            files={"file": ("x.jsonl", json.dumps(chat_line("x")) + "\n")},
            data={"purpose": "batch"},
            headers=DASHBOARD,
        )
        assert upload.status_code == 200 and upload.json()["filename"] == "x.jsonl"


# --- the dashboard's actions, in process: the app itself on an ASGI transport ---------------


@asynccontextmanager
async def dashboard(tmp_path: Path, upstream: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its executor, and a client holding the login's cookie (and the app
    as `client.app`, for a test that reaches into the store)."""
    env = {
        "OVERNIGHT_API_KEYS": f"{PROJECT}:{API_KEY}",
        "OVERNIGHT_UPSTREAM_URL": upstream,
        "OVERNIGHT_RETRY_BASE_DELAY": "0.05",
        "OVERNIGHT_CANCEL_GRACE_SECONDS": "2",
    }
    app = create_app(settings_mod.load(env=env, data_dir=tmp_path / "data"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://dash", cookies={"overnight_key": API_KEY}
        ) as http:
            http.app = app  # type: ignore[attr-defined]
            yield http


async def upload(http: httpx.AsyncClient, n: int, name: str = "in.jsonl") -> dict[str, Any]:
    data = "".join(json.dumps(chat_line(f"r{i}", f"question {i}")) + "\n" for i in range(n))
    r = await http.post(
        "/ui/v1/files", files={"file": (name, data)}, data={"purpose": "batch"}, headers=DASHBOARD
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def create(http: httpx.AsyncClient, file_id: str, **extra: Any) -> dict[str, Any]:
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
    body["completion_window"] = "24h"
    r = await http.post("/ui/v1/batches", json={**body, **extra}, headers=DASHBOARD)
    assert r.status_code == 200, r.text
    batch: dict[str, Any] = r.json()
    return batch


async def until(
    http: httpx.AsyncClient, batch_id: str, test: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        batch: dict[str, Any] = (await http.get(f"/ui/api/batches/{batch_id}")).json()
        if test(batch):
            return batch
        assert time.monotonic() < deadline, f"{batch_id} stuck in {batch['status']}"
        await asyncio.sleep(0.05)


def api_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


async def test_actions_go_through_the_api_with_the_logins_key(
    tmp_path: Path, stub: StubServer
) -> None:
    stub.configure(latency=0.05)
    async with dashboard(tmp_path, stub.url) as http:
        f = await upload(http, 3, "eval.jsonl")
        bearer = {"authorization": f"Bearer {API_KEY}"}
        assert (await http.get(f"/v1/files/{f['id']}", headers=bearer)).json()["filename"] == (
            "eval.jsonl"
        )
        done = await create(http, f["id"], metadata={"job": "eval"})
        assert done["metadata"] == {"job": "eval"}
        await until(http, done["id"], lambda b: b["status"] == "completed")

        # The API's own refusals come back as they are, in its envelope.
        wrong = await http.post(
            "/ui/v1/batches",
            json={"input_file_id": f["id"], "endpoint": "/v1/nope", "completion_window": "24h"},
            headers=DASHBOARD,
        )
        error = api_error(wrong, 400)
        assert error["param"] == "endpoint" and "Invalid value: '/v1/nope'" in error["message"]
        late = await http.post(f"/ui/v1/batches/{done['id']}/cancel", headers=DASHBOARD)
        assert api_error(late, 409)["message"] == "Cannot cancel a batch with status 'completed'."
        assert len(late.headers.get_list("x-request-id")) == 1
        nothing = await http.post(f"/ui/v1/batches/{done['id']}/retry", headers=DASHBOARD)
        assert api_error(nothing, 400)["code"] == "nothing_to_retry"
        summary = await http.get(f"/ui/v1/batches/{done['id']}/results/summary", headers=DASHBOARD)
        assert summary.json()["failures"] == [] and summary.json()["finished"] == 3

        # Only the page's script, only the page's actions, only with a key.
        bare = await http.post(f"/ui/v1/batches/{done['id']}/cancel")
        assert api_error(bare, 403)["code"] == "dashboard_header_missing"
        assert api_error(await http.get("/ui/v1/files", headers=DASHBOARD), 404)
        assert api_error(await http.delete(f"/ui/v1/batches/{done['id']}", headers=DASHBOARD), 404)
        http.cookies.set("overnight_key", "sk-wrong")
        refused = await http.post(
            "/ui/v1/files",
            files={"file": ("x.jsonl", "{}\n")},
            data={"purpose": "batch"},
            headers=DASHBOARD,
        )
        assert api_error(refused, 401)["code"] == "invalid_api_key"
        http.cookies.set("overnight_key", API_KEY)

        # Cancel a running batch: the API moves it to cancelling, then it ends cancelled.
        stub.configure(latency=0.5)
        running = await create(http, (await upload(http, 200))["id"])
        await until(http, running["id"], lambda b: b["status"] == "in_progress")
        cancel = await http.post(f"/ui/v1/batches/{running['id']}/cancel", headers=DASHBOARD)
        assert cancel.status_code == 200 and cancel.json()["status"] == "cancelling"
        ended = await until(http, running["id"], lambda b: b["terminal"])
        assert ended["status"] == "cancelled"
        retry = await http.post(f"/ui/v1/batches/{running['id']}/retry", headers=DASHBOARD)
        assert retry.status_code == 200, retry.text
        assert retry.json()["metadata"] == {"overnight_retry_of": running["id"]}
        again = retry.json()["id"]
        await until(http, again, lambda b: b["total"] == ended["failed"])  # just those lines
        await http.post(f"/ui/v1/batches/{again}/cancel", headers=DASHBOARD)

        # The files page links each file to its batches; delete removes a file.
        page = (await http.get("/ui/files")).text
        assert f'href="/ui/batches/{done["id"]}"' in page and f'data-file="{f["id"]}"' in page
        gone = await http.delete(f"/ui/v1/files/{f['id']}", headers=DASHBOARD)
        assert gone.json() == {"id": f["id"], "object": "file", "deleted": True}
        assert (await http.get(f"/v1/files/{f['id']}", headers=bearer)).status_code == 404
        assert f'data-file="{f["id"]}"' not in (await http.get("/ui/files")).text


async def test_an_all_failed_batch_is_not_green(tmp_path: Path, stub: StubServer) -> None:
    stub.configure(status_override=400)
    async with dashboard(tmp_path, stub.url) as http:
        b = await create(http, (await upload(http, 4))["id"])
        view = await until(http, b["id"], lambda b: b["terminal"])
        assert view["status"] == "completed" and view["failed"] == 4
        assert view["badge"] == "s-all_failed"
        page = (await http.get(f"/ui/batches/{b['id']}")).text
        assert '<span class="badge big s-all_failed" id="status">completed · all failed' in page
        assert "badge big s-completed" not in page
        listing = (await http.get("/")).text
        assert '<span class="badge s-all_failed">' in listing
        assert '<span class="badge s-completed">' not in listing


async def test_throughput_and_eta_come_from_the_ledger_at_first_sight(
    tmp_path: Path, stub: StubServer
) -> None:
    stub.configure(latency=0.2, slots=2)  # about 10 requests a second
    async with dashboard(tmp_path, stub.url) as http:
        b = await create(http, (await upload(http, 400))["id"])
        bearer = {"authorization": f"Bearer {API_KEY}"}
        deadline = time.monotonic() + 60
        while True:  # watched through the API: the dashboard's first look is the one below
            counts = (await http.get(f"/v1/batches/{b['id']}", headers=bearer)).json()
            if counts["request_counts"]["completed"] >= 10:
                break
            assert time.monotonic() < deadline, counts["status"]
            await asyncio.sleep(0.05)
        # As if it had run for an hour: the average since it started says ~done/3600 per
        # second; the last minute of the ledger says ~done/60.
        store = http.app.state.services.store  # type: ignore[attr-defined]
        await store.batches.set_values(b["id"], in_progress_at=int(time.time()) - 3600)
        fresh = (await http.get("/ui/api/batches")).json()["data"][0]
        assert fresh["status"] == "in_progress"
        assert fresh["rate"] * 60 >= fresh["done"] * 0.5
        assert fresh["eta_seconds"] is not None
        assert fresh["eta_seconds"] < (fresh["total"] - fresh["done"]) * 3600 / fresh["done"] / 2
        # Its chart's past comes from the ledger too: an hour of nothing, then the recent
        # finishes (only the last minute's point holds any), though nobody watched.
        progress = (await http.get(f"/ui/api/batches/{b['id']}")).json()["progress"]
        assert len(progress) >= 60
        assert progress[30]["done"] == 0 and progress[-2]["done"] >= 10
        await http.post(f"/ui/v1/batches/{b['id']}/cancel", headers=DASHBOARD)

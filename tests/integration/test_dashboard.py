"""The dashboard's routes honour project keys exactly like the API (no browser needed here)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.live_server import API_KEY, PROJECT, chat_line, running_server, wait_status
from tests.support.upstream_stub import StubConfig, StubServer

OTHER_KEY = "sk-other-project"


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

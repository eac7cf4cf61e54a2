"""deploy/grafana/dashboards/overnight.json reads only metrics that overnight exposes.

A real API process (`serve --no-executor`) and a real worker (`worker --metrics-port`)
share one SQLite store and run a batch against the stub upstream; every metric name in
every panel query and variable must then be in what the two processes' /metrics show.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from overnight.server_process import OvernightProcess, free_port, wait_ready
from tests.integration.test_metrics import submit
from tests.live_server import API_KEY, PROJECT, wait_status
from tests.support.promql import dashboard_queries, metric_names
from tests.support.upstream_stub import StubConfig, StubServer

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "dashboards" / "overnight.json"


def exposed_names(url: str) -> set[str]:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    return {s.name for f in text_string_to_metric_families(response.text) for s in f.samples}


def missing_names(dashboard: dict, exposed: set[str]) -> list[str]:
    return [
        f"{where}: {name}"
        for where, query in dashboard_queries(dashboard)
        for name in sorted(metric_names(query))
        if name not in exposed
    ]


def test_a_name_the_scrape_lacks_is_reported() -> None:
    dashboard = {"panels": [{"title": "p", "targets": [{"refId": "A", "expr": "rate(nope[5m])"}]}]}
    assert missing_names(dashboard, {"overnight_batches"}) == ["panel 'p' A: nope"]


@pytest.mark.timeout(120)
def test_every_dashboard_query_names_an_exposed_metric(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert len(list(dashboard_queries(dashboard))) >= 10
    env = {
        "PYTHONUNBUFFERED": "1",
        "OVERNIGHT_API_KEYS": f"{PROJECT}:{API_KEY}",
        "OVERNIGHT_RETRY_BASE_DELAY": "0.05",
    }
    data = tmp_path / "data"
    with StubServer.in_thread(StubConfig(seed=3)) as stub:
        env["OVERNIGHT_UPSTREAM_URL"] = stub.url
        api = OvernightProcess(data, env=env, args=["--no-executor"], log_path=tmp_path / "api.log")
        metrics_port = free_port()
        worker = OvernightProcess(
            data,
            env=env,
            command="worker",
            args=["--metrics-port", str(metrics_port)],
            log_path=tmp_path / "worker.log",
        )
        with api, worker:
            worker_url = f"http://127.0.0.1:{metrics_port}"
            assert worker.process is not None
            wait_ready(worker.process, f"{worker_url}/healthz", 30, worker.log, "worker")
            with httpx.Client(
                base_url=api.url, headers={"authorization": f"Bearer {API_KEY}"}
            ) as http:
                batch_id = submit(http, 5, "g")
                assert (
                    wait_status(http, batch_id, {"completed"})["request_counts"]["completed"] == 5
                )
            exposed = exposed_names(api.url) | exposed_names(worker_url)
        # Tracing is off by default: nothing of it reaches the upstream.
        assert not [r for r in stub.received() if "traceparent" in r["headers"]]
    assert "overnight_batch_duration_seconds_count" in exposed  # the worker closed the batch
    assert missing_names(dashboard, exposed) == []

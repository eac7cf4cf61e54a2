"""Traces and JSON logs of a real `overnight serve`: spans exported over OTLP/HTTP to a real
receiver on loopback, `traceparent` seen by the real stub upstream, one JSON object per
log line. Needs the `otel` extra (the Makefile installs it)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from openai import OpenAI

from overnight.server_process import OvernightProcess
from tests.batch_lines import chat_line
from tests.live_server import API_KEY, PROJECT
from tests.support.otlp_receiver import OTLPReceiver, ReceivedSpan
from tests.support.upstream_stub import StubConfig, StubServer

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
CLIENT = 3  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_CLIENT
ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
IDS = ["a", "b", "c"]


def test_a_batch_is_one_trace_and_the_upstream_gets_its_traceparent(tmp_path: Path) -> None:
    from overnight.tracing import batch_trace_id

    lines = "".join(json.dumps(chat_line(i, text=f"say {i}")) + "\n" for i in IDS)
    # Each request is answered 503 once, then 200: two attempts, two spans, two traceparents.
    stub_config = StubConfig(seed=2, fail_first_n=1, fail_status=503)
    with OTLPReceiver() as receiver, StubServer.in_thread(stub_config) as stub:
        env = {
            "PYTHONUNBUFFERED": "1",
            "OVERNIGHT_API_KEYS": f"{PROJECT}:{API_KEY}",
            "OVERNIGHT_UPSTREAM_URL": stub.url,
            "OVERNIGHT_RETRY_BASE_DELAY": "0.05",
            "OVERNIGHT_TRACING": "1",
            "OVERNIGHT_LOG_FORMAT": "json",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_SERVICE_NAME": "overnight-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # export every 0.1 s, not every 5 s
        }
        server = OvernightProcess(tmp_path / "data", env=env, log_path=tmp_path / "server.log")
        with server:
            client = OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
            f = client.files.create(file=("in.jsonl", lines.encode()), purpose="batch")
            batch = client.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            deadline = time.monotonic() + 60
            while batch.status != "completed":
                assert time.monotonic() < deadline, batch.status
                time.sleep(0.1)
                batch = client.batches.retrieve(batch.id)

            def complete(spans: list[ReceivedSpan]) -> bool:
                names = [s.name for s in spans]
                return names.count("upstream.attempt") == 2 * len(IDS) and {
                    "batch.validate",
                    "batch.run",
                    "batch.finalize",
                } <= set(names)

            spans = receiver.wait_for(complete)
        log_lines = server.log().splitlines()
        seen = stub.received()

    trace_id = f"{batch_trace_id(batch.id):032x}"
    by_name: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
        assert span.trace_id == trace_id, span  # the whole batch is one trace
        assert span.service_name == "overnight-under-test"
    (run,) = by_name["batch.run"]
    for phase in ("batch.validate", "batch.finalize"):
        (span,) = by_name[phase]
        assert span.parent_span_id == ""
        assert span.attributes["overnight.batch.id"] == batch.id

    attempts = {
        (s.attributes["overnight.request.custom_id"], s.attributes["overnight.attempt"]): s
        for s in by_name["upstream.attempt"]
    }
    assert sorted(attempts) == [(i, n) for i in IDS for n in (1, 2)]
    for (_custom_id, number), span in attempts.items():
        assert span.parent_span_id == run.span_id
        assert span.kind == CLIENT
        assert span.attributes["overnight.batch.id"] == batch.id
        assert span.attributes["gen_ai.request.model"] == "gpt-test"
        if number == 1:
            assert span.attributes["overnight.outcome"] == "retried"
            assert span.attributes["http.response.status_code"] == 503
            assert span.status_code == ERROR
        else:
            assert span.attributes["overnight.outcome"] == "ok"
            assert span.attributes["http.response.status_code"] == 200
            assert span.status_code != ERROR

    # Each request the upstream saw carries the traceparent of its own attempt's span.
    assert len(seen) == len(attempts)
    sent_under: dict[str, set[str]] = {}
    for request in seen:
        custom_id = request["body"]["messages"][0]["content"].removeprefix("say ")
        match = TRACEPARENT.match(request["headers"]["traceparent"])
        assert match, request["headers"]["traceparent"]
        assert match[1] == trace_id
        assert int(match[3], 16) & 1  # sampled
        sent_under.setdefault(custom_id, set()).add(match[2])
    for custom_id in IDS:
        assert sent_under[custom_id] == {attempts[(custom_id, n)].span_id for n in (1, 2)}

    # JSON logs: every line one object; the batch's own lines name it.
    entries = [json.loads(line) for line in log_lines if line.strip()]
    assert entries
    for entry in entries:
        assert {"timestamp", "level", "logger", "message"} <= set(entry), entry
    about_batch = [e for e in entries if e.get("batch_id") == batch.id]
    assert any("validated" in e["message"] for e in about_batch), entries
    assert any(e.get("trace_id") == trace_id for e in about_batch)

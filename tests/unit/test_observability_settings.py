"""Settings for logs, a worker's metrics port and tracing; the JSON log format."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from overnight import logs
from overnight.errors import ConfigError
from overnight.metrics import route_label
from overnight.settings import load


def test_defaults_are_text_logs_no_metrics_port_no_tracing() -> None:
    s = load(env={})
    assert (s.log_format, s.metrics_port, s.tracing) == ("text", None, False)
    assert s.otlp_traces_endpoint == "http://localhost:4318/v1/traces"
    assert s.service_name == "overnight"


def test_otel_spec_variables() -> None:
    base = {"OVERNIGHT_TRACING": "1", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    s = load(env=base)
    assert s.tracing
    assert s.otlp_traces_endpoint == "http://collector:4318/v1/traces"  # a base: path added
    own = {**base, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://tempo:4318/otlp/v1/traces"}
    assert load(env=own).otlp_traces_endpoint == "http://tempo:4318/otlp/v1/traces"  # as is
    assert load(env={"OTEL_SERVICE_NAME": "batch-eu"}).service_name == "batch-eu"
    assert not load(env={"OVERNIGHT_TRACING": "0"}).tracing


def test_metrics_port_and_log_format_env() -> None:
    s = load(env={"OVERNIGHT_METRICS_PORT": "9464", "OVERNIGHT_METRICS_HOST": "0.0.0.0"})
    assert (s.metrics_host, s.metrics_port) == ("0.0.0.0", 9464)
    assert load(env={"OVERNIGHT_LOG_FORMAT": "JSON"}).log_format == "json"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OVERNIGHT_LOG_FORMAT": "yaml"}, "OVERNIGHT_LOG_FORMAT must be text or json"),
        ({"OVERNIGHT_METRICS_PORT": "http"}, "OVERNIGHT_METRICS_PORT must be a number"),
        ({"OVERNIGHT_METRICS_PORT": "70000"}, "from 1 to 65535"),
    ],
)
def test_bad_values_say_what_to_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(env=env)


def test_the_catch_all_route_is_labelled_default() -> None:
    assert route_label("*") == "default"
    assert route_label("gpt-test") == "gpt-test"


def test_json_log_lines_carry_the_batch() -> None:
    formatter = logs.JSONFormatter()
    record = logging.LogRecord("overnight.lane", logging.WARNING, __file__, 1, "x %s", ("y",), None)
    token = logs.current_batch.set("batch_abc")
    try:
        entry = json.loads(formatter.format(record))
    finally:
        logs.current_batch.reset(token)
    assert entry["message"] == "x y"
    assert (entry["level"], entry["logger"], entry["batch_id"]) == (
        "warning",
        "overnight.lane",
        "batch_abc",
    )
    assert entry["timestamp"].endswith("+00:00")
    plain = json.loads(formatter.format(record))
    assert "batch_id" not in plain
    try:
        raise ValueError("boom")
    except ValueError:
        failing = logging.LogRecord("o", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(formatter.format(failing))["exception"]

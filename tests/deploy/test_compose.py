"""compose.yaml, checked offline: the compose spec's JSON schema (the copy check-jsonschema
ships) before and after interpolating .env.example, and the wiring between the services,
Prometheus' scrape config and Grafana's provisioning."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.files import (
    ROOT,
    interpolate,
    overnight_env_names,
    read_env_file,
    referenced_variables,
    tool,
    unknown_env,
)

COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
OVERNIGHT_SERVICES = ("migrate", "api", "worker-1", "worker-2")


def check_compose_spec(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """compose.yaml as Docker would run it with .env.example as its .env."""
    text = interpolate(COMPOSE.read_text(), read_env_file(ENV_EXAMPLE))
    doc: dict[str, Any] = yaml.safe_load(text)  # resolves the <<: merge keys
    return doc


def test_compose_file_matches_the_spec() -> None:
    proc = check_compose_spec(COMPOSE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_interpolated_compose_file_matches_the_spec(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """Values substituted (ports, durations, booleans become what Docker sees) and the
    YAML anchors merged, the file is still valid."""
    resolved = tmp_path / "compose.yaml"
    resolved.write_text(yaml.safe_dump(compose))
    proc = check_compose_spec(resolved)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_spec_check_does_reject(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  api:\n    image: overnight\n    restrat: always\n")
    proc = check_compose_spec(bad)
    assert proc.returncode == 1 and "restrat" in proc.stdout, proc.stdout


def test_every_variable_is_in_env_example() -> None:
    """A user who copies .env.example has every setting compose.yaml reads."""
    missing = referenced_variables(COMPOSE.read_text()) - set(read_env_file(ENV_EXAMPLE))
    assert not missing, f"compose.yaml reads {sorted(missing)}, which .env.example lacks"


def test_environment_names_are_ones_overnight_reads(compose: dict[str, Any]) -> None:
    known = overnight_env_names()
    for name in OVERNIGHT_SERVICES:
        env = compose["services"][name]["environment"]
        assert unknown_env(list(env), known) == [], name
    example = [n for n in read_env_file(ENV_EXAMPLE) if n.startswith("OVERNIGHT_")]
    assert unknown_env(example, known) == []


def test_the_typo_check_catches_a_typo() -> None:
    known = overnight_env_names()
    assert "OVERNIGHT_SHUTDOWN_GRACE_SECONDS" in known and "OVERNIGHT_CONFIG" in known
    assert unknown_env(["OVERNIGHT_SHUTDOWN_GRACE_SECOND", "AWS_DEFAULT_REGION"], known) == [
        "OVERNIGHT_SHUTDOWN_GRACE_SECOND"
    ]


def test_the_fleet(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"api", "worker-1", "worker-2", "postgres", "minio", "prometheus", "grafana"} <= set(
        services
    )
    assert services["api"]["command"] == [
        "serve",
        "--no-executor",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]
    assert services["migrate"]["command"] == ["migrate"]
    for name in OVERNIGHT_SERVICES:
        service = services[name]
        env = service["environment"]
        assert env["OVERNIGHT_DATABASE_URL"].startswith("postgresql://")
        assert "@postgres:5432/" in env["OVERNIGHT_DATABASE_URL"]
        assert env["OVERNIGHT_STORAGE_URL"].startswith("s3://")
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert env["OVERNIGHT_API_KEYS"], "the API binds 0.0.0.0: keys are required"
        # The drain on SIGTERM must finish before Docker's SIGKILL.
        grace = float(env["OVERNIGHT_SHUTDOWN_GRACE_SECONDS"])
        assert float(service["stop_grace_period"].rstrip("s")) > grace, name
        if name != "migrate":
            assert service["depends_on"]["migrate"]["condition"] == (
                "service_completed_successfully"
            )
    for name in ("worker-1", "worker-2"):
        command = services[name]["command"]
        assert command[:1] == ["worker"] and "--no-executor" not in command
        assert command[command.index("--metrics-host") + 1] == "0.0.0.0"
        assert command[command.index("--metrics-port") + 1] == "9464"
        assert "9464/healthz" in " ".join(services[name]["healthcheck"]["test"])
    # The data dirs are not shared: each process has its own (its disk reserve, its cache).
    volumes = [services[n]["volumes"][0].split(":")[0] for n in OVERNIGHT_SERVICES[1:]]
    assert len(set(volumes)) == len(volumes)


def test_published_ports_are_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_prometheus_scrapes_the_api_and_each_worker(compose: dict[str, Any]) -> None:
    mount = next(v for v in compose["services"]["prometheus"]["volumes"] if "prometheus.yml" in v)
    source, target = mount.split(":")[:2]
    assert target == "/etc/prometheus/prometheus.yml"
    config = yaml.safe_load((ROOT / source).read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        if job.get("metrics_path", "/metrics") == "/metrics"
        for group in job["static_configs"]
        for target in group["targets"]
    }
    assert targets == {"api:8000", "worker-1:9464", "worker-2:9464"}


def test_grafana_loads_the_dashboards_folder_from_prometheus(compose: dict[str, Any]) -> None:
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    provisioning = ROOT / next(s for s, t in mounts.items() if t == "/etc/grafana/provisioning")
    dashboards_at = mounts["./deploy/grafana/dashboards"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "overnight.yaml").read_text())[
        "providers"
    ]
    assert provider["type"] == "file" and provider["options"]["path"] == dashboards_at
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]


def datasource_uids(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        source = node.get("datasource")
        if isinstance(source, dict) and isinstance(source.get("uid"), str):
            found.add(source["uid"])
        for value in node.values():
            found |= datasource_uids(value)
    elif isinstance(node, list):
        for value in node:
            found |= datasource_uids(value)
    return found


def test_dashboards_use_the_provisioned_data_source() -> None:
    """A panel naming another data source uid would show "datasource not found"."""
    dashboards = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
    if not dashboards:
        pytest.skip("no dashboard in deploy/grafana/dashboards/ yet")
    provisioning = ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
    provisioned = {
        s["uid"]
        for s in yaml.safe_load((provisioning / "prometheus.yaml").read_text())["datasources"]
    }
    for path in dashboards:
        uids = datasource_uids(json.loads(path.read_text()))
        # "${...}" / "$name": a dashboard variable, resolved to a provisioned source.
        assert {u for u in uids if not u.startswith("$")} <= provisioned, (path.name, uids)

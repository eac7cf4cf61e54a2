"""deploy/k8s, checked offline: every overlay rendered with `kubectl kustomize`, each
object validated strictly against Kubernetes' schemas (kubernetes-validate; the
ServiceMonitor against the Prometheus Operator's CRD schema, tests/deploy/schemas), and
the properties overnight relies on: probes, drain time, settings names, the config file
mounted where it is read, one process per SQLite file."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from overnight import settings as settings_mod
from tests.deploy.files import ROOT, overnight_env_names, unknown_env

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
SECRET_TEMPLATE = K8S / "base" / "secret.example.yaml"
SCHEMAS = Path(__file__).parent / "schemas"
# The oldest Kubernetes still maintained upstream when this was written, and the newest
# kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.32.0", kubernetes_validate.latest_version())
WORKLOADS = ("Deployment", "Job", "StatefulSet", "DaemonSet")


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomize overlays cannot be rendered")
    proc = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def strict(schema: Any) -> Any:
    """A CRD schema that rejects unknown fields, as `kubectl apply` does by default
    (server-side field validation) where the API server would otherwise prune them."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def service_monitor_schema() -> Any:
    return strict(json.loads((SCHEMAS / "servicemonitor-v1.json").read_text()))


def validate(doc: dict[str, Any], version: str) -> None:
    if doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "ServiceMonitor":
        jsonschema.validate(doc, service_monitor_schema())
        return
    kubernetes_validate.validate(doc, version, strict=True)


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def by_kind_name(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    return None


def container_env(
    docs: list[dict[str, Any]], container: dict[str, Any], secret_template: dict[str, Any]
) -> dict[str, str]:
    """The environment a container gets: envFrom ConfigMaps and Secrets of the render
    (or, for a Secret the render lacks, the template's keys), then env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            ref = by_kind_name(docs, "ConfigMap", source["configMapRef"]["name"])
            assert ref is not None, f"ConfigMap {source['configMapRef']['name']} is not rendered"
            env.update(ref["data"])
        else:
            name = source["secretRef"]["name"]
            ref = by_kind_name(docs, "Secret", name)
            if ref is None:
                assert name == secret_template["metadata"]["name"], name
                ref = secret_template
            env.update(ref.get("stringData", {}))
            env.update({k: "(base64)" for k in ref.get("data", {})})
    env.update({e["name"]: e.get("value", "(from a reference)") for e in container.get("env", [])})
    return env


@pytest.fixture(scope="module")
def secret_template() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(SECRET_TEMPLATE.read_text())
    return doc


def test_there_are_overlays() -> None:
    assert {"dev", "production"} <= set(OVERLAYS)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid(rendered: tuple[str, list[dict[str, Any]]], version: str) -> None:
    overlay, docs = rendered
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= kinds, (overlay, kinds)
    for doc in docs:
        validate(doc, version)


def test_the_secret_template_is_valid(secret_template: dict[str, Any]) -> None:
    validate(secret_template, KUBERNETES_VERSIONS[-1])


def test_validation_does_reject() -> None:
    """The strict schemas are applied: a misspelt field is an error, for the built-in
    kinds and for the ServiceMonitor."""
    docs = render("production")
    api = by_kind_name(docs, "Deployment", "overnight-api")
    assert api is not None
    api["spec"]["template"]["spec"]["terminationGracePeriod"] = 40
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(api, KUBERNETES_VERSIONS[-1])
    monitor = by_kind_name(docs, "ServiceMonitor", "overnight")
    assert monitor is not None
    monitor["spec"]["endpoints"][0]["pathh"] = "/metrics"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor, KUBERNETES_VERSIONS[-1])


def test_settings_names_are_ones_overnight_reads(
    rendered: tuple[str, list[dict[str, Any]]], secret_template: dict[str, Any]
) -> None:
    overlay, docs = rendered
    known = overnight_env_names()
    assert unknown_env(list(secret_template["stringData"]), known) == []
    for where, spec in pod_specs(docs):
        for container in spec["containers"]:
            env = container_env(docs, container, secret_template)
            assert unknown_env(list(env), known) == [], (overlay, where)


def test_api_probes_are_healthz_and_readyz(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    api = by_kind_name(docs, "Deployment", "overnight-api")
    assert api is not None, overlay
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "serve"
    port = container["ports"][0]
    assert container["args"][container["args"].index("--port") + 1] == str(port["containerPort"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in (port["name"], port["containerPort"])


def test_workers_expose_metrics_and_are_probed_on_that_port(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, docs = rendered
    worker = by_kind_name(docs, "Deployment", "overnight-worker")
    if worker is None:
        pytest.skip(f"{overlay} runs no separate workers")
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[0] == "worker"
    assert args[args.index("--metrics-host") + 1] == "0.0.0.0"
    assert args[args.index("--metrics-port") + 1] == "9464"
    assert container["ports"] == [{"name": "metrics", "containerPort": 9464}]
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_servicemonitor_scrapes_the_api_and_the_workers(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, docs = rendered
    monitor = by_kind_name(docs, "ServiceMonitor", "overnight")
    if monitor is None:
        pytest.skip(f"{overlay} assumes no Prometheus Operator")
    selector = monitor["spec"]["selector"]["matchLabels"]
    ports = {e["port"] for e in monitor["spec"]["endpoints"] if e["path"] == "/metrics"}
    scraped = set()
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        if doc["kind"] == "Service" and selector.items() <= labels.items():
            scraped |= {p["name"] for p in doc["spec"]["ports"]} & ports
    assert scraped == {"http", "metrics"}


def test_drain_fits_in_the_termination_grace_period(
    rendered: tuple[str, list[dict[str, Any]]], secret_template: dict[str, Any]
) -> None:
    overlay, docs = rendered
    for where, spec in pod_specs(docs):
        if spec.get("restartPolicy") in ("OnFailure", "Never"):
            continue  # a Job's migrate has nothing in flight
        (container,) = spec["containers"]
        env = container_env(docs, container, secret_template)
        grace = float(env.get("OVERNIGHT_SHUTDOWN_GRACE_SECONDS", 25))
        pause = 0
        pre_stop = container.get("lifecycle", {}).get("preStop", {})
        if pre_stop:
            assert pre_stop["exec"]["command"][0] == "sleep"
            pause = int(pre_stop["exec"]["command"][1])
        assert spec["terminationGracePeriodSeconds"] > grace + pause, (overlay, where)


def test_pods_run_as_non_root_with_a_read_only_root(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, docs = rendered
    for where, spec in pod_specs(docs):
        assert spec["securityContext"]["runAsNonRoot"] is True, (overlay, where)
        assert spec["automountServiceAccountToken"] is False, (overlay, where)
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, (overlay, where)
            assert context["allowPrivilegeEscalation"] is False, (overlay, where)
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/data", "/tmp"} <= mounts, (overlay, where)  # the writable paths


def test_config_file_is_mounted_where_it_is_read_and_loads(
    rendered: tuple[str, list[dict[str, Any]]],
    secret_template: dict[str, Any],
    tmp_path: Path,
) -> None:
    overlay, docs = rendered
    for where, spec in pod_specs(docs):
        (container,) = spec["containers"]
        config = container_env(docs, container, secret_template).get("OVERNIGHT_CONFIG")
        if config is None:
            continue
        mount = next(
            (m for m in container["volumeMounts"] if config.startswith(m["mountPath"] + "/")),
            None,
        )
        assert mount is not None, f"{overlay} {where}: {config} is not mounted"
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        configmap = by_kind_name(docs, "ConfigMap", volume["configMap"]["name"])
        assert configmap is not None
        key = config[len(mount["mountPath"]) + 1 :]
        assert key in configmap["data"], (overlay, where, key)
        path = tmp_path / key
        path.write_text(configmap["data"][key])
        loaded = settings_mod.load(config_file=path, env={})
        assert loaded.routes, f"{overlay}: {key} has no [models] route"


def test_sqlite_overlays_run_one_process(
    rendered: tuple[str, list[dict[str, Any]]], secret_template: dict[str, Any]
) -> None:
    """Without a database URL the store is SQLite in the data dir: one process only,
    its data dir on a volume, and never two pods at once during a rollout."""
    overlay, docs = rendered
    sqlite = []
    for where, spec in pod_specs(docs):
        env = container_env(docs, spec["containers"][0], secret_template)
        if not env.get("OVERNIGHT_DATABASE_URL"):
            sqlite.append((where, spec))
    if not sqlite:
        return
    assert [w for w, _ in sqlite] == ["Deployment/overnight-api"], (overlay, sqlite)
    api = by_kind_name(docs, "Deployment", "overnight-api")
    assert api is not None
    assert api["spec"]["replicas"] == 1
    assert api["spec"]["strategy"] == {"type": "Recreate"}
    spec = sqlite[0][1]
    assert "--no-executor" not in spec["containers"][0]["args"]
    data = next(v for v in spec["volumes"] if v["name"] == "data")
    assert "persistentVolumeClaim" in data, f"{overlay}: the SQLite file must outlive the pod"


def test_production_uses_postgresql_and_s3(secret_template: dict[str, Any]) -> None:
    docs = render("production")
    for where, spec in pod_specs(docs):
        env = container_env(docs, spec["containers"][0], secret_template)
        assert env["OVERNIGHT_DATABASE_URL"].startswith("postgresql://"), where
        assert env["OVERNIGHT_STORAGE_URL"].startswith("s3://"), where
        assert env["OVERNIGHT_API_KEYS"], where
    api = by_kind_name(docs, "Deployment", "overnight-api")
    worker = by_kind_name(docs, "Deployment", "overnight-worker")
    assert api is not None and worker is not None
    assert "--no-executor" in api["spec"]["template"]["spec"]["containers"][0]["args"]
    assert api["spec"]["replicas"] >= 2 and worker["spec"]["replicas"] >= 2
    assert by_kind_name(docs, "Job", "overnight-migrate") is not None
    kinds = {d["kind"] for d in docs}
    assert {"PodDisruptionBudget", "ServiceMonitor"} <= kinds

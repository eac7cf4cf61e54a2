"""Every `overnight` command line the deployment files run (the image's CMD, compose's
commands, the Kubernetes containers' args: the image's entrypoint is `overnight`) is one
the real CLI accepts: parsed by overnight's own Typer app, not run."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest
import typer
import yaml

from overnight.cli import app
from tests.deploy.files import ROOT, dockerfile_stages, interpolate, read_env_file


def command_lines() -> list[tuple[str, list[str]]]:
    lines: list[tuple[str, list[str]]] = []
    runtime = dockerfile_stages((ROOT / "Dockerfile").read_text())["runtime"]
    lines += [("Dockerfile CMD", json.loads(i.args)) for i in runtime if i.keyword == "CMD"]
    compose = yaml.safe_load(
        interpolate((ROOT / "compose.yaml").read_text(), read_env_file(ROOT / ".env.example"))
    )
    for name, service in compose["services"].items():
        if str(service.get("image", "")).startswith("overnight:"):
            lines.append((f"compose {name}", service["command"]))
    kubectl = shutil.which("kubectl")
    overlays = sorted(p for p in (ROOT / "deploy" / "k8s" / "overlays").iterdir() if p.is_dir())
    for overlay in overlays if kubectl else []:
        out = subprocess.run(
            [str(kubectl), "kustomize", str(overlay)],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
        for doc in filter(None, yaml.safe_load_all(out)):
            if doc["kind"] in ("Deployment", "Job"):
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    where = f"k8s {overlay.name} {doc['metadata']['name']}"
                    lines.append((where, container["args"]))
    return lines


LINES = command_lines()


def test_every_role_is_deployed() -> None:
    roles = {argv[0] for _, argv in LINES}
    assert roles == {"serve", "worker", "migrate"}, roles


def worker_has_metrics_options(commands: dict[str, Any]) -> bool:
    worker = commands["worker"]
    return any("metrics" in opt for p in worker.params for opt in p.opts)


@pytest.mark.parametrize(("where", "argv"), LINES, ids=[w for w, _ in LINES])
def test_command_line_is_accepted(where: str, argv: list[str]) -> None:
    # Typer's group (its own copy of click's): the commands by name.
    commands: dict[str, Any] = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    if "--metrics-port" in argv and not worker_has_metrics_options(commands):
        pytest.skip("`overnight worker` has no metrics options yet (issue 15 adds them)")
    command = commands.get(argv[0])
    assert command is not None, f"{where}: overnight has no command {argv[0]!r}"
    ctx: Any = command.make_context(argv[0], list(argv[1:]))
    ctx.close()

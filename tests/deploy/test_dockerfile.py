"""The Dockerfile, checked without a Docker daemon: hadolint, and the properties the
deployment relies on (two targets, a numeric non-root user, the /healthz check, install
steps in deploy/install.sh, a build context that holds what the build copies); and
shellcheck on deploy/install.sh."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.deploy.files import (
    ROOT,
    dockerfile_stages,
    dockerignore_rules,
    in_build_context,
    overnight_env_names,
    tool,
    unknown_env,
)

DOCKERFILE = ROOT / "Dockerfile"


def hadolint(path: Path) -> list[dict[str, object]]:
    proc = subprocess.run(
        [tool("hadolint"), "--no-color", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip(), f"hadolint printed nothing: {proc.stderr}"
    findings: list[dict[str, object]] = json.loads(proc.stdout)
    assert (proc.returncode != 0) == any(f["level"] in ("error", "warning") for f in findings)
    return findings


def test_hadolint_finds_nothing() -> None:
    assert hadolint(DOCKERFILE) == []


def test_hadolint_does_check(tmp_path: Path) -> None:
    """The clean result above means something: hadolint reports a root image."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nUSER root\nRUN pip install overnight\n")
    codes = {f["code"] for f in hadolint(bad)}
    assert {"DL3002", "DL3013"} <= codes, codes


def test_slim_is_the_default_and_local_a_target() -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert list(stages)[-1] == "slim", "a plain `docker build .` must make the slim image"
    assert "local" in stages


@pytest.mark.parametrize("target", ["slim", "local"])
def test_images_run_as_a_numeric_non_root_user(target: str) -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    users = [i.args for i in stages[target] if i.keyword == "USER"]
    assert users, f"{target} sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    # Kubernetes' runAsNonRoot can only check a numeric user.
    assert user.isdigit() and int(user) != 0, users


def test_healthcheck_probes_healthz_and_the_command_is_overnight() -> None:
    runtime = dockerfile_stages(DOCKERFILE.read_text())["runtime"]
    (check,) = [i.args for i in runtime if i.keyword == "HEALTHCHECK"]
    assert "/healthz" in check and "127.0.0.1:8000" in check
    (entrypoint,) = [json.loads(i.args) for i in runtime if i.keyword == "ENTRYPOINT"]
    (cmd,) = [json.loads(i.args) for i in runtime if i.keyword == "CMD"]
    assert entrypoint == ["overnight"]
    assert cmd == ["serve", "--host", "0.0.0.0", "--port", "8000"]


def test_install_steps_are_the_install_script() -> None:
    """What CI tests (deploy/install.sh) is what the image runs, with each variant's extras."""
    stages = dockerfile_stages(DOCKERFILE.read_text())
    for stage, extras in (("build-slim", "s3"), ("build-local", "s3,local")):
        runs = [i.args for i in stages[stage] if i.keyword == "RUN" and "install.sh" in i.args]
        assert len(runs) == 1, (stage, runs)
        assert runs[0].endswith(f"deploy/install.sh /opt/overnight {extras}"), runs[0]
        assert not any("pip install" in i.args for i in stages[stage]), stage


def test_environment_names_are_overnights() -> None:
    env = [
        part.split("=", 1)[0]
        for stage in dockerfile_stages(DOCKERFILE.read_text()).values()
        for i in stage
        if i.keyword == "ENV"
        for part in i.args.split()
        if "=" in part
    ]
    assert "OVERNIGHT_DATA_DIR" in env
    names = [n for n in env if n not in ("PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE")]
    assert unknown_env(names, overnight_env_names()) == []


def copied_sources() -> list[str]:
    """The paths the build stage copies from the context (COPY without --from)."""
    stage = dockerfile_stages(DOCKERFILE.read_text())["build-slim"]
    sources = []
    for ins in stage:
        if ins.keyword == "COPY" and "--from" not in ins.args:
            sources += ins.args.split()[:-1]
    return sources


def test_build_context_holds_what_is_copied_and_nothing_private() -> None:
    rules = dockerignore_rules((ROOT / ".dockerignore").read_text())
    sources = copied_sources()
    assert {"pyproject.toml", "README.md", "overnight", "deploy/install.sh"} <= set(sources)
    for source in sources:
        path = ROOT / source
        files = [p for p in path.rglob("*.py")] if path.is_dir() else [path]
        for f in files:
            relpath = f.relative_to(ROOT).as_posix()
            if "__pycache__" not in relpath:
                assert in_build_context(relpath, rules), f"{relpath} is copied but ignored"
    for private in (".venv/bin/python", ".git/config", ".overnight/overnight.db", "tests/a.py"):
        assert not in_build_context(private, rules), private
    assert not in_build_context("overnight/__pycache__/x.cpython-311.pyc", rules)


def test_install_script_passes_shellcheck() -> None:
    proc = subprocess.run(
        [tool("shellcheck"), "--shell=sh", str(ROOT / "deploy" / "install.sh")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

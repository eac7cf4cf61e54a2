# syntax=docker/dockerfile:1
# overnight's image, in two variants (docs/deploy.md):
#
#   docker build -t overnight:slim .                  the default: an upstream model server
#                                                     (vLLM, SGLang, OpenAI...) does the inference
#   docker build --target local -t overnight:local .  with the embedded model (SmolLM2 via
#                                                     llama.cpp, compiled here: minutes)
#
# The install steps are deploy/install.sh, which CI also runs in a fresh venv
# (tests/deploy/test_install_script.py); hadolint checks this file (tests/deploy).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment in /opt/overnight, copied whole into the runtime stage
FROM ${PYTHON_IMAGE} AS build-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY overnight ./overnight
COPY deploy/install.sh ./deploy/install.sh
RUN --mount=type=cache,target=/root/.cache/pip deploy/install.sh /opt/overnight s3

FROM build-slim AS build-local
# Debian's versions of the compilers are what this base image is tested with; pinning
# them would break the build at each point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
# llama.cpp is built for x86-64-v3 (AVX2, FMA: every x86 server CPU since 2013), not for
# the build machine's own CPU, so the image runs wherever it is pulled. Pass
# --build-arg CMAKE_ARGS=-DGGML_NATIVE=ON for an image that only runs on this CPU.
ARG CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
# The pip cache keeps the compiled llama.cpp wheel between builds.
RUN --mount=type=cache,target=/root/.cache/pip \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" deploy/install.sh /opt/overnight s3,local

# ---- runtime: no compilers, no source tree, a non-root user
FROM ${PYTHON_IMAGE} AS runtime
# A numeric user, so that Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 overnight \
    && useradd --system --uid 10001 --gid overnight --home-dir /data \
       --shell /usr/sbin/nologin overnight \
    && mkdir -p /data \
    && chown overnight:overnight /data
# /data: the data dir (SQLite and files when no database or bucket is set) and the
# cache where the embedded model's widened weights go.
ENV PATH=/opt/overnight/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OVERNIGHT_DATA_DIR=/data \
    XDG_CACHE_HOME=/data/cache
WORKDIR /data
# 8000: the API (serve); 9464: a worker's /metrics (worker --metrics-port 9464).
EXPOSE 8000 9464
# The API's liveness. A worker has no API: compose and Kubernetes probe /healthz on its
# metrics port (9464) instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["overnight"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

FROM runtime AS local
# llama.cpp's OpenMP runtime; the rest of the build toolchain stays behind.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build-local /opt/overnight /opt/overnight
USER 10001:10001

# The last stage is what a plain `docker build .` makes.
FROM runtime AS slim
COPY --from=build-slim /opt/overnight /opt/overnight
USER 10001:10001

ARG BASE_IMAGE=python:3.11-slim

# Graft container image: CPU-only torch, SQLite under /data, migrations applied on start.
#
#   docker build -t graft .
#   docker run -d -p 8000:8000 -v graft-data:/data graft
#
# Build arguments:
#   BASE_IMAGE       Python 3.11 base (default python:3.11-slim)
#   TORCH_INDEX_URL  index torch is installed from (default: PyTorch's CPU-only wheels);
#                    pass it empty (--build-arg TORCH_INDEX_URL=) to use pip's own
#                    configuration (PyPI, or whatever pip.conf names).

# ---------------------------------------------------------------- build: venv in /opt/venv
FROM ${BASE_IMAGE} AS build

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Keep in step with TORCH_VERSION in scripts/bootstrap.
ARG TORCH_VERSION=2.13.0

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --no-cache-dir --upgrade pip

# torch first, pinned exactly, so that resolving the project never pulls another build.
# Its own layer: it is by far the largest and changes least often. torch/test holds
# compiled C++ unit-test binaries (~80 MB) that are never loaded at runtime.
RUN set -eu; \
    if [ -n "${TORCH_INDEX_URL}" ]; then \
        /opt/venv/bin/python -m pip install --no-cache-dir "torch==${TORCH_VERSION}" \
            --index-url "${TORCH_INDEX_URL}"; \
    else \
        /opt/venv/bin/python -m pip install --no-cache-dir "torch==${TORCH_VERSION}"; \
    fi; \
    rm -rf /opt/venv/lib/python3*/site-packages/torch/test

# The project itself: a regular (non-editable) install, no dev extras.
WORKDIR /src
COPY pyproject.toml alembic.ini README.md ./
COPY app/ app/
COPY migrations/ migrations/
RUN /opt/venv/bin/python -m pip install --no-cache-dir . \
 && /opt/venv/bin/python -c "import torch; assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__" \
 && /opt/venv/bin/graft --help >/dev/null

# ---------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="graft" \
      org.opencontainers.image.description="Transfer-learning service: train on a source dataset, fine-tune on a target, serve predictions."

ARG UID=10001
ARG GID=10001
RUN groupadd --gid "${GID}" graft \
 && useradd --uid "${UID}" --gid graft --home-dir /home/graft --create-home \
        --shell /usr/sbin/nologin graft \
 && mkdir -p /data \
 && chown graft:graft /data \
 && chmod 0750 /data

# Root-owned venv: the service can run it but not modify it.
COPY --from=build /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GRAFT_DATA_DIR=/data \
    GRAFT_HOST=0.0.0.0 \
    GRAFT_PORT=8000

WORKDIR /app
USER graft:graft
VOLUME /data
EXPOSE 8000

# Liveness via the stdlib (slim images have no curl); follows GRAFT_PORT if overridden.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GRAFT_PORT', '8000'), timeout=4)"]

# Applies migrations, then starts the API and its GRAFT_WORKERS worker processes.
CMD ["graft", "serve"]

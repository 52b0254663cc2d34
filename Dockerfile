# The image of quart_iot: exactly what pdm.lock pins (every file checked against the lock's
# hashes), run as an unprivileged user, on a read-only root file system, with no build tool.
#
#   docker build -t quart-iot .
#   docker run --read-only --tmpfs /tmp -p 3201:3201 -v esp32-configs:/data/esp32-configs quart-iot
#
# deploy/kubernetes/ runs it; docs/OPERATIONS.md ("The image") says what to decide.
# tests/test_deploy_image.py runs the install steps (deploy/install.sh) outside a container
# and the server as this image would; hadolint checks this file.

# The same base in both stages: the venv is built for the final stage's interpreter.
FROM python:3.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# pdm only reads pdm.lock here (`pdm export`); the version ./pdmw pins. It stays in this stage.
RUN pip install --no-cache-dir pdm==2.29.3
WORKDIR /src
COPY pyproject.toml pdm.lock README.md ./
COPY deploy/install.sh deploy/build-requirements.txt deploy/
COPY quart_iot/ quart_iot/
RUN sh deploy/install.sh /opt/quart_iot

FROM python:3.11-slim-bookworm
# The base image's own installer goes too: the final stage builds and installs nothing. The
# user owns nothing in the image but the volume's mount point (Kubernetes' fsGroup, or a named
# Docker volume, which copies this ownership, lets it write there).
RUN python -m pip uninstall --no-input --yes pip setuptools wheel \
    && groupadd --system --gid 10001 quart-iot \
    && useradd --system --uid 10001 --gid quart-iot --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin quart-iot \
    && mkdir -p /data/esp32-configs \
    && chown quart-iot:quart-iot /data/esp32-configs
COPY --from=builder /opt/quart_iot /opt/quart_iot
# HOST: reachable from outside the container. PYTHONDONTWRITEBYTECODE: the bytecode was
# compiled at install; the root file system is read-only.
ENV PATH=/opt/quart_iot/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=3201 \
    ESP32_CONFIGS_DIR=/data/esp32-configs
USER 10001:10001
WORKDIR /
EXPOSE 3201
VOLUME ["/data/esp32-configs"]
# For Docker and Compose (Kubernetes ignores it and uses the probes of deploy/kubernetes):
# liveness, which touches no disk. Python is the only client the image has.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '3201') + '/api/health/live', timeout=4)"]
# The one way to run it: SIGTERM drains, WORKERS, the open-file limit (README, "Running").
CMD ["python", "-m", "quart_iot"]

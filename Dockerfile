# syntax=docker/dockerfile:1
#
# The monitor daemon as a container image (see "Deploy" in README.md).
#
#   docker build -t monitor .
#   docker run -d --name monitor \
#     -v "$PWD/deploy/config/monitor.yaml:/config/monitor.yaml:ro" \
#     -v monitor-state:/var/lib/monitor \
#     -p 127.0.0.1:8080:8080 \
#     monitor
#
# - The config is mounted read-only at /config/monitor.yaml; secrets come from the environment
#   (`token: ${TELEGRAM_BOT_TOKEN}` in the config, `-e TELEGRAM_BOT_TOKEN` here).
# - State lives on the volume at /var/lib/monitor: the config's `state` must point there
#   (`state: sqlite:///var/lib/monitor/state.db`, as deploy/config/monitor.yaml does).
# - The daemon serves /healthz, /readyz, /metrics and /status on port 8080.
# - Runs as the unprivileged user 10001; nothing in the image is writable by it but the volume.
#
# The base image is pinned to an exact Python patch release on an exact Debian release. It is
# not pinned by digest here: the digest could not be resolved where this file was written (no
# registry access). For reproducible production builds add it, resolved on a machine that can
# reach the registry:
#   docker buildx imagetools inspect python:3.11.15-slim-bookworm   # the index digest
#   docker build --build-arg PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:<digest> .
# Python packages are pinned in deploy/requirements.txt; the build backend and pip here.
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm

# --- builder: compilers and pip, discarded ----------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/src/deploy/build-constraints.txt

# A compiler only for a dependency without a wheel for this platform; it stays in this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first, in their own layer: rebuilt only when the pins change.
WORKDIR /src
COPY deploy/requirements.txt deploy/build-constraints.txt deploy/
RUN python -m venv /opt/monitor \
    && /opt/monitor/bin/pip install --no-cache-dir pip==25.2 \
    && /opt/monitor/bin/pip install --no-cache-dir -r deploy/requirements.txt

# Then the project itself, as a wheel, without touching the pinned dependencies.
COPY pyproject.toml README.md ./
COPY monitor ./monitor
RUN /opt/monitor/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && /opt/monitor/bin/pip install --no-cache-dir --no-deps /wheels/monitor-*.whl \
    && /opt/monitor/bin/pip check \
    && /opt/monitor/bin/monitor --version \
    && /opt/monitor/bin/pip uninstall -y pip setuptools

# --- final image: the interpreter and the virtualenv, nothing else ----------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="monitor" \
      org.opencontainers.image.description="Real-time news monitoring and alerting daemon" \
      org.opencontainers.image.licenses="MIT"

ENV PATH=/opt/monitor/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# A fixed UID/GID, so volume ownership and Kubernetes' runAsUser agree with the image.
RUN groupadd --system --gid 10001 monitor \
    && useradd --system --uid 10001 --gid monitor --no-create-home \
       --home-dir /var/lib/monitor --shell /usr/sbin/nologin monitor \
    && install -d -o monitor -g monitor -m 0750 /var/lib/monitor \
    && install -d -m 0755 /config

COPY --from=builder /opt/monitor /opt/monitor

USER 10001:10001
WORKDIR /var/lib/monitor
VOLUME ["/var/lib/monitor"]
EXPOSE 8080

# SIGTERM: stop claiming feeds, let polls and sends in flight finish (5 s), exit 0.
# SIGHUP (`docker kill -s HUP monitor`) reloads the config.
STOPSIGNAL SIGTERM

# No curl in a slim image: the interpreter asks /healthz itself (any error or non-2xx fails).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

ENTRYPOINT ["monitor"]
CMD ["run", "-c", "/config/monitor.yaml", "--http", "0.0.0.0:8080"]

# syntax=docker/dockerfile:1
# token-sidecar container image.
#
#   docker build -t token-sidecar:0.1.0 --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#
# Two stages: the builder turns the project and its dependencies into wheels; the final stage
# installs only those wheels (no compiler, no build tools, no pip cache, no source tree) and
# removes pip itself. The image runs as a numeric non-root user and writes nothing outside the
# volumes the pod mounts, so it works with readOnlyRootFilesystem: true.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
# The project's wheel plus a wheel for every runtime dependency (all ship binary wheels for
# linux/amd64 and linux/arm64, so nothing is compiled). EXTRAS=kubernetes adds the client that
# the chart's events.enabled needs (about 130 MB on disk, so it is not in the default image).
ARG EXTRAS=""
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels ".${EXTRAS:+[$EXTRAS]}"

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG EXTRAS=""
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="token-sidecar" \
      org.opencontainers.image.description="Kubernetes sidecar that keeps a service supplied with short-lived OAuth 2.0 access tokens, with refresh tokens kept in Vault." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# No .pyc writes at run time (the root filesystem is read-only; everything is compiled at
# install), docstrings and asserts left out (PYTHONOPTIMIZE=2: about 2.5 MiB less resident
# memory per pod, see BENCHMARKS.md), unbuffered logs, and the default config path for
# `token-sidecar check` in `kubectl exec`.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONOPTIMIZE=2 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKEN_SIDECAR_CONFIG=/etc/token-sidecar/config.yaml
# The wheels are bind-mounted from the builder, so they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links=/wheels \
        "token-sidecar${EXTRAS:+[$EXTRAS]}" \
    && python -m pip uninstall --yes pip setuptools wheel \
    && python -OO -m compileall -q "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && token-sidecar --version
# 65532 is the conventional "nonroot" UID/GID of distroless images; no passwd entry is needed.
USER 65532:65532
WORKDIR /
EXPOSE 8099
ENTRYPOINT ["token-sidecar"]
CMD ["run", "--config", "/etc/token-sidecar/config.yaml"]

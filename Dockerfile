# syntax=docker/dockerfile:1
# imagecopy operator image: the Python package and its dependencies on a slim Python 3.11 base,
# running as an unprivileged user. Build (needs a container engine; none runs on the CI machines):
#   docker build -t registry.example.com/imagecopy/imagecopy:0.1.0 .
# The Helm chart runs it with a read-only root filesystem and an emptyDir at /tmp.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/imagecopy ./operator/imagecopy
# Wheels for the package and every runtime dependency (no dev/bench extras).
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels imagecopy \
    && groupadd --system --gid 10001 imagecopy \
    && useradd --system --uid 10001 --gid imagecopy --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin imagecopy
# Numeric user so Kubernetes can verify runAsNonRoot without resolving names.
USER 10001:10001
WORKDIR /tmp
# 8080: Prometheus /metrics (IMAGECOPY_METRICS_PORT); 8081: Kopf liveness (/healthz).
EXPOSE 8080 8081
ENTRYPOINT ["imagecopy"]
CMD ["operator"]

# syntax=docker/dockerfile:1
# imagecopy operator image: the package and its runtime dependencies in a venv on a Python 3.11
# base, running as uid 10001 with a read-only root filesystem and an emptyDir at /tmp.
#
#   make image     # here: no daemon, no pullable base. scripts/build-image.sh builds a Debian
#                  # bookworm minbase root filesystem (mmdebstrap), the wheels on the host
#                  # (dist/wheels/), and this file with buildah on that base → dist/imagecopy-image.tar
#   docker build -t registry.example.com/imagecopy/imagecopy:0.1.0 .
#                  # anywhere with a registry: builds on python:3.11-slim-bookworm; the wheels are
#                  # built inside the build stage unless dist/wheels/ already holds them.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/imagecopy ./operator/imagecopy
# dist/wheels/ holds only a README in a fresh clone; `make image` fills it with the host-built
# wheels (a fresh root filesystem lacks any extra CA the host trusts, so pip cannot reach an index).
COPY dist/wheels /wheels
# The venv keeps pip only long enough to install; the runtime has no pip, setuptools or cache.
# Bytecode is compiled here, on every core (the root filesystem is read-only at run time).
RUN set -eu; \
    if ! ls /wheels/imagecopy-*.whl >/dev/null 2>&1; then python3 -m pip wheel --wheel-dir /wheels .; fi; \
    python3 -m venv /opt/imagecopy; \
    /opt/imagecopy/bin/pip install --no-index --no-compile --find-links=/wheels imagecopy; \
    /opt/imagecopy/bin/pip uninstall -y -q pip setuptools; \
    rm -f /opt/imagecopy/bin/pip* /opt/imagecopy/bin/easy_install*; \
    # kubernetes.aio is a 68 MB asyncio copy of the client that nothing here imports (Kopf
    # talks to the API server with aiohttp itself; controller/kube.py uses kubernetes.client).
    site=$(/opt/imagecopy/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    rm -rf "$site/kubernetes/aio" "$site/websocket/tests" "$site/certifi/tests"; \
    /opt/imagecopy/bin/python -m compileall -q -j 0 /opt/imagecopy/lib >/dev/null

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/imagecopy /opt/imagecopy
RUN groupadd --system --gid 10001 imagecopy \
    && useradd --system --uid 10001 --gid imagecopy --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin imagecopy
ENV PATH=/opt/imagecopy/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# Numeric user so Kubernetes can verify runAsNonRoot without resolving names.
USER 10001:10001
WORKDIR /tmp
# 8080: Prometheus /metrics (IMAGECOPY_METRICS_PORT); 8081: Kopf liveness (/healthz).
EXPOSE 8080 8081
ENTRYPOINT ["imagecopy"]
CMD ["operator"]

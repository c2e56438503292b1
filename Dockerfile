# syntax=docker/dockerfile:1
# The sms-connector image: `make image` (docker or podman), or `make image-offline` for the same
# image from Debian's packages where no engine or registry is available (container/).
#
# Stage 1 gathers every wheel: the locked dependencies (container/requirements.txt, hashes
# checked, binary wheels only) and the project's own wheel. Stage 2 is the slim Python base plus a
# virtualenv made from those wheels by container/install-app.sh (the script the offline build
# runs too): no compiler, no pip cache, no tests, no wheel files (they are bind-mounted, not
# copied). It runs as 10001:10001 (the chart's securityContext) and works on a read-only root
# filesystem with only /tmp writable: the bytecode is compiled at build time.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheels
WORKDIR /src
# pip from a throwaway virtualenv: works on any Python 3.11 base (Debian's python3 has no pip).
RUN python3 -m venv /build
COPY container/requirements.txt container/requirements.txt
RUN /build/bin/pip wheel --no-cache-dir --disable-pip-version-check --require-hashes --no-deps \
        --only-binary=:all: -r container/requirements.txt -w /wheels
COPY . .
RUN /build/bin/pip wheel --no-cache-dir --disable-pip-version-check --no-deps . -w /wheels

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="sms-connector" \
      org.opencontainers.image.description="Kafka <-> SMS provider bridge" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    --mount=type=bind,source=container/install-app.sh,target=/install-app.sh \
    sh /install-app.sh /wheels
ENV PATH=/opt/sms-connector/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
USER 10001:10001
WORKDIR /
EXPOSE 8080
# The worker handles SIGTERM itself (stop fetching, finish in-flight, commit, exit 0), also as
# PID 1; it starts no child processes, so it needs no init.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sms-connector"]
CMD ["worker"]

# syntax=docker/dockerfile:1.7
#
# One image for both halves of Aegis:
#   aegis operator            the kopf operator (the Helm chart's Deployment)
#   aegis agent backup|...    the data mover inside backup/restore/drill Jobs
#
# The agent must run pg_dump/pg_restore of the same major version as the server it talks
# to, so the image carries PostgreSQL 13 to 17 from the PGDG repository
# (/usr/lib/postgresql/<major>/bin) and the Redis tools; redis-server too, because a Redis
# restore loads the snapshot into a temporary server inside the Job before replaying keys.
# The PostgreSQL *server* packages (initdb, postgres) are there for restore drills, which
# restore into a scratch server of the backup's major inside the drill's Job (as the
# image's non-root user, in /tmp); postgresql-common is told not to create a default
# cluster, since the image never runs a server of its own.
#
#   docker build -t aegis:dev .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a wheel of the project, installed with its dependencies into a venv ----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/aegis \
 && /opt/aegis/bin/pip install /wheels/*.whl \
 && /opt/aegis/bin/pip check \
 # The sandbox (API emulator, local servers) is for development: `pip install
 # 'aegis-dr[sandbox]'` brings it with its dependencies; the image carries only what runs.
 && rm -rf /opt/aegis/lib/python3.11/site-packages/aegis/sandbox \
 && /opt/aegis/bin/aegis --help >/dev/null \
 && { /opt/aegis/bin/aegis sandbox up 2>&1 | grep -q "aegis-dr\[sandbox\]"; }

# ---- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG PG_MAJORS="13 14 15 16 17"
ARG UID=65532
ARG GID=65532

# The PGDG signing key; apt checks every package against it.
ADD --chmod=0644 https://www.postgresql.org/media/keys/ACCC4CF8.asc \
    /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc

# PGDG keeps only the newest minor of each major, so versions are not pinned (DL3008); the
# major is what must match the server. $clients is split into package names on purpose.
# hadolint ignore=DL3008,SC2086
RUN set -eux; \
    echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
      > /etc/apt/sources.list.d/pgdg.list; \
    apt-get update; \
    clients=""; for major in ${PG_MAJORS}; do clients="$clients postgresql-client-$major postgresql-$major"; done; \
    mkdir -p /etc/postgresql-common; \
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates tzdata redis-tools redis-server $clients; \
    rm -rf /var/lib/apt/lists/*; \
    for major in ${PG_MAJORS}; do \
      /usr/lib/postgresql/$major/bin/pg_dump --version; \
      /usr/lib/postgresql/$major/bin/pg_restore --version; \
      /usr/lib/postgresql/$major/bin/initdb --version; \
      /usr/lib/postgresql/$major/bin/postgres --version; \
    done; \
    redis-server --version; redis-cli --version; \
    groupadd --system --gid "${GID}" aegis; \
    useradd --system --uid "${UID}" --gid "${GID}" --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin aegis

COPY --from=build /opt/aegis /opt/aegis

# The root filesystem is read-only in the chart: nothing may write outside /tmp (an emptyDir).
ENV PATH=/opt/aegis/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Numeric, so that runAsNonRoot can be verified by the kubelet without reading /etc/passwd.
USER ${UID}:${GID}
WORKDIR /tmp
EXPOSE 8080 8081
ENTRYPOINT ["aegis"]
CMD ["operator"]

LABEL org.opencontainers.image.title="aegis" \
      org.opencontainers.image.description="Aegis: disaster recovery for PostgreSQL and Redis on Kubernetes (operator and agent)" \
      org.opencontainers.image.source="https://github.com/aegis-dr/aegis" \
      org.opencontainers.image.licenses="Apache-2.0"

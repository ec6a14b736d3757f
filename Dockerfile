# The one image both Deployments of the chart run (`gl-orchestrator serve`, `gl-watchdog serve`).
# Not built in CI here (no container engine on the build machines); see docs/operations.md.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY orchestrator_core ./orchestrator_core
COPY watchdog ./watchdog
COPY playbooks ./playbooks
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
# Runs as an arbitrary non-root UID with a read-only root filesystem; /tmp and /var/lib/gl-watchdog
# are emptyDirs in the chart.
USER 10001
WORKDIR /var/lib/gl-watchdog
EXPOSE 8080 8081
CMD ["gl-watchdog", "serve", "--host", "0.0.0.0"]

# The one image both Deployments of the chart run (`gl-orchestrator serve`, `gl-watchdog serve`).
# Not built in CI here (no container engine on the build machines); tests/helm/test_image.py checks it
# against the chart and pyproject.toml. See docs/operations.md, "The image".
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gl_common ./gl_common
COPY orchestrator_core ./orchestrator_core
COPY watchdog_sdk ./watchdog_sdk
COPY watchdog ./watchdog
COPY playbooks ./playbooks
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /install /usr/local
# Runs as a non-root UID with a read-only root filesystem. The working directory holds what the services
# write (embedded SQLite files, the state dir `.gl-watchdog` of generated local tokens); the chart mounts
# emptyDirs on it and on /tmp. Owned by 10001 and group 0 (group-writable) so that a plain `docker run`
# or an arbitrary UID in group 0 (OpenShift) can write it too.
RUN install -d -o 10001 -g 0 -m 0770 /var/lib/gl-watchdog
USER 10001
WORKDIR /var/lib/gl-watchdog
EXPOSE 8080 8081
# Off loopback the services refuse to start without API tokens (GL_WATCHDOG_API_TOKENS or
# GL_WATCHDOG_API_TOKEN_FILE, and the orchestrator's GL_ORCHESTRATOR_API_TOKEN_FILE); the chart mounts them.
CMD ["gl-watchdog", "serve", "--host", "0.0.0.0"]

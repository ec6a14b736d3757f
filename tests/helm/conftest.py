"""Fixtures of the Helm chart tests: the chart loaded and rendered with Helm's own Go SDK, and the real
services started from what it renders.

The tests lint the chart, validate every manifest, run promtool/amtool/Alertmanager/Prometheus on what it
renders, and compare the metric names it queries with what the real services export.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from tests.conftest import free_port
from tests.helm.chart import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    Manifest,
    Render,
    one,
    production_values,
    split_documents,
)
from tests.helm.services import (
    Service,
    cancel_running,
    chart_command,
    chart_env,
    materialize_mounts,
    start_service,
    stop_service,
)


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render_raw(chart: helm.Chart) -> Callable[..., dict[str, str]]:
    """Render the chart offline: template path -> text."""

    def _render(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> dict[str, str]:
        return chart.render(values or {}, name=RELEASE, namespace=namespace, is_install=True)

    return _render


@pytest.fixture(scope="session")
def render(render_raw: Callable[..., dict[str, str]]) -> Render:
    """Render the chart offline and parse every manifest."""

    def _render(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> list[Manifest]:
        return split_documents(render_raw(values, namespace))

    return _render


@pytest.fixture(scope="session")
def default_manifests(render: Render) -> list[Manifest]:
    return render()


@pytest.fixture(scope="session")
def prod_manifests(render: Render) -> list[Manifest]:
    return render(production_values())


@pytest.fixture(params=["default", "production"])
def manifests(
    request: pytest.FixtureRequest, default_manifests: list[Manifest], prod_manifests: list[Manifest]
) -> list[Manifest]:
    """Each chart-wide check runs on the default values and on values-production.yaml."""
    return default_manifests if request.param == "default" else prod_manifests


@pytest.fixture(scope="module")
def pod_root(
    tmp_path_factory: pytest.TempPathFactory, default_manifests: list[Manifest]
) -> tuple[Path, dict[str, str]]:
    """A stand-in for the pod's filesystem: the chart's Secret and policy written where they are mounted."""

    root = tmp_path_factory.mktemp("pod")
    return root, materialize_mounts(default_manifests, root)


@pytest.fixture(scope="module")
def orchestrator(
    pod_root: tuple[Path, dict[str, str]], default_manifests: list[Manifest]
) -> Iterator[Service]:
    """`gl-orchestrator serve` as the chart's default values configure it (module-scoped)."""

    root, secret = pod_root
    port = free_port()
    env = chart_env(
        one(default_manifests, "Deployment", "orchestrator-service"),
        root,
        {"GL_ORCHESTRATOR_HOST": "127.0.0.1", "GL_ORCHESTRATOR_PORT": str(port)},
    )
    command = chart_command(one(default_manifests, "Deployment", "orchestrator-service"))
    service = start_service(command, env, port, secret["orchestrator-api-token"], root / "orchestrator.log")
    try:
        yield service
    finally:
        cancel_running(service)
        stop_service(service)


@pytest.fixture(scope="module")
def watchdog(
    pod_root: tuple[Path, dict[str, str]], default_manifests: list[Manifest], orchestrator: Service
) -> Iterator[Service]:
    """`gl-watchdog serve` as the chart configures it, watching `orchestrator` (module-scoped)."""

    root, secret = pod_root
    port = free_port()
    env = chart_env(
        one(default_manifests, "Deployment", "gl-watchdog"),
        root,
        {
            "GL_WATCHDOG_HOST": "127.0.0.1",
            "GL_WATCHDOG_PORT": str(port),
            "GL_WATCHDOG_ORCHESTRATOR_URL": orchestrator.url,
            "GL_WATCHDOG_PUBLIC_URL": f"http://127.0.0.1:{port}",
            # No Kubernetes API here; everything else is as the chart renders it.
            "GL_WATCHDOG_KUBERNETES_ENABLED": "false",
        },
    )
    command = chart_command(one(default_manifests, "Deployment", "gl-watchdog"))
    service = start_service(command, env, port, secret["watchdog-api-token"], root / "watchdog.log")
    try:
        yield service
    finally:
        stop_service(service)

"""Fixtures of the Helm chart tests: load and render helm/gl-watchdog with Helm's own Go SDK.

The chart is rendered offline by `helm_python` (libhelm over ctypes: no cluster, no `helm` binary); the
tests then lint it, validate every manifest, run promtool/amtool on what it renders, and compare the
metric names it queries with what the real services export.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.conftest import missing_service

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "gl-watchdog"
PRODUCTION_VALUES = CHART_DIR / "values-production.yaml"
RELEASE = "gl-watchdog"
NAMESPACE = "greenlang"
KUBE_VERSIONS = ("1.29", "1.33")

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]


def production_values() -> dict[str, Any]:
    """The example production values file, parsed by Helm's own values loader."""
    return helm.values_from_yaml(PRODUCTION_VALUES.read_text(encoding="utf-8"))


def split_documents(rendered: dict[str, str]) -> list[Manifest]:
    """Every non-empty YAML document of the rendered templates (NOTES.txt excluded)."""
    manifests: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                manifests.append(doc)
    return manifests


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    """Manifests of `kind` (and `name`, when given)."""
    return [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The single manifest of `kind` (and `name`); fails the test when there is not exactly one."""
    found = find(manifests, kind, name)
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, found {[m['metadata']['name'] for m in found]}"
    )
    return found[0]


def container_env(deployment: Manifest) -> dict[str, dict[str, Any]]:
    """The first container's env entries by name."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {entry["name"]: entry for entry in container.get("env", [])}


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


def require_binary(name: str) -> str:
    """Absolute path of a tool the tests run (promtool, amtool, alertmanager), or skip/fail."""
    path = shutil.which(name)
    if path is None:
        missing_service(f"`{name}` is not installed")
    assert path is not None
    return path

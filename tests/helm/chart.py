"""Shared constants and helpers of the Helm chart tests: where the chart is, how rendered output is read.

The chart is rendered offline by `helm_python` (libhelm over ctypes: no cluster, no `helm` binary);
conftest.py turns these helpers into fixtures, services.py starts the real services from what it renders.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from tests.conftest import missing_service

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "gl-watchdog"
PRODUCTION_VALUES = CHART_DIR / "values-production.yaml"
RELEASE = "gl-watchdog"
NAMESPACE = "greenlang"
KUBE_VERSIONS = ("1.29", "1.33")
# The two Deployments, and the values of a release on an external database and Redis.
ORCHESTRATOR = "orchestrator-service"
WATCHDOG = "gl-watchdog"
EXTERNAL = {
    "database": {
        "external": True,
        "orchestratorUrl": "postgresql+asyncpg://o:pw@pg:5432/orchestrator",
        "watchdogUrl": "postgresql+asyncpg://w:pw@pg:5432/watchdog",
    },
    "redis": {"enabled": True, "url": "redis://:pw@redis:6379/0"},
}

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


def require_binary(name: str) -> str:
    """Absolute path of a tool the tests run (promtool, amtool, alertmanager), or skip/fail."""
    path = shutil.which(name)
    if path is None:
        missing_service(f"`{name}` is not installed")
    assert path is not None
    return path

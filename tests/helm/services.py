"""Run the real services as the chart configures them, for the tests that need them live.

`gl-orchestrator serve` and `gl-watchdog serve` are started as processes with the environment the chart
renders for their Deployments: the same variables, in-pod paths moved under a temp dir (the chart's
generated Secret and policy ConfigMap are written where the pod would mount them), loopback ports.
Used by test_metrics_contract.py and test_prometheus_e2e.py through fixtures in conftest.py; the
Alertmanager helpers run the alertmanager.yml route documented in docs/alerting.md.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, wait_for_port
from tests.helm.chart import NAMESPACE, REPO, Manifest, one, require_binary

BIN = Path(sys.executable).parent
START_DEADLINE = 30.0
HTTP_TIMEOUT = 5.0
ALERTING_DOC = REPO / "docs" / "alerting.md"


@dataclass
class Service:
    """A running service process: its base URL, the bearer token it accepts, its log file."""

    url: str
    token: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def chart_env(
    deployment: Manifest, root: Path, overrides: dict[str, str], secret: dict[str, str] | None = None
) -> dict[str, str]:
    """The Deployment's container env as a process environment, with in-pod paths moved under `root`.

    `secretKeyRef`s resolve from `secret` (the Secret's decoded data); a reference to a missing key fails.
    """
    env: dict[str, str] = {}
    field_refs = {
        "metadata.name": f"{deployment['metadata']['name']}-test-0",
        "metadata.namespace": NAMESPACE,
    }
    for entry in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        name = entry["name"]
        if name in overrides:
            env[name] = overrides[name]
        elif "value" in entry:
            value = entry["value"].replace("/etc/gl-watchdog", str(root / "etc"))
            env[name] = value.replace("/var/lib/gl-watchdog", str(root / "data"))
        elif "fieldRef" in entry["valueFrom"]:
            env[name] = field_refs[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            key = entry["valueFrom"]["secretKeyRef"]["key"]
            if secret is None or key not in secret:
                pytest.fail(f"{name}: secretKeyRef to {key!r}, which the Secret does not hold")
            env[name] = secret[key]
    return env


def chart_command(deployment: Manifest) -> list[str]:
    """The container's rendered command, its executable resolved in this virtualenv's bin directory."""
    command: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    return [str(BIN / command[0]), *command[1:]]


def write_mounts(root: Path, secret: dict[str, str], policy: str) -> None:
    """Write a Secret's data and the policy where the pods mount them (under `root`)."""
    (root / "etc" / "secrets").mkdir(parents=True, exist_ok=True)
    for key, value in secret.items():
        (root / "etc" / "secrets" / key).write_text(value, encoding="utf-8")
    (root / "etc" / "policy").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "policy" / "policy.yaml").write_text(policy, encoding="utf-8")
    (root / "data").mkdir(exist_ok=True)


def materialize_mounts(manifests: list[Manifest], root: Path) -> dict[str, str]:
    """Write the chart's Secret and policy ConfigMap where the pods would see them; return the Secret."""
    secret = {k: base64.b64decode(v).decode() for k, v in one(manifests, "Secret")["data"].items()}
    policy = one(manifests, "ConfigMap", "gl-watchdog-policy")["data"]["policy.yaml"]
    write_mounts(root, secret, policy)
    return secret


def start_service(command: list[str], env: dict[str, str], port: int, token: str, log: Path) -> Service:
    """Start the process and wait, bounded, until /healthz answers 200; fail with its log otherwise."""
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(log.parent), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env={**base, **env}, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent
        )
    service = Service(url=f"http://127.0.0.1:{port}", token=token, proc=proc, log=log)
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`{' '.join(command)}` exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{service.url}/healthz", timeout=HTTP_TIMEOUT).status_code == 200:
                return service
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_service(service)
    pytest.fail(
        f"`{' '.join(command)}` did not answer /healthz in {START_DEADLINE}s:\n{log.read_text()[-4000:]}"
    )


def stop_service(service: Service) -> None:
    """SIGTERM (graceful shutdown), then SIGKILL if it does not stop in time."""
    if service.proc.poll() is None:
        service.proc.terminate()
        try:
            service.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.proc.kill()
            service.proc.wait(timeout=10)


def start_stuck_run(orchestrator: Service, dag_id: str, timeout_seconds: float) -> str:
    """Register (once) a DAG whose only node hangs, start a run, wait until it runs; its execution id."""
    dag: dict[str, Any] = {
        "dag_id": dag_id,
        "nodes": {"stuck": {"node_id": "stuck", "agent_id": "builtin.hang"}},
        "execution_timeout_seconds": timeout_seconds,
    }
    base = f"{orchestrator.url}/api/v1/orchestrator"
    with httpx.Client(timeout=HTTP_TIMEOUT, headers=orchestrator.headers) as client:
        if client.get(f"{base}/dags/{dag_id}").status_code == 404:
            created = client.post(f"{base}/dags", json=dag)
            assert created.status_code in (200, 201), created.text
        started = client.post(f"{base}/dags/{dag_id}/execute", json={"input_data": {}})
        assert started.status_code == 202, started.text
        execution_id = str(started.json()["execution_id"])
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            status = client.get(f"{base}/executions/{execution_id}").json()["status"]
            if status == "running":
                return execution_id
            time.sleep(0.1)
    pytest.fail(f"run {execution_id} of {dag_id} never reached status running")


def cancel_running(orchestrator: Service) -> None:
    """Cancel every running run (so a graceful shutdown does not wait out its grace period)."""
    base = f"{orchestrator.url}/api/v1/orchestrator"
    with httpx.Client(timeout=HTTP_TIMEOUT, headers=orchestrator.headers) as client:
        for item in client.get(f"{base}/executions", params={"status": "running"}).json()["items"]:
            client.post(f"{base}/executions/{item['execution_id']}/cancel")


def scrape(service: Service) -> str:
    """The service's /metrics exposition."""
    response = httpx.get(f"{service.url}/metrics", timeout=HTTP_TIMEOUT)
    assert response.status_code == 200, response.text
    return response.text


# -- Alertmanager ------------------------------------------------------------------------------------


def alertmanager_snippet() -> str:
    """The fenced yaml block that follows the `alertmanager.yml` marker comment in docs/alerting.md."""
    text = ALERTING_DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- alertmanager\.yml:.*?-->\s*```yaml\n(.*?)```", text, re.DOTALL)
    assert match, "docs/alerting.md has no alertmanager.yml block after its marker comment"
    return match.group(1)


@contextlib.contextmanager
def running_alertmanager(config: Path, workdir: Path) -> Iterator[str]:
    binary = require_binary("prometheus-alertmanager")
    port = free_port()
    log = (workdir / "alertmanager.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        if not wait_for_port(port, timeout=20):
            proc.terminate()
            proc.wait(timeout=10)
            pytest.fail(f"alertmanager did not start: {(workdir / 'alertmanager.log').read_text()}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()

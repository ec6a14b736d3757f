"""The orchestrator as the watchdog tests meet it: faked at the HTTP client (`FakeOrchestrator`, its
`GET /executions` through httpx.MockTransport), as JSON documents for respx routes, or real
(`OrchestratorProcess`: `gl-orchestrator serve` in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, wait_for_port

# The orchestrator faked with respx (the `orch` fixture): its base URL, API root, and the tests' "now".
ORCH_BASE = "http://orch.test:8080"
ORCH_API = ORCH_BASE + "/api/v1/orchestrator"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def execution_json(execution_id: str = "ex-1", **overrides: Any) -> dict[str, Any]:
    """An execution record: running for 20 minutes against a 300 s timeout (stuck) unless overridden."""
    record: dict[str, Any] = {
        "execution_id": execution_id,
        "dag_id": "emissions",
        "dag_version": 1,
        "status": "running",
        "created_at": "2026-03-01T11:39:00Z",
        "started_at": "2026-03-01T11:40:00Z",
        "completed_at": None,
        "timeout_seconds": 300,
        "error": None,
        "owner": "orch-a",
        "input_data": {},
    }
    record.update(overrides)
    return record


def node_json(status: str, agent_id: str, **overrides: Any) -> dict[str, Any]:
    """A node trace entry."""
    record: dict[str, Any] = {
        "status": status,
        "duration_ms": None,
        "attempt_count": 1 if status != "pending" else 0,
        "error": None,
        "agent_id": agent_id,
        "started_at": None,
        "completed_at": None,
        "input_hash": "sha256:abc",
        "timeout_seconds": 120,
    }
    record.update(overrides)
    return record


def trace_json(execution_id: str = "ex-1", **overrides: Any) -> dict[str, Any]:
    """A trace stalled at level 1: intake completed, scope1 running since 11:41 (19 minutes)."""
    record: dict[str, Any] = {
        "execution_id": execution_id,
        "dag_id": "emissions",
        "status": "running",
        "topology_levels": [["intake"], ["scope1", "scope2"], ["report"]],
        "node_traces": {
            "intake": node_json(
                "completed",
                "emissions.intake",
                started_at="2026-03-01T11:40:00Z",
                completed_at="2026-03-01T11:41:00Z",
                duration_ms=60000.0,
            ),
            "scope1": node_json("running", "emissions.scope1", started_at="2026-03-01T11:41:00Z"),
            "scope2": node_json(
                "completed",
                "emissions.scope2",
                started_at="2026-03-01T11:41:00Z",
                completed_at="2026-03-01T11:42:00Z",
            ),
            "report": node_json("pending", "emissions.report"),
        },
    }
    record.update(overrides)
    return record


ORCHESTRATOR_TOKEN = "orch-test-token-5678"


HUNG_DAG_ID = "stuck-dag"


def hung_dag(timeout_seconds: float = 1.0) -> dict[str, Any]:
    """A DAG whose second node (`builtin.hang`) never returns, with a short DAG-level timeout."""
    return {
        "dag_id": HUNG_DAG_ID,
        "version": "1",
        "execution_timeout_seconds": timeout_seconds,
        "nodes": {
            "load": {"agent_id": "builtin.echo"},
            "wedged": {
                "agent_id": "builtin.hang",
                "depends_on": ["load"],
                "timeout_policy": {"timeout_seconds": 3600, "on_timeout": "fail"},
            },
        },
    }


class OrchestratorProcess:
    """`gl-orchestrator serve` on a random loopback port with its own SQLite file."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ORCHESTRATOR_TOKEN
        self.workdir = workdir
        self.log_path = workdir / "orchestrator.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(
            base_url=self.url + "/api/v1/orchestrator",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )

    def start(self) -> None:
        env = {
            **os.environ,
            "GL_ORCHESTRATOR_DATABASE_URL": f"sqlite+aiosqlite:///{self.workdir / 'orchestrator.db'}",
            "GL_ORCHESTRATOR_API_TOKENS": json.dumps([self.token]),
            "GL_ORCHESTRATOR_SHUTDOWN_GRACE_SECONDS": "2",
        }
        env.pop("GL_ORCHESTRATOR_REDIS_URL", None)
        binary = Path(sys.executable).with_name("gl-orchestrator")
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [str(binary), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
            )
        if not wait_for_port(self.port, timeout=30):
            self.stop()
            raise RuntimeError(f"gl-orchestrator did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        self.http.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)

    def start_hung_run(self, timeout_seconds: float = 1.0) -> str:
        """Register the hung DAG (once) and start a run of it; returns the execution id."""
        response = self.http.post("/dags", json=hung_dag(timeout_seconds))
        assert response.status_code in (200, 201, 409), response.text
        started = self.http.post(
            f"/dags/{HUNG_DAG_ID}/execute",
            json={"input_data": {}, "execution_options": {"checkpoint_enabled": True}},
        )
        assert started.status_code == 202, started.text
        execution_id: str = started.json()["execution_id"]
        return execution_id

    def wait_over_timeout(self, execution_id: str, deadline_seconds: float = 20.0) -> None:
        """Poll until the run has been running for longer than its timeout (bounded)."""
        deadline = time.monotonic() + deadline_seconds
        while time.monotonic() < deadline:
            execution = self.http.get(f"/executions/{execution_id}").json()
            trace = self.http.get(f"/executions/{execution_id}/trace").json()
            started = datetime.fromisoformat(execution["started_at"].replace("Z", "+00:00"))
            running_for = (datetime.now(UTC) - started).total_seconds()
            wedged = trace["node_traces"].get("wedged", {}).get("status") == "running"
            if execution["status"] == "running" and wedged and running_for > execution["timeout_seconds"]:
                return
            time.sleep(0.1)
        raise AssertionError(f"run {execution_id} did not get stuck over its timeout in time:\n{self.log()}")


class FakeOrchestrator:
    """The orchestrator's `GET /executions?status=running`, served through httpx.MockTransport."""

    def __init__(self) -> None:
        self.running: dict[str, dict[str, Any]] = {}
        self.interrupted: dict[str, dict[str, Any]] = {}
        self.calls = 0

    def add(self, execution_id: str, dag_id: str, started_at: datetime, timeout: float) -> None:
        self.running[execution_id] = {
            "execution_id": execution_id,
            "dag_id": dag_id,
            "status": "running",
            "started_at": started_at.isoformat().replace("+00:00", "Z"),
            "timeout_seconds": timeout,
        }

    def interrupt(self, execution_id: str, dag_id: str, interrupted_at: datetime) -> None:
        self.interrupted[execution_id] = {
            "execution_id": execution_id,
            "dag_id": dag_id,
            "status": "interrupted",
            "completed_at": interrupted_at.isoformat().replace("+00:00", "Z"),
        }

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/orchestrator/executions"
        if request.url.params["status"] == "interrupted":  # the sweep's second question
            return httpx.Response(200, json={"items": list(self.interrupted.values())})
        self.calls += 1
        assert request.url.params["status"] == "running"
        return httpx.Response(200, json={"items": list(self.running.values())})


def use_orchestrator(monkeypatch: pytest.MonkeyPatch, orch: OrchestratorProcess) -> None:
    monkeypatch.setenv("GL_WATCHDOG_ORCHESTRATOR_URL", orch.url)
    monkeypatch.setenv("GL_WATCHDOG_ORCHESTRATOR_TOKEN", orch.token)

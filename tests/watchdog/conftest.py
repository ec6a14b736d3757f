"""Fixtures of the watchdog tests: clients against real services, a settable clock.

Owned by the clients/diagnostics engineer; the intake engineer may append fixtures below.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from orchestrator_core.emissions import emissions_dag, emissions_demo_input
from tests.conftest import free_port, wait_for_port
from tests.orchestrator.test_service_harness import TOKEN, Harness, make_settings, running_service
from watchdog.assembly import Watchdog, build_watchdog, create_app
from watchdog.plan import Plan
from watchdog.settings import Mode, WatchdogSettings
from watchdog_sdk.clients import Clients
from watchdog_sdk.clients.kubernetes import KubernetesClient, build_configuration
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.clients.prometheus import PrometheusClient
from watchdog_sdk.clients.redis import RedisClient
from watchdog_sdk.diagnosis import Diagnosis, Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosticContext


class FakeClock:
    """A settable clock (`gl_common.clock.Clock`) for injected-time code: `now()` stays where it is put
    (`set()`, `advance()`); monotonic time and sleeps are real, so code that polls a real service still
    waits for it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def set(self, when: datetime) -> None:
        self.current = when

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def redis_client(redis_url: str, clock: FakeClock) -> AsyncIterator[RedisClient]:
    client = RedisClient(redis_url, timeout=2.0, clock=clock)
    yield client
    await client.aclose()


# -- a fake Kubernetes API (aiohttp) of the few routes the watchdog uses -----------------------------


def make_pod(
    name: str,
    labels: dict[str, str],
    *,
    phase: str = "Running",
    ready: bool = True,
    restarts: int = 0,
    waiting_reason: str | None = None,
    terminated_reason: str | None = None,
    last_terminated_reason: str | None = None,
    limits: dict[str, str] | None = None,
    container: str = "main",
    deleting: bool = False,
) -> dict[str, Any]:
    """A pod as the API server returns it (JSON), with one container."""
    if waiting_reason:
        state: dict[str, Any] = {"waiting": {"reason": waiting_reason}}
    elif terminated_reason:
        state = {"terminated": {"reason": terminated_reason, "exitCode": 137}}
    else:
        state = {"running": {"startedAt": "2026-03-01T11:00:00Z"}}
    last: dict[str, Any] = {}
    if last_terminated_reason:
        last = {"terminated": {"reason": last_terminated_reason, "exitCode": 137}}
    metadata: dict[str, Any] = {"name": name, "namespace": "greenlang", "labels": labels}
    if deleting:
        metadata["deletionTimestamp"] = "2026-03-01T12:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "nodeName": "node-1",
            "containers": [{"name": container, "resources": {"limits": limits or {}}}],
        },
        "status": {
            "phase": phase,
            "startTime": "2026-03-01T11:00:00Z",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [
                {
                    "name": container,
                    "ready": ready,
                    "restartCount": restarts,
                    "image": "example/agent:1",
                    "imageID": "",
                    "state": state,
                    "lastState": last,
                }
            ],
        },
    }


def make_deployment(name: str, env: dict[str, str], container: str = "orchestrator") -> dict[str, Any]:
    """A Deployment as the API server returns it (JSON)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "greenlang", "generation": 1},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {}},
                "spec": {
                    "containers": [
                        {"name": container, "env": [{"name": k, "value": v} for k, v in env.items()]}
                    ]
                },
            },
        },
        "status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "observedGeneration": 1},
    }


def _matches(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key.strip()) != value.strip():
            return False
    return True


class FakeKubeApi:
    """Pods, pod logs, metrics.k8s.io pod metrics and Deployments of one namespace, served over HTTP.

    Set `fail_status` to answer every request with that status, or `hang = True` to never answer
    (until the fixture releases the handlers at teardown). `requests` records (method, path, query).
    `on_delete(name)` may add a replacement pod when a pod is deleted.
    """

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.logs: dict[str, str] = {}
        self.usage: dict[str, dict[str, str]] = {}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.patches: list[tuple[str, Any]] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.fail_status: int | None = None
        self.hang = False
        self.on_delete: Callable[[str], None] | None = None
        self.release = asyncio.Event()
        self.url = ""

    def add_pod(self, pod: dict[str, Any], log: str = "") -> None:
        self.pods[pod["metadata"]["name"]] = pod
        self.logs[pod["metadata"]["name"]] = log

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path, dict(request.query)))
        if self.hang:
            await self.release.wait()
        if self.fail_status is not None:
            return web.json_response(
                {
                    "kind": "Status",
                    "status": "Failure",
                    "message": "injected failure",
                    "code": self.fail_status,
                },
                status=self.fail_status,
            )
        response: web.StreamResponse = await handler(request)
        return response

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        base = "/api/v1/namespaces/{ns}/pods"
        app.router.add_get(base, self._list_pods)
        app.router.add_get(base + "/{name}", self._get_pod)
        app.router.add_delete(base + "/{name}", self._delete_pod)
        app.router.add_get(base + "/{name}/log", self._log)
        app.router.add_get("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods", self._metrics)
        deployment = "/apis/apps/v1/namespaces/{ns}/deployments/{name}"
        app.router.add_get(deployment, self._get_deployment)
        app.router.add_patch(deployment, self._patch_deployment)
        return app

    @staticmethod
    def _not_found(what: str) -> web.Response:
        return web.json_response(
            {
                "kind": "Status",
                "status": "Failure",
                "reason": "NotFound",
                "message": f"{what} not found",
                "code": 404,
            },
            status=404,
        )

    async def _list_pods(self, request: web.Request) -> web.Response:
        selector = request.query.get("labelSelector")
        items = [p for p in self.pods.values() if _matches(p["metadata"].get("labels", {}), selector)]
        return web.json_response({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})

    async def _get_pod(self, request: web.Request) -> web.Response:
        pod = self.pods.get(request.match_info["name"])
        return web.json_response(pod) if pod else self._not_found("pod")

    async def _delete_pod(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        pod = self.pods.pop(name, None)
        if pod is None:
            return self._not_found("pod")
        if self.on_delete is not None:
            self.on_delete(name)
        return web.json_response(pod)

    async def _log(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.pods:
            return self._not_found("pod")
        lines = self.logs.get(name, "").splitlines()
        tail = int(request.query.get("tailLines", "0") or 0)
        if tail:
            lines = lines[-tail:]
        return web.Response(text="\n".join(lines) + ("\n" if lines else ""), content_type="text/plain")

    async def _metrics(self, request: web.Request) -> web.Response:
        selector = request.query.get("labelSelector")
        items = [
            {"metadata": {"name": name}, "containers": [{"name": "main", "usage": usage}]}
            for name, usage in self.usage.items()
            if name in self.pods and _matches(self.pods[name]["metadata"].get("labels", {}), selector)
        ]
        return web.json_response(
            {"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "items": items}
        )

    async def _get_deployment(self, request: web.Request) -> web.Response:
        dep = self.deployments.get(request.match_info["name"])
        return web.json_response(dep) if dep else self._not_found("deployment")

    async def _patch_deployment(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        dep = self.deployments.get(name)
        if dep is None:
            return self._not_found("deployment")
        body = await request.json()
        self.patches.append((request.content_type, body))
        template = body.get("spec", {}).get("template", {})
        annotations = template.get("metadata", {}).get("annotations", {})
        dep["spec"]["template"]["metadata"].setdefault("annotations", {}).update(annotations)
        for patch_container in template.get("spec", {}).get("containers", []):
            for container in dep["spec"]["template"]["spec"]["containers"]:
                if container["name"] == patch_container["name"]:
                    env = {e["name"]: e for e in container.get("env", [])}
                    env.update({e["name"]: e for e in patch_container.get("env", [])})
                    container["env"] = list(env.values())
        dep["metadata"]["generation"] += 1
        return web.json_response(dep)


@pytest.fixture
async def kube_api(_no_pending_tasks: None) -> AsyncIterator[FakeKubeApi]:
    """A running FakeKubeApi on a random loopback port.

    Depends on the pending-task check so that the check runs after this server has shut down
    (its keep-alive connection handlers are tasks of the test's loop)."""
    fake = FakeKubeApi()
    runner = web.AppRunner(fake.app(), shutdown_timeout=1.0)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()


@pytest.fixture
def kube(kube_api: FakeKubeApi) -> Iterator[KubernetesClient]:
    """The real KubernetesClient (official client underneath) pointed at the fake API."""
    client = KubernetesClient(build_configuration(host=kube_api.url), "greenlang", timeout=2.0)
    yield client
    client.close()


# -- diagnostics: a respx-faked orchestrator and a context builder ----------------------------------

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


@pytest.fixture
def orch() -> Iterator[respx.MockRouter]:
    """A respx router faking the orchestrator API at ORCH_API (routes added by each test)."""
    with respx.mock(base_url=ORCH_API, assert_all_called=False) as router:
        yield router


@pytest.fixture
async def make_ctx(clock: FakeClock) -> AsyncIterator[Callable[..., DiagnosticContext]]:
    """Build DiagnosticContexts over the faked orchestrator; extra clients and settings as keywords."""
    made: list[DiagnosticContext] = []

    def build(
        settings: WatchdogSettings | None = None,
        *,
        prometheus: PrometheusClient | None = None,
        kubernetes: KubernetesClient | None = None,
        redis: RedisClient | None = None,
        step_timeouts: dict[int, float] | None = None,
    ) -> DiagnosticContext:
        ctx = DiagnosticContext(
            clients=Clients(
                orchestrator=OrchestratorClient(ORCH_BASE, "token", timeout=2.0),
                prometheus=prometheus,
                kubernetes=kubernetes,
                redis=redis,
            ),
            settings=(settings or WatchdogSettings(orchestrator_url=ORCH_BASE)).diagnostics(),
            clock=clock,
            step_timeouts=step_timeouts or {},
        )
        made.append(ctx)
        return ctx

    yield build
    for ctx in made:
        await ctx.orchestrator.aclose()


# -- the watchdog service (intake engineer) ---------------------------------------------------------

WATCHDOG_TOKEN = "wd-test-token-1234"
MAX_BODY_BYTES = 64 * 1024  # the test watchdog's request body limit


def make_diagnosis(
    execution_id: str, *, node: str = "stuck-node", agent: str = "builtin.hang", cause: str = "hung_node"
) -> Diagnosis:
    """A plausible Diagnosis of a run stuck on one node (for tests that do not exercise the steps)."""
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    findings = [
        Finding(step=1, name="execution", status=StepStatus.PROBLEM, summary="running over its timeout"),
        Finding(step=2, name="trace", status=StepStatus.OK, summary=f"{node} running"),
        Finding(
            step=3,
            name="bottleneck",
            status=StepStatus.PROBLEM,
            summary=f"{node} on {agent} over its timeout",
            evidence={"node_id": node, "agent_id": agent},
        ),
    ]
    return Diagnosis(
        execution_id=execution_id,
        started_at=now,
        completed_at=now,
        findings=findings,
        likely_cause=cause,
        cause_evidence=[f"node {node} (agent {agent}) has run past its timeout"],
        dag_id="dag-1",
        stuck_node_id=node,
        agent_id=agent,
    )


def make_plan(execution_id: str = "e1", playbook: str | None = "restart_agent") -> Plan:
    """A small plan of `playbook` (for tests of what stores, shows or answers a prompt, not of planning)."""
    return Plan(
        execution_id=execution_id,
        likely_cause="hung_node",
        playbook=playbook,
        mode=Mode.RECOMMEND,
        rationale="test",
    )


class ScriptedDiagnose:
    """The app's `diagnose` callable for tests: records calls, can be held on a gate or made to fail."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None
        self.error: Exception | None = None
        self.entered = asyncio.Event()

    async def __call__(self, execution_id: str) -> Diagnosis:
        self.calls.append(execution_id)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return make_diagnosis(execution_id)


class RecordingRemediate:
    """The app's remediation hook for tests: records (incident_id, likely_cause)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []

    async def __call__(self, incident_id: int, diagnosis: Diagnosis) -> None:
        self.calls.append((incident_id, diagnosis.likely_cause))


@pytest.fixture
def diagnose_fn() -> ScriptedDiagnose:
    return ScriptedDiagnose()


@pytest.fixture
def remediate_fn() -> RecordingRemediate:
    return RecordingRemediate()


@pytest.fixture
async def watchdog_app(
    _no_pending_tasks: None,
    database_url: str,
    diagnose_fn: ScriptedDiagnose,
    remediate_fn: RecordingRemediate,
) -> AsyncIterator[Watchdog]:
    """A Watchdog (SQLite, PostgreSQL) with scripted diagnose/remediate; no orchestrator reachable.

    Depends on `_no_pending_tasks` so that the leftover-task check runs after this teardown.
    """
    settings = WatchdogSettings(
        database_url=database_url,
        api_tokens=[WATCHDOG_TOKEN],
        orchestrator_url=f"http://127.0.0.1:{free_port()}",
        orchestrator_timeout_seconds=1.0,
        max_body_bytes=MAX_BODY_BYTES,
    )
    wd = await build_watchdog(settings, diagnose=diagnose_fn, on_diagnosed=remediate_fn)
    try:
        yield wd
    finally:
        if diagnose_fn.gate is not None:
            diagnose_fn.gate.set()
        await wd.aclose()


@pytest.fixture
async def api_client(
    _no_pending_tasks: None, watchdog_app: Watchdog
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """An aiohttp TestClient against the watchdog API served on a random loopback port."""
    client = TestClient(TestServer(create_app(watchdog_app), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


# -- the real orchestrator service as a subprocess (intake engineer) --------------------------------

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


@pytest.fixture
def orchestrator_service(tmp_path: Path) -> Iterator[OrchestratorProcess]:
    """The real orchestrator service (`gl-orchestrator serve`) in a subprocess."""
    workdir = tmp_path / "orchestrator"
    workdir.mkdir()
    proc = OrchestratorProcess(workdir)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


# -- the orchestrator's `GET /executions`, faked at the HTTP client (condition, sweeps, diagnosis) ---------


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


# -- Alertmanager webhook payloads (intake, API) ---------------------------------------------------


STARTS = "2026-03-01T12:00:00.123456789Z"


def alert(
    execution_id: str = "exec-1",
    *,
    status: str = "firing",
    fingerprint: str = "fp-exec-1",
    starts_at: str = STARTS,
    alertname: str = "OrchestratorExecutionTimeout",
    **labels: str,
) -> dict[str, Any]:
    all_labels = {
        "alertname": alertname,
        "execution_id": execution_id,
        "dag_id": "dag-1",
        "severity": "warning",
    }
    all_labels.update(labels)
    return {
        "status": status,
        "labels": all_labels,
        "annotations": {"summary": "stuck"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-03-01T12:30:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="OrchestratorExecutionTimeout"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "gl-watchdog",
        "groupLabels": {"alertname": "OrchestratorExecutionTimeout"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


# -- the CLI against the real orchestrator ----------------------------------------------------------


def use_orchestrator(monkeypatch: pytest.MonkeyPatch, orch: OrchestratorProcess) -> None:
    monkeypatch.setenv("GL_WATCHDOG_ORCHESTRATOR_URL", orch.url)
    monkeypatch.setenv("GL_WATCHDOG_ORCHESTRATOR_TOKEN", orch.token)


# -- the approval flow over the real orchestrator service (web, browser, CLI approve) -----------------


API_TOKEN = "watchdog-api-token-0123456789"


@dataclass
class Stack:
    orch: Harness
    wd: Watchdog
    url: str
    messages: list[dict[str, Any]]
    arrived: asyncio.Event
    token_file: Path
    execution_id: str = ""
    incident_id: int = 0

    def client(self, token: str | None = API_TOKEN) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10.0)

    async def stuck_incident(self) -> dict[str, Any]:
        """Start a stuck emissions run, open its incident via the API, and wait for the approval prompt."""
        dag = emissions_dag(dag_id="emissions-web", execution_timeout_seconds=1.0, log_interval_seconds=0.2)
        await self.orch.register(dag)
        self.execution_id = (await self.orch.execute("emissions-web", emissions_demo_input()))["execution_id"]
        async with asyncio.timeout(15):  # bounded polls of real processes
            while True:
                trace = await self.wd.clients.orchestrator.get_trace(self.execution_id)
                if trace.node_traces["scope2"].status == "running":
                    break
                await asyncio.sleep(0.05)
            async with self.client() as api:
                response = await api.post("/api/v1/incidents", json={"execution_id": self.execution_id})
                assert response.status_code == 201, response.text
                self.incident_id = response.json()["incident"]["id"]
            await self.arrived.wait()
        return self.messages[-1]


def links(message: dict[str, Any]) -> dict[str, str]:
    buttons = message["blocks"][-1]["elements"]
    return {b["text"]["text"].lower(): b["url"] for b in buttons}


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def approval_id_of(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[1]


@pytest.fixture
async def stack(_no_pending_tasks: None, tmp_path: Any) -> AsyncIterator[Stack]:
    """Depends on the pending-task check so the check runs after every server here has stopped."""
    messages: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        messages.append(await request.json())
        arrived.set()
        return web.Response(text="ok")

    receiver_app = web.Application()
    receiver_app.router.add_post("/hook", hook)
    receiver = web.AppRunner(receiver_app, shutdown_timeout=0.1)
    await receiver.setup()
    hook_port = free_port()
    await web.TCPSite(receiver, "127.0.0.1", hook_port).start()
    port = free_port()
    token_file = tmp_path / "api.token"
    token_file.write_text(API_TOKEN + "\n")
    orch_settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'orch.db'}", max_body_bytes=1 << 20)
    async with running_service(orch_settings, start_loop=True) as orch:
        settings = WatchdogSettings(
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}",
            orchestrator_url=orch.base_url,
            orchestrator_token=TOKEN,
            mode=Mode.RECOMMEND,
            api_token_file=token_file,
            approval_signing_key="s" * 32,
            public_url=f"http://127.0.0.1:{port}",
            notifier_url=f"http://127.0.0.1:{hook_port}/hook",
            step_timeout_seconds=5,
            port=port,
        )
        wd = await build_watchdog(settings, poll_interval_seconds=0.1)
        runner = web.AppRunner(create_app(wd), shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield Stack(orch, wd, f"http://127.0.0.1:{port}", messages, arrived, token_file)
        finally:
            await runner.cleanup()
            await wd.aclose(grace_seconds=5)
    await receiver.cleanup()

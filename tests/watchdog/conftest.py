"""Fixtures of the watchdog tests: a settable clock, clients against real services, the fake Kubernetes
API, diagnostic contexts over a respx-faked orchestrator, the watchdog service itself, and the
approval flow over the real orchestrator.

The fakes and harnesses they stand on live beside this file, in modules not named like tests:
`fake_kube.py`, `orchestrators.py` (faked and real orchestrators), `webhook.py` (Alertmanager
payloads) and `approval_stack.py`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import respx
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import free_port
from tests.orchestrator.service_harness import TOKEN, make_settings, running_service
from tests.watchdog.approval_stack import API_TOKEN, Stack
from tests.watchdog.fake_kube import FakeKubeApi
from tests.watchdog.identity_app import IdentityApp, serving_identity_app
from tests.watchdog.orchestrators import ORCH_API, ORCH_BASE, OrchestratorProcess
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


@pytest.fixture
async def identity_app(_no_pending_tasks: None, database_url: str) -> AsyncIterator[IdentityApp]:
    """The real app with a bootstrap token, named tokens and a trusted proxy at 127.0.0.1."""
    serving = serving_identity_app(
        database_url, bootstrap_token=WATCHDOG_TOKEN, clock=FakeClock(), diagnose=ScriptedDiagnose()
    )
    async with serving as app:
        yield app


# -- the real orchestrator service as a subprocess (intake engineer) --------------------------------


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


# -- Alertmanager webhook payloads (intake, API) ---------------------------------------------------


# -- the CLI against the real orchestrator ----------------------------------------------------------


# -- the approval flow over the real orchestrator service (web, browser, CLI approve) -----------------


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

"""A watchdog killed with SIGKILL in the middle of a remediation does nothing twice after restart.

`gl-watchdog serve` runs as a subprocess in auto mode against the real orchestrator service; between
them sits a forwarding proxy that lets the agent-restart request through to the orchestrator (so the
action really happens) and then holds its answer. The test kills the watchdog right there — the step
is recorded `started`, never finished — and starts a new watchdog on the same store. The new process
finds the half-done, non-idempotent step, marks it interrupted and escalates: the agent was restarted
exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from orchestrator_core.emissions import emissions_dag, emissions_demo_input
from tests.conftest import free_port, wait_for_port
from tests.orchestrator.service_harness import TOKEN, Harness, make_settings, running_service
from watchdog.store import WatchdogStore

pytestmark = pytest.mark.slow
GL_WATCHDOG = str(Path(sys.executable).with_name("gl-watchdog"))
API_TOKEN = "crash-test-api-token-0123456789"
POLICY = """
version: 1
playbooks:
  restart_agent: {risk: medium, requires_approval: false, params: {verify_timeout_seconds: 30}}
rules:
  - name: hung-external-call
    when: {likely_cause: [external_api_slow, agent_unresponsive]}
    playbook: restart_agent
"""


class HoldingProxy:
    """Forwards to the orchestrator; after forwarding an agent restart, holds the answer forever."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.restarts_forwarded = 0
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.client = httpx.AsyncClient(base_url=upstream, timeout=10.0)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        upstream = await self.client.request(
            request.method, request.path_qs, content=body or None, headers=headers
        )
        if (
            request.method == "POST"
            and "/admin/agents/" in request.path
            and request.path.endswith("/restart")
        ):
            self.restarts_forwarded += 1
            self.holding.set()
            await self.release.wait()  # the watchdog never hears back: it dies waiting
        return web.Response(
            status=upstream.status_code, body=upstream.content, content_type="application/json"
        )


def start_watchdog(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    proc = subprocess.Popen(
        [GL_WATCHDOG, "serve", "--port", str(port)], env=env, stdout=handle, stderr=subprocess.STDOUT
    )
    handle.close()
    assert wait_for_port(port, timeout=20), log.read_text()
    return proc


@pytest.fixture
async def proxy_and_orchestrator(
    _no_pending_tasks: None, tmp_path: Path
) -> AsyncIterator[tuple[HoldingProxy, str, Harness]]:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'orch.db'}", max_body_bytes=1 << 20)
    async with running_service(settings, start_loop=True) as orch:
        proxy = HoldingProxy(orch.base_url)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", proxy.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield proxy, f"http://127.0.0.1:{port}", orch
        finally:
            proxy.release.set()
            await runner.cleanup()
            await proxy.client.aclose()


async def test_sigkill_mid_apply_then_restart_never_repeats_the_action(
    proxy_and_orchestrator: tuple[HoldingProxy, str, Harness], tmp_path: Path
) -> None:
    proxy, proxy_url, orch = proxy_and_orchestrator
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    db = tmp_path / "watchdog.db"
    port = free_port()
    env = {
        **os.environ,
        "GL_WATCHDOG_DATABASE_URL": f"sqlite+aiosqlite:///{db}",
        "GL_WATCHDOG_ORCHESTRATOR_URL": proxy_url,
        "GL_WATCHDOG_ORCHESTRATOR_TOKEN": TOKEN,
        "GL_WATCHDOG_API_TOKENS": f'["{API_TOKEN}"]',
        "GL_WATCHDOG_APPROVAL_SIGNING_KEY": "k" * 32,
        "GL_WATCHDOG_MODE": "auto",
        "GL_WATCHDOG_POLICY_FILE": str(tmp_path / "policy.yaml"),
        "GL_WATCHDOG_SWEEP_INTERVAL_SECONDS": "3600",
        "GL_WATCHDOG_STEP_TIMEOUT_SECONDS": "5",
    }
    await orch.register(
        emissions_dag(dag_id="crash-dag", execution_timeout_seconds=1, log_interval_seconds=0.2)
    )
    execution_id = (await orch.execute("crash-dag", emissions_demo_input()))["execution_id"]
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    log = tmp_path / "watchdog.log"
    first = start_watchdog(env, port, log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10) as api:
            async with asyncio.timeout(30):  # the run reaches scope 2 and hangs there
                while True:
                    trace = (await orch.api("GET", f"/executions/{execution_id}/trace")).json()
                    if trace["node_traces"]["scope2"]["status"] == "running":
                        break
                    await asyncio.sleep(0.05)
            opened = await api.post("/api/v1/incidents", json={"execution_id": execution_id})
            assert opened.status_code == 201, opened.text
            incident_id = opened.json()["incident"]["id"]
            async with asyncio.timeout(30):
                await proxy.holding.wait()  # the restart reached the orchestrator; the answer is held
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=10)

    store = await WatchdogStore.open(f"sqlite+aiosqlite:///{db}")
    try:
        async with store.transaction() as tx:
            [action] = await tx.list_actions(incident_id=incident_id)
            assert (action.step, action.state) == ("restart_worker", "started")
            assert (await tx.get_incident(incident_id)).status == "remediating"  # type: ignore[union-attr]
    finally:
        await store.close()

    proxy.release.set()  # the orchestrator answers normally from now on
    second = start_watchdog(env, port, log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10) as api:
            async with asyncio.timeout(30):
                while True:
                    incident = (await api.get(f"/api/v1/incidents/{incident_id}")).json()
                    if incident["status"] not in ("remediating", "verifying"):
                        break
                    await asyncio.sleep(0.1)
            # `serve` also carries the approval routes (watchdog.web), behind the same bearer auth.
            missing = await api.get("/api/v1/approvals/apr_missing")
            assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=20)
    assert incident["status"] == "escalated", incident["summary"]
    assert "interrupted before it finished and not repeated" in incident["summary"]
    assert [(a["step"], a["state"]) for a in incident["actions"]] == [("restart_worker", "interrupted")]
    assert ("remediation_resumed", "after") in [(e["kind"], e["phase"]) for e in incident["audit"]]
    assert proxy.restarts_forwarded == 1
    agents = (await orch.api("GET", "/agents")).json()["items"]
    assert next(a["restarts"] for a in agents if a["agent_id"] == "emissions.scope2") == 1
    assert "Traceback" not in log.read_text()

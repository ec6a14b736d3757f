"""The approval API and web page, served by the real watchdog app over the real orchestrator service.

A stuck emissions run is opened as an incident through the watchdog API; the real diagnosis, the
planner and the remediation loop ask for approval through a Slack-format webhook (a real receiver on
loopback), whose links are what these tests (and tests/watchdog/test_browser.py) follow.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from aiohttp import web

from orchestrator_core.emissions import emissions_dag, emissions_demo_input
from tests.conftest import free_port
from tests.orchestrator.test_service_harness import TOKEN, Harness, make_settings, running_service
from watchdog.assembly import Watchdog, build_watchdog, create_app
from watchdog.settings import Mode, WatchdogSettings

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


async def test_prompt_is_sent_with_signed_links_and_readable_via_api(stack: Stack) -> None:
    message = await stack.stuck_incident()
    urls = links(message)
    assert urls["approve"].endswith("&decision=approve") and urls["deny"].endswith("&decision=deny")
    approval_id = approval_id_of(urls["approve"].split("?")[0])
    async with stack.client() as api:
        view = (await api.get(f"/api/v1/approvals/{approval_id}")).json()
    assert view["state"] == "pending" and view["plan"]["playbook"] == "restart_agent"
    assert view["plan"]["params"]["agent_id"] == "emissions.scope2"
    assert "token_nonce" not in view
    async with stack.client(token=None) as anon:
        assert (await anon.get(f"/api/v1/approvals/{approval_id}")).status_code == 401
        with_link = await anon.get(
            f"/api/v1/approvals/{approval_id}", params={"token": token_of(urls["approve"])}
        )
        assert with_link.status_code == 200
        forged = await anon.get(f"/api/v1/approvals/{approval_id}", params={"token": "123.forged"})
        assert forged.status_code == 403 and forged.json()["error"] == "invalid_token"


async def test_link_token_approves_once_and_the_remediation_resolves_the_incident(stack: Stack) -> None:
    message = await stack.stuck_incident()
    url = links(message)["approve"]
    approval_id = approval_id_of(url.split("?")[0])
    async with stack.client(token=None) as anon:
        response = await anon.post(f"/api/v1/approvals/{approval_id}/approve", json={"token": token_of(url)})
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "approved"
        await stack.wd.jobs.wait_idle()
        reused = await anon.post(f"/api/v1/approvals/{approval_id}/approve", json={"token": token_of(url)})
        assert reused.status_code == 409 and reused.json()["error"] == "used"
    async with stack.client() as api:
        incident = (await api.get(f"/api/v1/incidents/{stack.incident_id}")).json()
    assert incident["status"] == "resolved"
    assert incident["plan"]["playbook"] == "restart_agent"
    assert incident["verification"]["ok"] is True
    assert [(a["step"], a["state"]) for a in incident["actions"]] == [("restart_worker", "succeeded")]
    kinds = [(e["kind"], e["phase"]) for e in incident["audit"]]
    for step in ("diagnosis", "preconditions", "apply", "verify", "action"):
        assert (step, "before") in kinds and (step, "after") in kinds, step
    assert ("approval_decided", "after") in kinds
    assert (await stack.wd.clients.orchestrator.get_execution(stack.execution_id)).status == "completed"


async def test_bearer_deny_escalates_and_nothing_acts(stack: Stack) -> None:
    message = await stack.stuck_incident()
    approval_id = approval_id_of(links(message)["deny"].split("?")[0])
    async with stack.client() as api:
        response = await api.post(f"/api/v1/approvals/{approval_id}/deny", json={"actor": "bob"})
        assert response.status_code == 200 and response.json()["state"] == "denied"
        await stack.wd.jobs.wait_idle()
        incident = (await api.get(f"/api/v1/incidents/{stack.incident_id}")).json()
    assert incident["status"] == "escalated" and incident["actions"] == []
    assert "denied by api:bob" in incident["summary"]
    assert (await stack.wd.clients.orchestrator.get_execution(stack.execution_id)).status == "running"
    await stack.wd.clients.orchestrator.cancel(stack.execution_id)


async def test_bad_requests_get_clear_errors(stack: Stack) -> None:
    message = await stack.stuck_incident()
    approval_id = approval_id_of(links(message)["approve"].split("?")[0])
    async with stack.client(token=None) as anon:
        assert (await anon.post(f"/api/v1/approvals/{approval_id}/approve")).status_code == 401
        forged = await anon.post(f"/api/v1/approvals/{approval_id}/approve", json={"token": "1.x"})
        assert forged.status_code == 403
        assert (
            await anon.post("/api/v1/approvals/apr_nope/approve", json={"token": "1.x"})
        ).status_code == 404
        bad_json = await anon.post(
            f"/api/v1/approvals/{approval_id}/approve",
            content=b"{",
            headers={"Content-Type": "application/json"},
        )
        assert bad_json.status_code == 400 and bad_json.json()["error"] == "malformed_json"
        page = await anon.get(f"/approvals/{approval_id}", params={"token": "1.x"})
        assert page.status_code == 403 and "Invalid link" in page.text
        assert (await anon.get("/approvals/apr_nope", params={"token": "1.x"})).status_code == 404
    async with stack.client(token="wrong-token") as wrong:
        assert (await wrong.post(f"/api/v1/approvals/{approval_id}/approve")).status_code == 401
        assert (await wrong.post(f"/api/v1/approvals/{approval_id}/explode")).status_code in (401, 404)
    async with stack.client() as api:
        assert (await api.get(f"/api/v1/approvals/{approval_id}")).json()["state"] == "pending"
    await stack.wd.clients.orchestrator.cancel(stack.execution_id)


async def test_page_shows_the_plan_and_a_get_never_decides(stack: Stack) -> None:
    message = await stack.stuck_incident()
    url = links(message)["approve"]
    async with stack.client(token=None) as anon:
        page = await anon.get(url.replace(stack.url, ""))
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    html = page.text
    assert "restart_agent" in html and "emissions.scope2" in html and 'id="approve"' in html
    assert "You followed the <b>approve</b> link: confirm below." in html
    assert "<script src" not in html and "http://" not in html.split("<body>")[1].split("token=")[0]
    approval_id = approval_id_of(url.split("?")[0])
    async with stack.client() as api:
        assert (await api.get(f"/api/v1/approvals/{approval_id}")).json()["state"] == "pending"
    await stack.wd.clients.orchestrator.cancel(stack.execution_id)

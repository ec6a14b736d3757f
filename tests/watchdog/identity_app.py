"""The real watchdog app on loopback with identity configured: a bootstrap token, named tokens made
through the API, and a trusted proxy at 127.0.0.1 (requests from 127.0.0.2 are from an untrusted
peer). Used by the identity, two-person approval and page security tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from aiohttp.test_utils import TestServer

from gl_common.clock import Clock
from tests.conftest import free_port
from watchdog.assembly import Watchdog, build_watchdog, create_app
from watchdog.diagnosis import Diagnose
from watchdog.plan import Plan
from watchdog.records import Approval
from watchdog.settings import Mode, WatchdogSettings
from watchdog_sdk.outcomes import Risk
from watchdog_sdk.registry import Registry

TRUSTED_PEER = "127.0.0.1"
UNTRUSTED_PEER = "127.0.0.2"


@dataclass
class IdentityApp:
    wd: Watchdog
    url: str
    bootstrap_token: str

    def client(
        self, token: str | None = "", *, peer: str = TRUSTED_PEER, **headers: str
    ) -> httpx.AsyncClient:
        """A client from `peer` with `token` (default: the bootstrap token; None: no token)."""
        token = self.bootstrap_token if token == "" else token
        sent = {"Authorization": f"Bearer {token}"} if token else {}
        sent.update(headers)
        transport = httpx.AsyncHTTPTransport(local_address=peer)
        return httpx.AsyncClient(base_url=self.url, headers=sent, transport=transport, timeout=10.0)

    async def token(self, name: str, role: str) -> str:
        """A named token made by the bootstrap admin through the API."""
        async with self.client() as admin:
            answer = await admin.post("/api/v1/tokens", json={"name": name, "role": role})
        assert answer.status_code == 201, answer.text
        token: str = answer.json()["token"]
        return token

    async def prompt(self, risk: Risk | None = None, execution_id: str = "exec-1") -> Approval:
        """An open incident with a pending approval of a plan at `risk`."""
        opened = await self.wd.incidents.open_or_join(
            execution_id, dag_id="dag-1", source="manual", detection_source="api"
        )
        plan = Plan(
            execution_id=execution_id,
            likely_cause="hung_node",
            playbook="restart_agent",
            risk=risk,
            mode=Mode.RECOMMEND,
            requires_approval=True,
            will_act=True,
            rationale="test",
        )
        async with self.wd.store.transaction() as tx:
            return await self.wd.approvals.create_in(
                tx, incident_id=opened.incident.id, plan=plan, summary="hung node"
            )

    async def audit(self, incident_id: int, kind: str) -> list[dict[str, Any]]:
        async with self.wd.store.read() as tx:
            entries = await tx.list_audit(incident_id)
        return [{"actor": e.actor, **e.data} for e in entries if e.kind == kind]


@contextlib.asynccontextmanager
async def serving_identity_app(
    database_url: str,
    *,
    bootstrap_token: str,
    clock: Clock,
    diagnose: Diagnose,
    registry: Registry | None = None,
) -> AsyncIterator[IdentityApp]:
    """The app (the `identity_app` fixture of tests/watchdog/conftest.py); `registry` replaces the
    playbooks (e.g. with a recording one)."""
    settings = WatchdogSettings(
        database_url=database_url,
        api_tokens=[bootstrap_token],
        orchestrator_url=f"http://127.0.0.1:{free_port()}",
        orchestrator_timeout_seconds=0.5,
        approval_signing_key="k" * 32,
        proxy_auth_enabled=True,
        proxy_headers="x-forwarded",
        trusted_proxies=[f"{TRUSTED_PEER}/32"],
        proxy_role_map={"sre": "approver", "sre-leads": "operator", "boss@example.com": "admin"},
        public_url="https://watchdog.example.com",
        events_stream_seconds=0,  # a stream of an open incident ends after what is there
    )
    wd = await build_watchdog(settings, clock=clock, diagnose=diagnose, respond=False, registry=registry)
    server = TestServer(create_app(wd), host="127.0.0.1")
    await server.start_server()
    try:
        yield IdentityApp(wd, str(server.make_url("")).rstrip("/"), bootstrap_token)
    finally:
        await server.close()
        await wd.aclose(grace_seconds=2)

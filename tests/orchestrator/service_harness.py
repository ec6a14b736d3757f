"""The orchestrator service harness: a real `OrchestratorService` behind its real aiohttp app on
loopback, driven through httpx. A helper module, not a test module: the orchestrator, watchdog and
playbook tests import it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator_core.agents import AgentContext, AgentRegistry
from orchestrator_core.api import build_app
from orchestrator_core.locks import LockBackend
from orchestrator_core.service import OrchestratorService
from orchestrator_core.settings import OrchestratorSettings
from tests.conftest import free_port

TOKEN = "test-token-0123456789"
API = "/api/v1/orchestrator"


class Gates:
    """An in-process agent `test.gate` whose attempts block until the test opens their gate."""

    def __init__(self) -> None:
        self.events: dict[str, asyncio.Event] = {}
        self.calls: list[tuple[str, str, int]] = []
        self.started: asyncio.Condition = asyncio.Condition()

    def gate(self, name: str) -> asyncio.Event:
        return self.events.setdefault(name, asyncio.Event())

    def open(self, name: str) -> None:
        self.gate(name).set()

    async def agent(self, ctx: AgentContext) -> Any:
        async with self.started:
            self.calls.append((ctx.execution_id, ctx.node_id, ctx.attempt))
            self.started.notify_all()
        await self.gate(str(ctx.params.get("gate", ctx.node_id))).wait()
        return {"node": ctx.node_id, "upstream": sorted(ctx.upstream)}

    async def wait_started(self, count: int, within: float = 10.0) -> None:
        async with asyncio.timeout(within), self.started:
            await self.started.wait_for(lambda: len(self.calls) >= count)


def make_registry(
    gates: Gates | None = None, extra: dict[str, Callable[[AgentContext], Awaitable[Any]]] | None = None
) -> AgentRegistry:
    registry = AgentRegistry.from_entry_points()
    if gates is not None:
        registry.register("test.gate", gates.agent)
    for agent_id, fn in (extra or {}).items():
        registry.register(agent_id, fn)
    return registry


def make_settings(database_url: str, **overrides: Any) -> OrchestratorSettings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "api_tokens": [TOKEN],
        "replica_id": "replica-test",
        "lock_ttl_seconds": 5.0,
        "heartbeat_ttl_seconds": 5.0,
        "shutdown_grace_seconds": 0.0,
        "max_body_bytes": 4096,
    }
    values.update(overrides)
    return OrchestratorSettings.model_validate(values)


@dataclass
class Harness:
    service: OrchestratorService
    client: httpx.AsyncClient
    base_url: str
    port: int
    spans: InMemorySpanExporter
    app: web.Application

    async def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.request(method, f"{API}{path}", **kwargs)

    async def register(self, dag: dict[str, Any]) -> dict[str, Any]:
        response = await self.api("POST", "/dags", json=dag)
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def execute(self, dag_id: str, input_data: Any = None) -> dict[str, Any]:
        response = await self.api("POST", f"/dags/{dag_id}/execute", json={"input_data": input_data})
        assert response.status_code == 202, response.text
        return dict(response.json())

    async def wait_status(self, execution_id: str, *statuses: str, within: float = 15.0) -> dict[str, Any]:
        """Poll the execution until it reaches one of `statuses` (bounded)."""
        async with asyncio.timeout(within):
            while True:
                record = await self.service.engine.get_execution(execution_id)
                if record.status in statuses:
                    return record.to_json()
                await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_service(
    settings: OrchestratorSettings,
    *,
    registry: AgentRegistry | None = None,
    locks: LockBackend | None = None,
    start_loop: bool = False,
    monotonic: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Harness]:
    """Service + app on a random loopback port; shut down (grace 0) and stopped on exit. `monotonic`
    is the service's renewal clock."""
    spans = InMemorySpanExporter()
    service = await OrchestratorService.open(
        settings, registry=registry or make_registry(), locks=locks, span_exporter=spans, monotonic=monotonic
    )
    port = free_port()
    app = build_app(service)
    runner = web.AppRunner(app, access_log=None)
    try:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        if start_loop:
            await service.start()
        base_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10.0
        ) as client:
            yield Harness(service, client, base_url, port, spans, app)
    finally:
        await service.shutdown(grace_seconds=0)
        await runner.cleanup()


def chain_dag(dag_id: str, *agents: str, **dag_fields: Any) -> dict[str, Any]:
    """A linear DAG n1 -> n2 -> ... with the given agents (params via `agent:key=value` not needed)."""
    nodes: dict[str, Any] = {}
    previous: str | None = None
    for index, agent in enumerate(agents, start=1):
        node_id = f"n{index}"
        nodes[node_id] = {"agent_id": agent, "depends_on": [previous] if previous else []}
        previous = node_id
    return {"dag_id": dag_id, "nodes": nodes, **dag_fields}

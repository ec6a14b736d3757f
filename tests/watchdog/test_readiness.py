"""Readiness (issue 10): `/readyz` says which dependency is degraded — Redis, Prometheus, the
orchestrator, Kubernetes — with `gl_watchdog_dependency_up{dependency}`, and stays 200 while only an
optional one is down; a dependency that hangs never holds the probe."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib.metadata import EntryPoint
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import free_port
from tests.watchdog.conftest import WATCHDOG_TOKEN, ScriptedDiagnose
from watchdog.assembly import build_watchdog, create_app
from watchdog.plugins import PLAYBOOK_GROUP, PluginCatalog, load_plugins
from watchdog.readiness import DependencyMonitor
from watchdog.settings import WatchdogSettings

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def orchestrator_stub() -> AsyncIterator[str]:
    """An orchestrator that answers the JSON metrics route (all the readiness check asks of it)."""

    async def metrics(_: web.Request) -> web.Response:
        return web.json_response({"active_executions": 0, "max_concurrent_executions": 50})

    app = web.Application()
    app.router.add_get("/api/v1/orchestrator/metrics", metrics)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def checked(
    settings: WatchdogSettings, plugins: PluginCatalog | None = None
) -> AsyncIterator[tuple[int, dict[str, Any], str]]:
    """A served watchdog after one dependency check: the `/readyz` status and body, the metrics page."""
    wd = await build_watchdog(settings, diagnose=ScriptedDiagnose(), respond=False, plugins=plugins)
    client: Client = TestClient(TestServer(create_app(wd), host="127.0.0.1"))
    await client.start_server()
    try:
        await wd.readiness.check_once()
        response = await client.get("/readyz")
        metrics = await (await client.get("/metrics")).text()
        yield response.status, await response.json(), metrics
    finally:
        await client.close()
        await wd.aclose()


async def test_readyz_is_ready_when_every_configured_dependency_answers(
    _no_pending_tasks: None, sqlite_url: str, redis_url: str, orchestrator_stub: str
) -> None:
    settings = WatchdogSettings(
        database_url=sqlite_url,
        redis_url=redis_url,
        orchestrator_url=orchestrator_stub,
        api_tokens=[WATCHDOG_TOKEN],
    )
    async with checked(settings) as (status, body, text):
        assert status == 200 and body["status"] == "ready" and body["degraded"] == []
        assert {name: d["up"] for name, d in body["dependencies"].items()} == {
            "store": True,
            "redis": True,
            "orchestrator": True,
        }
        assert body["not_configured"] == ["prometheus", "kubernetes"]
        assert 'gl_watchdog_dependency_up{dependency="redis"} 1.0' in text
        assert 'dependency="prometheus"' not in text  # not configured: no series


async def test_readyz_is_degraded_naming_a_plugin_left_out_at_start_and_why(
    _no_pending_tasks: None, sqlite_url: str, orchestrator_stub: str
) -> None:
    settings = WatchdogSettings(
        database_url=sqlite_url, orchestrator_url=orchestrator_stub, api_tokens=[WATCHDOG_TOKEN]
    )
    broken = EntryPoint("flush_cache", "tests.watchdog.no_such_module:FlushCache", PLAYBOOK_GROUP)
    async with checked(settings, load_plugins([broken])) as (status, body, text):
        assert status == 200  # it serves without the plugin (the policy does not use it)
        assert body["status"] == "degraded" and body["degraded"] == ["plugin:flush_cache"]
        [problem] = body["plugins"]
        assert (problem["group"], problem["name"]) == (PLAYBOOK_GROUP, "flush_cache")
        assert "No module named 'tests.watchdog.no_such_module'" in problem["reason"]
        assert body["dependencies"]["orchestrator"]["up"] is True
        assert 'gl_watchdog_plugin_problems{group="gl_watchdog.playbooks",plugin="flush_cache"} 1.0' in text


async def test_readyz_stays_200_and_names_redis_and_the_orchestrator_when_they_are_down(
    _no_pending_tasks: None, sqlite_url: str
) -> None:
    settings = WatchdogSettings(
        database_url=sqlite_url,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        redis_timeout_seconds=1,
        orchestrator_url=f"http://127.0.0.1:{free_port()}",
        orchestrator_timeout_seconds=1,
        api_tokens=[WATCHDOG_TOKEN],
    )
    async with checked(settings) as (status, body, text):
        assert status == 200  # optional dependencies never take the replica out of service
        assert body["status"] == "degraded" and body["degraded"] == ["redis", "orchestrator"]
        assert "Redis unavailable" in body["dependencies"]["redis"]["detail"]
        assert body["dependencies"]["store"]["up"] is True
        assert 'gl_watchdog_dependency_up{dependency="redis"} 0.0' in text
        assert 'gl_watchdog_dependency_up{dependency="orchestrator"} 0.0' in text
        assert 'gl_watchdog_dependency_up{dependency="store"} 1.0' in text


async def test_a_dependency_that_never_answers_is_down_after_its_timeout(
    _no_pending_tasks: None, sqlite_url: str
) -> None:
    release = asyncio.Event()
    handlers: list[asyncio.Task[object]] = []

    async def accept_and_say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        await release.wait()
        writer.close()

    silent = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    settings = WatchdogSettings(database_url=sqlite_url, orchestrator_url=f"http://127.0.0.1:{port}")
    wd = await build_watchdog(settings, diagnose=ScriptedDiagnose(), respond=False)
    monitor = DependencyMonitor(wd.store, wd.clients, wd.metrics, wd.clock, timeout_seconds=0.3)
    try:
        async with asyncio.timeout(5):
            readiness = await monitor.check_once()
        orchestrator = readiness.dependencies["orchestrator"]
        assert orchestrator.up is False and orchestrator.detail == "no answer within 0.3s"
        assert readiness.ready and readiness.status == "degraded"
    finally:
        await monitor.aclose()
        await wd.aclose()
        release.set()
        await asyncio.gather(*handlers)
        silent.close()
        await silent.wait_closed()


async def test_the_probe_answers_from_the_last_check_and_refreshes_it_in_the_background(
    _no_pending_tasks: None, sqlite_url: str, orchestrator_stub: str
) -> None:
    settings = WatchdogSettings(database_url=sqlite_url, orchestrator_url=orchestrator_stub)
    wd = await build_watchdog(settings, diagnose=ScriptedDiagnose(), respond=False)
    try:
        first = await wd.readiness.readiness()  # nothing checked yet: not a reason to be unready
        assert first.ready and first.dependencies["orchestrator"].up is None
        assert first.status == "ready"
        await wd.readiness.check_once()
        assert (await wd.readiness.readiness()).dependencies["orchestrator"].up is True
    finally:
        await wd.aclose()

"""tests/promstack.py itself: real Prometheus scrapes a loopback target, a rule fires, Alertmanager
delivers the alert to a webhook with the bearer token."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import free_port
from tests.promstack import PromStackError, start_alertmanager, start_prometheus

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def test_prometheus_scrapes_target_and_refuses_bad_promql() -> None:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text="demo_value 42\n", content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner, port = await _serve(app)
    try:
        async with start_prometheus([f"127.0.0.1:{port}"]) as prom:
            result = await prom.aquery("demo_value")
            assert [r["value"][1] for r in result] == ["42"]
            with pytest.raises(PromStackError):
                await prom.aquery("sum(")
    finally:
        await runner.cleanup()


async def test_rule_fires_through_alertmanager_to_webhook_with_bearer(tmp_path: Path) -> None:
    received: list[tuple[str | None, dict[str, Any]]] = []
    arrived = asyncio.Event()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text='demo_stuck{execution_id="e1"} 1\n', content_type="text/plain")

    async def webhook(request: web.Request) -> web.Response:
        received.append((request.headers.get("Authorization"), await request.json()))
        arrived.set()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/hook", webhook)
    runner, port = await _serve(app)
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n- name: t\n  rules:\n  - alert: DemoStuck\n    expr: demo_stuck > 0\n    for: 0s\n"
        "    labels: {severity: warning}\n"
    )
    try:
        async with start_alertmanager(f"http://127.0.0.1:{port}/hook", "s3cret") as am:
            prometheus = start_prometheus([f"127.0.0.1:{port}"], rule_files=[rules], alertmanager_url=am.url)
            async with prometheus:
                await asyncio.wait_for(arrived.wait(), timeout=30)
                held = await am.aquery('alertname="DemoStuck"')
                assert [a["labels"]["execution_id"] for a in held] == ["e1"]
                assert await am.aquery('alertname="Other"') == []
    finally:
        await runner.cleanup()
    assert received, "alert never reached the webhook"
    auth, payload = received[0]
    assert auth == "Bearer s3cret"
    assert payload["version"] == "4"
    assert payload["alerts"][0]["labels"]["alertname"] == "DemoStuck"
    assert payload["alerts"][0]["labels"]["execution_id"] == "e1"

"""Two watchdog replicas on one store report the same store-wide gauges: a replica's `/metrics` reads
open incidents and pending approvals from the store at scrape time, not from its own last change."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.watchdog.conftest import make_plan
from watchdog import api
from watchdog.api import INCIDENTS_KEY
from watchdog.approvals import ApprovalService
from watchdog.assembly import Watchdog, build_watchdog, create_app
from watchdog.errors import StoreUnavailable

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def other_replica(watchdog_app: Watchdog) -> AsyncIterator[Client]:
    """A second watchdog on the same store, served on loopback (the first stays idle)."""
    twin = await build_watchdog(watchdog_app.settings, respond=False)
    client = TestClient(TestServer(create_app(twin), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await twin.aclose()


async def _gauges(client: Client) -> dict[str, float]:
    text = await (await client.get("/metrics")).text()
    wanted = ("gl_watchdog_open_incidents", "gl_watchdog_pending_approvals")
    return {
        name: float(value)
        for name, value in (line.split(" ", 1) for line in text.splitlines() if line.startswith(wanted))
    }


async def test_the_other_replica_scrapes_the_incidents_and_approvals_this_one_opened(
    watchdog_app: Watchdog, other_replica: Client
) -> None:
    assert await _gauges(other_replica) == {
        "gl_watchdog_open_incidents": 0.0,
        "gl_watchdog_pending_approvals": 0.0,
    }
    opened = [
        await watchdog_app.incidents.open_or_join(e, dag_id="d", source="manual", detection_source="api")
        for e in ("exec-a", "exec-b")
    ]
    approvals = ApprovalService(watchdog_app.store, b"k" * 32, ttl_seconds=60, public_url="http://wd")
    async with watchdog_app.store.transaction() as tx:
        await approvals.create_in(tx, incident_id=opened[0].incident.id, plan=make_plan(), summary="s")

    assert await _gauges(other_replica) == {
        "gl_watchdog_open_incidents": 2.0,
        "gl_watchdog_pending_approvals": 1.0,
    }


@pytest.mark.parametrize("failure", ["unreachable", "hanging"])
async def test_a_scrape_still_answers_with_the_last_values_when_the_store_fails(
    watchdog_app: Watchdog,
    other_replica: Client,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    failure: str,
) -> None:
    await watchdog_app.incidents.open_or_join("exec-a", dag_id="d", source="manual", detection_source="api")
    assert (await _gauges(other_replica))["gl_watchdog_open_incidents"] == 1.0
    twin = other_replica.server.app[INCIDENTS_KEY]

    async def unreachable() -> None:
        raise StoreUnavailable("database not reachable: connection refused")

    async def hanging() -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(twin, "refresh_gauges", unreachable if failure == "unreachable" else hanging)
    monkeypatch.setattr(api, "GAUGE_REFRESH_TIMEOUT_SECONDS", 0.05)
    response = await other_replica.get("/metrics")
    assert response.status == 200
    assert "gl_watchdog_open_incidents 1.0" in await response.text()  # the last value read
    expected = "connection refused" if failure == "unreachable" else "did not answer within 0.05s"
    assert any(expected in r.getMessage() for r in caplog.records if r.name == "watchdog.api")

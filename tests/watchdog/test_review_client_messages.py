"""The one line on-call reads when the orchestrator does not answer names where and how long."""

from __future__ import annotations

import httpx
import pytest
import respx

from tests.conftest import free_port
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.clients.prometheus import PrometheusClient
from watchdog_sdk.errors import OrchestratorUnavailable, PrometheusUnavailable

BASE = "http://orch.test:8080"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            httpx.ReadTimeout("slow"),
            f"orchestrator at {BASE} timed out after 1.5s (GET /executions/x: ReadTimeout)",
        ),
        (httpx.ConnectError(""), f"orchestrator at {BASE} unreachable (GET /executions/x): ConnectError"),
    ],
)
async def test_unavailable_names_the_url_and_the_timeout(error: Exception, expected: str) -> None:
    async with OrchestratorClient(BASE, "t", timeout=1.5) as client:
        with respx.mock(base_url=BASE + "/api/v1/orchestrator") as router:
            router.get("/executions/x").mock(side_effect=error)
            with pytest.raises(OrchestratorUnavailable) as caught:
                await client.get_execution("x")
    assert str(caught.value) == expected


async def test_a_silent_scrape_failure_is_not_an_empty_reason() -> None:
    async with OrchestratorClient(BASE, "t", timeout=1.5) as client:
        with respx.mock() as router:
            router.get(BASE + "/metrics").mock(side_effect=httpx.ConnectError(""))
            with pytest.raises(OrchestratorUnavailable, match=r"unreachable \(GET /metrics\): ConnectError$"):
                await client.scrape_metrics()


async def test_prometheus_refusing_connections_is_one_short_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = PrometheusClient(url, timeout=1)
    try:
        with pytest.raises(PrometheusUnavailable) as caught:
            await client.query("vector(1)")
    finally:
        client.close()
    assert str(caught.value) == f"Prometheus at {url} unreachable: [Errno 111] Connection refused"

"""The Prometheus client: fast failure without hidden retries, timeouts, and real queries.

Real queries run against a real `prometheus` binary (tests/promstack.py) scraping a real
prometheus_client exporter on loopback.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from tests.conftest import free_port
from tests.promstack import PrometheusProcess, prometheus_scraping
from watchdog.backends import prometheus_client
from watchdog.settings import load_settings
from watchdog_sdk.clients.prometheus import PrometheusClient
from watchdog_sdk.errors import PrometheusQueryError, PrometheusUnavailable

pytestmark = pytest.mark.prometheus


@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusProcess]:
    registry = CollectorRegistry()
    gauge = Gauge(
        "gl_orchestrator_dag_execution_duration_seconds",
        "duration of running executions",
        ["execution_id", "dag_id", "status"],
        registry=registry,
    )
    gauge.labels("ex-1", "emissions", "running").set(901.5)
    gauge.labels("ex-2", "emissions", "running").set(12.0)
    with prometheus_scraping(registry) as prom:
        prom.wait_for_result("gl_orchestrator_dag_execution_duration_seconds", within=20)
        yield prom


@pytest.fixture
async def client(prometheus: PrometheusProcess) -> AsyncIterator[PrometheusClient]:
    c = PrometheusClient(prometheus.url, timeout=5)
    yield c
    c.close()


async def test_vector_query_returns_labelled_samples(client: PrometheusClient) -> None:
    samples = await client.query('gl_orchestrator_dag_execution_duration_seconds{status="running"} > 300')
    assert [(s.labels["execution_id"], s.value) for s in samples] == [("ex-1", 901.5)]
    assert samples[0].labels["dag_id"] == "emissions" and samples[0].timestamp > 0


async def test_scalar_query_returns_one_unlabelled_sample(client: PrometheusClient) -> None:
    assert await client.query_value("scalar(vector(42))") == 42.0


async def test_empty_result_is_none(client: PrometheusClient) -> None:
    assert await client.query_value("gl_orchestrator_dag_execution_duration_seconds > 1e9") is None


async def test_bad_promql_is_a_query_error(client: PrometheusClient) -> None:
    with pytest.raises(PrometheusQueryError, match=r"400|422|parse"):
        await client.query("sum(rate(")


async def test_ready_against_live_server(client: PrometheusClient) -> None:
    assert await client.ready() is True


async def test_dead_port_fails_fast_without_retries() -> None:
    client = PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout=5)
    started = time.monotonic()
    with pytest.raises(PrometheusUnavailable, match="unreachable"):
        await client.query("up")
    # prometheus-api-client's default Retry would back off for ~6 s here.
    assert time.monotonic() - started < 1.0
    assert await client.ready() is False
    client.close()


async def test_hanging_server_times_out() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts connections, never answers
    port = listener.getsockname()[1]
    client = PrometheusClient(f"http://127.0.0.1:{port}", timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(PrometheusUnavailable, match="timed out"):
            await client.query("up")
    finally:
        client.close()
        listener.close()
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(("status", "error"), [(503, PrometheusUnavailable), (500, PrometheusQueryError)])
async def test_error_statuses_are_converted(status: int, error: type[Exception]) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"status": "error", "error": "overloaded"}, status=status)

    app = web.Application()
    app.router.add_get("/api/v1/query", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    client = PrometheusClient(f"http://127.0.0.1:{port}", timeout=2)
    try:
        with pytest.raises(error):
            await client.query("up")
    finally:
        client.close()
        await runner.cleanup()


def test_from_settings_is_none_without_url() -> None:
    assert prometheus_client(load_settings(prometheus_url=None)) is None
    client = prometheus_client(
        load_settings(prometheus_url="http://127.0.0.1:9/", prometheus_timeout_seconds=1.5)
    )
    assert client is not None and client.timeout == 1.5 and client.url == "http://127.0.0.1:9"
    client.close()


async def test_query_runs_off_the_event_loop(client: PrometheusClient) -> None:
    # Two queries and a loop tick interleave: the blocking client never holds the loop.
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        for _ in range(3):
            ticks += 1
            await asyncio.sleep(0)

    await asyncio.gather(client.query("up"), client.query("up"), tick())
    assert ticks == 3

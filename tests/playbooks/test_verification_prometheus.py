"""The runbook's PromQL verification checks (node timeouts and retries over 15 minutes) against a real
Prometheus scraping the real orchestrator service; and reported as unknown, not raised, when it is down."""

from __future__ import annotations

import pytest

from orchestrator_core.emissions import emissions_dag, emissions_demo_input
from playbooks.restart_agent import RestartAgentParams, RestartAgentPlaybook
from tests.conftest import free_port
from tests.playbooks.conftest import Env
from tests.promstack import start_prometheus
from watchdog_sdk.clients.prometheus import PrometheusClient
from watchdog_sdk.outcomes import CheckStatus, VerifyResult

pytestmark = pytest.mark.prometheus
PLAYBOOK = RestartAgentPlaybook()


async def _restart_stuck_agent_and_verify(
    env: Env, dag_id: str, prometheus_url: str, query_timeout: float
) -> VerifyResult:
    """A run stuck at scope2, restart_agent applied to it, and its verification with the Prometheus
    client of `prometheus_url`."""
    execution_id = await env.run(
        emissions_dag(dag_id=dag_id, log_interval_seconds=0.2), emissions_demo_input()
    )
    await env.wait_running_node(execution_id, "scope2")
    client = PrometheusClient(prometheus_url, timeout=query_timeout)
    try:
        ctx = await env.context(execution_id, redis=False, prometheus=client)
        params = RestartAgentParams(agent_id="emissions.scope2", verify_timeout_seconds=20)
        assert (await PLAYBOOK.apply(ctx, params)).ok
        return await PLAYBOOK.verify(ctx, params)
    finally:
        client.close()


async def test_verify_reports_timeouts_and_retries_from_prometheus(env: Env) -> None:
    async with start_prometheus([f"127.0.0.1:{env.orch.port}"]) as prometheus:
        verification = await _restart_stuck_agent_and_verify(
            env, "prom-verify", prometheus.url, query_timeout=5
        )
    assert verification.ok, verification.summary()
    checks = {c.name: c for c in verification.checks}
    for name, metric in (
        ("node_timeouts_increase_15m", "gl_orchestrator_node_timeouts_total"),
        ("node_retries_increase_15m", "gl_orchestrator_node_retries_total"),
    ):
        assert checks[name].status is CheckStatus.OK, checks[name]
        assert checks[name].detail.startswith(f"sum(increase({metric}[15m])) = ")
        assert not checks[name].decisive


async def test_prometheus_down_makes_the_checks_unknown_not_fatal(env: Env) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    verification = await _restart_stuck_agent_and_verify(env, "prom-down", down, query_timeout=1)
    assert verification.ok  # advisory checks never decide
    checks = {c.name: c for c in verification.checks}
    assert checks["node_retries_increase_15m"].status is CheckStatus.UNKNOWN

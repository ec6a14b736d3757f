"""A real Prometheus scraping the service: the shipped alert rule and every PromQL query of the runbook.

Two runs of one DAG (builtin.hang): the first with a 1-second DAG execution timeout (over), the second
after the DAG's timeout was raised to an hour (under). The shipped expression returns exactly the
first; the runbook's printed expression returns nothing (why the shipped rule differs)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.orchestrator.service_harness import Harness
from tests.promstack import PrometheusProcess, start_prometheus

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

RULES = Path(__file__).resolve().parents[2] / "helm" / "gl-watchdog" / "rules" / "orchestrator.rules.yaml"

SHIPPED_ALERT = """
gl_orchestrator_dag_execution_duration_seconds{status="running"}
  > on(dag_id, execution_id) group_left
gl_orchestrator_execution_timeout_seconds
"""
RUNBOOK_PRINTED = 'gl_orchestrator_dag_execution_duration_seconds{status="running"} > gl_orchestrator_execution_timeout_seconds'  # noqa: E501  (verbatim)

# Every PromQL query printed in runbook/dag-execution-stuck.md, verbatim.
RUNBOOK_QUERIES = [
    'gl_orchestrator_dag_execution_duration_seconds{status="running"} > 300',
    "gl_orchestrator_active_executions",
    'gl_db_pool_active_connections{service="orchestrator-service"}',
    'gl_db_pool_pending_connections{service="orchestrator-service"}',
    "histogram_quantile(0.99, sum(rate(gl_orchestrator_node_execution_duration_seconds_bucket[5m])) by (le, node_id))",  # noqa: E501  (verbatim)
    'increase(gl_orchestrator_checkpoint_operations_total{operation="save", status="error"}[15m])',
    "increase(gl_orchestrator_node_timeouts_total[15m])",
    "increase(gl_orchestrator_node_retries_total[15m])",
    RUNBOOK_PRINTED,
]


async def until(
    prom: PrometheusProcess, promql: str, check: Any, within: float = 20.0
) -> list[dict[str, Any]]:
    """Poll Prometheus (a real process) until `check(result)` holds; bounded."""
    async with asyncio.timeout(within):
        while True:
            result = await prom.aquery(promql)
            if check(result):
                return result
            await asyncio.sleep(0.25)


async def test_shipped_alert_returns_exactly_the_runs_over_their_timeout(h: Harness) -> None:
    await h.register(
        {
            "dag_id": "stuck-dag",
            "execution_timeout_seconds": 1,
            "nodes": {"hang": {"agent_id": "builtin.hang"}},
        }
    )
    # A completed run feeds the node histogram and the checkpoint counter before scraping starts.
    await h.register({"dag_id": "quick", "nodes": {"a": {"agent_id": "builtin.echo"}}})
    quick = await h.execute("quick")
    await h.wait_status(quick["execution_id"], "completed")
    over = (await h.execute("stuck-dag"))["execution_id"]

    async with start_prometheus([f"127.0.0.1:{h.port}"], rule_files=[RULES]) as prom:
        await until(prom, SHIPPED_ALERT, lambda r: len(r) == 1)
        response = await h.api("PUT", "/dags/stuck-dag", json={"execution_timeout_seconds": 3600})
        assert response.status_code == 200
        under = (await h.execute("stuck-dag"))["execution_id"]
        await until(
            prom,
            f'gl_orchestrator_execution_timeout_seconds{{execution_id="{under}"}}',
            lambda r: len(r) == 1,
        )

        result = await prom.aquery(SHIPPED_ALERT)
        assert [(r["metric"]["execution_id"], r["metric"]["dag_id"]) for r in result] == [(over, "stuck-dag")]
        assert result[0]["metric"]["status"] == "running"
        durations = await prom.aquery('gl_orchestrator_dag_execution_duration_seconds{dag_id="stuck-dag"}')
        assert {r["metric"]["execution_id"] for r in durations} == {over, under}

        for query in RUNBOOK_QUERIES:
            await prom.aquery(query)  # raises PromStackError if Prometheus refuses the expression
        assert await prom.aquery(RUNBOOK_PRINTED) == []  # the printed form matches nothing
        active = await prom.aquery("gl_orchestrator_active_executions")
        assert [r["value"][1] for r in active] == ["2"]
        pool = await prom.aquery('gl_db_pool_active_connections{service="orchestrator-service"}')
        assert len(pool) == 1

        # The shipped rule file, loaded as is: pending (for: 10m) for the run over its timeout only.
        async with asyncio.timeout(20):
            while True:
                alerts = [
                    a
                    for a in await prom.aalerts()
                    if a["labels"]["alertname"] == "OrchestratorExecutionTimeout"
                ]
                if alerts:
                    break
                await asyncio.sleep(0.25)
        assert [(a["labels"]["execution_id"], a["state"]) for a in alerts] == [(over, "pending")]

        for execution_id in (over, under):
            assert (await h.api("POST", f"/executions/{execution_id}/cancel")).status_code == 200
        await until(prom, "gl_orchestrator_dag_execution_duration_seconds", lambda r: r == [])
        assert await prom.aquery(SHIPPED_ALERT) == []

"""The default execution timeout (a run of a DAG without its own gets `default_execution_timeout_seconds`
in the API and in the timeout gauge, so the alert can fire) and the JSON figures of `GET /metrics`
that diagnosis steps 5 and 8 read instead of the Prometheus page."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator_core.metrics import M_EXECUTION_TIMEOUT, OrchestratorMetrics
from orchestrator_core.settings import OrchestratorSettings
from tests.orchestrator.service_harness import (
    Gates,
    Harness,
    chain_dag,
    make_settings,
)

pytestmark = pytest.mark.usefixtures("_no_pending_tasks")


def _timeouts(exposition: str) -> dict[str, float]:
    return {
        sample.labels["execution_id"]: sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == M_EXECUTION_TIMEOUT
    }


@pytest.mark.parametrize(
    ("own", "default", "gauge"), [(None, 900.0, 900.0), (60.0, 900.0, 60.0), (None, None, None)]
)
def test_the_timeout_gauge_is_the_dag_s_own_else_the_default(
    own: float | None, default: float | None, gauge: float | None
) -> None:
    metrics = OrchestratorMetrics(clock=lambda: 1000.0, default_timeout_seconds=default)
    metrics.execution_started("e1", "d", 900.0, own)
    assert _timeouts(metrics.render().decode()).get("e1") == gauge


@pytest.fixture
def service_settings(sqlite_url: str) -> OrchestratorSettings:
    return make_settings(sqlite_url, default_execution_timeout_seconds=900)


async def test_a_run_of_a_dag_without_a_timeout_is_shown_and_gauged_with_the_default(
    h: Harness, gates: Gates
) -> None:
    await h.register(chain_dag("plain", "test.gate"))
    execution_id = (await h.execute("plain"))["execution_id"]
    await gates.wait_started(1)
    execution = (await h.api("GET", f"/executions/{execution_id}")).json()
    assert (execution["timeout_seconds"], execution["timeout_is_default"]) == (900, True)
    assert _timeouts((await h.client.get("/metrics")).text) == {execution_id: 900}
    gates.open("n1")
    await h.wait_status(execution_id, "completed")


async def test_a_dag_that_sets_its_own_timeout_keeps_it(h: Harness, gates: Gates) -> None:
    await h.register(chain_dag("own", "test.gate", execution_timeout_seconds=60))
    execution_id = (await h.execute("own"))["execution_id"]
    await gates.wait_started(1)
    execution = (await h.api("GET", f"/executions/{execution_id}")).json()
    assert (execution["timeout_seconds"], execution["timeout_is_default"]) == (60, False)
    assert _timeouts((await h.client.get("/metrics")).text) == {execution_id: 60}
    gates.open("n1")
    await h.wait_status(execution_id, "completed")


async def test_metrics_json_gives_the_pool_and_checkpoint_operations(h: Harness) -> None:
    await h.register(chain_dag("saved", "builtin.echo", "builtin.echo"))
    await h.wait_status((await h.execute("saved"))["execution_id"], "completed")
    figures = (await h.api("GET", "/metrics")).json()
    assert {"active_executions", "max_concurrent_executions", "queued_executions"} <= set(figures)
    assert set(figures["db_pool"]) == {"active", "pending"}
    saves = [
        op for op in figures["checkpoint_operations"] if (op["operation"], op["status"]) == ("save", "ok")
    ]
    assert saves and saves[0]["count"] >= 2  # one per completed node


async def test_admin_limits_keep_their_shape_without_the_diagnosis_figures(h: Harness) -> None:
    limits = (await h.api("GET", "/admin/limits")).json()
    assert "db_pool" not in limits and "checkpoint_operations" not in limits
    assert limits["max_parallel_nodes"] == 10

"""PostgreSQL or Redis going away under a running service: clear 503s, readiness false, nothing changed
behind an error, and no SQL or traceback in any answer. Real services behind a `TcpProxy` that is cut."""

from __future__ import annotations

import pytest

from orchestrator_core.service import OrchestratorService
from tests.orchestrator.service_harness import chain_dag, make_settings, running_service
from tests.orchestrator.tcp_proxy import proxied

pytestmark = pytest.mark.usefixtures("_no_pending_tasks")


async def _statuses(service: OrchestratorService, dag_id: str) -> list[str]:
    return [record.status for record in await service.engine.list_executions(dag_id=dag_id)]


async def test_execute_while_redis_is_down_answers_202_queued_once_and_starts_when_it_is_back(
    sqlite_url: str, redis_url: str
) -> None:
    async with proxied(redis_url) as (proxy, through_proxy):
        settings = make_settings(sqlite_url, redis_url=through_proxy)
        async with running_service(settings) as h:
            await h.register(chain_dag("outage", "builtin.echo"))
            await proxy.cut()

            response = await h.api("POST", "/dags/outage/execute", json={"input_data": 1})

            # The run is recorded, so the caller gets its id rather than a 503 that invites a retry
            # (and with it a second run).
            assert response.status_code == 202, response.text
            body = response.json()
            assert body["status"] == "queued"
            assert await _statuses(h.service, "outage") == ["queued"]
            ready = await h.client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["locks"].startswith("unavailable")

            await proxy.restore()
            assert await h.service.pump_once() == [body["execution_id"]]
            await h.wait_status(body["execution_id"], "completed")


async def test_store_outage_gives_503_without_sql_and_a_limit_change_still_applies(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with proxied(postgres_url) as (proxy, through_proxy):
        settings = make_settings(through_proxy, db_timeout_seconds=2.0)
        async with running_service(settings) as h:
            await h.register(chain_dag("pg", "builtin.echo"))
            await proxy.cut()

            listed = await h.api("GET", "/executions?status=running")
            assert listed.status_code == 503
            assert listed.json()["error"] == "store_unavailable"
            assert "SQL" not in listed.json()["detail"] and "\n" not in listed.json()["detail"]

            ready = await h.client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["store"].startswith("unavailable")
            assert "SQL" not in ready.text and "SELECT" not in ready.text

            one = await h.api("GET", "/executions/e-42/trace")
            assert one.status_code == 503
            logged = [r for r in caplog.records if "e-42" in r.getMessage()]
            assert logged and getattr(logged[0], "execution_id", None) == "e-42"  # the runbook's grep

            refused = await h.api("POST", "/dags/pg/execute", json={})
            assert refused.status_code == 503 and refused.json()["error"] == "store_unavailable"

            # The runbook's step 5 and a live limit change (option 4) still answer: both are this
            # replica's own figures, and the change it reports is the change it made.
            figures = await h.api("GET", "/metrics")
            assert figures.status_code == 200 and figures.json()["active_executions"] == 0
            changed = await h.api("PUT", "/admin/limits", json={"max_parallel_nodes": 4})
            assert changed.status_code == 200, changed.text
            assert changed.json()["max_parallel_nodes"] == 4
            assert h.service.engine.max_parallel_nodes == 4
            assert changed.json()["unshared"] == {"max_parallel_nodes": 4}  # and it says so

            await proxy.restore()
            assert (await h.client.get("/readyz")).status_code == 200
            await h.service.sync_limits_once()  # the next tick shares the change with the others
            stored = await h.service.engine.store.limits.get()
            assert stored["max_parallel_nodes"].value == 4
            assert (await h.api("GET", "/admin/limits")).json()["unshared"] == {}
            assert await _statuses(h.service, "pg") == []  # the refused execute recorded nothing


async def test_unreachable_redis_fences_the_run_before_its_lock_could_expire(
    sqlite_url: str, redis_url: str
) -> None:
    async with proxied(redis_url) as (proxy, through_proxy):
        settings = make_settings(
            sqlite_url, redis_url=through_proxy, lock_ttl_seconds=6.0, heartbeat_ttl_seconds=6.0
        )
        now = [1000.0]  # the renewal clock; the lock's TTL is Redis's own
        async with running_service(settings, monotonic=lambda: now[0]) as h:
            await h.register({"dag_id": "hang", "nodes": {"a": {"agent_id": "builtin.hang"}}})
            execution_id = (await h.execute("hang"))["execution_id"]
            assert await h.service.renew_once() == []  # renewed at t=1000
            await proxy.cut()
            tick = h.service.tick_interval()
            assert tick == 2.0
            now[0] += 6.0 - tick - 0.5  # the next tick still comes before the lock can expire
            assert await h.service.renew_once() == []
            now[0] += 1.0  # the lock may expire before the next tick: stop now, not after it did
            assert await h.service.renew_once() == [execution_id]
            await h.wait_status(execution_id, "interrupted")

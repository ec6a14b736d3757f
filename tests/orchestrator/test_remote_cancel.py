"""Two replicas sharing a store and Redis: a cancel answered by the replica that does not run the
execution (the runbook's Option 1 behind a two-replica Service) stops the nodes on the one that does."""

from __future__ import annotations

import pytest

from tests.orchestrator.conftest import wait_until
from tests.orchestrator.service_harness import (
    Gates,
    chain_dag,
    make_registry,
    make_settings,
    running_service,
)

pytestmark = pytest.mark.usefixtures("_no_pending_tasks")


async def test_cancel_through_the_other_replica_stops_the_owner_s_nodes_and_frees_its_slot(
    sqlite_url: str, redis_url: str
) -> None:
    gates = Gates()
    owner_settings = make_settings(sqlite_url, redis_url=redis_url, replica_id="replica-a")
    other_settings = make_settings(sqlite_url, redis_url=redis_url, replica_id="replica-b")
    async with (
        running_service(owner_settings, registry=make_registry(gates)) as owner,
        running_service(other_settings, registry=make_registry(gates)) as other,
    ):
        await owner.register(chain_dag("two", "test.gate", "builtin.echo"))
        execution_id = (await owner.execute("two"))["execution_id"]
        await gates.wait_started(1)
        assert owner.service.owned_executions() == [execution_id]
        # n1's `running` trace is write-behind: let it commit first, or that commit (not the
        # reconcile below) is what finds the run cancelled and stops it — a different, racing path.
        await owner.service.engine._runs[execution_id].writer.flush()

        response = await other.api("POST", f"/executions/{execution_id}/cancel")
        assert response.status_code == 200 and response.json()["status"] == "cancelled"
        assert owner.service.engine.local_executions() == [execution_id]  # only the store knows yet

        assert await owner.service.reconcile_once() == [execution_id]

        await wait_until(lambda: not owner.service.owned_executions())  # its supervisor let go
        assert owner.service.engine.local_executions() == []
        assert execution_id not in owner.service.metrics.running  # the alert's gauge is gone
        assert await owner.service.locks.holder(execution_id) is None
        record = await owner.service.engine.get_execution(execution_id)
        assert record.status == "cancelled"
        assert [call[1] for call in gates.calls] == ["n1"]  # n2 never ran
        assert await owner.service.reconcile_once() == []

"""Live limits (`PUT|DELETE /admin/limits`, runbook option 4) reach every replica, not only the one the
Service happened to send the request to, and survive a replica restart; on real SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from tests.orchestrator.service_harness import (
    Gates,
    chain_dag,
    make_registry,
    make_settings,
    running_service,
)

pytestmark = pytest.mark.usefixtures("_no_pending_tasks")


def _replica(database_url: str, name: str, **limits: Any) -> Any:
    return make_settings(database_url, replica_id=name, **limits)


async def test_a_change_through_one_replica_applies_on_the_other_and_delete_restores_each_own(
    database_url: str,
) -> None:
    a_settings = _replica(database_url, "replica-a", max_parallel_nodes=10, max_concurrent_executions=50)
    b_settings = _replica(database_url, "replica-b", max_parallel_nodes=12, max_concurrent_executions=40)
    async with running_service(a_settings) as a, running_service(b_settings) as b:
        changed = await a.api("PUT", "/admin/limits", json={"max_parallel_nodes": 3})
        assert changed.status_code == 200, changed.text
        body = changed.json()
        assert body["max_parallel_nodes"] == 3 and body["max_concurrent_executions"] == 50
        assert body["overrides"]["max_parallel_nodes"]["value"] == 3
        assert body["overrides"]["max_parallel_nodes"]["set_by"] == "replica-a"
        assert body["configured"] == {"max_parallel_nodes": 10, "max_concurrent_executions": 50}
        assert body["unshared"] == {}

        # The other replica applies it on its next maintenance tick, without anyone asking it.
        assert b.service.engine.max_parallel_nodes == 12
        assert await b.service.sync_limits_once() is True
        assert b.service.engine.max_parallel_nodes == 3
        assert await b.service.sync_limits_once() is False  # nothing new

        # And a read through it answers with the shared limits at once (verification by the playbook).
        await b.api("PUT", "/admin/limits", json={"max_concurrent_executions": 2})
        seen = (await a.api("GET", "/admin/limits")).json()
        assert (seen["max_parallel_nodes"], seen["max_concurrent_executions"]) == (3, 2)
        assert sorted(seen["overrides"]) == ["max_concurrent_executions", "max_parallel_nodes"]
        assert seen["overrides"]["max_concurrent_executions"]["set_by"] == "replica-b"
        assert a.service.max_concurrent_executions == 2
        assert (await a.api("GET", "/metrics")).json()["max_concurrent_executions"] == 2  # step 5

        cleared = await b.api("DELETE", "/admin/limits")
        assert cleared.status_code == 200, cleared.text
        assert cleared.json()["overrides"] == {}
        assert (cleared.json()["max_parallel_nodes"], cleared.json()["max_concurrent_executions"]) == (12, 40)
        await a.service.sync_limits_once()
        assert (a.service.engine.max_parallel_nodes, a.service.max_concurrent_executions) == (10, 50)


async def test_a_replica_started_after_the_change_starts_with_it(database_url: str) -> None:
    async with running_service(_replica(database_url, "replica-a")) as a:
        await a.api("PUT", "/admin/limits", json={"max_concurrent_executions": 1})
    async with running_service(_replica(database_url, "replica-c"), start_loop=True) as c:
        assert c.service.max_concurrent_executions == 1  # start() syncs before its first admission
        assert c.service.engine.max_parallel_nodes == c.service.settings.max_parallel_nodes


async def test_a_raised_execution_limit_admits_the_shared_queue_at_once(sqlite_url: str) -> None:
    gates = Gates()
    a_settings = _replica(sqlite_url, "replica-a", max_concurrent_executions=1)
    b_settings = _replica(sqlite_url, "replica-b", max_concurrent_executions=1)
    async with (
        running_service(a_settings, registry=make_registry(gates)) as a,
        running_service(b_settings, registry=make_registry(gates)) as b,
    ):
        await a.register(chain_dag("gated", "test.gate"))
        first = (await a.execute("gated"))["execution_id"]
        await gates.wait_started(1)
        second = (await a.execute("gated"))["execution_id"]
        assert a.service.owned_executions() == [first]
        assert (await a.service.engine.get_execution(second)).status == "queued"

        # b owns nothing, but nothing asked it to pump (no loop here); the raise through it does.
        await b.api("PUT", "/admin/limits", json={"max_concurrent_executions": 2})
        assert b.service.owned_executions() == [second]
        assert await a.service.sync_limits_once() is True
        assert a.service.max_concurrent_executions == 2
        await gates.wait_started(2)
        gates.open("n1")
        await a.wait_status(first, "completed")
        await a.wait_status(second, "completed")

"""Fencing tokens after a restart (issue 10 item 2): the first resume after a graceful stop and the first
takeover after a crash claim the run on the first try, in the embedded mode (SQLite, in-process locks
whose counter starts again at 0 in a new process) and in production mode (PostgreSQL + Redis, with
Redis's fence counter lost as when Redis restarts without persistence).

A "restart" is a second `OrchestratorService` on the same store with a new lock space (embedded) or with
the fence key deleted (Redis); a "crash" stops the first replica's run without writing anything and
lets its lock go, as a SIGKILL and the lock's TTL do. The real processes are in
tests/faults/test_orchestrator_restarts.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import pytest
import redis.asyncio as aioredis

from orchestrator_core.locks import FENCE_KEY, InProcessLockBackend, InProcessLockSpace, lock_key
from tests.conftest import fresh_postgres_database
from tests.orchestrator.service_harness import (
    Gates,
    Harness,
    chain_dag,
    make_registry,
    make_settings,
    running_service,
)

REPLICA = "replica-test"


@pytest.fixture
def gates() -> Gates:
    return Gates()


@pytest.fixture(params=["embedded", "postgres+redis"])
async def mode(request: pytest.FixtureRequest, sqlite_url: str) -> AsyncIterator[tuple[str, str | None]]:
    """(database URL, Redis URL or None) of one mode."""
    if request.param == "embedded":
        yield sqlite_url, None
        return
    redis_url = request.getfixturevalue("redis_url")
    async with fresh_postgres_database() as database_url:
        yield database_url, redis_url


def _replica(mode: tuple[str, str | None], gates: Gates) -> AbstractAsyncContextManager[Harness]:
    """A new process of replica `REPLICA`: in-process locks with a fresh space (counter at 0), or Redis."""
    database_url, redis_url = mode
    settings = make_settings(database_url, redis_url=redis_url, replica_id=REPLICA)
    locks = InProcessLockBackend(REPLICA, "pod", InProcessLockSpace()) if redis_url is None else None
    return running_service(settings, registry=make_registry(gates), locks=locks)


async def _lose_redis_fence(redis_url: str | None, *lock_of: str) -> None:
    """Redis restarted without persistence: the fence counter (and the crashed owner's lock) is gone."""
    if redis_url is None:
        return
    raw = aioredis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        await raw.delete(FENCE_KEY, *(lock_key(e) for e in lock_of))
    finally:
        await raw.aclose()


async def _run_until_gate(h: Harness, gates: Gates) -> str:
    await h.register(chain_dag("restartable", "builtin.echo", "test.gate"))
    run = await h.execute("restartable")
    await gates.wait_started(1)
    return str(run["execution_id"])


async def test_first_resume_after_a_restart_claims_the_run(
    _no_pending_tasks: None, mode: tuple[str, str | None], gates: Gates
) -> None:
    async with _replica(mode, gates) as first:
        execution_id = await _run_until_gate(first, gates)
    # SIGTERM: the first replica interrupted the run on its way out.
    await _lose_redis_fence(mode[1])
    gates.open("n2")
    async with _replica(mode, gates) as second:
        stopped = await second.service.engine.get_execution(execution_id)
        assert stopped.status == "interrupted"
        response = await second.api("POST", f"/executions/{execution_id}/resume")
        assert response.status_code == 200, response.text
        assert response.json()["nodes_skipped"] == ["n1"]
        await second.wait_status(execution_id, "completed")
        resumed = await second.service.engine.get_execution(execution_id)
        assert resumed.fencing_token > stopped.fencing_token


async def test_first_takeover_after_a_crash_claims_the_run_for_the_same_replica_id(
    _no_pending_tasks: None, mode: tuple[str, str | None], gates: Gates
) -> None:
    async with _replica(mode, gates) as first:
        execution_id = await _run_until_gate(first, gates)
        # SIGKILL: the run stops without writing anything; the process and its locks are gone.
        await first.service.engine.detach(execution_id)
        first.service.ownership.owned.clear()
        crashed = await first.service.engine.get_execution(execution_id)
        assert crashed.status == "running" and crashed.owner == REPLICA
        await _lose_redis_fence(mode[1], execution_id)
        gates.open("n2")
        # The same replica id comes back (a restarted container): its own earlier run is an orphan.
        async with _replica(mode, gates) as second:
            assert await second.service.takeover_once() == [execution_id]
            await second.wait_status(execution_id, "completed")
            adopted = await second.service.engine.get_execution(execution_id)
            assert adopted.owner == REPLICA and adopted.fencing_token > crashed.fencing_token

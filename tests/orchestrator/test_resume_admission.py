"""A resume is admitted like a new run: with `max_concurrent_executions` runs going it is queued (202,
checkpoints kept) and starts from its checkpoints when a slot frees — the runbook's option 2 during
contention must not push the orchestrator past the limit that option 4 just lowered."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from orchestrator_core.agents import AgentContext
from tests.orchestrator.conftest import wait_until
from tests.orchestrator.service_harness import (
    Gates,
    Harness,
    chain_dag,
    make_registry,
    make_settings,
    running_service,
)

pytestmark = pytest.mark.usefixtures("_no_pending_tasks")


async def _stopped_with_a_checkpoint(h: Harness, gates: Gates, calls: Counter[str]) -> str:
    """Run `b` (n1 counts, n2 waits at gate n2) until n1 is checkpointed, then cancel it."""
    await h.register(chain_dag("b", "test.count", "test.gate"))
    run = (await h.execute("b"))["execution_id"]
    await gates.wait_started(1)
    assert calls[run] == 1
    assert (await h.api("POST", f"/executions/{run}/cancel")).status_code == 200
    await h.wait_status(run, "cancelled")
    return run


async def test_resume_at_the_limit_is_queued_and_resumes_from_checkpoints_when_admitted(
    database_url: str,
) -> None:
    gates, calls = Gates(), Counter[str]()

    async def count(ctx: AgentContext) -> Any:
        calls[ctx.execution_id] += 1
        return {"counted": calls[ctx.execution_id]}

    settings = make_settings(database_url, max_concurrent_executions=1)
    async with running_service(settings, registry=make_registry(gates, {"test.count": count})) as h:
        resumed = await _stopped_with_a_checkpoint(h, gates, calls)
        await h.register(chain_dag("a", "test.gate"))
        busy = (await h.execute("a"))["execution_id"]
        await gates.wait_started(2)  # b's n2 once, a's n1
        assert h.service.owned_executions() == [busy]

        response = await h.api("POST", f"/executions/{resumed}/resume")
        assert response.status_code == 202, response.text
        assert response.json() == {
            "execution_id": resumed,
            "status": "queued",
            "nodes_skipped": ["n1"],
            "nodes_remaining": ["n2"],
        }
        assert h.service.owned_executions() == [busy]  # the limit holds
        assert (await h.api("GET", "/metrics")).json()["queued_executions"] == 1
        assert (await h.api("GET", f"/checkpoints/{resumed}")).json()["checkpoints"][0]["node_id"] == "n1"
        again = await h.api("POST", f"/executions/{resumed}/resume")
        assert again.status_code == 409  # already queued: not queued twice

        gates.open("n2")
        gates.open("n1")  # a finishes; its slot goes to the queued resume
        await h.wait_status(busy, "completed")
        await h.wait_status(resumed, "completed")
        assert calls[resumed] == 1  # n1 came from its checkpoint, not from a second call
        trace = (await h.api("GET", f"/executions/{resumed}/trace")).json()
        assert {n: t["status"] for n, t in trace["node_traces"].items()} == {
            "n1": "completed",
            "n2": "completed",
        }
        provenance = (await h.api("GET", f"/executions/{resumed}/provenance")).json()
        assert provenance["chain_valid"] is True
        await wait_until(lambda: not h.service.owned_executions())


async def test_resume_below_the_limit_starts_at_once(sqlite_url: str) -> None:
    gates, calls = Gates(), Counter[str]()

    async def count(ctx: AgentContext) -> Any:
        calls[ctx.execution_id] += 1
        return None

    settings = make_settings(sqlite_url, max_concurrent_executions=2)
    async with running_service(settings, registry=make_registry(gates, {"test.count": count})) as h:
        resumed = await _stopped_with_a_checkpoint(h, gates, calls)
        response = await h.api("POST", f"/executions/{resumed}/resume")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "running"
        assert h.service.owned_executions() == [resumed]
        gates.open("n2")
        await h.wait_status(resumed, "completed")
        assert calls[resumed] == 1


async def test_a_finished_run_is_refused_even_when_the_resume_would_queue(sqlite_url: str) -> None:
    gates = Gates()
    settings = make_settings(sqlite_url, max_concurrent_executions=1)
    async with running_service(settings, registry=make_registry(gates)) as h:
        await h.register(chain_dag("done", "builtin.echo"))
        finished = (await h.execute("done"))["execution_id"]
        await h.wait_status(finished, "completed")
        await h.register(chain_dag("a", "test.gate"))
        busy = (await h.execute("a"))["execution_id"]
        await gates.wait_started(1)
        response = await h.api("POST", f"/executions/{finished}/resume")
        assert response.status_code == 409, response.text
        assert "completed" in response.json()["detail"]
        assert (await h.service.engine.get_execution(finished)).status == "completed"
        gates.open("n1")
        await h.wait_status(busy, "completed")

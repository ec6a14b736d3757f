"""The example plugin on its own: its step and playbook against a faked orchestrator (respx), with
the SDK's in-memory ledger, as the watchdog would call them. Run: `.venv/bin/pytest examples/plugin/tests`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import respx
from gl_watchdog_example.playbook import RaiseConcurrencyParams, RaiseConcurrencyPlaybook
from gl_watchdog_example.step import QUEUE_BACKLOG

from watchdog_sdk.clients import Clients
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.diagnosis import StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext
from watchdog_sdk.ledger import InMemoryLedger
from watchdog_sdk.outcomes import StepStatus as ActionStatus
from watchdog_sdk.playbook import PlaybookContext

BASE = "http://orchestrator.test"
API = BASE + "/api/v1/orchestrator"


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    bundle = Clients(orchestrator=OrchestratorClient(BASE, "token", timeout=2.0))
    yield bundle
    await bundle.aclose()


@pytest.fixture
def orch() -> respx.MockRouter:
    with respx.mock(base_url=API, assert_all_called=False) as router:
        yield router


def metrics(queued: int, active: int, limit: int = 10) -> dict[str, int]:
    return {"queued_executions": queued, "active_executions": active, "max_concurrent_executions": limit}


async def test_a_queue_behind_free_slots_names_the_backlog(clients: Clients, orch: respx.MockRouter) -> None:
    orch.get("/metrics").respond(json=metrics(queued=40, active=3))
    found = await QUEUE_BACKLOG.run(DiagnosticContext(clients=clients), DiagnosisState("e1"))
    assert found.status is StepStatus.PROBLEM
    assert found.evidence["likely_cause"] == "queue_backlog" and found.evidence["queued"] == 40
    assert found.summary == "40 runs queued while 3 of 10 slots are busy"


@pytest.mark.parametrize(("queued", "active"), [(40, 10), (2, 3)])
async def test_a_full_limit_or_a_short_queue_is_no_backlog(
    clients: Clients, orch: respx.MockRouter, queued: int, active: int
) -> None:
    orch.get("/metrics").respond(json=metrics(queued=queued, active=active))
    found = await QUEUE_BACKLOG.run(DiagnosticContext(clients=clients), DiagnosisState("e1"))
    assert found.status is StepStatus.OK and "likely_cause" not in found.evidence


async def test_an_unreachable_orchestrator_is_unknown(clients: Clients, orch: respx.MockRouter) -> None:
    orch.get("/metrics").mock(side_effect=httpx.ConnectError("refused"))
    found = await QUEUE_BACKLOG.run(DiagnosticContext(clients=clients), DiagnosisState("e1"))
    assert found.status is StepStatus.UNKNOWN


def ctx(clients: Clients, ledger: InMemoryLedger) -> PlaybookContext:
    return PlaybookContext(incident_id=1, execution_id="e1", clients=clients, ledger=ledger)


async def test_the_playbook_raises_the_limit_once_and_verifies_it(
    clients: Clients, orch: respx.MockRouter
) -> None:
    playbook, params, ledger = (
        RaiseConcurrencyPlaybook(),
        RaiseConcurrencyParams(max_concurrent_executions=20),
        InMemoryLedger(),
    )
    orch.get("/admin/limits").respond(json={"max_parallel_nodes": 4, "max_concurrent_executions": 10})
    assert (await playbook.preconditions(ctx(clients, ledger), params)).ok
    [action] = await playbook.plan(ctx(clients, ledger), params)
    assert action.request == {"method": "PUT", "path": "/admin/limits", "max_concurrent_executions": 20}
    put = orch.put("/admin/limits").respond(json={"max_parallel_nodes": 4, "max_concurrent_executions": 20})
    result = await playbook.apply(ctx(clients, ledger), params)
    assert result.ok and put.calls.last.request.content == b'{"max_concurrent_executions":20}'
    again = await playbook.apply(ctx(clients, ledger), params)  # idempotent: the ledger skips it
    assert [s.status for s in again.steps] == [ActionStatus.SKIPPED] and put.call_count == 1
    orch.get("/admin/limits").respond(json={"max_parallel_nodes": 4, "max_concurrent_executions": 20})
    assert (await playbook.verify(ctx(clients, ledger), params)).ok
    assert not (await playbook.preconditions(ctx(clients, ledger), params)).ok  # nothing left to do


def test_params_out_of_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="less than or equal to 500"):
        RaiseConcurrencyPlaybook().parse_params({"max_concurrent_executions": 5000})

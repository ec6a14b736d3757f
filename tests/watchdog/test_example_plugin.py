"""The example plugin (examples/plugin, installed by `make install`) end to end through the watchdog's
own remediation loop on the real store: its diagnostic step's finding names the cause, the policy
sends that cause to its playbook, which runs only after approval, is audited and verified; a plugin
playbook whose action fails is handled like a failing built-in (escalated, counted by the breaker).
The orchestrator is faked with respx; everything on the watchdog side is real."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import respx

from tests.watchdog.conftest import FakeClock
from tests.watchdog.orchestrators import execution_json
from tests.watchdog.recording_playbook import RecordingNotifier
from watchdog.approvals import ApprovalService, Decision
from watchdog.assembly import build_responder
from watchdog.diagnostics.runner import diagnose
from watchdog.incidents import IncidentService
from watchdog.jobs import JobTracker
from watchdog.metrics import WatchdogMetrics
from watchdog.plugins import PluginCatalog, installed_plugins
from watchdog.policy import parse_policy
from watchdog.responder import Responder
from watchdog.settings import Mode
from watchdog.store import WatchdogStore
from watchdog_sdk.diagnostic_step import DiagnosticContext

LIMITS = {"max_parallel_nodes": 4, "max_concurrent_executions": 10}
RAISED = {"max_parallel_nodes": 4, "max_concurrent_executions": 20}


def policy_for(failures: int, requires_approval: bool) -> dict[str, Any]:
    return {
        "playbooks": {
            "raise_concurrency": {
                "requires_approval": requires_approval,
                "params": {"max_concurrent_executions": 20},
            }
        },
        "rules": [
            {"name": "backlog", "when": {"likely_cause": ["queue_backlog"]}, "playbook": "raise_concurrency"}
        ],
        "limits": {"circuit_breaker": {"failures": failures, "window_seconds": 3600}},
    }


@pytest.fixture
def catalog() -> PluginCatalog:
    loaded = installed_plugins()
    # `make install` installs examples/plugin; without it these tests cannot mean anything.
    assert "raise_concurrency" in loaded.registry, f"examples/plugin is not installed: {loaded.problems}"
    return loaded


class Loop:
    def __init__(
        self,
        store: WatchdogStore,
        clock: FakeClock,
        ctx: DiagnosticContext,
        catalog: PluginCatalog,
        mode: Mode,
        failures: int = 3,
    ) -> None:
        self.store, self.ctx, self.catalog = store, ctx, catalog
        self.notifier = RecordingNotifier()
        self.metrics = WatchdogMetrics()
        self.incidents = IncidentService(store, self.metrics)
        self.approvals = ApprovalService(
            store, b"s" * 32, ttl_seconds=600, public_url="http://wd", clock=clock
        )
        self.responder: Responder = build_responder(
            store=store,
            incidents=self.incidents,
            approvals=self.approvals,
            notifier=self.notifier,
            policy=parse_policy(policy_for(failures, mode is Mode.RECOMMEND), catalog=catalog),
            registry=catalog.registry,
            clients=ctx.clients,
            mode=mode,
            clock=clock,
            jobs=JobTracker(),
            metrics=self.metrics,
        )

    async def diagnosed_incident(self, execution_id: str) -> tuple[int, Any]:
        opened = await self.incidents.open_or_join(
            execution_id, dag_id="emissions", source="sweep", detection_source="api"
        )
        steps = [step for step in self.catalog.steps if step.number in (1, 20)]  # step 1 and the plugin's
        return opened.incident.id, await diagnose(self.ctx, execution_id, steps=steps)

    async def audit(self, incident_id: int) -> list[tuple[str, str]]:
        async with self.store.transaction() as tx:
            return [(a.kind, a.phase) for a in await tx.list_audit(incident_id)]


@pytest.fixture
async def store(database_url: str, clock: FakeClock) -> AsyncIterator[WatchdogStore]:
    opened = await WatchdogStore.open(database_url, clock=clock)
    yield opened
    await opened.close()


def backlog_routes(orch: respx.MockRouter, *executions: str) -> None:
    for execution_id in executions:
        orch.get(f"/executions/{execution_id}").respond(json=execution_json(execution_id))
    orch.get("/metrics").respond(
        json={"queued_executions": 40, "active_executions": 3, "max_concurrent_executions": 10}
    )


async def test_the_plugins_finding_drives_its_playbook_under_approval_audited_and_verified(
    store: WatchdogStore,
    clock: FakeClock,
    make_ctx: Callable[..., DiagnosticContext],
    orch: respx.MockRouter,
    catalog: PluginCatalog,
) -> None:
    loop = Loop(store, clock, make_ctx(), catalog, Mode.RECOMMEND)
    backlog_routes(orch, "ex-1")
    limits = orch.get("/admin/limits").respond(json=LIMITS)
    put = orch.put("/admin/limits").respond(json=RAISED)

    incident_id, diagnosis = await loop.diagnosed_incident("ex-1")
    assert diagnosis.likely_cause == "queue_backlog"
    assert diagnosis.cause_evidence == [
        "step 20 (queue_backlog): 40 runs queued while 3 of 10 slots are busy"
    ]

    outcome = await loop.responder.handle_diagnosed(incident_id, diagnosis)
    assert outcome.status == "awaiting_approval" and put.call_count == 0  # nothing acts before approval
    [prompt] = loop.notifier.prompts
    assert prompt.actions == ["set max_concurrent_executions to 20"]

    approval = await loop.approvals.decide(
        prompt.approval_id, Decision.APPROVE, actor="alice", authenticated=True
    )
    limits.side_effect = [httpx.Response(200, json=LIMITS), httpx.Response(200, json=RAISED)]  # before, after
    outcome = await loop.responder.on_decision(approval)
    assert outcome.status == "resolved", outcome.detail
    assert put.call_count == 1 and json.loads(put.calls.last.request.content) == {
        "max_concurrent_executions": 20
    }
    incident = await loop.incidents.get(incident_id)
    assert incident.plan is not None and incident.plan.playbook == "raise_concurrency"
    assert incident.verification is not None and incident.verification["ok"]
    kinds = await loop.audit(incident_id)
    for kind in ("preconditions", "apply", "verify"):
        assert kinds.index((kind, "before")) < kinds.index((kind, "after"))
    assert kinds.count(("action", "before")) == 1 and kinds.count(("action", "after")) == 1
    assert (
        loop.metrics.remediations.labels(playbook="raise_concurrency", outcome="resolved")._value.get() == 1
    )


async def test_a_plugin_playbook_that_fails_in_apply_escalates_and_opens_the_breaker(
    store: WatchdogStore,
    clock: FakeClock,
    make_ctx: Callable[..., DiagnosticContext],
    orch: respx.MockRouter,
    catalog: PluginCatalog,
) -> None:
    loop = Loop(store, clock, make_ctx(), catalog, Mode.AUTO, failures=2)
    backlog_routes(orch, "ex-1", "ex-2", "ex-3")
    orch.get("/admin/limits").respond(json=LIMITS)
    put = orch.put("/admin/limits").respond(500, json={"error": "limits store down"})
    for execution_id in ("ex-1", "ex-2"):
        incident_id, diagnosis = await loop.diagnosed_incident(execution_id)
        outcome = await loop.responder.handle_diagnosed(incident_id, diagnosis)
        assert outcome.status == "escalated", outcome.detail
        assert (await loop.incidents.get(incident_id)).status == "escalated"
    assert put.call_count == 2
    incident_id, diagnosis = await loop.diagnosed_incident("ex-3")
    outcome = await loop.responder.handle_diagnosed(incident_id, diagnosis)
    assert outcome.status == "escalated" and outcome.detail.startswith("circuit open: 2 failed remediations")
    assert put.call_count == 2  # the breaker held: the plugin was not called a third time
    assert len(loop.notifier.escalations) == 3 and loop.notifier.prompts == []  # auto: no approval asked

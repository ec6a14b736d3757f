"""A hung agent and a legitimately slow node look alike to steps 1-3 while the node is within its own
timeout; step 4 tells them apart by the node's own log lines, so the diagnosis names a hung agent
`agent_unresponsive` (restart it) and only a quiet, slow node `slow_node` (raise its timeout)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import respx

from tests.orchestrator.test_service_harness import (
    TOKEN,
    Gates,
    Harness,
    make_registry,
    make_settings,
    running_service,
)
from tests.watchdog.conftest import FakeClock, FakeKubeApi, make_pod, trace_json
from watchdog.diagnostics import step4_agent
from watchdog.diagnostics.render import to_table
from watchdog.diagnostics.runner import diagnose, likely_cause
from watchdog_sdk.clients import Clients
from watchdog_sdk.clients.kubernetes import KubernetesClient
from watchdog_sdk.clients.orchestrator import NodeTrace, OrchestratorClient
from watchdog_sdk.diagnosis import Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext
from watchdog_sdk.step_helpers import finding

MakeCtx = Callable[..., DiagnosticContext]
AGENT = "emissions.scope1"


def _state(agent_id: str = AGENT) -> DiagnosisState:
    node = NodeTrace.model_validate(trace_json()["node_traces"]["scope1"] | {"agent_id": agent_id})
    return DiagnosisState("ex-1", stuck_node_id="scope1", node=node, agent_id=agent_id)


def _routes(orch: respx.MockRouter, lines: list[dict[str, Any]]) -> respx.Route:
    orch.get("/agents").respond(json={"items": []})
    return orch.get("/executions/ex-1/logs").respond(json={"lines": lines})


def _line(
    message: str, *, node_id: str | None = "scope1", ts: str = "2026-03-01T11:45:00Z"
) -> dict[str, Any]:
    return {"ts": ts, "level": "WARNING", "message": message, "node_id": node_id, "agent_id": AGENT}


async def test_a_node_that_logs_it_is_blocked_makes_step_4_a_problem(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    route = _routes(orch, [_line("node attempt started"), _line("blocked on the row lock of facility 12")])
    f = await step4_agent.run(make_ctx(), _state())
    assert f.status is StepStatus.PROBLEM, f.summary
    assert "blocked on the row lock of facility 12" in f.summary and "Kubernetes not configured" in f.summary
    assert f.evidence["hung_lines"] == ["2026-03-01T11:45:00Z WARNING blocked on the row lock of facility 12"]
    assert route.calls.last.request.url.params["node_id"] == "scope1"


async def test_lines_of_other_nodes_and_earlier_attempts_do_not_count(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    _routes(
        orch,
        [
            _line("waiting for the lock", ts="2026-03-01T11:30:00Z"),  # before this attempt started
            _line("stuck on facility 12", node_id="scope2"),
            _line("ERROR retrying the upload"),  # matches the runbook filter, but is not a hang
        ],
    )
    f = await step4_agent.run(make_ctx(), _state())
    assert f.status is StepStatus.UNKNOWN, f.summary
    assert f.evidence["hung_lines"] == [] and f.evidence["node_log_lines"] == [
        "2026-03-01T11:45:00Z WARNING ERROR retrying the upload"
    ]


async def test_an_agent_named_hang_is_not_hung_by_its_name(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    _routes(orch, [_line("builtin.hang computed 12 rows")])
    f = await step4_agent.run(make_ctx(), _state("builtin.hang"))
    assert f.status is StepStatus.UNKNOWN and f.evidence["hung_lines"] == []


async def test_unreadable_node_logs_are_reported_not_fatal(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/agents").respond(json={"items": []})
    orch.get("/executions/ex-1/logs").respond(503, json={"error": "unavailable", "detail": "busy"})
    f = await step4_agent.run(make_ctx(), _state())
    assert f.status is StepStatus.UNKNOWN and "busy" in f.evidence["node_logs_error"]


def _f(step: int, status: StepStatus = StepStatus.OK, /, **evidence: Any) -> Finding:
    return finding(step, f"s{step}", status, f"summary {step}", **evidence)


def _findings(s4: Finding) -> list[Finding]:
    return [
        _f(1, StepStatus.PROBLEM, status="running"),
        _f(2, StepStatus.PROBLEM),
        _f(3, StepStatus.PROBLEM, node_status="running", within_own_timeout=True),
        s4,
        _f(5),
        _f(6, StepStatus.UNKNOWN),
        _f(7),
        _f(8),
    ]


def test_a_hung_agent_within_its_node_timeout_is_not_slow_node() -> None:
    hung = _f(4, StepStatus.PROBLEM, hung_lines=["... waiting forever"])
    cause, evidence = likely_cause(_findings(hung))
    assert cause == "agent_unresponsive" and evidence == ["step 4 (s4): summary 4", "step 3 (s3): summary 3"]
    assert likely_cause(_findings(_f(4, StepStatus.UNKNOWN, hung_lines=[])))[0] == "slow_node"


async def _context_once_hung(orch: Harness, hung_id: str) -> DiagnosticContext:
    """Wait (bounded) until `builtin.hang` logged its wait, then a context 20 minutes ahead."""
    for _ in range(500):  # bounded polling of a real service
        if "waiting forever" in (await orch.api("GET", f"/executions/{hung_id}/logs")).text:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("builtin.hang never logged that it waits")
    ahead = datetime.now(UTC) + timedelta(minutes=20)
    return DiagnosticContext(
        clients=Clients(orchestrator=OrchestratorClient(orch.base_url, TOKEN, timeout=5.0)),
        clock=FakeClock(ahead),
    )


async def test_real_orchestrator_hung_agent_vs_slow_node(_no_pending_tasks: None, sqlite_url: str) -> None:
    """`builtin.hang` (logs that it waits forever) and a silent gate agent, both far within their own
    3600 s node timeout, 20 minutes into a run with a 600 s timeout."""
    gates = Gates()

    def dag(dag_id: str, agent_id: str) -> dict[str, Any]:
        return {
            "dag_id": dag_id,
            "execution_timeout_seconds": 600,
            "nodes": {
                "first": {"agent_id": "builtin.echo"},
                "work": {
                    "agent_id": agent_id,
                    "depends_on": ["first"],
                    "params": {"gate": "never"},
                    "timeout_policy": {"timeout_seconds": 3600, "on_timeout": "fail"},
                },
            },
        }

    async with running_service(
        make_settings(sqlite_url), registry=make_registry(gates), start_loop=True
    ) as orch:
        await orch.register(dag("hung", "builtin.hang"))
        await orch.register(dag("slow", "test.gate"))
        hung_id = str((await orch.execute("hung"))["execution_id"])
        slow_id = str((await orch.execute("slow"))["execution_id"])
        await gates.wait_started(1)
        ctx = await _context_once_hung(orch, hung_id)
        try:
            hung = await diagnose(ctx, hung_id)
            slow = await diagnose(ctx, slow_id)
        finally:
            gates.open("never")
            await ctx.clients.aclose()
    assert hung.finding(3).evidence["within_own_timeout"] is True  # type: ignore[union-attr]
    assert (hung.likely_cause, hung.stuck_node_id, hung.agent_id) == (
        "agent_unresponsive",
        "work",
        "builtin.hang",
    ), to_table(hung)
    assert "waiting forever" in hung.cause_evidence[0]
    assert (slow.likely_cause, slow.stuck_node_id) == ("slow_node", "work"), to_table(slow)


SATURATED = {
    "saturated": True,
    "active_executions": 1,
    "max_concurrent_executions": 1,
    "queued_executions": 2,
}


def test_a_hung_run_that_fills_the_last_slot_is_not_contention() -> None:
    findings = _findings(_f(4, StepStatus.PROBLEM, hung_lines=["... waiting forever"]))
    findings[4] = _f(5, StepStatus.PROBLEM, **SATURATED)
    cause, evidence = likely_cause(findings)
    assert cause == "agent_unresponsive"
    assert evidence == ["step 4 (s4): summary 4", "step 3 (s3): summary 3", "step 5 (s5): summary 5"]


def test_a_slow_node_at_the_concurrency_limit_is_contention() -> None:
    findings = _findings(_f(4, StepStatus.UNKNOWN))
    findings[4] = _f(5, StepStatus.PROBLEM, **SATURATED)
    assert likely_cause(findings) == (
        "resource_contention",
        ["step 5 (s5): summary 5", "step 3 (s3): summary 3"],
    )


async def test_real_orchestrator_hung_run_holding_the_only_slot(
    _no_pending_tasks: None, sqlite_url: str
) -> None:
    """max_concurrent_executions 1: the hung run holds the slot and a second run queues behind it."""
    settings = make_settings(sqlite_url, max_concurrent_executions=1)
    async with running_service(settings, registry=make_registry(), start_loop=True) as orch:
        await orch.register(
            {
                "dag_id": "hung",
                "execution_timeout_seconds": 600,
                "nodes": {
                    "work": {
                        "agent_id": "builtin.hang",
                        "timeout_policy": {"timeout_seconds": 3600, "on_timeout": "fail"},
                    }
                },
            }
        )
        hung_id = str((await orch.execute("hung"))["execution_id"])
        queued = await orch.execute("hung")
        assert queued["status"] == "queued"
        ctx = await _context_once_hung(orch, hung_id)
        try:
            diagnosis = await diagnose(ctx, hung_id)
        finally:
            await ctx.clients.aclose()
    assert diagnosis.finding(5).evidence["saturated"] is True  # type: ignore[union-attr]
    assert diagnosis.likely_cause == "agent_unresponsive", to_table(diagnosis)
    assert diagnosis.cause_evidence[-1].startswith(
        "step 5 (contention): contention: at the concurrency limit"
    )


async def test_an_http_agent_pod_that_logs_it_hangs_on_this_run(
    orch: respx.MockRouter, make_ctx: MakeCtx, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    _routes(orch, [])
    log = "\n".join(
        [
            "execution=ex-9 node=scope1 waiting for the ERP lock",  # another run on the same pod
            "execution=ex-1 node=scope1 started batch 3",
            "execution=ex-1 node=scope1 blocked on the row lock of facility 12",
        ]
    )
    kube_api.add_pod(make_pod("scope1-abc", {"agent-id": AGENT}), log=log)
    f = await step4_agent.run(make_ctx(kubernetes=kube), _state())
    assert f.status is StepStatus.PROBLEM, f.summary
    assert "running and ready, but pod scope1-abc logs that the agent hangs on this run" in f.summary
    assert f.evidence["hung_lines"] == [
        "scope1-abc: execution=ex-1 node=scope1 blocked on the row lock of facility 12"
    ]


async def test_an_http_agent_pod_busy_with_other_runs_is_ok(
    orch: respx.MockRouter, make_ctx: MakeCtx, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    _routes(orch, [])
    kube_api.add_pod(
        make_pod("scope1-abc", {"agent-id": AGENT}), log="execution=ex-9 waiting for the ERP lock\n"
    )
    f = await step4_agent.run(make_ctx(kubernetes=kube), _state())
    assert f.status is StepStatus.OK and f.evidence["hung_lines"] == []


def _oom_pod(finished_at: str) -> dict[str, Any]:
    pod = make_pod("scope1-abc", {"agent-id": AGENT}, restarts=1, last_terminated_reason="OOMKilled")
    pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["finishedAt"] = finished_at
    return pod


async def test_an_oom_kill_before_the_stuck_attempt_is_history(
    orch: respx.MockRouter, make_ctx: MakeCtx, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    _routes(orch, [])
    kube_api.add_pod(_oom_pod("2026-02-20T03:00:00Z"))  # the attempt started 2026-03-01T11:41
    f = await step4_agent.run(make_ctx(kubernetes=kube), _state())
    assert f.status is StepStatus.OK, f.summary
    assert f.evidence["reasons"] == [] and f.evidence["earlier_reasons"] == ["OOMKilled"]
    assert f.evidence["unhealthy_pods"] == []


async def test_an_oom_kill_during_the_stuck_attempt_is_a_problem(
    orch: respx.MockRouter, make_ctx: MakeCtx, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    _routes(orch, [])
    kube_api.add_pod(_oom_pod("2026-03-01T11:50:00Z"))
    f = await step4_agent.run(make_ctx(kubernetes=kube), _state())
    assert f.status is StepStatus.PROBLEM and f.evidence["reasons"] == ["OOMKilled"]
    assert f.evidence["pods"][0]["containers"][0]["last_terminated_at"] == "2026-03-01T11:50:00+00:00"

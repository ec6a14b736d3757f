"""The runner: order and concurrency of steps, resilience to failing/hanging steps, and the diagnosis of
real stuck runs (hung agent vs slow node). The likely-cause rules alone: test_likely_cause.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import respx

from tests.orchestrator.service_harness import (
    TOKEN,
    Gates,
    Harness,
    make_registry,
    make_settings,
    running_service,
)
from tests.watchdog.conftest import FakeClock
from tests.watchdog.fake_kube import FakeKubeApi, make_pod
from tests.watchdog.orchestrators import ORCH_BASE, execution_json, trace_json
from watchdog.diagnostics import step4_agent
from watchdog.diagnostics.render import to_table
from watchdog.diagnostics.runner import STEPS, diagnose, diagnoser
from watchdog_sdk.clients import Clients
from watchdog_sdk.clients.kubernetes import KubernetesClient
from watchdog_sdk.clients.orchestrator import NodeTrace, OrchestratorClient
from watchdog_sdk.clients.redis import RedisClient
from watchdog_sdk.diagnosis import Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext, DiagnosticStep
from watchdog_sdk.step_helpers import finding

MakeCtx = Callable[..., DiagnosticContext]


def _routes(
    orch: respx.MockRouter, *, trace: dict[str, Any] | None = None, log_lines: list[Any] | None = None
) -> None:
    orch.get("/executions/ex-1").respond(json=execution_json())
    orch.get("/executions").respond(json={"items": [execution_json()]})
    orch.get("/executions/ex-1/trace").respond(json=trace or trace_json())
    orch.get("/agents").respond(
        json={
            "items": [
                {
                    "agent_id": "emissions.scope1",
                    "kind": "inprocess",
                    "restarts": 0,
                    "running_nodes": ["scope1"],
                }
            ]
        }
    )
    orch.get("/metrics").respond(
        json={"active_executions": 1, "max_concurrent_executions": 50, "queued_executions": 0}
    )
    orch.get(ORCH_BASE + "/metrics").respond(text="")
    orch.get("/executions/ex-1/logs").respond(json={"lines": log_lines or []})
    orch.get("/checkpoints/ex-1").respond(
        json={
            "checkpoints": [
                {"node_id": "intake", "status": "completed", "created_at": "2026-03-01T11:41:00Z"},
                {"node_id": "scope2", "status": "completed", "created_at": "2026-03-01T11:42:00Z"},
            ]
        }
    )
    orch.get("/executions/ex-1/provenance").respond(json={"chain_valid": True})


async def test_embedded_diagnosis_names_the_hung_node_and_agent(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    _routes(orch)
    diagnosis = await diagnose(make_ctx(), "ex-1")
    assert [f.step for f in diagnosis.findings] == [1, 2, 3, 4, 5, 6, 7, 8]
    status = {f.step: f.status for f in diagnosis.findings}
    assert status == {
        1: StepStatus.PROBLEM,
        2: StepStatus.PROBLEM,
        3: StepStatus.PROBLEM,
        4: StepStatus.UNKNOWN,  # no Kubernetes
        5: StepStatus.OK,
        6: StepStatus.UNKNOWN,  # no Redis
        7: StepStatus.OK,
        8: StepStatus.OK,
    }
    assert (diagnosis.dag_id, diagnosis.stuck_node_id, diagnosis.agent_id) == (
        "emissions",
        "scope1",
        "emissions.scope1",
    )
    assert diagnosis.namespace == "greenlang"  # the watchdog's namespace: what a policy's matcher reads
    # scope1 runs 1140 s against its own 120 s timeout: its agent does not answer.
    assert diagnosis.likely_cause == "agent_unresponsive"
    assert diagnosis.cause_evidence[0].startswith("step 3 (bottleneck): node scope1")
    assert diagnosis.started_at == diagnosis.completed_at  # the injected clock did not move
    assert all(f.duration_ms >= 0 for f in diagnosis.findings)


async def test_external_call_wins_over_timeout_overrun(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    lines = [{"message": "calling external ERP API, waiting for response", "node_id": "scope1"}]
    _routes(orch, log_lines=lines)
    diagnosis = await diagnose(make_ctx(), "ex-1")
    assert diagnosis.likely_cause == "external_api_slow"


async def test_an_unknown_execution_costs_one_orchestrator_call_and_still_gives_eight_findings(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    _routes(orch)
    orch.get("/executions/ex-1").respond(404, json={"error": "not_found", "detail": "no execution ex-1"})
    diagnosis = await diagnose(make_ctx(), "ex-1")
    assert len(diagnosis.findings) == 8 and diagnosis.likely_cause == "execution_not_found"
    assert diagnosis.finding(1) is not None and diagnosis.finding(1).status is StepStatus.ERROR  # type: ignore[union-attr]
    skipped = [f for f in diagnosis.findings if f.step != 1]
    assert {(f.status, f.evidence["reason"]) for f in skipped} == {
        (StepStatus.UNKNOWN, "execution_not_found")
    }
    assert orch.calls.call_count == 1  # steps 2-8 asked nothing


async def test_failing_and_hanging_steps_do_not_abort(make_ctx: MakeCtx) -> None:
    async def fine(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
        return finding(1, "fine", StepStatus.OK, "fine")

    async def boom(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
        raise RuntimeError("bug in a step")

    async def hang(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    steps = [
        DiagnosticStep(1, "fine", fine),
        DiagnosticStep(2, "boom", boom),
        DiagnosticStep(4, "hang", hang),
        DiagnosticStep(5, "boom5", boom),
    ]
    ctx = make_ctx(step_timeouts={4: 0.05})
    diagnosis = await diagnose(ctx, "ex-1", steps=steps)
    by_step = {f.step: f for f in diagnosis.findings}
    assert by_step[1].status is StepStatus.OK
    assert by_step[2].status is StepStatus.ERROR and "RuntimeError: bug in a step" in by_step[2].summary
    assert by_step[4].status is StepStatus.ERROR and by_step[4].evidence["reason"] == "timeout"
    assert by_step[4].summary == "step timed out after 0.05s"
    assert by_step[5].status is StepStatus.ERROR
    assert diagnosis.likely_cause == "unknown"


async def test_steps_4_to_8_run_concurrently_after_1_to_3(make_ctx: MakeCtx) -> None:
    order: list[str] = []
    started = 0
    all_started = asyncio.Event()

    def sequential(n: int) -> DiagnosticStep:
        async def run(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
            order.append(f"start {n}")
            await asyncio.sleep(0)
            order.append(f"end {n}")
            return finding(n, f"s{n}", StepStatus.OK, "ok")

        return DiagnosticStep(n, f"s{n}", run)

    def concurrent(n: int) -> DiagnosticStep:
        async def run(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
            nonlocal started
            started += 1
            if started == 5:
                all_started.set()
            await all_started.wait()  # deadlocks (and times out) unless all five run at once
            return finding(n, f"s{n}", StepStatus.OK, "ok")

        return DiagnosticStep(n, f"s{n}", run)

    steps = [sequential(1), sequential(2), sequential(3)] + [concurrent(n) for n in range(4, 9)]
    diagnosis = await diagnose(make_ctx(step_timeouts=dict.fromkeys(range(4, 9), 2.0)), "ex-1", steps=steps)
    assert order == ["start 1", "end 1", "start 2", "end 2", "start 3", "end 3"]
    assert all(f.status is StepStatus.OK for f in diagnosis.findings)


async def test_diagnoser_binds_the_context(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    _routes(orch)
    run = diagnoser(make_ctx())
    diagnosis = await run("ex-1")
    assert diagnosis.execution_id == "ex-1" and len(diagnosis.findings) == 8


def test_default_steps_are_the_runbooks_eight() -> None:
    assert [(s.number, s.name) for s in STEPS] == [
        (1, "execution"),
        (2, "trace"),
        (3, "bottleneck"),
        (4, "agent"),
        (5, "contention"),
        (6, "locks"),
        (7, "external"),
        (8, "checkpoints"),
    ]


# -- against the real orchestrator service -----------------------------------------------------------


async def test_diagnosis_of_a_real_stuck_run(
    _no_pending_tasks: None, sqlite_url: str, redis_url: str
) -> None:
    """The real orchestrator (Redis locks, gate agent that never returns) diagnosed over HTTP + Redis.

    Proves the client models parse the orchestrator's real answers and that step 6 reads its real lock
    and heartbeat format. The diagnosis clock runs 20 minutes ahead so the run is over its timeouts.
    """
    gates = Gates()
    settings = make_settings(sqlite_url, redis_url=redis_url, replica_id="orch-a", pod_name="orch-a-pod")
    dag = {
        "dag_id": "stuck-demo",
        "execution_timeout_seconds": 600,
        "nodes": {
            "first": {"agent_id": "builtin.echo", "depends_on": []},
            "stuck": {
                "agent_id": "test.gate",
                "depends_on": ["first"],
                "params": {"gate": "never"},
                "timeout_policy": {"timeout_seconds": 120, "on_timeout": "fail"},
            },
            "last": {"agent_id": "builtin.echo", "depends_on": ["stuck"]},
        },
    }
    async with running_service(settings, registry=make_registry(gates), start_loop=True) as orch:
        await orch.register(dag)
        execution_id = str((await orch.execute("stuck-demo", {"year": 2025}))["execution_id"])
        await gates.wait_started(1)
        ahead = datetime.now(UTC) + timedelta(minutes=20)
        ctx = DiagnosticContext(
            clients=Clients(
                orchestrator=OrchestratorClient(orch.base_url, TOKEN, timeout=5.0),
                redis=RedisClient(redis_url, timeout=2.0),  # real clock: heartbeat ages are real
            ),
            clock=FakeClock(ahead),
        )
        try:
            diagnosis = await diagnose(ctx, execution_id)
        finally:
            gates.open("never")
            await ctx.clients.aclose()
    by_step = {f.step: f for f in diagnosis.findings}
    assert [f.status for f in diagnosis.findings if f.status is StepStatus.ERROR] == [], to_table(diagnosis)
    assert by_step[1].status is StepStatus.PROBLEM and by_step[1].evidence["dag_id"] == "stuck-demo"
    assert by_step[2].evidence["running_nodes"] == ["stuck"]
    assert by_step[2].evidence["last_completed_node"] == "first"
    assert (diagnosis.stuck_node_id, diagnosis.agent_id, diagnosis.dag_id) == (
        "stuck",
        "test.gate",
        "stuck-demo",
    )
    assert by_step[3].evidence["within_own_timeout"] is False
    assert by_step[6].status is StepStatus.OK, by_step[6].summary
    assert by_step[6].evidence["holder_state"] == "alive" and by_step[6].evidence["lock"]["owner"] == "orch-a"
    assert by_step[6].evidence["lock"]["pod"] == "orch-a-pod"
    assert by_step[8].evidence["completed_without_checkpoint"] == []
    assert diagnosis.likely_cause == "agent_unresponsive"


# -- hung vs slow ----------------------------------------------------------------------------------------
# A hung agent and a legitimately slow node look alike to steps 1-3 while the node is within its own
# timeout; step 4 tells them apart by the node's own log lines, so the diagnosis names a hung agent
# `agent_unresponsive` (restart it) and only a quiet, slow node `slow_node` (raise its timeout).


AGENT = "emissions.scope1"


def _state(agent_id: str = AGENT) -> DiagnosisState:
    node = NodeTrace.model_validate(trace_json()["node_traces"]["scope1"] | {"agent_id": agent_id})
    return DiagnosisState("ex-1", stuck_node_id="scope1", node=node, agent_id=agent_id)


def _log_routes(orch: respx.MockRouter, lines: list[dict[str, Any]]) -> respx.Route:
    orch.get("/agents").respond(json={"items": []})
    return orch.get("/executions/ex-1/logs").respond(json={"lines": lines})


def _line(
    message: str, *, node_id: str | None = "scope1", ts: str = "2026-03-01T11:45:00Z"
) -> dict[str, Any]:
    return {"ts": ts, "level": "WARNING", "message": message, "node_id": node_id, "agent_id": AGENT}


async def test_a_node_that_logs_it_is_blocked_makes_step_4_a_problem(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    route = _log_routes(
        orch, [_line("node attempt started"), _line("blocked on the row lock of facility 12")]
    )
    f = await step4_agent.run(make_ctx(), _state())
    assert f.status is StepStatus.PROBLEM, f.summary
    assert "blocked on the row lock of facility 12" in f.summary and "Kubernetes not configured" in f.summary
    assert f.evidence["hung_lines"] == ["2026-03-01T11:45:00Z WARNING blocked on the row lock of facility 12"]
    assert route.calls.last.request.url.params["node_id"] == "scope1"


async def test_lines_of_other_nodes_and_earlier_attempts_do_not_count(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    _log_routes(
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
    _log_routes(orch, [_line("builtin.hang computed 12 rows")])
    f = await step4_agent.run(make_ctx(), _state("builtin.hang"))
    assert f.status is StepStatus.UNKNOWN and f.evidence["hung_lines"] == []


async def test_unreadable_node_logs_are_reported_not_fatal(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/agents").respond(json={"items": []})
    orch.get("/executions/ex-1/logs").respond(503, json={"error": "unavailable", "detail": "busy"})
    f = await step4_agent.run(make_ctx(), _state())
    assert f.status is StepStatus.UNKNOWN and "busy" in f.evidence["node_logs_error"]


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
    _log_routes(orch, [])
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
    _log_routes(orch, [])
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
    _log_routes(orch, [])
    kube_api.add_pod(_oom_pod("2026-02-20T03:00:00Z"))  # the attempt started 2026-03-01T11:41
    f = await step4_agent.run(make_ctx(kubernetes=kube), _state())
    assert f.status is StepStatus.OK, f.summary
    assert f.evidence["reasons"] == [] and f.evidence["earlier_reasons"] == ["OOMKilled"]
    assert f.evidence["unhealthy_pods"] == []


async def test_an_oom_kill_during_the_stuck_attempt_is_a_problem(
    orch: respx.MockRouter, make_ctx: MakeCtx, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    _log_routes(orch, [])
    kube_api.add_pod(_oom_pod("2026-03-01T11:50:00Z"))
    f = await step4_agent.run(make_ctx(kubernetes=kube), _state())
    assert f.status is StepStatus.PROBLEM and f.evidence["reasons"] == ["OOMKilled"]
    assert f.evidence["pods"][0]["containers"][0]["last_terminated_at"] == "2026-03-01T11:50:00+00:00"

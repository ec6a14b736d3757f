"""The runner: order and concurrency of steps, resilience to failing/hanging steps, the likely cause."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import respx

from tests.orchestrator.test_service_harness import (
    TOKEN,
    Gates,
    make_registry,
    make_settings,
    running_service,
)
from tests.watchdog.conftest import ORCH_BASE, FakeClock, execution_json, trace_json
from watchdog.diagnostics.render import to_table
from watchdog.diagnostics.runner import STEPS, diagnose, diagnoser, likely_cause
from watchdog_sdk.clients import Clients
from watchdog_sdk.clients.orchestrator import OrchestratorClient
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


async def test_unknown_execution_still_gives_eight_findings(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    _routes(orch)
    orch.get("/executions/ex-1").respond(404, json={"error": "not_found", "detail": "no execution ex-1"})
    orch.get("/executions/ex-1/trace").respond(
        404, json={"error": "not_found", "detail": "no execution ex-1"}
    )
    diagnosis = await diagnose(make_ctx(), "ex-1")
    assert len(diagnosis.findings) == 8 and diagnosis.likely_cause == "execution_not_found"
    assert diagnosis.finding(1) is not None and diagnosis.finding(1).status is StepStatus.ERROR  # type: ignore[union-attr]


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


# -- likely cause rules -------------------------------------------------------------------------------


def _f(step: int, status: StepStatus = StepStatus.OK, /, **evidence: Any) -> Finding:
    return finding(step, f"s{step}", status, f"summary {step}", **evidence)


def _base(**overrides: Finding) -> list[Finding]:
    findings = {
        1: _f(1, StepStatus.PROBLEM, status="running"),
        2: _f(2, StepStatus.PROBLEM),
        3: _f(3, StepStatus.PROBLEM, node_status="running", within_own_timeout=None),
        4: _f(4, StepStatus.UNKNOWN),
        5: _f(5),
        6: _f(6, StepStatus.UNKNOWN),
        7: _f(7),
        8: _f(8),
    }
    for key, value in overrides.items():
        findings[int(key[1:])] = value
    return list(findings.values())


def test_cause_agent_crash_loop() -> None:
    s4 = _f(4, StepStatus.PROBLEM, pod_count=1, unhealthy_pods=["p"], reasons=["CrashLoopBackOff"])
    cause, evidence = likely_cause(_base(s4=s4))
    assert cause == "agent_unresponsive" and evidence[0] == "step 4 (s4): summary 4"


def test_cause_agent_without_pods() -> None:
    assert likely_cause(_base(s4=_f(4, StepStatus.PROBLEM, pod_count=0)))[0] == "agent_unresponsive"


def test_cause_dead_lock_holder() -> None:
    s6 = _f(6, StepStatus.PROBLEM, holder_state="dead", lock={"ttl_seconds": 10})
    assert likely_cause(_base(s6=s6)) == ("stuck_lock", ["step 6 (s6): summary 6"])


def test_cause_lock_without_ttl() -> None:
    s6 = _f(6, StepStatus.PROBLEM, holder_state="alive", lock={"ttl_seconds": -1})
    assert likely_cause(_base(s6=s6))[0] == "stuck_lock"


def test_other_runs_lock_without_ttl_is_not_this_runs_cause() -> None:
    s6 = _f(6, StepStatus.PROBLEM, holder_state="alive", lock={"ttl_seconds": 10}, locks_without_ttl=["x"])
    assert likely_cause(_base(s6=s6))[0] == "unknown"


def test_cause_checkpoint_store() -> None:
    s8 = _f(8, StepStatus.PROBLEM, save_errors_15m=4.0, completed_without_checkpoint=[])
    assert likely_cause(_base(s8=s8))[0] == "checkpoint_store"


def test_cause_contention() -> None:
    s5 = _f(5, StepStatus.PROBLEM, saturated=True, db_pool_pending=0)
    assert likely_cause(_base(s5=s5))[0] == "resource_contention"


def test_cause_external_api() -> None:
    s7 = _f(7, StepStatus.PROBLEM, external_call_lines=["waiting for ERP api"])
    assert likely_cause(_base(s7=s7))[0] == "external_api_slow"


def test_cause_slow_node() -> None:
    s3 = _f(3, StepStatus.PROBLEM, node_status="running", within_own_timeout=True)
    assert likely_cause(_base(s3=s3))[0] == "slow_node"


def test_cause_node_past_own_timeout() -> None:
    s3 = _f(3, StepStatus.PROBLEM, node_status="running", within_own_timeout=False)
    assert likely_cause(_base(s3=s3))[0] == "agent_unresponsive"


def test_cause_not_stuck_when_run_finished() -> None:
    assert likely_cause(_base(s1=_f(1, StepStatus.OK, status="completed")))[0] == "not_stuck"


def test_cause_unknown_lists_problems() -> None:
    cause, evidence = likely_cause(_base())
    assert cause == "unknown"
    assert evidence == ["step 1 (s1): summary 1", "step 2 (s2): summary 2", "step 3 (s3): summary 3"]


def test_agent_outranks_lock_and_lock_outranks_checkpoints() -> None:
    s4 = _f(4, StepStatus.PROBLEM, pod_count=1, unhealthy_pods=["p"], reasons=["OOMKilled"])
    s6 = _f(6, StepStatus.PROBLEM, holder_state="dead", lock={"ttl_seconds": 10})
    s8 = _f(8, StepStatus.PROBLEM, save_errors_15m=1.0)
    assert likely_cause(_base(s4=s4, s6=s6, s8=s8))[0] == "agent_unresponsive"
    assert likely_cause(_base(s6=s6, s8=s8))[0] == "stuck_lock"


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

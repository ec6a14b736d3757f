"""Step 4: the agent's pods through the real `kubernetes` client against a faked API server, and the
embedded-mode answer without Kubernetes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import respx

from tests.watchdog.fake_kube import FakeKubeApi, make_pod
from watchdog.diagnostics import step4_agent
from watchdog.diagnostics.runner import STEPS, run_step
from watchdog_sdk.clients.kubernetes import KubernetesClient, build_configuration
from watchdog_sdk.diagnosis import StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext

MakeCtx = Callable[..., DiagnosticContext]
AGENT = "emissions.scope1"
LABELS = {"agent-id": AGENT}


def _state() -> DiagnosisState:
    return DiagnosisState("ex-1", stuck_node_id="scope1", agent_id=AGENT)


def _agents(orch: respx.MockRouter, restarts: int = 0) -> None:
    orch.get("/agents").respond(
        json={
            "items": [{"agent_id": AGENT, "kind": "http", "restarts": restarts, "running_nodes": ["scope1"]}]
        }
    )


async def test_healthy_pod_is_ok_with_filtered_logs_and_usage(
    orch: respx.MockRouter, make_ctx: MakeCtx, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    _agents(orch)
    log = "\n".join(
        ["starting", "calculating batch 1", "waiting for factor service", "ERROR retry 1", "done 1"]
    )
    kube_api.add_pod(make_pod("scope1-abc", LABELS, limits={"cpu": "1", "memory": "512Mi"}), log=log)
    kube_api.usage["scope1-abc"] = {"cpu": "100m", "memory": "64Mi"}
    f = await step4_agent.run(make_ctx(kubernetes=kube), _state())
    assert f.status is StepStatus.OK, f.summary
    assert f.evidence["pod_count"] == 1 and f.evidence["unhealthy_pods"] == []
    assert f.evidence["log_lines"] == {"scope1-abc": ["waiting for factor service", "ERROR retry 1"]}
    assert f.evidence["usage"]["scope1-abc"] == {
        "cpu_cores": 0.1,
        "memory_bytes": 64 * 1024 * 1024,
        "cpu_ratio": 0.1,
        "memory_ratio": 0.125,
    }
    assert f.evidence["orchestrator_agent"] == {"kind": "http", "restarts": 0, "running_nodes": ["scope1"]}
    assert (
        "GET",
        "/api/v1/namespaces/greenlang/pods",
        {"labelSelector": f"agent-id={AGENT}"},
    ) in kube_api.requests


@pytest.mark.parametrize(
    ("pod", "usage", "evidence", "said"),
    [
        pytest.param(
            {"ready": False, "restarts": 7, "waiting_reason": "CrashLoopBackOff"},
            None,
            {"unhealthy_pods": ["scope1-abc"]},
            "CrashLoopBackOff",
            id="crash-loop",
        ),
        pytest.param(
            {"restarts": 3, "last_terminated_reason": "OOMKilled"},
            None,
            {"reasons": ["OOMKilled"]},
            "",
            id="oom-killed",
        ),
        pytest.param(
            {"limits": {"memory": "100Mi"}},
            {"cpu": "10m", "memory": "95Mi"},
            {"near_limit": ["scope1-abc"]},
            "",
            id="memory-near-limit",
        ),
    ],
)
async def test_an_unhealthy_agent_pod_is_a_problem(
    orch: respx.MockRouter,
    make_ctx: MakeCtx,
    kube_api: FakeKubeApi,
    kube: KubernetesClient,
    pod: dict[str, Any],
    usage: dict[str, str] | None,
    evidence: dict[str, Any],
    said: str,
) -> None:
    """A crash loop, an OOM kill or memory near the limit: each a problem, named in the evidence."""
    _agents(orch)
    kube_api.add_pod(make_pod("scope1-abc", LABELS, **pod))
    if usage is not None:
        kube_api.usage["scope1-abc"] = usage
    f = await step4_agent.run(make_ctx(kubernetes=kube), _state())
    assert f.status is StepStatus.PROBLEM and said in f.summary
    assert {key: f.evidence[key] for key in evidence} == evidence
    assert f.evidence["pods"][0]["restarts"] == pod.get("restarts", 0)


async def test_no_pod_is_a_problem(
    orch: respx.MockRouter, make_ctx: MakeCtx, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    _agents(orch)
    kube_api.add_pod(make_pod("other-1", {"agent-id": "other"}))
    f = await step4_agent.run(make_ctx(kubernetes=kube), _state())
    assert f.status is StepStatus.PROBLEM and f.evidence["pod_count"] == 0 and "no pod" in f.summary


async def test_api_500_is_an_error(
    orch: respx.MockRouter, make_ctx: MakeCtx, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    _agents(orch)
    kube_api.fail_status = 500
    f = await step4_agent.run(make_ctx(kubernetes=kube), _state())
    assert f.status is StepStatus.ERROR and "500" in f.summary
    assert f.evidence["orchestrator_agent"]["running_nodes"] == ["scope1"]


async def test_hanging_api_gives_a_fast_finding(
    orch: respx.MockRouter, make_ctx: MakeCtx, kube_api: FakeKubeApi
) -> None:
    _agents(orch)
    kube_api.hang = True
    client = KubernetesClient(build_configuration(host=kube_api.url), "greenlang", timeout=0.3)
    started = time.monotonic()
    try:
        f = await step4_agent.run(make_ctx(kubernetes=client), _state())
    finally:
        client.close()
    assert f.status is StepStatus.UNKNOWN and "timed out" in f.summary
    assert time.monotonic() - started < 2


async def test_hanging_api_past_the_step_timeout_is_an_error(
    orch: respx.MockRouter, make_ctx: MakeCtx, kube_api: FakeKubeApi
) -> None:
    _agents(orch)
    kube_api.hang = True
    client = KubernetesClient(build_configuration(host=kube_api.url), "greenlang", timeout=1.0)
    step4 = next(s for s in STEPS if s.number == 4)
    started = time.monotonic()
    try:
        f = await run_step(make_ctx(kubernetes=client, step_timeouts={4: 0.2}), _state(), step4)
    finally:
        client.close()
    assert f.status is StepStatus.ERROR and f.evidence["reason"] == "timeout"
    assert time.monotonic() - started < 1.0


async def test_embedded_mode_reports_what_the_orchestrator_knows(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    _agents(orch, restarts=2)
    f = await step4_agent.run(make_ctx(), _state())
    assert f.status is StepStatus.UNKNOWN and f.evidence["reason"] == "kubernetes_not_configured"
    assert "2 restarts, running 1 node(s)" in f.summary


async def test_without_an_agent_is_unknown(make_ctx: MakeCtx) -> None:
    f = await step4_agent.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.UNKNOWN


async def test_an_agent_running_thousands_of_nodes_is_summed_up_not_copied(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    running = [f"run-{i:05d}:scope1" for i in range(10_000)]
    orch.get("/agents").respond(
        json={"items": [{"agent_id": AGENT, "kind": "inprocess", "restarts": 0, "running_nodes": running}]}
    )
    orch.get("/executions/ex-1/logs").respond(json={"lines": []})
    f = await step4_agent.run(make_ctx(), _state())
    assert f.evidence["orchestrator_agent"]["running_nodes"] == running[:20]
    assert f.evidence["agent_running_nodes_total"] == 10_000
    assert "running 10000 node(s)" in f.summary

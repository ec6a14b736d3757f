"""Step 7: slow or hung external calls, from the run's log lines (orchestrator API) or the
orchestrator pods' logs (faked Kubernetes API)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import respx

from tests.watchdog.fake_kube import FakeKubeApi, make_pod
from tests.watchdog.orchestrators import ORCH_BASE
from watchdog.diagnostics import step7_external
from watchdog.settings import WatchdogSettings
from watchdog_sdk.clients.kubernetes import KubernetesClient
from watchdog_sdk.diagnosis import StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext

MakeCtx = Callable[..., DiagnosticContext]


def _state() -> DiagnosisState:
    return DiagnosisState("ex-1", stuck_node_id="scope1", agent_id="emissions.scope1")


def _line(
    message: str, node_id: str = "scope1", agent_id: str = "emissions.scope1", **extra: Any
) -> dict[str, Any]:
    return {
        "ts": "2026-03-01T11:45:00Z",
        "level": "INFO",
        "message": message,
        "execution_id": "ex-1",
        "node_id": node_id,
        "agent_id": agent_id,
        **extra,
    }


async def test_stuck_node_waiting_on_external_api_is_a_problem(
    orch: respx.MockRouter, make_ctx: MakeCtx
) -> None:
    route = orch.get("/executions/ex-1/logs").respond(
        json={
            "lines": [
                _line("level 1 started", node_id="", agent_id=""),
                _line("calling external emissions-factor API", url="https://factors.example/v2"),
                _line("still waiting for HTTP response after 300s"),
                _line("external API call done", node_id="scope2", agent_id="emissions.scope2"),
            ]
        }
    )
    f = await step7_external.run(make_ctx(), _state())
    assert f.status is StepStatus.PROBLEM and f.evidence["source"] == "orchestrator"
    assert len(f.evidence["external_call_lines"]) == 1
    assert "still waiting for HTTP response" in f.evidence["external_call_lines"][0]
    assert (
        len(f.evidence["matched_lines"]) == 3
    )  # the runbook's grep: agent id | external | http | api | timeout
    assert route.calls.last.request.url.params["limit"] == "500"


async def test_other_nodes_slow_calls_do_not_count(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/executions/ex-1/logs").respond(
        json={
            "lines": [_line("external API timeout, retrying", node_id="scope2", agent_id="emissions.scope2")]
        }
    )
    f = await step7_external.run(make_ctx(), _state())
    assert f.status is StepStatus.OK and f.evidence["external_call_lines"] == []
    assert len(f.evidence["matched_lines"]) == 1


async def test_quiet_logs_are_ok(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/executions/ex-1/logs").respond(json={"lines": [_line("computing scope 1 totals")]})
    f = await step7_external.run(make_ctx(), _state())
    assert f.status is StepStatus.OK


async def test_logs_error_status_is_an_error(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/executions/ex-1/logs").respond(404, json={"error": "not_found", "detail": "no logs"})
    f = await step7_external.run(make_ctx(), _state())
    assert f.status is StepStatus.ERROR and "no logs" in f.summary


async def test_orchestrator_pod_logs_with_kubernetes(
    make_ctx: MakeCtx, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    log = "\n".join(
        [
            '{"level": "INFO", "message": "level 1 started", "execution_id": "ex-1"}',
            '{"level": "WARNING", "node_id": "scope1",'
            ' "message": "agent emissions.scope1 http call timed out, retrying"}',
            '{"level": "INFO", "message": "unrelated"}',
        ]
    )
    kube_api.add_pod(make_pod("orchestrator-0", {"app": "orchestrator-service"}), log=log)
    kube_api.add_pod(make_pod("scope1-abc", {"agent-id": "emissions.scope1"}), log="external api timeout")
    f = await step7_external.run(make_ctx(kubernetes=kube), _state())
    assert f.status is StepStatus.PROBLEM and f.evidence["source"] == "kubernetes"
    assert f.evidence["orchestrator_pods"] == ["orchestrator-0"]
    assert len(f.evidence["external_call_lines"]) == 1


async def test_kubernetes_failure_is_an_error(
    make_ctx: MakeCtx, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    kube_api.fail_status = 403
    f = await step7_external.run(make_ctx(kubernetes=kube), _state())
    assert f.status is StepStatus.ERROR and "403" in f.summary


async def test_unreachable_orchestrator_is_unknown(orch: respx.MockRouter, make_ctx: MakeCtx) -> None:
    orch.get("/executions/ex-1/logs").mock(side_effect=httpx.ConnectTimeout("slow"))
    f = await step7_external.run(make_ctx(), _state())
    assert f.status is StepStatus.UNKNOWN and f.evidence["source"] == "orchestrator"


async def test_orchestrator_pods_are_found_by_the_configured_selector(
    make_ctx: MakeCtx, kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    line = '{"level": "WARNING", "node_id": "scope1", "message": "external api call timed out, retrying"}'
    kube_api.add_pod(make_pod("dag-engine-0", {"app": "dag-engine"}), log=line)
    kube_api.add_pod(make_pod("orchestrator-0", {"app": "orchestrator-service"}), log=line)
    settings = WatchdogSettings(orchestrator_url=ORCH_BASE, orchestrator_pod_selector="app=dag-engine")
    f = await step7_external.run(make_ctx(settings, kubernetes=kube), _state())
    assert f.evidence["orchestrator_pods"] == ["dag-engine-0"]

"""The Kubernetes client: the real `kubernetes` client against a faked API server (aiohttp) on loopback."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from tests.conftest import free_port
from tests.watchdog.fake_kube import FakeKubeApi, make_deployment, make_pod
from watchdog.backends import kubernetes_client
from watchdog.settings import load_settings
from watchdog_sdk.clients.kubernetes import KubernetesClient, build_configuration
from watchdog_sdk.constants import RESTARTED_AT_ANNOTATION
from watchdog_sdk.errors import KubernetesError, KubernetesNotFound, KubernetesUnavailable, WaitTimeout


async def test_list_pods_by_label_with_states_and_limits(
    kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    kube_api.add_pod(make_pod("calc-1", {"agent-id": "calc"}, limits={"cpu": "500m", "memory": "256Mi"}))
    kube_api.add_pod(
        make_pod(
            "calc-2",
            {"agent-id": "calc"},
            ready=False,
            restarts=5,
            waiting_reason="CrashLoopBackOff",
            last_terminated_reason="OOMKilled",
        )
    )
    kube_api.add_pod(make_pod("other-1", {"agent-id": "other"}))
    pods = await kube.list_pods("agent-id=calc")
    assert [p.name for p in pods] == ["calc-1", "calc-2"]
    healthy, crashing = pods
    assert healthy.ready and healthy.phase == "Running" and healthy.restarts == 0 and healthy.reasons() == []
    assert healthy.containers[0].cpu_limit_cores == 0.5
    assert healthy.containers[0].memory_limit_bytes == 256 * 1024 * 1024
    assert not crashing.ready and crashing.restarts == 5
    assert crashing.reasons() == ["CrashLoopBackOff", "OOMKilled"]
    assert kube_api.requests[-1][2]["labelSelector"] == "agent-id=calc"


async def test_get_pod_absent_is_none(kube_api: FakeKubeApi, kube: KubernetesClient) -> None:
    kube_api.add_pod(make_pod("orch-0", {"app": "orchestrator-service"}, deleting=True))
    assert await kube.get_pod("nope") is None
    pod = await kube.get_pod("orch-0")
    assert pod is not None and pod.terminated


async def test_read_pod_log_tail(kube_api: FakeKubeApi, kube: KubernetesClient) -> None:
    kube_api.add_pod(make_pod("calc-1", {"agent-id": "calc"}), log="\n".join(f"line {i}" for i in range(500)))
    text = await kube.read_pod_log("calc-1", tail_lines=200)
    lines = text.splitlines()
    assert len(lines) == 200 and lines[0] == "line 300" and lines[-1] == "line 499"


async def test_pod_metrics_parses_quantities(kube_api: FakeKubeApi, kube: KubernetesClient) -> None:
    kube_api.add_pod(make_pod("calc-1", {"agent-id": "calc"}))
    kube_api.usage["calc-1"] = {"cpu": "250000000n", "memory": "128Mi"}
    usage = await kube.pod_metrics("agent-id=calc")
    assert [(u.name, u.cpu_cores, u.memory_bytes) for u in usage] == [("calc-1", 0.25, 128 * 1024 * 1024)]


async def test_delete_pod_and_wait_for_ready_replacement(
    kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    kube_api.add_pod(make_pod("calc-1", {"agent-id": "calc"}, ready=False, waiting_reason="CrashLoopBackOff"))
    kube_api.on_delete = lambda name: kube_api.add_pod(make_pod("calc-2", {"agent-id": "calc"}, ready=False))
    await kube.delete_pod("calc-1")
    assert "calc-1" not in kube_api.pods

    polls: list[float] = []

    async def sleep(seconds: float) -> None:  # the replacement becomes ready after two polls
        polls.append(seconds)
        if len(polls) == 2:
            kube_api.add_pod(make_pod("calc-2", {"agent-id": "calc"}))

    pod = await kube.wait_for_ready_replacement(
        "agent-id=calc", {"calc-1"}, deadline_seconds=60, poll_seconds=1.5, sleep=sleep
    )
    assert pod.name == "calc-2" and pod.ready and polls == [1.5, 1.5]


async def test_wait_for_replacement_is_bounded(kube_api: FakeKubeApi, kube: KubernetesClient) -> None:
    kube_api.add_pod(make_pod("calc-2", {"agent-id": "calc"}, ready=False))
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(WaitTimeout, match="agent-id=calc"):
        await kube.wait_for_ready_replacement(
            "agent-id=calc",
            {"calc-1"},
            deadline_seconds=10,
            poll_seconds=2,
            monotonic=lambda: now[0],
            sleep=sleep,
        )
    assert now[0] == 10


async def test_delete_missing_pod_is_not_found(kube: KubernetesClient) -> None:
    with pytest.raises(KubernetesNotFound):
        await kube.delete_pod("ghost")


async def test_deployment_env_patch_and_rollout_restart(
    kube_api: FakeKubeApi, kube: KubernetesClient
) -> None:
    kube_api.deployments["orchestrator-service"] = make_deployment(
        "orchestrator-service", {"GL_ORCHESTRATOR_MAX_PARALLEL_NODES": "10", "OTHER": "x"}
    )
    before = await kube.get_deployment("orchestrator-service")
    assert before.env == {"orchestrator": {"GL_ORCHESTRATOR_MAX_PARALLEL_NODES": "10", "OTHER": "x"}}
    after = await kube.patch_deployment_env(
        "orchestrator-service",
        {"GL_ORCHESTRATOR_MAX_PARALLEL_NODES": "5", "GL_ORCHESTRATOR_MAX_CONCURRENT_EXECUTIONS": "25"},
    )
    assert after.env["orchestrator"] == {
        "GL_ORCHESTRATOR_MAX_PARALLEL_NODES": "5",
        "OTHER": "x",
        "GL_ORCHESTRATOR_MAX_CONCURRENT_EXECUTIONS": "25",
    }
    content_type, body = kube_api.patches[-1]
    assert content_type == "application/strategic-merge-patch+json"
    assert body["spec"]["template"]["spec"]["containers"][0]["name"] == "orchestrator"
    stamp = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    restarted = await kube.rollout_restart("orchestrator-service", now=stamp)
    assert restarted.template_annotations[RESTARTED_AT_ANNOTATION] == stamp.isoformat()
    assert restarted.generation == 3


async def test_api_error_status_is_a_kubernetes_error(kube_api: FakeKubeApi, kube: KubernetesClient) -> None:
    kube_api.fail_status = 500
    with pytest.raises(KubernetesError) as info:
        await kube.list_pods("agent-id=calc")
    assert info.value.status == 500 and "injected failure" in info.value.reason


async def test_hanging_api_times_out_once_without_retries(kube_api: FakeKubeApi) -> None:
    kube_api.hang = True
    client = KubernetesClient(build_configuration(host=kube_api.url), "greenlang", timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(KubernetesUnavailable, match="timed out"):
            await client.list_pods("agent-id=calc")
    finally:
        client.close()
    assert time.monotonic() - started < 1.5
    assert len(kube_api.requests) == 1  # no hidden urllib3 retry


async def test_unreachable_api_is_unavailable() -> None:
    client = KubernetesClient(
        build_configuration(host=f"http://127.0.0.1:{free_port()}"), "greenlang", timeout=1
    )
    try:
        with pytest.raises(KubernetesUnavailable):
            await client.get_pod("x")
    finally:
        client.close()


def test_from_settings() -> None:
    assert kubernetes_client(load_settings(kubernetes_enabled=False)) is None
    client = kubernetes_client(
        load_settings(kubernetes_enabled=True, kubernetes_host="http://127.0.0.1:1", namespace="ns1")
    )
    assert client is not None and client.namespace == "ns1"
    client.close()

"""Step 6: distributed locks against a real Redis (and the faked Kubernetes API for holder pods)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import free_port
from tests.watchdog.fake_kube import FakeKubeApi, make_pod
from watchdog.diagnostics import step6_locks
from watchdog_sdk.clients.kubernetes import KubernetesClient
from watchdog_sdk.clients.redis import RedisClient
from watchdog_sdk.constants import heartbeat_key, lock_key
from watchdog_sdk.diagnosis import StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext

pytestmark = pytest.mark.redis
MakeCtx = Callable[..., DiagnosticContext]


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=2)
    yield client
    await client.aclose()


async def _lock(raw: aioredis.Redis, execution_id: str, owner: str, pod: str | None, ttl: int | None) -> None:
    value = json.dumps({"owner": owner, "pod": pod, "token": 41, "acquired_at": "2026-03-01T11:40:00Z"})
    await raw.set(lock_key(execution_id), value, ex=ttl)


async def _heartbeat(raw: aioredis.Redis, owner: str, pod: str, at: str = "2026-03-01T11:59:55Z") -> None:
    await raw.set(heartbeat_key(owner), json.dumps({"pod": pod, "at": at}), ex=15)


async def test_live_holder_is_ok(raw: aioredis.Redis, redis_client: RedisClient, make_ctx: MakeCtx) -> None:
    await _lock(raw, "ex-1", "orch-a", "orch-a-pod", ttl=15)
    await _heartbeat(raw, "orch-a", "orch-a-pod")
    f = await step6_locks.run(make_ctx(redis=redis_client), DiagnosisState("ex-1"))
    assert f.status is StepStatus.OK, f.summary
    assert f.evidence["holder_state"] == "alive" and f.evidence["lock"]["token"] == 41
    assert f.evidence["heartbeat"]["age_seconds"] == 5


@pytest.mark.parametrize(
    ("pod", "state", "said", "evidence"),
    [
        pytest.param(
            make_pod("orch-b-pod", {"app": "orchestrator-service"}),
            "dead",
            "pod orch-a-pod is gone",
            {},
            id="pod-gone",
        ),
        pytest.param(
            make_pod("orch-a-pod", {"app": "orchestrator-service"}, phase="Failed", ready=False),
            "dead",
            "",
            {"pod_phase": "Failed"},
            id="pod-terminated",
        ),
        pytest.param(
            make_pod("orch-a-pod", {"app": "orchestrator-service"}),
            "unconfirmed",
            "still Running",
            {},
            id="pod-still-running",
        ),
    ],
)
async def test_a_holder_without_heartbeat_is_judged_by_its_pod(
    raw: aioredis.Redis,
    redis_client: RedisClient,
    make_ctx: MakeCtx,
    kube_api: FakeKubeApi,
    kube: KubernetesClient,
    pod: dict[str, Any],
    state: str,
    said: str,
    evidence: dict[str, Any],
) -> None:
    """No heartbeat: the holder is dead when its pod is gone or terminated, unconfirmed while it runs."""
    await _lock(raw, "ex-1", "orch-a", "orch-a-pod", ttl=15)
    kube_api.add_pod(pod)
    f = await step6_locks.run(make_ctx(redis=redis_client, kubernetes=kube), DiagnosisState("ex-1"))
    assert f.status is StepStatus.PROBLEM and f.evidence["holder_state"] == state and said in f.summary
    assert {key: f.evidence[key] for key in evidence} == evidence
    assert ("GET", "/api/v1/namespaces/greenlang/pods/orch-a-pod", {}) in kube_api.requests


@pytest.mark.parametrize(
    ("owner", "pod", "heartbeat_at", "state", "said"),
    [
        pytest.param(
            "orch-a", "orch-a-pod", None, "unconfirmed", "no Kubernetes", id="gone-heartbeat-pod-unchecked"
        ),
        pytest.param("laptop-123", None, None, "dead", "outside Kubernetes", id="holder-without-pod"),
        pytest.param("laptop-123", None, "2026-03-01T11:58:00Z", "dead", "120s old", id="stale-heartbeat"),
    ],
)
async def test_without_kubernetes_a_holder_is_judged_by_its_heartbeat(
    raw: aioredis.Redis,
    redis_client: RedisClient,
    make_ctx: MakeCtx,
    owner: str,
    pod: str | None,
    heartbeat_at: str | None,
    state: str,
    said: str,
) -> None:
    """A missing heartbeat proves a pod-less holder gone, but only leaves a pod's holder unconfirmed
    (nothing can look at the pod); a heartbeat older than the grace (30 s) counts as gone."""
    await _lock(raw, "ex-1", owner, pod, ttl=15)
    if heartbeat_at is not None:
        await _heartbeat(raw, owner, pod or "", at=heartbeat_at)
    f = await step6_locks.run(make_ctx(redis=redis_client), DiagnosisState("ex-1"))
    assert f.evidence["holder_state"] == state and said in f.summary


async def test_lock_without_ttl_is_a_problem(
    raw: aioredis.Redis, redis_client: RedisClient, make_ctx: MakeCtx
) -> None:
    await _lock(raw, "ex-1", "orch-a", "orch-a-pod", ttl=None)
    await _heartbeat(raw, "orch-a", "orch-a-pod")
    f = await step6_locks.run(make_ctx(redis=redis_client), DiagnosisState("ex-1"))
    assert f.status is StepStatus.PROBLEM and "no TTL" in f.summary
    assert f.evidence["lock"]["ttl_seconds"] == -1 and f.evidence["locks_without_ttl"] == ["ex-1"]
    assert f.evidence["holder_state"] == "alive"


async def test_other_lock_without_ttl_is_a_problem(
    raw: aioredis.Redis, redis_client: RedisClient, make_ctx: MakeCtx
) -> None:
    await _lock(raw, "ex-9", "orch-a", "orch-a-pod", ttl=None)
    f = await step6_locks.run(make_ctx(redis=redis_client), DiagnosisState("ex-1"))
    assert f.status is StepStatus.PROBLEM and f.evidence["lock"] is None
    assert "1 other lock(s) without TTL: ex-9" in f.summary


async def test_no_lock_is_ok(redis_client: RedisClient, make_ctx: MakeCtx) -> None:
    f = await step6_locks.run(make_ctx(redis=redis_client), DiagnosisState("ex-1"))
    assert f.status is StepStatus.OK and f.evidence["locks_total"] == 0


async def test_step_uses_scan_never_keys(
    raw: aioredis.Redis, redis_client: RedisClient, make_ctx: MakeCtx
) -> None:
    for i in range(30):
        await _lock(raw, f"ex-{i}", "orch-a", "orch-a-pod", ttl=30)
    await raw.config_resetstat()
    f = await step6_locks.run(make_ctx(redis=redis_client), DiagnosisState("ex-1"))
    assert f.evidence["locks_total"] == 30
    stats = await raw.info("commandstats")
    assert stats["cmdstat_scan"]["calls"] >= 1
    assert "cmdstat_keys" not in stats


async def test_without_redis_is_unknown(make_ctx: MakeCtx) -> None:
    f = await step6_locks.run(make_ctx(), DiagnosisState("ex-1"))
    assert f.status is StepStatus.UNKNOWN and f.evidence["reason"] == "redis_not_configured"


async def test_redis_down_is_unknown(make_ctx: MakeCtx) -> None:
    client = RedisClient(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        f = await step6_locks.run(make_ctx(redis=client), DiagnosisState("ex-1"))
    finally:
        await client.aclose()
    assert f.status is StepStatus.UNKNOWN and "Redis unavailable" in f.summary


async def test_ten_thousand_locks_cost_a_few_round_trips_and_one_value_read(
    raw: aioredis.Redis, redis_client: RedisClient, make_ctx: MakeCtx
) -> None:
    value = json.dumps(
        {"owner": "orch-a", "pod": "orch-a-pod", "token": 41, "acquired_at": "2026-03-01T11:40:00Z"}
    )
    async with raw.pipeline(transaction=False) as pipe:
        for i in range(10_000):
            pipe.set(lock_key(f"run-{i:05d}"), value, ex=30)
        pipe.set(lock_key("wedged"), value)  # no TTL
        await pipe.execute()
    await _heartbeat(raw, "orch-a", "orch-a-pod")
    await raw.config_resetstat()
    f = await step6_locks.run(make_ctx(redis=redis_client), DiagnosisState("run-00042"))
    assert f.evidence["locks_total"] == 10_001 and f.evidence["locks_without_ttl"] == ["wedged"]
    assert f.evidence["lock"]["execution_id"] == "run-00042"
    stats = await raw.info("commandstats")
    assert stats["cmdstat_scan"]["calls"] <= 20  # pages of 1,000, not a round trip per lock
    assert stats["cmdstat_get"]["calls"] == 2  # this run's lock, and its holder's heartbeat

"""Fixtures of the playbook tests: the real orchestrator service on loopback (PostgreSQL, Redis locks),
the watchdog's real store (a second PostgreSQL database) as the action ledger, real Redis, and the
faked Kubernetes API driven through the real `kubernetes` client (from tests/watchdog/conftest.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from gl_common.clock import Clock, SystemClock
from playbooks.registry import default_registry
from tests.conftest import fresh_postgres_database
from tests.orchestrator.service_harness import (
    TOKEN,
    Gates,
    Harness,
    make_registry,
    make_settings,
    running_service,
)
from tests.watchdog.conftest import kube, kube_api  # noqa: F401
from tests.watchdog.fake_kube import FakeKubeApi, make_deployment, make_pod
from watchdog.approvals import ApprovalService
from watchdog.assembly import build_responder
from watchdog.incidents import IncidentService
from watchdog.jobs import JobTracker
from watchdog.ledger import StoreLedger
from watchdog.notifier import NullNotifier
from watchdog.policy import parse_policy
from watchdog.responder import Responder
from watchdog.settings import Mode
from watchdog.store import WatchdogStore
from watchdog_sdk.clients import Clients
from watchdog_sdk.clients.kubernetes import KubernetesClient
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.clients.prometheus import PrometheusClient
from watchdog_sdk.clients.redis import RedisClient
from watchdog_sdk.playbook import PlaybookContext, PlaybookLimits

__all__ = ["FakeKubeApi", "make_deployment", "make_pod"]


@dataclass
class Env:
    """The real orchestrator, the watchdog's store and clients, and helpers to build contexts."""

    orch: Harness
    gates: Gates
    client: OrchestratorClient
    store: WatchdogStore
    redis: RedisClient
    incidents: IncidentService
    _seq: list[int] = field(default_factory=lambda: [0])

    async def context(
        self,
        execution_id: str,
        *,
        kubernetes: KubernetesClient | None = None,
        prometheus: PrometheusClient | None = None,
        redis: bool = True,
        limits: PlaybookLimits | None = None,
        incident_id: int | None = None,
        clock: Clock | None = None,
    ) -> PlaybookContext:
        """A context for `execution_id` with a fresh incident (or `incident_id`) and the store's ledger."""
        if incident_id is None:
            opened = await self.incidents.open_or_join(
                execution_id, dag_id=None, source="manual", detection_source="api"
            )
            incident_id = opened.incident.id
        extra: dict[str, Any] = {} if clock is None else {"clock": clock}
        return PlaybookContext(
            incident_id=incident_id,
            execution_id=execution_id,
            clients=Clients(
                orchestrator=self.client,
                redis=self.redis if redis else None,
                kubernetes=kubernetes,
                prometheus=prometheus,
                namespace="greenlang",
            ),
            ledger=StoreLedger(self.store),
            limits=limits or PlaybookLimits(poll_interval_seconds=0.05, lock_grace_seconds=0),
            **extra,
        )

    def responder(
        self,
        policy: dict[str, Any],
        mode: Mode,
        *,
        redis: bool = True,
        clock: Clock | None = None,
        approval_ttl_seconds: float = 600,
    ) -> Responder:
        """The remediation side (responder, state machine, limits) over this store and the real
        playbooks, with a notifier that sends nothing."""
        clock = clock or SystemClock()
        approvals = ApprovalService(
            self.store, b"k" * 32, ttl_seconds=approval_ttl_seconds, public_url="http://wd", clock=clock
        )
        return build_responder(
            store=self.store,
            incidents=self.incidents,
            approvals=approvals,
            notifier=NullNotifier(),
            policy=parse_policy(policy),
            registry=default_registry(),
            clients=Clients(orchestrator=self.client, redis=self.redis if redis else None),
            mode=mode,
            clock=clock,
            jobs=JobTracker(),
            poll_interval_seconds=0.05,
        )

    async def run(self, dag: dict[str, Any], input_data: Any = None) -> str:
        """Register `dag` (if new) and start a run; its execution id."""
        existing = await self.orch.api("GET", f"/dags/{dag['dag_id']}")
        if existing.status_code == 404:
            await self.orch.register(dag)
        return str((await self.orch.execute(dag["dag_id"], input_data))["execution_id"])

    async def wait_running_node(self, execution_id: str, node_id: str, within: float = 10.0) -> None:
        """Poll the trace (bounded) until `node_id` is running."""
        async with asyncio.timeout(within):
            while True:
                trace = await self.client.get_trace(execution_id)
                node = trace.node_traces.get(node_id)
                if node is not None and node.status == "running":
                    return
                await asyncio.sleep(0.02)


def gate_dag(dag_id: str, **fields: Any) -> dict[str, Any]:
    """first (echo) -> stuck (test.gate, blocks until its gate opens) -> last (echo)."""
    retry = {"max_retries": 2, "strategy": "fixed", "base_delay": 0.05, "max_delay": 0.1, "jitter": False}
    return {
        "dag_id": dag_id,
        "execution_timeout_seconds": 600,
        "nodes": {
            "first": {"agent_id": "builtin.echo", "depends_on": []},
            "stuck": {
                "agent_id": "test.gate",
                "depends_on": ["first"],
                "params": {"gate": dag_id},
                "timeout_policy": {"timeout_seconds": 120, "on_timeout": "fail"},
                "retry_policy": retry,
            },
            "last": {"agent_id": "builtin.echo", "depends_on": ["stuck"]},
        },
        **fields,
    }


@pytest.fixture
async def env(_no_pending_tasks: None, postgres_url: str, redis_url: str) -> AsyncIterator[Env]:
    """Depends on the pending-task check so that the check runs after the servers have shut down."""
    gates = Gates()
    settings = make_settings(postgres_url, redis_url=redis_url, replica_id="orch-a", pod_name="orch-a-pod")
    async with (
        fresh_postgres_database() as watchdog_db,
        running_service(settings, registry=make_registry(gates), start_loop=True) as orch,
    ):
        store = await WatchdogStore.open(watchdog_db)
        client = OrchestratorClient(orch.base_url, TOKEN, timeout=5.0)
        redis = RedisClient(redis_url, timeout=2.0)
        try:
            yield Env(orch, gates, client, store, redis, IncidentService(store))
        finally:
            for gate in list(gates.events.values()):
                gate.set()  # let blocked agents end so the service shuts down promptly
            await redis.aclose()
            await client.aclose()
            await store.close()

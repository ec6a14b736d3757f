"""What the diagnostic steps work with: the clients and settings (`DiagnosticContext`), and the facts
steps 1-3 establish for steps 4-8 (`DiagnosisState`).

Built once by whoever diagnoses (the watchdog app, `gl-watchdog diagnose`, the demo) and passed to
`watchdog.diagnostics.runner.diagnose()`. Optional backends are None when not configured (embedded
mode: no Prometheus, Kubernetes or Redis); the steps then report `unknown` with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gl_common.clock import Clock, SystemClock
from watchdog.settings import WatchdogSettings
from watchdog_sdk.clients.kubernetes import KubernetesClient
from watchdog_sdk.clients.orchestrator import Execution, NodeTrace, OrchestratorClient, Trace
from watchdog_sdk.clients.prometheus import PrometheusClient
from watchdog_sdk.clients.redis import RedisClient


@dataclass(frozen=True)
class DiagnosticContext:
    """Clients, settings and clock for one or many diagnoses (it holds no per-diagnosis state).

    `step_timeouts` overrides `settings.step_timeout_seconds` per step number.
    """

    orchestrator: OrchestratorClient
    settings: WatchdogSettings
    prometheus: PrometheusClient | None = None
    kubernetes: KubernetesClient | None = None
    redis: RedisClient | None = None
    clock: Clock = field(default_factory=SystemClock)
    step_timeouts: Mapping[int, float] = field(default_factory=dict)

    async def aclose(self) -> None:
        """Close every client of this context."""
        await self.orchestrator.aclose()
        if self.prometheus is not None:
            self.prometheus.close()
        if self.kubernetes is not None:
            self.kubernetes.close()
        if self.redis is not None:
            await self.redis.aclose()

    def timeout_for(self, step: int) -> float:
        """The time budget of one step."""
        return float(self.step_timeouts.get(step, self.settings.step_timeout_seconds))


@dataclass
class DiagnosisState:
    """Facts established by steps 1-3, read by the later steps (steps 4-8 only read it).

    Step 1 sets `execution` (and `dag_id`), step 2 `trace`, step 3 `stuck_node_id`, `node` and
    `agent_id`. A field stays None when its step could not establish it.
    """

    execution_id: str
    execution: Execution | None = None
    dag_id: str | None = None
    trace: Trace | None = None
    stuck_node_id: str | None = None
    node: NodeTrace | None = None
    agent_id: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

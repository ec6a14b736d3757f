"""The watchdog side's clients of outside systems, one module each, and the bundle that carries them.

`orchestrator` (httpx, the orchestrator's REST API: the only way in), `prometheus`
(prometheus-api-client in a thread), `kubernetes` (the official client in threads) and `redis`
(redis-py asyncio). Each converts its library's errors into `watchdog_sdk.errors` at its boundary and
bounds every call with a timeout. The watchdog builds them from its settings (`watchdog.backends`) and
hands the bundle to diagnostic steps (`DiagnosticContext`) and playbooks (`PlaybookContext`).
"""

from __future__ import annotations

from dataclasses import dataclass

from watchdog_sdk.clients.kubernetes import KubernetesClient
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.clients.prometheus import PrometheusClient
from watchdog_sdk.clients.redis import RedisClient


@dataclass(frozen=True)
class Clients:
    """The outside systems a step or playbook may reach; an optional one is None when not configured."""

    orchestrator: OrchestratorClient
    prometheus: PrometheusClient | None = None
    kubernetes: KubernetesClient | None = None
    redis: RedisClient | None = None
    namespace: str = "greenlang"

    async def aclose(self) -> None:
        """Close every client of the bundle."""
        await self.orchestrator.aclose()
        if self.prometheus is not None:
            self.prometheus.close()
        if self.kubernetes is not None:
            self.kubernetes.close()
        if self.redis is not None:
            await self.redis.aclose()


class ClientAccess:
    """Shortcuts to the members of a `clients` bundle, for the contexts that carry one
    (`DiagnosticContext`, `PlaybookContext`): `ctx.orchestrator` rather than `ctx.clients.orchestrator`."""

    clients: Clients

    @property
    def orchestrator(self) -> OrchestratorClient:
        return self.clients.orchestrator

    @property
    def prometheus(self) -> PrometheusClient | None:
        return self.clients.prometheus

    @property
    def kubernetes(self) -> KubernetesClient | None:
        return self.clients.kubernetes

    @property
    def redis(self) -> RedisClient | None:
        return self.clients.redis

    @property
    def namespace(self) -> str:
        return self.clients.namespace

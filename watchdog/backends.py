"""The watchdog's clients of outside systems, built from its settings.

Called by the composition root (`watchdog.assembly`) and the CLI's one-off commands (`diagnose`): the
client classes live in `watchdog_sdk.clients` and know nothing of `WatchdogSettings`; this module
reads the URLs, tokens and timeouts from the settings and leaves out what is not configured (no
Prometheus URL: no Prometheus client; Kubernetes off: no Kubernetes client; no Redis URL: no Redis).
"""

from __future__ import annotations

import httpx

from gl_common.clock import Clock
from watchdog.settings import WatchdogSettings
from watchdog_sdk.clients import Clients
from watchdog_sdk.clients.kubernetes import KubernetesClient, build_configuration
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.clients.prometheus import PrometheusClient
from watchdog_sdk.clients.redis import RedisClient


def orchestrator_client(
    settings: WatchdogSettings, *, transport: httpx.AsyncBaseTransport | None = None
) -> OrchestratorClient:
    """The orchestrator's API client (URL, token, timeout from the settings)."""
    return OrchestratorClient(
        settings.orchestrator_url,
        settings.orchestrator_token_value(),
        timeout=settings.orchestrator_timeout_seconds,
        transport=transport,
    )


def prometheus_client(settings: WatchdogSettings) -> PrometheusClient | None:
    """A client for `settings.prometheus_url`, or None when Prometheus is not configured."""
    if not settings.prometheus_url:
        return None
    return PrometheusClient(settings.prometheus_url, timeout=settings.prometheus_timeout_seconds)


def kubernetes_client(settings: WatchdogSettings) -> KubernetesClient | None:
    """A client per the settings, or None when Kubernetes is not enabled (embedded mode)."""
    if not settings.kubernetes_enabled:
        return None
    configuration = build_configuration(host=settings.kubernetes_host, kubeconfig=settings.kubeconfig)
    return KubernetesClient(configuration, settings.namespace, timeout=settings.kubernetes_timeout_seconds)


def redis_client(settings: WatchdogSettings, *, clock: Clock | None = None) -> RedisClient | None:
    """A client for `settings.redis_url`, or None when Redis is not configured (embedded mode)."""
    if not settings.redis_url:
        return None
    return RedisClient(settings.redis_url, timeout=settings.redis_timeout_seconds, clock=clock)


async def open_clients(settings: WatchdogSettings, *, clock: Clock | None = None) -> Clients:
    """Every client the settings configure, as one bundle (close it with `aclose()`).

    Kubernetes is configured first: it is the one that fails on a bad set-up (kubeconfig), and then
    nothing else has been opened yet. A failure after that closes what was opened before re-raising.
    """
    kubernetes = kubernetes_client(settings)
    orchestrator = orchestrator_client(settings)
    clients = Clients(orchestrator=orchestrator, kubernetes=kubernetes, namespace=settings.namespace)
    try:
        return Clients(
            orchestrator=orchestrator,
            prometheus=prometheus_client(settings),
            kubernetes=kubernetes,
            redis=redis_client(settings, clock=clock),
            namespace=settings.namespace,
        )
    except BaseException:
        await clients.aclose()
        raise

"""Kubernetes, through the official `kubernetes` client, for agent pods and the orchestrator Deployment.

Used by diagnostic step 4 (agent pods by label `agent-id`, their logs and metrics.k8s.io usage),
step 6 (is a lock holder's pod still there), step 7 (orchestrator pod logs), and the playbooks
(`restart_agent`: delete the pod and wait for a ready replacement; `throttle_concurrency`: patch the
orchestrator Deployment's env and restart it).

The official client is synchronous (urllib3), so every call runs in `asyncio.to_thread` with a
`_request_timeout` and urllib3 retries switched off (a hanging API fails after one timeout, not
four). Configuration: an explicit API host (tests, `kubectl proxy`), an explicit kubeconfig, or
in-cluster config with the default kubeconfig as fallback. Errors are converted here:

- urllib3 transport errors (connection refused, read timeout) → `KubernetesUnavailable`
- `ApiException` 404 → `KubernetesNotFound`, any other status → `KubernetesError(status, reason)`
- configuration that cannot be loaded → `ConfigError`
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException, OpenApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.utils import parse_quantity

from gl_common.clock import utc_now
from watchdog_sdk.constants import RESTARTED_AT_ANNOTATION
from watchdog_sdk.errors import (
    ConfigError,
    KubernetesError,
    KubernetesNotFound,
    KubernetesUnavailable,
    WaitTimeout,
)

T = TypeVar("T")


@dataclass(frozen=True)
class ContainerInfo:
    """One container of a pod: readiness, restarts, current and last state reasons, limits."""

    name: str
    ready: bool = False
    restart_count: int = 0
    state: str = "unknown"  # running | waiting | terminated | unknown
    waiting_reason: str | None = None
    terminated_reason: str | None = None
    last_terminated_reason: str | None = None
    last_exit_code: int | None = None
    last_terminated_at: str | None = None  # ISO 8601: when the last termination finished
    cpu_limit_cores: float | None = None
    memory_limit_bytes: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PodInfo:
    """The parts of a pod the watchdog reasons about."""

    name: str
    phase: str
    ready: bool
    restarts: int
    containers: list[ContainerInfo] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    node_name: str | None = None
    started_at: str | None = None
    deleting: bool = False

    @property
    def terminated(self) -> bool:
        """Gone for good: Succeeded/Failed, or being deleted."""
        return self.phase in ("Succeeded", "Failed") or self.deleting

    def reasons(self) -> list[str]:
        """Every waiting/terminated reason of its containers (current and last), e.g. CrashLoopBackOff."""
        found: list[str] = []
        for c in self.containers:
            for reason in (c.waiting_reason, c.terminated_reason, c.last_terminated_reason):
                if reason and reason not in found:
                    found.append(reason)
        return found

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "phase": self.phase,
            "ready": self.ready,
            "restarts": self.restarts,
            "reasons": self.reasons(),
            "node_name": self.node_name,
            "started_at": self.started_at,
            "deleting": self.deleting,
            "containers": [c.as_dict() for c in self.containers],
        }


@dataclass(frozen=True)
class PodUsage:
    """CPU (cores) and memory (bytes) of one pod from metrics.k8s.io, summed over its containers."""

    name: str
    cpu_cores: float
    memory_bytes: float


@dataclass(frozen=True)
class DeploymentInfo:
    """The parts of a Deployment the playbooks need."""

    name: str
    replicas: int
    ready_replicas: int
    updated_replicas: int
    generation: int
    observed_generation: int
    env: dict[str, dict[str, str]]  # container name -> env name -> value
    template_annotations: dict[str, str]


def _quantity(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(parse_quantity(value))  # type: ignore[no-untyped-call]
    except (ValueError, InvalidOperation, TypeError):
        return None


def _container_info(status: Any, limits: dict[str, Any]) -> ContainerInfo:
    state = status.state
    last = status.last_state
    kind, waiting_reason, terminated_reason = "unknown", None, None
    if state is not None:
        if state.running is not None:
            kind = "running"
        elif state.waiting is not None:
            kind, waiting_reason = "waiting", state.waiting.reason
        elif state.terminated is not None:
            kind, terminated_reason = "terminated", state.terminated.reason
    last_reason, last_code, last_at = None, None, None
    if last is not None and last.terminated is not None:
        last_reason, last_code = last.terminated.reason, last.terminated.exit_code
        finished = last.terminated.finished_at
        last_at = finished.isoformat() if isinstance(finished, datetime) else finished
    return ContainerInfo(
        name=status.name,
        ready=bool(status.ready),
        restart_count=int(status.restart_count or 0),
        state=kind,
        waiting_reason=waiting_reason,
        terminated_reason=terminated_reason,
        last_terminated_reason=last_reason,
        last_exit_code=last_code,
        last_terminated_at=last_at,
        cpu_limit_cores=_quantity(limits.get("cpu")),
        memory_limit_bytes=_quantity(limits.get("memory")),
    )


def pod_info(pod: Any) -> PodInfo:
    """A `V1Pod` reduced to a PodInfo."""
    limits_by_container: dict[str, dict[str, Any]] = {}
    for container in (pod.spec.containers if pod.spec else None) or []:
        resources = container.resources
        limits_by_container[container.name] = dict((resources.limits if resources else None) or {})
    status = pod.status
    statuses = (status.container_statuses if status else None) or []
    containers = [_container_info(s, limits_by_container.get(s.name, {})) for s in statuses]
    ready = False
    for condition in (status.conditions if status else None) or []:
        if condition.type == "Ready":
            ready = condition.status == "True"
    started = status.start_time if status else None
    return PodInfo(
        name=pod.metadata.name,
        phase=(status.phase if status else None) or "Unknown",
        ready=ready,
        restarts=sum(c.restart_count for c in containers),
        containers=containers,
        labels=dict(pod.metadata.labels or {}),
        node_name=pod.spec.node_name if pod.spec else None,
        started_at=started.isoformat() if isinstance(started, datetime) else started,
        deleting=pod.metadata.deletion_timestamp is not None,
    )


def build_configuration(
    *, host: str | None = None, kubeconfig: Path | None = None, context: str | None = None
) -> k8s.Configuration:
    """A client Configuration: explicit host, else kubeconfig file, else in-cluster, else ~/.kube/config."""
    configuration = k8s.Configuration()
    try:
        if host:
            configuration.host = host.rstrip("/")
        elif kubeconfig is not None:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig), context=context, client_configuration=configuration
            )
        else:
            try:
                k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
            except ConfigException:
                k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                    context=context, client_configuration=configuration
                )
    except (ConfigException, OSError) as exc:
        raise ConfigError(f"cannot load Kubernetes configuration: {exc}") from exc
    # One attempt per call: the caller's timeout is the whole budget, no hidden urllib3 retries.
    configuration.retries = urllib3.Retry(total=0, connect=0, read=0, redirect=0, status=0, other=0)
    return configuration


class KubernetesClient:
    """Namespace-scoped access to pods, pod logs, pod metrics and Deployments."""

    def __init__(
        self,
        configuration: k8s.Configuration,
        namespace: str,
        *,
        timeout: float = 10.0,
    ) -> None:
        self.namespace = namespace
        self.timeout = timeout
        self._api_client = k8s.ApiClient(configuration)
        self._core = k8s.CoreV1Api(self._api_client)
        self._apps = k8s.AppsV1Api(self._api_client)
        self._custom = k8s.CustomObjectsApi(self._api_client)

    def close(self) -> None:
        """Release the connection pool."""
        self._api_client.close()  # type: ignore[no-untyped-call]

    async def _call(self, what: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        kwargs.setdefault("_request_timeout", self.timeout)
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except ApiException as exc:
            reason = _api_reason(exc)
            if exc.status == 404:
                raise KubernetesNotFound(404, f"{what}: {reason}") from exc
            raise KubernetesError(int(exc.status or 0), f"{what}: {reason}") from exc
        except OpenApiException as exc:
            raise KubernetesError(0, f"{what}: {exc}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise KubernetesUnavailable(
                f"Kubernetes API unavailable during {what}: {_transport_reason(exc)}"
            ) from exc
        except OSError as exc:
            raise KubernetesUnavailable(f"Kubernetes API unavailable during {what}: {exc}") from exc

    # -- pods -------------------------------------------------------------------------------------

    async def list_pods(self, label_selector: str) -> list[PodInfo]:
        """Pods of the namespace matching `label_selector` (e.g. `agent-id=calc`), sorted by name."""
        result = await self._call(
            f"list pods {label_selector}",
            self._core.list_namespaced_pod,
            self.namespace,
            label_selector=label_selector,
        )
        return sorted((pod_info(p) for p in result.items or []), key=lambda p: p.name)

    async def get_pod(self, name: str) -> PodInfo | None:
        """One pod by name, or None when it does not exist."""
        try:
            pod = await self._call(f"read pod {name}", self._core.read_namespaced_pod, name, self.namespace)
        except KubernetesNotFound:
            return None
        return pod_info(pod)

    async def read_pod_log(
        self, name: str, tail_lines: int = 200, container: str | None = None, previous: bool = False
    ) -> str:
        """The last `tail_lines` lines of a pod's log (of the previous container instance if asked)."""
        kwargs: dict[str, Any] = {"tail_lines": tail_lines, "previous": previous}
        if container:
            kwargs["container"] = container
        text = await self._call(
            f"read log of pod {name}", self._core.read_namespaced_pod_log, name, self.namespace, **kwargs
        )
        return text if isinstance(text, str) else str(text)

    async def pod_metrics(self, label_selector: str) -> list[PodUsage]:
        """CPU and memory usage from metrics.k8s.io (`kubectl top pods -l ...`)."""
        result = await self._call(
            f"pod metrics {label_selector}",
            self._custom.list_namespaced_custom_object,
            "metrics.k8s.io",
            "v1beta1",
            self.namespace,
            "pods",
            label_selector=label_selector,
        )
        usages = []
        payload: dict[str, Any] = result if isinstance(result, dict) else {}
        for item in payload.get("items", []):
            cpu = Decimal(0)
            memory = Decimal(0)
            for container in item.get("containers", []):
                usage = container.get("usage", {})
                cpu += Decimal(str(_quantity(usage.get("cpu")) or 0))
                memory += Decimal(str(_quantity(usage.get("memory")) or 0))
            usages.append(PodUsage(item.get("metadata", {}).get("name", "?"), float(cpu), float(memory)))
        return usages

    async def delete_pod(self, name: str, grace_period_seconds: int | None = None) -> None:
        """Delete one pod (its controller creates a replacement)."""
        kwargs: dict[str, Any] = {}
        if grace_period_seconds is not None:
            kwargs["grace_period_seconds"] = grace_period_seconds
        await self._call(
            f"delete pod {name}", self._core.delete_namespaced_pod, name, self.namespace, **kwargs
        )

    async def wait_for_ready_replacement(
        self,
        label_selector: str,
        replaced: set[str],
        *,
        deadline_seconds: float = 120.0,
        poll_seconds: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> PodInfo:
        """Poll until a ready pod not in `replaced` matches `label_selector`.

        Bounded: raises WaitTimeout after `deadline_seconds` (by the injected `monotonic`)."""
        end = monotonic() + deadline_seconds
        while True:
            for pod in await self.list_pods(label_selector):
                if pod.name not in replaced and pod.ready and not pod.terminated:
                    return pod
            if monotonic() >= end:
                raise WaitTimeout(
                    f"no ready replacement pod for {label_selector} within {deadline_seconds:g}s"
                )
            await sleep(poll_seconds)

    # -- deployments ------------------------------------------------------------------------------

    async def get_deployment(self, name: str) -> DeploymentInfo:
        """One Deployment's replica counts, container env and pod-template annotations."""
        dep = await self._call(
            f"read deployment {name}", self._apps.read_namespaced_deployment, name, self.namespace
        )
        env: dict[str, dict[str, str]] = {}
        spec: Any = dep.spec
        metadata: Any = dep.metadata
        template = spec.template
        for container in template.spec.containers or []:
            env[container.name] = {e.name: e.value for e in container.env or [] if e.value is not None}
        status = dep.status
        return DeploymentInfo(
            name=str(metadata.name),
            replicas=int(spec.replicas or 0),
            ready_replicas=int((status.ready_replicas if status else 0) or 0),
            updated_replicas=int((status.updated_replicas if status else 0) or 0),
            generation=int(metadata.generation or 0),
            observed_generation=int((status.observed_generation if status else 0) or 0),
            env=env,
            template_annotations=dict((template.metadata.annotations if template.metadata else None) or {}),
        )

    async def patch_deployment_env(
        self, name: str, env: dict[str, str], container: str | None = None
    ) -> DeploymentInfo:
        """Set env vars on a container (strategic merge, like `kubectl set env`); the first container
        when `container` is not given."""
        if container is None:
            current = await self.get_deployment(name)
            if not current.env:
                raise KubernetesError(0, f"deployment {name} has no containers")
            container = next(iter(current.env))
        body = {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": container, "env": [{"name": k, "value": v} for k, v in env.items()]}
                        ]
                    }
                }
            }
        }
        await self._call(
            f"patch env of deployment {name}",
            self._apps.patch_namespaced_deployment,
            name,
            self.namespace,
            body,
        )
        return await self.get_deployment(name)

    async def rollout_restart(self, name: str, now: datetime | None = None) -> DeploymentInfo:
        """`kubectl rollout restart`: stamp the pod template with kubectl.kubernetes.io/restartedAt."""
        stamp = (now or utc_now()).isoformat()
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: stamp}}}}}
        await self._call(
            f"rollout restart of deployment {name}",
            self._apps.patch_namespaced_deployment,
            name,
            self.namespace,
            body,
        )
        return await self.get_deployment(name)


def _api_reason(exc: ApiException) -> str:
    reason = str(exc.reason or "error")
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if body:
        reason = f"{reason}: {str(body)[:300]}"
    return reason


def _transport_reason(exc: urllib3.exceptions.HTTPError) -> str:
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        inner = exc.reason
        if isinstance(inner, urllib3.exceptions.ReadTimeoutError):
            return "read timed out"
        return f"{type(inner).__name__}: {inner}"
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return "read timed out"
    return f"{type(exc).__name__}: {exc}"

"""Readiness: which of the watchdog's dependencies answer, and whether the replica can serve at all.

Answered by `GET /readyz` (`watchdog.api`) and exported as `gl_watchdog_dependency_up{dependency}`
(1 up, 0 down; absent when not configured). Only the store is required: without it nothing can be
recorded, so `/readyz` is 503 and the replica leaves the Service. Redis (leadership, lock checks),
Prometheus (the condition, diagnosis queries), the orchestrator (every diagnosis and remediation) and
Kubernetes (agent pods) are optional for serving: when one is down the answer stays 200 with
`"status": "degraded"` and names it, because taking replicas out of service would not bring it back
and would drop the Alertmanager webhooks they can still record.

    /readyz ──▶ the store, pinged now (bounded) ──▶ 503 not_ready, or
                the optional ones, from the last check (`check_once`, every `interval_seconds` in the
                background; a stale answer starts a new check) ──▶ 200 ready | degraded

Each check has its own timeout (`timeout_seconds`), so a dependency that hangs never makes the
probe hang. Built by the composition root (`watchdog.assembly`), started with the watchdog.

A plugin left out at start (`watchdog.plugins`: an import error, a bad parameter model) makes the
answer `degraded` too, for good: `degraded` names it (`plugin:<name>`) and `plugins` gives its group,
source and reason, as `gl_watchdog_plugin_problems` counts it. The replica serves without it (the
policy does not reference it, or the service would not have started), so it stays in the Service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from gl_common.clock import Clock
from watchdog.metrics import WatchdogMetrics
from watchdog.plugins import PluginProblem
from watchdog.store import WatchdogStore
from watchdog_sdk.clients import Clients
from watchdog_sdk.constants import ORCHESTRATOR_APP_SELECTOR
from watchdog_sdk.errors import WatchdogError

log = logging.getLogger(__name__)

OPTIONAL: Final = ("redis", "prometheus", "orchestrator", "kubernetes")


@dataclass(frozen=True)
class DependencyState:
    """One dependency as last seen: up, down, or not checked yet (None)."""

    name: str
    required: bool
    up: bool | None
    detail: str
    checked_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "required": self.required,
            "detail": self.detail,
            "checked_at": None if self.checked_at is None else self.checked_at.isoformat(),
        }


@dataclass(frozen=True)
class Readiness:
    """The answer of `/readyz`: ready (the store answers), and every configured dependency's state."""

    dependencies: dict[str, DependencyState]
    not_configured: list[str] = field(default_factory=list)
    plugin_problems: Sequence[PluginProblem] = ()

    @property
    def ready(self) -> bool:
        return all(d.up for d in self.dependencies.values() if d.required)

    @property
    def degraded(self) -> list[str]:
        """The optional dependencies that did not answer their last check, and the plugins left out."""
        down = [d.name for d in self.dependencies.values() if not d.required and d.up is False]
        return down + [f"plugin:{p.name}" for p in self.plugin_problems]

    @property
    def status(self) -> str:
        if not self.ready:
            return "not_ready"
        return "degraded" if self.degraded else "ready"

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "degraded": self.degraded,
            "dependencies": {name: d.as_json() for name, d in self.dependencies.items()},
            "not_configured": self.not_configured,
            "plugins": [
                {"group": p.group, "name": p.name, "source": p.source, "reason": p.reason}
                for p in self.plugin_problems
            ],
        }


class DependencyMonitor:
    """Checks the store and the configured optional dependencies, each within `timeout_seconds`."""

    def __init__(
        self,
        store: WatchdogStore,
        clients: Clients,
        metrics: WatchdogMetrics,
        clock: Clock,
        *,
        timeout_seconds: float = 2.0,
        interval_seconds: float = 15.0,
        plugin_problems: Sequence[PluginProblem] = (),
    ) -> None:
        self.plugin_problems = tuple(plugin_problems)
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.timeout_seconds = timeout_seconds
        self.interval_seconds = interval_seconds
        self._checks = _optional_checks(clients)
        self._last: dict[str, DependencyState] = {}
        self._last_checked: float | None = None  # monotonic time of the last optional check
        self._refresh: asyncio.Task[None] | None = None
        self._loop: asyncio.Task[None] | None = None

    async def readiness(self) -> Readiness:
        """The store now, the optional dependencies as last checked (a stale check is refreshed in
        the background, so the probe never waits for a slow dependency)."""
        store = await self._check("store", self.store.ping, required=True)
        stale = (
            self._last_checked is None or self.clock.monotonic() - self._last_checked > self.interval_seconds
        )
        if stale and (self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.create_task(self._check_optional(), name="dependency-check")
        optional = {
            name: self._last.get(name, DependencyState(name, False, None, "not checked yet"))
            for name in self._checks
        }
        return Readiness({"store": store, **optional}, self._not_configured(), self.plugin_problems)

    async def check_once(self) -> Readiness:
        """Check every dependency now (concurrently, each bounded) and set the gauges."""
        store = await self._check("store", self.store.ping, required=True)
        await self._check_optional()
        return Readiness({"store": store, **self._last}, self._not_configured(), self.plugin_problems)

    def _not_configured(self) -> list[str]:
        return [name for name in OPTIONAL if name not in self._checks]

    async def _check_optional(self) -> None:
        states = await asyncio.gather(
            *(self._check(name, check, required=False) for name, check in self._checks.items())
        )
        self._last = {state.name: state for state in states}
        self._last_checked = self.clock.monotonic()

    async def _check(
        self, name: str, check: Callable[[], Awaitable[object]], *, required: bool
    ) -> DependencyState:
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await check()
        except TimeoutError:
            state = DependencyState(
                name, required, False, f"no answer within {self.timeout_seconds:g}s", self.clock.now()
            )
        except WatchdogError as exc:
            state = DependencyState(name, required, False, str(exc), self.clock.now())
        else:
            state = DependencyState(name, required, True, "ok", self.clock.now())
        self.metrics.dependency_up.labels(dependency=name).set(1 if state.up else 0)
        if not state.up:
            log.warning("dependency %s is down: %s", name, state.detail)
        return state

    # -- the background check

    def start(self) -> None:
        """Check every `interval_seconds` until `aclose()` (keeps the gauges current without probes)."""
        if self._loop is None:
            self._loop = asyncio.create_task(self._run(), name="dependency-monitor")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(WatchdogError):
                await self.check_once()
            await self.clock.sleep(self.interval_seconds)

    async def aclose(self) -> None:
        """Stop the background check and any refresh under way."""
        tasks = [t for t in (self._loop, self._refresh) if t is not None]
        self._loop = self._refresh = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _optional_checks(clients: Clients) -> dict[str, Callable[[], Awaitable[object]]]:
    """How each configured optional dependency is asked whether it answers."""
    checks: dict[str, Callable[[], Awaitable[object]]] = {}
    if clients.redis is not None:
        checks["redis"] = clients.redis.ping
    if clients.prometheus is not None:
        prometheus = clients.prometheus
        checks["prometheus"] = lambda: prometheus.query("vector(1)")
    checks["orchestrator"] = clients.orchestrator.get_metrics  # reachable, and the token accepted
    if clients.kubernetes is not None:
        kubernetes = clients.kubernetes
        checks["kubernetes"] = lambda: kubernetes.list_pods(ORCHESTRATOR_APP_SELECTOR)
    return checks

"""The diagnostic-step interface: what a step is (`DiagnosticStep`), what it works with
(`DiagnosticContext`: clients, settings, clock) and the facts steps 1-3 establish for the later ones
(`DiagnosisState`).

The watchdog builds one context (`watchdog.assembly`, `gl-watchdog diagnose`, the demo) and its runner
(`watchdog.diagnostics.runner`) calls each step with it. The built-in steps 1-8
(`watchdog.diagnostics.step<N>_<name>`) implement this interface and import only this package and
`gl_common`, as step plugins will. A step gets clients, never the watchdog's store. Optional backends are
None when not configured (embedded mode: no Prometheus, Kubernetes or Redis); the steps then report
`unknown` with the reason.

A plugin step (entry point group `gl_watchdog.diagnostics`, loaded by `watchdog.plugins`) is a
`DiagnosticStep` too: a number of its own in 9-99, a name, its `run`, its own `timeout_seconds`, and
the `causes` it may name. It runs concurrently with steps 4-8 and may name one of its causes by
returning a `problem` Finding with `evidence["likely_cause"]` (`CAUSE_KEY`), with the evidence for
it in its summary; the runner uses that cause when the runbook's own rules find none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import NoOpTracer, Tracer

from gl_common.clock import Clock, SystemClock
from watchdog_sdk.clients import ClientAccess, Clients
from watchdog_sdk.clients.orchestrator import Execution, NodeTrace, Trace
from watchdog_sdk.constants import ORCHESTRATOR_APP_SELECTOR
from watchdog_sdk.diagnosis import Finding
from watchdog_sdk.stuck import StuckSettings


@dataclass(frozen=True)
class DiagnosticSettings:
    """The settings steps read (the watchdog fills them from its own: `WatchdogSettings.diagnostics()`)."""

    step_timeout_seconds: float = 10.0
    # A lock holder's heartbeat older than this counts as gone (0: its age is ignored).
    heartbeat_grace_seconds: float = 30.0
    # The orchestrator's pods, whose logs step 7 reads in Kubernetes.
    orchestrator_pod_selector: str = ORCHESTRATOR_APP_SELECTOR
    # A running run with no timeout at all is a problem once it has run this long (None: never).
    max_run_age_seconds: float | None = None
    # The thresholds of the stuck states steps 1 and 3 judge (stall, queue, cancel, resume loop, retries).
    stuck: StuckSettings = field(default_factory=StuckSettings)


@dataclass(frozen=True)
class DiagnosticContext(ClientAccess):
    """Clients, settings and clock for one or many diagnoses (it holds no per-diagnosis state).

    `step_timeouts` overrides `settings.step_timeout_seconds` per step number.
    """

    clients: Clients
    settings: DiagnosticSettings = field(default_factory=DiagnosticSettings)
    clock: Clock = field(default_factory=SystemClock)
    step_timeouts: Mapping[int, float] = field(default_factory=dict)
    # Makes a span per step (`watchdog.diagnosis.step`); the watchdog's, where spans are exported.
    tracer: Tracer = field(default_factory=NoOpTracer)

    def timeout_for(self, step: int, default: float | None = None) -> float:
        """The time budget of one step: `step_timeouts`, else the step's own `default` (a plugin
        step's `timeout_seconds`), else the settings'."""
        fallback = self.settings.step_timeout_seconds if default is None else default
        return float(self.step_timeouts.get(step, fallback))


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


StepFn = Callable[[DiagnosticContext, DiagnosisState], Awaitable[Finding]]
"""A step's work: look at one execution and return what it found. It should not raise (the runner
turns an exception or a timeout into an `error` Finding anyway)."""


@dataclass(frozen=True)
class DiagnosticStep:
    """One diagnostic step: its number (the runbook's 1-8, a plugin's 9-99), its name, its function,
    its own time budget (None: the settings') and the likely causes it may name (plugin steps).

    The runner runs steps 1-3 in order (each fills `DiagnosisState` for the next) and the others
    concurrently, each under its own timeout (`DiagnosticContext.timeout_for`).
    """

    number: int
    name: str
    run: StepFn
    timeout_seconds: float | None = None
    causes: frozenset[str] = frozenset()

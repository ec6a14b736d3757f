"""The watchdog's own Prometheus metrics (`gl_watchdog_*`), one CollectorRegistry per service instance.

Built by the composition root (`watchdog.assembly`); updated by the intake (alerts received),
incidents (opened, open count), the diagnosis jobs (diagnoses, duration, per-step outcomes, the
queue and what it deferred, writes that failed), the sweeps (sweeps, leadership), the reconciler
(jobs taken back, retried, escalated), the readiness check (each dependency up or down) and the
remediation side (remediations, approvals); served by
`GET /metrics` in `watchdog.api`. Names come from `watchdog_sdk.constants` (docs/architecture.md,
"Metrics").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from watchdog_sdk.constants import (
    W_ALERT_CONFLICTS,
    W_ALERTS_RECEIVED,
    W_ALERTS_REJECTED,
    W_APPROVALS,
    W_AUTH_FAILURES,
    W_DEPENDENCY_UP,
    W_DIAGNOSES,
    W_DIAGNOSES_DEFERRED,
    W_DIAGNOSIS_DURATION,
    W_DIAGNOSIS_QUEUE,
    W_DIAGNOSTIC_STEPS,
    W_INCIDENTS_OPENED,
    W_INTAKE_SHED,
    W_IS_LEADER,
    W_JOB_SAVE_FAILURES,
    W_JOBS_RECONCILED,
    W_OPEN_INCIDENTS,
    W_PENDING_APPROVALS,
    W_PLUGIN_PROBLEMS,
    W_REMEDIATIONS,
    W_SWEEPS,
)
from watchdog_sdk.diagnosis import Diagnosis

if TYPE_CHECKING:
    from watchdog.plugins import PluginProblem

CONTENT_TYPE = CONTENT_TYPE_LATEST


class WatchdogMetrics:
    """Every `gl_watchdog_*` metric, registered on a private registry (no global state)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.alerts_received = Counter(
            W_ALERTS_RECEIVED,
            "Alertmanager alerts received, by alert name and status",
            ["alertname", "status"],
            registry=r,
        )
        self.alerts_rejected = Counter(
            W_ALERTS_REJECTED,
            "Alerts of a webhook payload that failed validation (the rest of the payload was applied)",
            registry=r,
        )
        self.alert_conflicts = Counter(
            W_ALERT_CONFLICTS,
            "Alerts whose episode (fingerprint + startsAt) was recorded for another execution or DAG",
            registry=r,
        )
        self.intake_shed = Counter(
            W_INTAKE_SHED,
            "Webhook deliveries refused with 503 and Retry-After before anything was written (overload)",
            registry=r,
        )
        self.incidents_opened = Counter(
            W_INCIDENTS_OPENED, "Incidents opened, by source (alert|sweep|manual)", ["source"], registry=r
        )
        self.open_incidents = Gauge(
            W_OPEN_INCIDENTS, "Incidents not yet resolved, escalated or closed", registry=r
        )
        self.diagnoses = Counter(
            W_DIAGNOSES, "Diagnoses completed, by most likely cause", ["likely_cause"], registry=r
        )
        self.diagnosis_duration = Histogram(
            W_DIAGNOSIS_DURATION,
            "Wall-clock time of one diagnosis (steps 1-8)",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60),
            registry=r,
        )
        self.diagnostic_steps = Counter(
            W_DIAGNOSTIC_STEPS, "Diagnostic step outcomes, by step and status", ["step", "status"], registry=r
        )
        self.remediations = Counter(
            W_REMEDIATIONS,
            "Remediations finished, by playbook and outcome",
            ["playbook", "outcome"],
            registry=r,
        )
        self.approvals = Counter(
            W_APPROVALS, "Approval prompts answered, by decision", ["decision"], registry=r
        )
        self.pending_approvals = Gauge(
            W_PENDING_APPROVALS, "Approval prompts waiting for an answer", registry=r
        )
        self.sweeps = Counter(W_SWEEPS, "Sweeps run, by result", ["result"], registry=r)
        self.is_leader = Gauge(W_IS_LEADER, "1 while this replica is the sweep leader", registry=r)
        self.auth_failures = Counter(
            W_AUTH_FAILURES,
            "Requests refused before authentication (bearer or link token), by reason; each is counted, "
            "only some are logged and audited (a rate per source)",
            ["reason"],
            registry=r,
        )
        self.diagnosis_queue = Gauge(
            W_DIAGNOSIS_QUEUE, "Diagnoses waiting for a worker on this replica", registry=r
        )
        self.diagnoses_deferred = Counter(
            W_DIAGNOSES_DEFERRED,
            "Diagnoses not queued (or pushed out by an older incident) because the queue was full",
            registry=r,
        )
        self.job_save_failures = Counter(
            W_JOB_SAVE_FAILURES,
            "Jobs whose outcome could not be written after retries (the reconciler takes them back)",
            ["job"],
            registry=r,
        )
        self.jobs_reconciled = Counter(
            W_JOBS_RECONCILED,
            "Jobs of incidents the reconciler took back, retried or escalated, by job and action",
            ["job", "action"],
            registry=r,
        )
        self.dependency_up = Gauge(
            W_DEPENDENCY_UP,
            "1 when the dependency answered the last readiness check, 0 when not (absent: not configured)",
            ["dependency"],
            registry=r,
        )
        self.plugins_not_loaded = Gauge(
            W_PLUGIN_PROBLEMS,
            "1 for each plugin left out at start (import error, wrong type, bad params model, duplicate)",
            ["group", "plugin"],
            registry=r,
        )

    def observe_diagnosis(self, diagnosis: Diagnosis, seconds: float) -> None:
        """Count one finished diagnosis, its duration and the outcome of each of its steps."""
        self.diagnoses.labels(likely_cause=diagnosis.likely_cause).inc()
        self.diagnosis_duration.observe(seconds)
        for finding in diagnosis.findings:
            self.diagnostic_steps.labels(step=str(finding.step), status=finding.status.value).inc()

    def plugin_problems(self, problems: Iterable[PluginProblem]) -> None:
        """Show the plugins left out at start (`watchdog.plugins`), one series each."""
        for problem in problems:
            self.plugins_not_loaded.labels(group=problem.group, plugin=problem.name).set(1)

    def auth_failure(self, reason: str) -> None:
        """Count one request refused before authentication."""
        self.auth_failures.labels(reason=reason).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)

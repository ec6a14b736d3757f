"""The watchdog's own Prometheus metrics (`gl_watchdog_*`), one CollectorRegistry per service instance.

Built by the composition root (`watchdog.assembly`); updated by the intake (alerts received),
incidents (opened; open and held counts at scrape time; the time to close of those closed without a
remediation), the diagnosis jobs (diagnoses, duration, per-step outcomes, the
queue and what it deferred, writes that failed), the sweeps (sweeps, leadership), the reconciler
(jobs taken back, retried, escalated), the readiness check (each dependency up or down) and the
remediation side (remediations, approvals); served by
`GET /metrics` in `watchdog.api`. Names come from `watchdog_sdk.constants` (docs/architecture.md,
"Metrics").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from watchdog.migrations import HELD_KINDS
from watchdog.records import Approval, Incident
from watchdog_sdk.constants import (
    W_ALERT_CONFLICTS,
    W_ALERTS_RECEIVED,
    W_ALERTS_REJECTED,
    W_APPROVALS,
    W_APPROVALS_PAST_EXPIRY,
    W_AUTH_FAILURES,
    W_CIRCUIT_BREAKER_OPEN,
    W_DEPENDENCY_UP,
    W_DIAGNOSES,
    W_DIAGNOSES_DEFERRED,
    W_DIAGNOSIS_DURATION,
    W_DIAGNOSIS_QUEUE,
    W_DIAGNOSTIC_STEPS,
    W_INCIDENTS_HELD,
    W_INCIDENTS_OPENED,
    W_INTAKE_SHED,
    W_IS_LEADER,
    W_JOB_SAVE_FAILURES,
    W_JOBS_RECONCILED,
    W_NOTIFICATIONS,
    W_OLDEST_PENDING_APPROVAL_AGE,
    W_OPEN_INCIDENTS,
    W_PENDING_APPROVALS,
    W_PLUGIN_PROBLEMS,
    W_REMEDIATIONS,
    W_SILENCE_CHECKS,
    W_SWEEPS,
    W_TIME_TO_CLOSE,
    W_TIME_TO_DECIDE,
    W_TIME_TO_DETECT,
    W_TIME_TO_DIAGNOSE,
    W_TIME_TO_REMEDIATE,
)
from watchdog_sdk.diagnosis import Diagnosis

if TYPE_CHECKING:
    from watchdog.plugins import PluginProblem

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Time from a run crossing its timeout to the incident's open, diagnosis and verified remediation: the
# alert's `for` (10m) and Alertmanager's grouping come first, so the buckets run from 1 minute to 4 hours.
PHASE_BUCKETS = (60, 120, 300, 600, 900, 1200, 1800, 2700, 3600, 7200, 14400)
# How an incident closes without a remediation (`time_to_close`'s outcome label).
CLOSED_WITHOUT_ACTION = ("resolved_without_action", "not_stuck", "closed_by_hand")
# A human's answer to a prompt: seconds (a click on the page) to hours (the prompt's expiry).
DECIDE_BUCKETS = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400)


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
        self.incidents_held = Gauge(
            W_INCIDENTS_HELD,
            "Open incidents held (neither prompted nor acted on) by kind: silence, maintenance (a window; "
            "also when a silence covers it too) or check_failure (Alertmanager unreadable, policy hold)",
            ["kind"],
            registry=r,
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
        self.silence_checks = Counter(
            W_SILENCE_CHECKS,
            "Checks of Alertmanager's silences, by result (silenced|clear|error)",
            ["result"],
            registry=r,
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

        self.notifications = Counter(
            W_NOTIFICATIONS,
            "Notifications sent, by target (slack|json|pagerduty|opsgenie|email|grafana), kind (prompt|"
            "escalation|resolve|annotation) and result (ok|failed)",
            ["target", "kind", "result"],
            registry=r,
        )
        self.circuit_breaker_open = Gauge(
            W_CIRCUIT_BREAKER_OPEN,
            "1 while the remediation circuit breaker is open (too many failed remediations in its window)",
            registry=r,
        )
        self.oldest_pending_approval_age = Gauge(
            W_OLDEST_PENDING_APPROVAL_AGE,
            "Age of the oldest approval prompt still waiting for an answer (0: none is waiting)",
            registry=r,
        )
        self.approvals_past_expiry = Gauge(
            W_APPROVALS_PAST_EXPIRY,
            "Approval prompts still pending although their expiry has passed (the expiry is not running)",
            registry=r,
        )
        self.time_to_detect = Histogram(
            W_TIME_TO_DETECT,
            "From a run crossing its timeout to the watchdog opening its incident",
            buckets=PHASE_BUCKETS,
            registry=r,
        )
        self.time_to_diagnose = Histogram(
            W_TIME_TO_DIAGNOSE,
            "From a run crossing its timeout to its incident's first diagnosis",
            buckets=PHASE_BUCKETS,
            registry=r,
        )
        self.time_to_remediate = Histogram(
            W_TIME_TO_REMEDIATE,
            "From a run crossing its timeout to a remediation of it applied and verified",
            buckets=PHASE_BUCKETS,
            registry=r,
        )
        self.time_to_close = Histogram(
            W_TIME_TO_CLOSE,
            "From a run crossing its timeout (else its incident's opening) to the incident closed without "
            "a remediation, by outcome (resolved_without_action: its alert resolved; not_stuck: the "
            "diagnosis found the run had ended; closed_by_hand)",
            ["outcome"],
            buckets=PHASE_BUCKETS,
            registry=r,
        )
        for outcome in CLOSED_WITHOUT_ACTION:  # every series from the start: rate() sees the first one
            self.time_to_close.labels(outcome=outcome)
        for kind in HELD_KINDS:
            self.incidents_held.labels(kind=kind)
        self.time_to_decide = Histogram(
            W_TIME_TO_DECIDE,
            "From an approval prompt to its decision (approved or denied; an expired prompt is not one)",
            buckets=DECIDE_BUCKETS,
            registry=r,
        )

    def notified(self, target: str, kind: str, ok: bool) -> None:
        """Count one notification delivered (or not) to `target`."""
        self.notifications.labels(target=target, kind=kind, result="ok" if ok else "failed").inc()

    def observe_first_diagnosis(self, opened_at: datetime, diagnosis: Diagnosis) -> None:
        """Time to detect and to diagnose of an incident's first diagnosis (none for a run without a
        timeout, or one not over it: there is no crossing to measure from)."""
        step1 = diagnosis.finding(1)
        crossed = timeout_crossed_at(step1.evidence if step1 is not None else {})
        if crossed is None or opened_at < crossed:
            return
        self.time_to_detect.observe((opened_at - crossed).total_seconds())
        self.time_to_diagnose.observe(max((diagnosis.completed_at - crossed).total_seconds(), 0.0))

    def observe_remediated(self, diagnosis: Mapping[str, Any] | None, verified_at: datetime) -> None:
        """Time to remediate: from the crossing the incident's stored diagnosis names to `verified_at`."""
        crossed = timeout_crossed_at(_step1_evidence(diagnosis))
        if crossed is not None and verified_at >= crossed:
            self.time_to_remediate.observe((verified_at - crossed).total_seconds())

    def observe_closed_without_action(self, incident: Incident, outcome: str) -> None:
        """Time to close of an incident closed without a remediation: from the crossing its stored
        diagnosis names (else from its opening, e.g. closed before any diagnosis) to its `closed_at`."""
        closed_at = incident.closed_at or incident.updated_at
        crossed = timeout_crossed_at(_step1_evidence(incident.diagnosis))
        start = crossed if crossed is not None and crossed <= closed_at else incident.opened_at
        self.time_to_close.labels(outcome=outcome).observe(max((closed_at - start).total_seconds(), 0.0))

    def observe_incident_counts(self, counts: Iterable[tuple[str, str | None, int]]) -> None:
        """The unfinished incidents (`Tx.count_unfinished_incidents`: status, held kind, how many): how
        many there are, and how many are held by each kind (every kind shown, 0 when none)."""
        held = dict.fromkeys(HELD_KINDS, 0)
        total = 0
        for status, kind, count in counts:
            total += count
            if status == "open" and kind in held:
                held[kind] += count
        self.open_incidents.set(total)
        for kind, count in held.items():
            self.incidents_held.labels(kind=kind).set(count)

    def observe_decided(self, approval: Approval) -> None:
        """Count a settled decision (approved or denied) and the time its prompt waited for it."""
        self.approvals.labels(decision=approval.state).inc()
        if approval.decided_at is not None and approval.decided_at >= approval.created_at:
            self.time_to_decide.observe((approval.decided_at - approval.created_at).total_seconds())

    def observe_pending_approvals(self, pending: list[Approval], now: datetime) -> None:
        """The pending prompts: how many, the oldest one's age, and how many are past their expiry."""
        self.pending_approvals.set(len(pending))
        ages = [(now - approval.created_at).total_seconds() for approval in pending]
        self.oldest_pending_approval_age.set(max(ages, default=0.0))
        self.approvals_past_expiry.set(sum(1 for approval in pending if approval.expires_at <= now))

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


def _step1_evidence(diagnosis: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """Diagnostic step 1's evidence in a stored diagnosis (`Diagnosis.model_dump(mode="json")`)."""
    for finding in (diagnosis or {}).get("findings", []):
        if isinstance(finding, Mapping) and finding.get("step") == 1:
            evidence = finding.get("evidence")
            return evidence if isinstance(evidence, Mapping) else {}
    return {}


def timeout_crossed_at(evidence: Mapping[str, Any]) -> datetime | None:
    """When the run went over its timeout: `started_at + timeout_seconds` of diagnostic step 1's
    evidence (None when either is missing or malformed)."""
    started, timeout = evidence.get("started_at"), evidence.get("timeout_seconds")
    if not isinstance(started, str) or not isinstance(timeout, int | float):
        return None
    try:
        begun = datetime.fromisoformat(started)
    except ValueError:
        return None
    return None if begun.tzinfo is None else begun + timedelta(seconds=timeout)

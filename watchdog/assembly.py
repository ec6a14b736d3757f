"""The composition root: settings in, the whole watchdog out, every part wired here and only here.

Called by `gl-watchdog serve` and `sweep` (`watchdog.cli`), `playbook run` (`watchdog.remediation_cli`),
the demo and the tests: `await build_watchdog(settings)` opens the store and the clients and builds
the services over them, each handed what it uses, explicitly; `create_app(watchdog)` builds the HTTP
application over them (each route module receives its services as aiohttp AppKeys). Nothing is
assigned onto an object after it is built. The main line, as wired below:

    intake (webhook) ─┐
    sweeps (leader) ──┼──▶ incidents ──▶ diagnosis jobs ──▶ responder: plan ──▶ approval prompt
    API (manual) ─────┘                  (queue, runner)        │                    │ decision
                                                                 └──▶ remediation ◀───┘
                                                   (begin → reserve → apply → verify → close)
    reconciler (leader, every sweep): jobs whose lease lapsed ──▶ retried, or escalated

`Watchdog` holds every long-lived object; `start()` resumes what a previous process left half-done
(when it is the only watchdog: no Redis; with Redis the leader's reconciler takes back what lapsed)
and starts the schedules, `aclose()` stops and closes everything in reverse order.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from datetime import timedelta

from aiohttp import web
from opentelemetry.sdk.trace.export import SpanExporter

from gl_common.clock import Clock, SystemClock
from watchdog import api, operator_api, slack
from watchdog import web as approval_web
from watchdog.annotations import RemediationAnnotations, annotations_from_settings
from watchdog.approvals import ApprovalService
from watchdog.auth_failures import AuthFailures
from watchdog.backends import open_clients
from watchdog.condition import ConditionEvaluator
from watchdog.console import routes as console
from watchdog.diagnosis import Backoff, Diagnose, DiagnosisService, OnDiagnosed
from watchdog.diagnostics import runner
from watchdog.episodes import IntakeGate, KnownEpisodes
from watchdog.events import StreamLimits
from watchdog.http import new_application
from watchdog.identity import ProxyAuth
from watchdog.incidents import IncidentService
from watchdog.intake import AlertIntake
from watchdog.jobs import JobTracker, exponential_backoff
from watchdog.leases import JobLeases
from watchdog.limits import RemediationLimits
from watchdog.links import IncidentLinks, LinkSettings
from watchdog.metrics import WatchdogMetrics
from watchdog.notifier import MessageUpdates, Notifier
from watchdog.notify_router import PageResolver, configured_targets, notifier_from_settings
from watchdog.plugins import PluginCatalog, load_plugins
from watchdog.policy import Policy, load_policy
from watchdog.readiness import DependencyMonitor
from watchdog.reconciler import Reconciler, transient_bound_seconds
from watchdog.remediation import RemediationService
from watchdog.remediation_setup import PlaybookContexts
from watchdog.responder import Responder
from watchdog.settings import Mode, WatchdogSettings
from watchdog.silences import AlertmanagerSilences
from watchdog.store import WatchdogStore
from watchdog.stuck_runs import StuckRunDetector
from watchdog.suppression import Reevaluation, SuppressionGate
from watchdog.sweeps import Leadership, LocalLeadership, RedisLeadership, Sweeper
from watchdog.tokens import TokenStore
from watchdog.tracing import IncidentTracer
from watchdog_sdk.clients import Clients
from watchdog_sdk.diagnostic_step import DiagnosticContext
from watchdog_sdk.errors import ConfigError
from watchdog_sdk.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Watchdog:
    """Everything a running watchdog holds, built by `build_watchdog()`."""

    settings: WatchdogSettings
    clock: Clock
    store: WatchdogStore
    clients: Clients
    metrics: WatchdogMetrics
    jobs: JobTracker
    incidents: IncidentService
    approvals: ApprovalService
    remediation: RemediationService
    responder: Responder
    diagnosis: DiagnosisService
    intake: AlertIntake
    sweeper: Sweeper
    leases: JobLeases
    reconciler: Reconciler
    readiness: DependencyMonitor
    plugins: PluginCatalog
    tracer: IncidentTracer = field(default_factory=IncidentTracer)

    async def start(self, *, sweeps: bool = True, expiry_interval_seconds: float | None = None) -> None:
        """Resume what a previous process left unfinished (diagnoses, remediations) when this is the
        only watchdog, start the sweep schedule (unless `sweeps` is False; the reconciler runs after
        each sweep) and the expiry of unanswered approval prompts."""
        if self.clients.redis is None:  # the only watchdog: what a dead one left is ours to resume
            await self.diagnosis.resume()
        await self.incidents.refresh_gauge()
        if sweeps:
            self.sweeper.start()
        if self.clients.redis is None:
            await self.remediation.resume_interrupted()
        interval = expiry_interval_seconds or min(self.settings.sweep_interval_seconds, 30.0)
        self.responder.start_expiry(interval)
        self.readiness.start()

    def transient_bound_seconds(self, job: str) -> float:
        """The documented bound on an incident's time with a `job` (diagnosis, remediation or
        verification) before it is final or escalated, for these settings."""
        settings = self.settings
        deadline = (
            self.diagnosis.deadline_seconds if job == "diagnosis" else settings.remediation_timeout_seconds
        )
        return transient_bound_seconds(
            deadline_seconds=deadline,
            lease_seconds=settings.job_lease_seconds,
            sweep_interval_seconds=settings.sweep_interval_seconds,
            leader_ttl_seconds=settings.leader_ttl_seconds,
            attempts=settings.job_attempts,
            backoff=exponential_backoff(settings.job_retry_backoff_seconds),
        )

    async def aclose(self, grace_seconds: float = 10.0) -> None:
        """Stop the schedules, finish (or cancel) background jobs, close every client and the store."""
        await self.sweeper.shutdown(grace_seconds)
        await self.responder.aclose()
        await self.jobs.aclose(grace_seconds)
        await self.intake.flush_repeats()
        await self.leases.aclose()
        await self.readiness.aclose()
        await self.clients.aclose()
        await self.store.close()
        self.tracer.shutdown()


async def build_watchdog(
    settings: WatchdogSettings,
    *,
    clock: Clock | None = None,
    diagnose: Diagnose | None = None,
    on_diagnosed: OnDiagnosed | None = None,
    respond: bool = True,
    notifier: Notifier | None = None,
    policy: Policy | None = None,
    registry: Registry | None = None,
    plugins: PluginCatalog | None = None,
    poll_interval_seconds: float = 1.0,
    span_exporter: SpanExporter | None = None,
) -> Watchdog:
    """Open the store (migrations included) and the clients, and build every service over them.

        What can be given instead of what the settings say: `diagnose` (default: the diagnostic runner
        over the clients), `on_diagnosed` (default: the responder; with `respond=False` a diagnosis is
        stored and reported only, as `gl-watchdog sweep` does), the `notifier`, the `policy` (default:
        `settings.policy_file`, else the shipped one, checked against the plugins), the `plugins`
        (default: the built-ins and the installed entry points, `watchdog.plugins.load_plugins`; a plugin
        that fails to load is logged and counted, and the policy may not reference it) and the playbook
        `registry` (default: the plugins' one registry); `span_exporter` receives the spans (tests), beside
    the OTLP export of `settings.otlp_endpoint`. Without `approval_signing_key` an ephemeral key
        is made: links then stop working when the process restarts (fine for the demo, not for
        production).
    """
    clock = clock or SystemClock()
    plugins = plugins or load_plugins()
    policy = policy or load_policy(
        settings.policy_file, catalog=plugins, targets=configured_targets(settings)
    )
    signing_key = _approval_signing_key(settings, warn=respond and on_diagnosed is None)
    clients = await open_clients(settings, clock=clock)
    try:
        store = await WatchdogStore.open(settings.database_url, clock=clock, pool=settings.db_pool())
    except BaseException:
        await clients.aclose()
        raise
    registry = registry or plugins.registry
    tracer = IncidentTracer.from_settings(settings.otlp_endpoint, span_exporter)
    metrics = WatchdogMetrics()
    metrics.plugin_problems(plugins.problems)
    jobs = JobTracker()
    leases = JobLeases(store, clock, owner=settings.replica_id, lease_seconds=settings.job_lease_seconds)
    backoff = exponential_backoff(settings.job_retry_backoff_seconds)
    incidents = IncidentService(store, metrics, breaker=policy.limits.circuit_breaker)
    approvals = ApprovalService(
        store,
        signing_key,
        ttl_seconds=settings.approval_ttl_seconds,
        public_url=settings.public_url or f"http://{settings.host}:{settings.port}",
        clock=clock,
        rules=lambda plan: policy.approval_for(plan.playbook, plan.risk),
    )
    links = IncidentLinks(incidents, LinkSettings.of(settings), clock)
    routed = notifier_from_settings(
        settings, metrics, store=store, links=links, rule_targets=policy.escalation_targets()
    )
    responder = build_responder(
        store=store,
        incidents=incidents,
        approvals=approvals,
        notifier=notifier or routed,
        policy=policy,
        registry=registry,
        clients=clients,
        mode=settings.mode,
        clock=clock,
        jobs=jobs,
        metrics=metrics,
        poll_interval_seconds=poll_interval_seconds,
        leases=leases,
        remediation_timeout_seconds=settings.remediation_timeout_seconds,
        backoff=backoff,
        tracer=tracer,
        suppression=suppression_gate(settings, policy, incidents, clock, metrics),
        messages=routed if notifier is None else None,
        annotations=annotations_from_settings(settings, incidents, clock, metrics),
    )
    context = DiagnosticContext(
        clients=clients, settings=settings.diagnostics(), clock=clock, tracer=tracer.tracer
    )
    intake_gate = IntakeGate(settings.intake_in_flight(), settings.intake_wait_seconds)
    diagnosis = DiagnosisService(
        store=store,
        incidents=incidents,
        metrics=metrics,
        jobs=jobs,
        leases=leases,
        diagnose=diagnose or runner.diagnoser(context, plugins.steps),
        on_diagnosed=on_diagnosed or (responder.handle_diagnosed if respond else None),
        clock=clock,
        max_concurrent=settings.max_concurrent_diagnoses,
        step_timeout_seconds=settings.step_timeout_seconds,
        backoff=backoff,
        queue_size=settings.diagnosis_queue_size,
        tracer=tracer,
        yield_to=intake_gate.quiet,  # alert deliveries first
    )
    reconciler = Reconciler(
        store=store,
        leases=leases,
        diagnosis=diagnosis,
        remediation=responder.remediation,
        jobs=jobs,
        metrics=metrics,
        clock=clock,
        max_attempts=settings.job_attempts,
        backoff=backoff,
        diagnosis_grace=timedelta(seconds=settings.job_lease_seconds + diagnosis.deadline_seconds),
    )
    condition = ConditionEvaluator(
        clients.orchestrator,
        clients.prometheus,
        for_duration=timedelta(seconds=settings.for_duration_seconds),
        clock=clock,
        prometheus_timeout=settings.prometheus_timeout_seconds,
    )
    leadership: Leadership = (
        LocalLeadership()
        if clients.redis is None
        else RedisLeadership(clients.redis, settings.replica_id, ttl_seconds=settings.leader_ttl_seconds)
    )
    sweeper = Sweeper(
        condition,
        incidents,
        leadership,
        metrics,
        diagnosis.start,
        interval_seconds=settings.sweep_interval_seconds,
        leader_ttl_seconds=settings.leader_ttl_seconds,
        on_undiagnosed=diagnosis.start,
        max_run_age=None
        if settings.max_run_age_seconds is None
        else timedelta(seconds=settings.max_run_age_seconds),
        reconcile=reconciler.reconcile_once,
        on_diagnosed_open=None
        if responder.suppression is None
        else Reevaluation(responder.suppression, responder.handle_diagnosed, jobs),
        stuck=StuckRunDetector(clients.orchestrator, settings.stuck_runs, clock)
        if settings.stuck_run_detection
        else None,
    )
    pages = PageResolver(incidents, routed, jobs)
    responder.remediation.closing.on_resolved = pages.run_resolved
    responder.remediation.closing.on_taken = pages.taken
    responder.remediation.closing.on_denied = pages.denied
    sweeper.after_sweep.append(lambda: pages.resolve_ended_runs(clients.orchestrator))

    def alert_closed(incident_id: int) -> None:
        """An incident closed by its resolved alert: its prompt's message says so, its time to close
        is observed."""
        pages.alert_closed(incident_id)
        jobs.spawn(incidents.observe_alert_closed(incident_id), name=f"time to close of {incident_id}")

    return Watchdog(
        settings=settings,
        clock=clock,
        store=store,
        clients=clients,
        metrics=metrics,
        jobs=jobs,
        incidents=incidents,
        approvals=approvals,
        remediation=responder.remediation,
        responder=responder,
        diagnosis=diagnosis,
        intake=AlertIntake(
            store,
            incidents,
            metrics,
            diagnosis.start,
            gate=intake_gate,
            known=KnownEpisodes(settings.intake_known_episodes),
            on_resolved_after_acting=pages.alert_resolved,
            on_closed=alert_closed,
            tracer=tracer,
        ),
        sweeper=sweeper,
        leases=leases,
        reconciler=reconciler,
        readiness=DependencyMonitor(store, clients, metrics, clock, plugin_problems=plugins.problems),
        plugins=plugins,
        tracer=tracer,
    )


def build_responder(
    *,
    store: WatchdogStore,
    incidents: IncidentService,
    approvals: ApprovalService,
    notifier: Notifier,
    policy: Policy,
    registry: Registry,
    clients: Clients,
    mode: Mode,
    clock: Clock,
    jobs: JobTracker,
    metrics: WatchdogMetrics | None = None,
    poll_interval_seconds: float = 1.0,
    leases: JobLeases | None = None,
    remediation_timeout_seconds: float = 1800.0,
    backoff: Backoff | None = None,
    tracer: IncidentTracer | None = None,
    suppression: SuppressionGate | None = None,
    messages: MessageUpdates | None = None,
    annotations: RemediationAnnotations | None = None,
) -> Responder:
    """The remediation side over a store and clients: the limits, the remediation state machine and
    the responder that drives it (`Responder.remediation`). Part of `build_watchdog`; tests build it
    alone over their own store and playbooks. Without `leases`, its jobs' leases name this process
    (hostname-pid) and last 30 s; without `backoff`, a retry follows after 30 s, doubled each time."""
    leases = leases or JobLeases(
        store, clock, owner=f"{socket.gethostname()}-{os.getpid()}", lease_seconds=30.0
    )
    remediation = RemediationService(
        store=store,
        incidents=incidents,
        approvals=approvals,
        limits=RemediationLimits(store, policy.limits, clock),
        notifier=notifier,
        registry=registry,
        contexts=PlaybookContexts(clients, policy, clock, poll_interval_seconds),
        mode=mode,
        leases=leases,
        deadline_seconds=remediation_timeout_seconds,
        backoff=backoff or exponential_backoff(30.0),
        metrics=metrics,
        tracer=tracer,
        annotations=annotations,
    )
    return Responder(
        store=store,
        incidents=incidents,
        approvals=approvals,
        remediation=remediation,
        policy=policy,
        registry=registry,
        mode=mode,
        jobs=jobs,
        clock=clock,
        metrics=metrics,
        suppression=suppression,
        messages=messages,
    )


def suppression_gate(
    settings: WatchdogSettings,
    policy: Policy,
    incidents: IncidentService,
    clock: Clock,
    metrics: WatchdogMetrics,
) -> SuppressionGate | None:
    """The gate of silences (when `alertmanager_url` is set) and the policy's maintenance windows
    (None when there are neither: nothing can be held)."""
    if settings.alertmanager_url is None and not policy.maintenance:
        return None
    silences = (
        None
        if settings.alertmanager_url is None
        else AlertmanagerSilences(
            settings.alertmanager_url,
            clock=clock,
            timeout_seconds=settings.alertmanager_timeout_seconds,
            cache_seconds=settings.silence_cache_seconds,
        )
    )
    return SuppressionGate(
        incidents=incidents,
        clock=clock,
        windows=list(policy.maintenance),
        silences=silences,
        on_failure=settings.silence_check_failure,
        namespace=settings.namespace,
        metrics=metrics,
    )


def create_app(watchdog: Watchdog) -> web.Application:
    """The watchdog's aiohttp application: middlewares (`watchdog.http`: identity from the settings'
    bootstrap tokens, the named tokens and the trusted proxy), the API (`watchdog.api`), the approval
    routes and page (`watchdog.web`), the operator API (`watchdog.operator_api`) and the incident
    console (`watchdog.console`, when `console_enabled`), each given the services it uses."""
    settings = watchdog.settings
    failures = AuthFailures(watchdog.clock, watchdog.metrics.auth_failure)
    proxy = ProxyAuth(
        enabled=settings.proxy_auth_enabled,
        trusted_proxies=settings.trusted_proxies,
        role_map=settings.proxy_role_map,
        default_role=settings.proxy_default_role,
        headers=settings.proxy_headers,
        on_forged=failures.refused,
    )
    tokens = TokenStore(watchdog.store)
    app = new_application(
        settings.token_source(),
        max_body_bytes=settings.max_body_bytes,
        auth_failures=failures,
        named_tokens=tokens,
        proxy=proxy,
        public_origins=[settings.public_url] if settings.public_url else [],
    )
    api.add_routes(
        app,
        intake=watchdog.intake,
        incidents=watchdog.incidents,
        diagnosis=watchdog.diagnosis,
        store=watchdog.store,
        metrics=watchdog.metrics,
        readiness=watchdog.readiness,
    )
    approval_web.add_routes(
        app,
        approvals=watchdog.approvals,
        responder=watchdog.responder,
        incidents=watchdog.incidents,
        link_settings=LinkSettings.of(settings),
    )
    operations = operator_api.Operations(
        tokens=tokens,
        approvals=watchdog.approvals,
        responder=watchdog.responder,
        incidents=watchdog.incidents,
        remediation=watchdog.remediation,
        jobs=watchdog.jobs,
        sweeper=watchdog.sweeper,
        policy=watchdog.remediation.contexts.policy,
        policy_source=str(settings.policy_file or "the shipped default policy"),
        plugins=watchdog.plugins,
        mode=settings.mode,
        stream_limits=StreamLimits(lifetime_seconds=settings.events_stream_seconds),
    )
    operator_api.add_routes(app, operations)
    slack.add_routes(
        app, slack.from_settings(settings, watchdog.approvals, watchdog.responder, watchdog.clock)
    )
    if settings.console_enabled:
        console.add_routes(
            app,
            console.build_console(
                settings,
                incidents=watchdog.incidents,
                store=watchdog.store,
                approvals=watchdog.approvals,
                responder=watchdog.responder,
                diagnosis=watchdog.diagnosis,
                requests=operations.requests,
                clock=watchdog.clock,
                stream_limits=operations.stream_limits,
            ),
        )
    return app


def _approval_signing_key(settings: WatchdogSettings, *, warn: bool) -> bytes:
    configured = settings.approval_signing_key
    key = configured.get_secret_value().encode() if configured else b""
    if len(key) >= 16:
        return key
    if key:
        raise ConfigError("approval_signing_key must be at least 16 bytes")
    if warn:
        log.warning(
            "no approval_signing_key configured: using an ephemeral key (links die with this process)"
        )
    return secrets.token_bytes(32)

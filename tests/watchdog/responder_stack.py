"""The remediation side over a real store with the recording playbook: a `Responder` as the service
builds it (`watchdog.assembly.build_responder`), for tests of what it measures and traces.

`responder_over` wires the recording playbook (or a subclass), the recording notifier and the policy
of `tests.watchdog.recording_playbook`, with the metrics, the tracer, the Grafana annotations and the
orchestrator client a test gives.
"""

from __future__ import annotations

from gl_common.clock import Clock
from tests.watchdog.recording_playbook import POLICY, RecordingNotifier, RecordingPlaybook
from watchdog.annotations import RemediationAnnotations
from watchdog.approvals import ApprovalService
from watchdog.assembly import build_responder
from watchdog.incidents import IncidentService
from watchdog.jobs import JobTracker
from watchdog.metrics import WatchdogMetrics
from watchdog.policy import parse_policy
from watchdog.responder import Responder
from watchdog.settings import Mode
from watchdog.store import WatchdogStore
from watchdog.tracing import IncidentTracer
from watchdog_sdk.clients import Clients
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.registry import Registry

APPROVAL_TTL_SECONDS = 600.0


def responder_over(
    store: WatchdogStore,
    clock: Clock,
    orchestrator: OrchestratorClient,
    *,
    mode: Mode,
    playbook: RecordingPlaybook | None = None,
    metrics: WatchdogMetrics | None = None,
    tracer: IncidentTracer | None = None,
    annotations: RemediationAnnotations | None = None,
) -> Responder:
    """A responder acting through `playbook` (the recording one by default); prompts expire after
    APPROVAL_TTL_SECONDS."""
    incidents = IncidentService(store, metrics)
    return build_responder(
        store=store,
        incidents=incidents,
        approvals=ApprovalService(
            store, b"s" * 32, ttl_seconds=APPROVAL_TTL_SECONDS, public_url="http://wd", clock=clock
        ),
        notifier=RecordingNotifier(),
        policy=parse_policy(POLICY),
        registry=Registry([playbook or RecordingPlaybook()]),
        clients=Clients(orchestrator=orchestrator),
        mode=mode,
        clock=clock,
        jobs=JobTracker(),
        metrics=metrics,
        tracer=tracer,
        annotations=annotations,
    )

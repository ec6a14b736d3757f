"""A sweeper and a responder over one store, gated by silences and maintenance windows: the stack
the suppression tests drive (`test_silences_alertmanager`, `test_held_incidents`). The orchestrator
is faked at the HTTP level (`FakeOrchestrator`), the playbook is the recording one; the store is real,
and so is Alertmanager when a test gives its URL."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx

from tests.watchdog.conftest import FakeClock
from tests.watchdog.orchestrators import FakeOrchestrator
from tests.watchdog.recording_playbook import POLICY, RecordingNotifier, RecordingPlaybook
from watchdog.api import detail_out
from watchdog.approvals import ApprovalService
from watchdog.assembly import build_responder
from watchdog.condition import ConditionEvaluator
from watchdog.incidents import IncidentService
from watchdog.jobs import JobTracker
from watchdog.maintenance import MaintenanceWindow
from watchdog.metrics import WatchdogMetrics
from watchdog.policy import parse_policy
from watchdog.responder import Responder
from watchdog.settings import Mode
from watchdog.silences import AlertmanagerSilences
from watchdog.store import WatchdogStore
from watchdog.suppression import Reevaluation, SilenceCheckFailure, SuppressionGate
from watchdog.sweeps import LocalLeadership, Sweeper
from watchdog_sdk.clients import Clients
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.diagnosis import Diagnosis, Finding, StepStatus
from watchdog_sdk.registry import Registry

FOR = timedelta(minutes=10)


class SteppedClock(FakeClock):
    """A fake clock whose monotonic time moves only with `advance` (for the silence cache)."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.mono = 0.0

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        self.mono += seconds


class Stack:
    """A sweeper and a responder over one store, gated by the silences of `alertmanager_url`."""

    def __init__(
        self,
        store: WatchdogStore,
        clock: SteppedClock,
        alertmanager_url: str | None,
        *,
        windows: list[MaintenanceWindow] | None = None,
        mode: Mode = Mode.AUTO,
        on_failure: SilenceCheckFailure = "prompt",
        cache_seconds: float = 0.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.fake = FakeOrchestrator()
        self.client = OrchestratorClient("http://orch.test", transport=httpx.MockTransport(self.fake.handler))
        self.metrics = WatchdogMetrics()
        self.incidents = IncidentService(store, self.metrics)
        self.playbook = RecordingPlaybook()
        self.notifier = RecordingNotifier()
        self.jobs = JobTracker()
        self.silences = (
            None
            if alertmanager_url is None
            else AlertmanagerSilences(
                alertmanager_url, clock=clock, timeout_seconds=2, cache_seconds=cache_seconds
            )
        )
        self.gate = SuppressionGate(
            incidents=self.incidents,
            clock=clock,
            windows=windows or [],
            silences=self.silences,
            on_failure=on_failure,
            namespace="greenlang",
            metrics=self.metrics,
        )
        self.responder = self._responder(mode)
        self.opened: list[int] = []
        self.sweeper = Sweeper(
            ConditionEvaluator(self.client, None, for_duration=FOR, clock=clock),
            self.incidents,
            LocalLeadership(),
            self.metrics,
            lambda incident: self.opened.append(incident.id),
            interval_seconds=60,
            leader_ttl_seconds=30,
            on_diagnosed_open=Reevaluation(self.gate, self.responder.handle_diagnosed, self.jobs),
        )

    def _responder(self, mode: Mode) -> Responder:
        return build_responder(
            store=self.store,
            incidents=self.incidents,
            approvals=ApprovalService(
                self.store, b"s" * 32, ttl_seconds=600, public_url="http://wd", clock=self.clock
            ),
            notifier=self.notifier,
            policy=parse_policy(POLICY),
            registry=Registry([self.playbook]),
            clients=Clients(orchestrator=self.client),
            mode=mode,
            clock=self.clock,
            jobs=self.jobs,
            metrics=self.metrics,
            suppression=self.gate,
        )

    async def open_stuck(self, execution_id: str = "exec-1") -> int:
        """A stuck run swept until its incident opens; its id."""
        self.fake.add(execution_id, "emissions-daily", started_at=self.clock.now() - FOR, timeout=60)
        await self.sweeper.sweep_once()
        self.clock.advance(FOR.total_seconds())
        await self.sweeper.sweep_once()
        return self.opened[-1]

    async def diagnosed(self, incident_id: int) -> str:
        """The diagnosis job's hand-off to the responder: the outcome's status."""
        incident = await self.incidents.get(incident_id)
        diagnosis = Diagnosis(
            execution_id=incident.execution_id,
            started_at=self.clock.now(),
            completed_at=self.clock.now(),
            findings=[Finding(step=4, name="agent", status=StepStatus.PROBLEM, summary="agent hung")],
            likely_cause="agent_unresponsive",
            cause_evidence=["agent calc answers nothing"],
            agent_id="calc",
            dag_id=incident.dag_id,
        )
        await self.incidents.update(
            incident_id, kind="diagnosis", actor="test", diagnosis=diagnosis.model_dump(mode="json")
        )
        return (await self.responder.handle_diagnosed(incident_id, diagnosis)).status

    async def sweep(self) -> None:
        """One sweep a minute later, and the jobs it started."""
        self.clock.advance(60)
        await self.sweeper.sweep_once()
        await self.jobs.wait_idle()

    async def audit(self, incident_id: int, kind: str) -> list[dict[str, Any]]:
        detail = await self.incidents.detail(incident_id)
        return [e.data for e in detail.audit if e.kind == kind]

    async def answered_suppressed_by(self, incident_id: int) -> list[dict[str, Any]] | None:
        """`suppressed_by` as `GET /api/v1/incidents/{id}` answers it."""
        return detail_out(await self.incidents.detail(incident_id)).model_dump(mode="json")["suppressed_by"]

    def checks(self, result: str) -> float:
        return float(self.metrics.silence_checks.labels(result=result)._value.get())

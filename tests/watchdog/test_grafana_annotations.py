"""Grafana annotations of remediations (`watchdog.annotations`): a remediation that acted posts one
region annotation when it resolves or escalates, an approval prompt one point annotation when it is
posted and one when it is approved, denied or expired; Grafana down is audited and counted and the
remediation or the prompt still ends as it would have.

On the real store (PostgreSQL) with an injected clock, the remediation side as the service builds it
(`tests.watchdog.responder_stack`), and a fake Grafana (aiohttp on loopback) that records what the
watchdog posts to /api/annotations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from playbooks.restart_agent import RestartAgentParams
from tests.conftest import free_port
from tests.watchdog.conftest import WATCHDOG_TOKEN, FakeClock, make_diagnosis
from tests.watchdog.recording_playbook import RecordingPlaybook
from tests.watchdog.responder_stack import APPROVAL_TTL_SECONDS, responder_over
from watchdog.annotations import RemediationAnnotations
from watchdog.approvals import Decision
from watchdog.assembly import build_watchdog
from watchdog.incidents import IncidentService
from watchdog.metrics import WatchdogMetrics
from watchdog.records import AuditEntry
from watchdog.responder import Responder
from watchdog.settings import Mode, WatchdogSettings
from watchdog.store import WatchdogStore
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.outcomes import ApplyResult
from watchdog_sdk.playbook import PlaybookContext

TOKEN = "glsa_service-account-token-0123"
APPLY_SECONDS = 42
DIAGNOSIS = make_diagnosis("exec-1", agent="calc", cause="agent_unresponsive")


class FakeGrafana:
    """Grafana's POST /api/annotations: records each request, answers as Grafana does."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, Any]]] = []  # path, Authorization, body
        self.refuse = False  # answer 401 as Grafana does for a revoked token
        self.app = web.Application()
        self.app.router.add_post("/api/annotations", self._annotate)

    async def _annotate(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, request.headers.get("Authorization", ""), await request.json()))
        if self.refuse:
            return web.json_response({"message": "invalid API key"}, status=401)
        return web.json_response({"id": len(self.requests), "message": "Annotation added"})


class SlowPlaybook(RecordingPlaybook):
    """The recording playbook, whose apply takes APPLY_SECONDS of the injected clock."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    async def apply(self, ctx: PlaybookContext, params: RestartAgentParams) -> ApplyResult:
        self.clock.advance(APPLY_SECONDS)
        return await super().apply(ctx, params)


@pytest.fixture
async def store(postgres_url: str, clock: FakeClock) -> AsyncIterator[WatchdogStore]:
    s = await WatchdogStore.open(postgres_url, clock=clock)
    yield s
    await s.close()


@pytest.fixture
async def grafana() -> AsyncIterator[tuple[FakeGrafana, str]]:
    fake = FakeGrafana()
    server = TestServer(fake.app, host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("/")).rstrip("/")
    await server.close()


async def _remediate(
    store: WatchdogStore, clock: FakeClock, annotations: RemediationAnnotations, playbook: RecordingPlaybook
) -> tuple[Responder, int, str]:
    """Open an incident of exec-1 (DAG nightly) and let the auto mode remediate it; its id and outcome."""
    async with OrchestratorClient("http://127.0.0.1:9", timeout=0.5) as orchestrator:
        responder = responder_over(
            store, clock, orchestrator, mode=Mode.AUTO, playbook=playbook, annotations=annotations
        )
        opened = await responder.incidents.open_or_join(
            "exec-1", dag_id="nightly", source="sweep", detection_source="api"
        )
        outcome = await responder.handle_diagnosed(
            opened.incident.id, make_diagnosis("exec-1", agent="calc", cause="agent_unresponsive")
        )
    return responder, opened.incident.id, outcome.status


def _annotations(
    store: WatchdogStore, clock: FakeClock, url: str, metrics: WatchdogMetrics
) -> RemediationAnnotations:
    return RemediationAnnotations(
        api_url=url,
        token=SecretStr(TOKEN),
        incidents=IncidentService(store, metrics),
        clock=clock,
        metrics=metrics,
        dashboard_uid="gl-watchdog-runbook",
        timeout=2.0,
    )


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def _failed_annotations(store: WatchdogStore, incident_id: int) -> list[AuditEntry]:
    """The incident's `annotation_failed` audit entries."""
    async with store.transaction() as tx:
        return [entry for entry in await tx.list_audit(incident_id) if entry.kind == "annotation_failed"]


def _count(metrics: WatchdogMetrics, result: str) -> float:
    labels = {"target": "grafana", "kind": "annotation", "result": result}
    return metrics.registry.get_sample_value("gl_watchdog_notifications_total", labels) or 0.0


async def test_a_resolved_remediation_posts_a_region_annotation_tagged_for_the_dashboards(
    store: WatchdogStore, clock: FakeClock, grafana: tuple[FakeGrafana, str]
) -> None:
    fake, url = grafana
    metrics = WatchdogMetrics()
    started = clock.now()
    _, incident_id, status = await _remediate(
        store, clock, _annotations(store, clock, url, metrics), SlowPlaybook(clock)
    )
    assert status == "resolved"
    assert len(fake.requests) == 1
    path, authorization, body = fake.requests[0]
    assert path == "/api/annotations"
    assert authorization == f"Bearer {TOKEN}"
    assert body == {
        "time": _ms(started),
        "timeEnd": _ms(started) + APPLY_SECONDS * 1000,
        "tags": [
            "gl-watchdog",
            "remediation",
            "restart_agent",
            "resolved",
            "execution:exec-1",
            "dag:nightly",
        ],
        "text": f"restart_agent on exec-1: resolved (incident {incident_id})",
        "dashboardUID": "gl-watchdog-runbook",
    }
    assert _count(metrics, "ok") == 1


@pytest.mark.parametrize("failure", ["verification", "apply"])
async def test_an_escalated_remediation_is_annotated_as_escalated(
    store: WatchdogStore, clock: FakeClock, grafana: tuple[FakeGrafana, str], failure: str
) -> None:
    fake, url = grafana
    playbook = SlowPlaybook(clock)
    playbook.verify_ok = failure != "verification"
    playbook.fail_apply = failure == "apply"
    _, incident_id, status = await _remediate(
        store, clock, _annotations(store, clock, url, WatchdogMetrics()), playbook
    )
    assert status == "escalated"
    [(_, _, body)] = fake.requests
    assert "escalated" in body["tags"] and "resolved" not in body["tags"]
    assert body["text"] == f"restart_agent on exec-1: escalated (incident {incident_id})"
    assert body["timeEnd"] - body["time"] == APPLY_SECONDS * 1000


async def test_grafana_down_is_audited_and_counted_and_the_remediation_still_resolves(
    store: WatchdogStore, clock: FakeClock
) -> None:
    metrics = WatchdogMetrics()
    down = f"http://127.0.0.1:{free_port()}"
    responder, incident_id, status = await _remediate(
        store, clock, _annotations(store, clock, down, metrics), RecordingPlaybook()
    )
    assert status == "resolved"
    incident = await responder.incidents.get(incident_id)
    assert incident.status == "resolved"
    failed = await _failed_annotations(store, incident_id)
    assert len(failed) == 1
    assert "Grafana annotation unreachable" in failed[0].data["detail"]
    assert TOKEN not in str(failed[0].data)
    assert _count(metrics, "failed") == 1


async def test_a_refused_annotation_is_audited_with_grafanas_answer(
    store: WatchdogStore, clock: FakeClock, grafana: tuple[FakeGrafana, str]
) -> None:
    fake, url = grafana
    fake.refuse = True
    metrics = WatchdogMetrics()
    _, incident_id, status = await _remediate(
        store, clock, _annotations(store, clock, url, metrics), RecordingPlaybook()
    )
    assert status == "resolved"
    (failed,) = await _failed_annotations(store, incident_id)
    assert failed.data["status"] == 401
    assert "Grafana annotation answered 401" in failed.data["detail"]
    assert TOKEN not in str(failed.data)
    assert _count(metrics, "failed") == 1 and _count(metrics, "ok") == 0


async def test_a_refused_remediation_acted_on_nothing_and_is_not_annotated(
    store: WatchdogStore, clock: FakeClock, grafana: tuple[FakeGrafana, str]
) -> None:
    fake, url = grafana
    playbook = RecordingPlaybook()
    playbook.refuse = "the agent answers again"
    _, _, status = await _remediate(
        store, clock, _annotations(store, clock, url, WatchdogMetrics()), playbook
    )
    assert status == "escalated"
    assert fake.requests == []


async def _prompted(
    store: WatchdogStore,
    clock: FakeClock,
    annotations: RemediationAnnotations,
    orchestrator: OrchestratorClient,
) -> tuple[Responder, int, str]:
    """Open an incident of exec-1 (DAG nightly) in recommend mode, so its plan asks a person; the
    responder, the incident's id and the prompt's id."""
    responder = responder_over(store, clock, orchestrator, mode=Mode.RECOMMEND, annotations=annotations)
    opened = await responder.incidents.open_or_join(
        "exec-1", dag_id="nightly", source="sweep", detection_source="api"
    )
    outcome = await responder.handle_diagnosed(opened.incident.id, DIAGNOSIS)
    assert outcome.status == "awaiting_approval"
    await responder.jobs.wait_idle()  # the prompt's annotation is a job of its own
    pending = await responder.approvals.pending_of(opened.incident.id)
    assert pending is not None
    return responder, opened.incident.id, pending.id


def _approval_tags(state: str) -> list[str]:
    return ["gl-watchdog", "approval", "restart_agent", state, "execution:exec-1", "dag:nightly"]


@pytest.mark.parametrize("decision", [Decision.APPROVE, Decision.DENY])
async def test_a_prompt_is_annotated_when_posted_and_when_a_person_decides_it(
    store: WatchdogStore, clock: FakeClock, grafana: tuple[FakeGrafana, str], decision: Decision
) -> None:
    fake, url = grafana
    metrics = WatchdogMetrics()
    posted_at = clock.now()
    async with OrchestratorClient("http://127.0.0.1:9", timeout=0.5) as orchestrator:
        responder, incident_id, approval_id = await _prompted(
            store, clock, _annotations(store, clock, url, metrics), orchestrator
        )
        clock.advance(30)
        approval = await responder.approvals.decide(approval_id, decision, actor="alice", authenticated=True)
        outcome = await responder.on_decision(approval)
        await responder.jobs.wait_idle()
    state = "approved" if decision is Decision.APPROVE else "denied"
    assert outcome.status == ("resolved" if state == "approved" else "escalated")
    bodies = [body for _, _, body in fake.requests]
    prompted, decided = [body for body in bodies if body["tags"][1] == "approval"]
    remediated = [body for body in bodies if body["tags"][1] != "approval"]
    assert prompted == {
        "time": _ms(posted_at),
        "tags": _approval_tags("prompted"),
        "text": f"approval {approval_id} of restart_agent on exec-1: prompted (incident {incident_id})",
        "dashboardUID": "gl-watchdog-runbook",
    }
    assert decided == {
        "time": _ms(posted_at) + 30_000,
        "tags": _approval_tags(state),
        "text": f"approval {approval_id} of restart_agent on exec-1: {state} by alice "
        f"(incident {incident_id})",
        "dashboardUID": "gl-watchdog-runbook",
    }
    # an approval acts, and the remediation gets its region; a denial acts on nothing
    assert [body["tags"][:2] for body in remediated] == (
        [["gl-watchdog", "remediation"]] if state == "approved" else []
    )
    assert _count(metrics, "ok") == len(fake.requests)


async def test_an_expired_prompt_is_annotated_as_expired(
    store: WatchdogStore, clock: FakeClock, grafana: tuple[FakeGrafana, str]
) -> None:
    fake, url = grafana
    async with OrchestratorClient("http://127.0.0.1:9", timeout=0.5) as orchestrator:
        responder, incident_id, approval_id = await _prompted(
            store, clock, _annotations(store, clock, url, WatchdogMetrics()), orchestrator
        )
        clock.advance(APPROVAL_TTL_SECONDS + 1)
        [outcome] = await responder.expire_approvals()
        await responder.jobs.wait_idle()
    assert outcome.status == "escalated"
    _, (_, _, expired) = fake.requests
    assert expired["tags"] == _approval_tags("expired")
    assert (
        expired["text"]
        == f"approval {approval_id} of restart_agent on exec-1: expired (incident {incident_id})"
    )


async def test_grafana_refusing_a_prompts_annotations_is_audited_and_counted_and_the_denial_still_escalates(
    store: WatchdogStore, clock: FakeClock, grafana: tuple[FakeGrafana, str]
) -> None:
    fake, url = grafana
    fake.refuse = True
    metrics = WatchdogMetrics()
    async with OrchestratorClient("http://127.0.0.1:9", timeout=0.5) as orchestrator:
        responder, incident_id, approval_id = await _prompted(
            store, clock, _annotations(store, clock, url, metrics), orchestrator
        )
        approval = await responder.approvals.decide(
            approval_id, Decision.DENY, actor="bob", authenticated=True
        )
        assert (await responder.on_decision(approval)).status == "escalated"
        await responder.jobs.wait_idle()
    failed = await _failed_annotations(store, incident_id)
    assert [entry.data["status"] for entry in failed] == [401, 401]
    assert all(TOKEN not in str(entry.data) for entry in failed)
    assert _count(metrics, "failed") == 2 and _count(metrics, "ok") == 0


def test_the_grafana_token_comes_from_its_secret_file_and_is_needed_with_the_url(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "grafana-token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    settings = WatchdogSettings(grafana_api_url="http://grafana:3000", grafana_api_token_file=token_file)
    assert settings.grafana_api_token is not None
    assert settings.grafana_api_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings)
    with pytest.raises(ValueError, match="grafana_api_url needs grafana_api_token"):
        WatchdogSettings(grafana_api_url="http://grafana:3000")


async def test_the_service_annotates_only_with_a_grafana_api_url(
    _no_pending_tasks: None, postgres_url: str, clock: FakeClock
) -> None:
    base = {
        "database_url": postgres_url,
        "api_tokens": [WATCHDOG_TOKEN],
        "orchestrator_url": f"http://127.0.0.1:{free_port()}",
    }
    grafana = {"grafana_api_url": "http://grafana:3000", "grafana_api_token": TOKEN}
    for extra, expected in (({}, None), (grafana, "http://grafana:3000")):
        wd = await build_watchdog(WatchdogSettings(**base, **extra), clock=clock)
        try:
            annotations = wd.remediation.annotations
            assert (annotations and annotations.api_url) == expected
        finally:
            await wd.aclose()

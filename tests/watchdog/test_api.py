"""The watchdog REST API on loopback: incidents, manual open, re-diagnosis, auth, metrics, health."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import POSTGRES_ADMIN_DSN, free_port
from tests.watchdog.conftest import WATCHDOG_TOKEN, RecordingRemediate, ScriptedDiagnose
from tests.watchdog.webhook import alert, payload
from watchdog.assembly import Watchdog, build_watchdog, create_app
from watchdog.settings import WatchdogSettings
from watchdog_sdk.errors import OrchestratorUnavailable

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": f"Bearer {WATCHDOG_TOKEN}"}


async def open_manual(client: Client, execution_id: str = "exec-1") -> dict[str, object]:
    response = await client.post("/api/v1/incidents", json={"execution_id": execution_id}, headers=AUTH)
    assert response.status in (200, 201), await response.text()
    body: dict[str, object] = await response.json()
    return body


async def test_manual_open_creates_then_joins(api_client: Client, watchdog_app: Watchdog) -> None:
    first = await api_client.post("/api/v1/incidents", json={"execution_id": "exec-1"}, headers=AUTH)
    assert first.status == 201
    created = await first.json()
    assert created["created"] is True and created["incident"]["source"] == "manual"
    second = await api_client.post("/api/v1/incidents", json={"execution_id": "exec-1"}, headers=AUTH)
    assert second.status == 200 and (await second.json())["created"] is False
    await asyncio.wait_for(watchdog_app.jobs.wait_idle(), 10)


async def test_manual_open_refuses_bad_bodies(api_client: Client, watchdog_app: Watchdog) -> None:
    bad = await api_client.post("/api/v1/incidents", json={"execution": "x"}, headers=AUTH)
    assert bad.status == 422
    body = await bad.json()
    assert body["error"] == "invalid_payload" and "execution_id" in body["detail"]
    broken = await api_client.post(
        "/api/v1/incidents", data=b"{", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert broken.status == 400 and (await broken.json())["error"] == "malformed_json"
    assert await watchdog_app.store.list_incidents() == []


async def test_list_incidents_with_status_filter(api_client: Client, watchdog_app: Watchdog) -> None:
    await open_manual(api_client, "exec-1")
    await open_manual(api_client, "exec-2")
    await asyncio.wait_for(watchdog_app.jobs.wait_idle(), 10)
    [closing] = await watchdog_app.store.list_incidents(statuses=None, limit=1)
    await watchdog_app.incidents.close_if_not_acted(closing.id, actor="t", reason="test")

    everything = await (await api_client.get("/api/v1/incidents", headers=AUTH)).json()
    assert len(everything["items"]) == 2
    assert "diagnosis" not in everything["items"][0] and everything["items"][1]["likely_cause"] == "hung_node"
    open_only = await (await api_client.get("/api/v1/incidents?status=open", headers=AUTH)).json()
    assert [i["execution_id"] for i in open_only["items"]] == ["exec-1"]
    both = await (await api_client.get("/api/v1/incidents?status=open,closed", headers=AUTH)).json()
    assert len(both["items"]) == 2
    bad = await api_client.get("/api/v1/incidents?status=stuck", headers=AUTH)
    assert bad.status == 400 and "stuck" in (await bad.json())["detail"]


async def test_incident_detail_has_diagnosis_actions_and_audit(
    api_client: Client, watchdog_app: Watchdog
) -> None:
    created = await open_manual(api_client)
    await asyncio.wait_for(watchdog_app.jobs.wait_idle(), 10)
    incident_id = created["incident"]["id"]  # type: ignore[index]
    async with watchdog_app.store.transaction() as tx:
        await tx.insert_action(incident_id=incident_id, playbook="cancel", step="cancel", idempotency_key="k")
    response = await api_client.get(f"/api/v1/incidents/{incident_id}", headers=AUTH)
    assert response.status == 200
    detail = await response.json()
    assert (
        detail["diagnosis"]["stuck_node_id"] == "stuck-node"
        and detail["diagnosis"]["agent_id"] == "builtin.hang"
    )
    assert detail["summary"].startswith("hung_node at node stuck-node (agent builtin.hang)")
    assert [a["playbook"] for a in detail["actions"]] == ["cancel"]
    kinds = [a["kind"] for a in detail["audit"]]
    assert kinds[0] == "incident_opened" and "diagnosis" in kinds
    assert {"plan", "verification", "approvals"} <= detail.keys()


async def test_incident_detail_errors(api_client: Client) -> None:
    missing = await api_client.get("/api/v1/incidents/999", headers=AUTH)
    assert missing.status == 404 and (await missing.json())["error"] == "not_found"
    bad = await api_client.get("/api/v1/incidents/abc", headers=AUTH)
    assert bad.status == 400 and "integer" in (await bad.json())["detail"]
    nowhere = await api_client.get("/api/v1/nowhere", headers=AUTH)
    assert nowhere.status == 404 and (await nowhere.json())["error"] == "not_found"


async def test_diagnose_endpoint_rediagnoses_an_open_incident(
    api_client: Client, watchdog_app: Watchdog, diagnose_fn: ScriptedDiagnose
) -> None:
    created = await open_manual(api_client)
    await asyncio.wait_for(watchdog_app.jobs.wait_idle(), 10)
    incident_id = created["incident"]["id"]  # type: ignore[index]
    response = await api_client.post(f"/api/v1/incidents/{incident_id}/diagnose", headers=AUTH)
    assert response.status == 202
    await asyncio.wait_for(watchdog_app.jobs.wait_idle(), 10)
    assert diagnose_fn.calls == ["exec-1", "exec-1"]
    await watchdog_app.incidents.close_if_not_acted(incident_id, actor="t", reason="done")
    refused = await api_client.post(f"/api/v1/incidents/{incident_id}/diagnose", headers=AUTH)
    assert refused.status == 409 and "closed" in (await refused.json())["detail"]


async def test_failed_diagnosis_is_recorded_and_nothing_acts(
    api_client: Client,
    watchdog_app: Watchdog,
    diagnose_fn: ScriptedDiagnose,
    remediate_fn: RecordingRemediate,
) -> None:
    diagnose_fn.error = OrchestratorUnavailable("orchestrator at http://x unreachable")
    created = await open_manual(api_client)
    await asyncio.wait_for(watchdog_app.jobs.wait_idle(), 10)
    incident = await watchdog_app.incidents.get(created["incident"]["id"])  # type: ignore[index]
    assert incident.status == "open" and incident.diagnosis is None
    assert incident.summary is not None and "unreachable" in incident.summary
    assert remediate_fn.calls == []


async def test_auth_is_required_except_for_health_and_metrics(api_client: Client) -> None:
    assert (await api_client.get("/api/v1/incidents")).status == 401
    wrong = await api_client.get("/api/v1/incidents", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401 and wrong.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await api_client.get("/api/v1/incidents", headers={"Authorization": "Basic abc"})).status == 401
    assert (await api_client.get("/healthz")).status == 200
    assert (await api_client.get("/readyz")).status == 200
    assert (await api_client.get("/metrics")).status == 200


async def test_metrics_count_incidents_and_diagnoses(api_client: Client, watchdog_app: Watchdog) -> None:
    await open_manual(api_client)
    await asyncio.wait_for(watchdog_app.jobs.wait_idle(), 10)
    response = await api_client.get("/metrics")
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    assert 'gl_watchdog_incidents_opened_total{source="manual"} 1.0' in text
    assert "gl_watchdog_open_incidents 1.0" in text
    assert 'gl_watchdog_diagnoses_total{likely_cause="hung_node"} 1.0' in text
    assert 'gl_watchdog_diagnostic_steps_total{status="problem",step="3"} 1.0' in text
    assert "gl_watchdog_diagnosis_duration_seconds_count 1.0" in text


@pytest.fixture
async def pg_watchdog(
    _no_pending_tasks: None, postgres_url: str, diagnose_fn: ScriptedDiagnose
) -> AsyncIterator[tuple[Watchdog, Client]]:
    settings = WatchdogSettings(
        database_url=postgres_url,
        api_tokens=[WATCHDOG_TOKEN],
        orchestrator_url=f"http://127.0.0.1:{free_port()}",
    )
    wd = await build_watchdog(settings, diagnose=diagnose_fn, respond=False)
    client: Client = TestClient(TestServer(create_app(wd), host="127.0.0.1"))
    await client.start_server()
    try:
        yield wd, client
    finally:
        await client.close()
        await wd.aclose()


async def test_readyz_is_503_when_the_store_is_gone(pg_watchdog: tuple[Watchdog, Client]) -> None:
    wd, client = pg_watchdog
    assert (await client.get("/readyz")).status == 200
    name = wd.store.engine.url.database
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["error"] == "not_ready" and "store" in body["detail"]
    # and the incidents API answers 503 (Alertmanager retries) rather than a traceback
    listing = await client.get("/api/v1/incidents", headers=AUTH)
    assert listing.status == 503 and (await listing.json())["error"] == "unavailable"
    # a webhook delivery that cannot be stored is refused with 503, so Alertmanager retries it
    delivery = await client.post("/api/v1/alerts", json=payload(alert()), headers=AUTH)
    assert delivery.status == 503 and (await delivery.json())["error"] == "unavailable"
    assert len(wd.jobs) == 0


async def test_a_restart_resumes_diagnoses_left_unfinished(
    _no_pending_tasks: None, sqlite_url: str, diagnose_fn: ScriptedDiagnose
) -> None:
    settings = WatchdogSettings(database_url=sqlite_url, orchestrator_url=f"http://127.0.0.1:{free_port()}")
    first = await build_watchdog(settings, diagnose=diagnose_fn, respond=False)
    try:
        interrupted = (
            await first.incidents.open_or_join(
                "exec-1", dag_id=None, source="alert", detection_source="prometheus"
            )
        ).incident
        await first.incidents.transition(
            interrupted.id, "diagnosing", actor="t", reason="crash mid-diagnosis"
        )
        never_started = (
            await first.incidents.open_or_join("exec-2", dag_id=None, source="sweep", detection_source="api")
        ).incident
    finally:
        await first.aclose()
    second = await build_watchdog(settings, diagnose=diagnose_fn, respond=False)
    try:
        await second.start(sweeps=False)
        await asyncio.wait_for(second.jobs.wait_idle(), 10)
        for incident_id in (interrupted.id, never_started.id):
            incident = await second.incidents.get(incident_id)
            assert incident.status == "open" and incident.diagnosis is not None
        assert sorted(diagnose_fn.calls) == ["exec-1", "exec-2"]
    finally:
        await second.aclose()


async def test_a_rotated_token_file_takes_effect_without_a_restart(
    _no_pending_tasks: None, sqlite_url: str, tmp_path: Path, diagnose_fn: ScriptedDiagnose
) -> None:
    token_file = tmp_path / "api.token"
    token_file.write_text("old-token-0123456789\n")
    settings = WatchdogSettings(
        database_url=sqlite_url, api_token_file=token_file, orchestrator_url=f"http://127.0.0.1:{free_port()}"
    )
    wd = await build_watchdog(settings, diagnose=diagnose_fn, respond=False)
    client: Client = TestClient(TestServer(create_app(wd), host="127.0.0.1"))
    await client.start_server()
    try:
        old = {"Authorization": "Bearer old-token-0123456789"}
        new = {"Authorization": "Bearer new-token-9876543210"}
        assert (await client.get("/api/v1/incidents", headers=old)).status == 200
        token_file.write_text("new-token-9876543210\n")  # a rotated Kubernetes secret
        os.utime(token_file, ns=(0, token_file.stat().st_mtime_ns + 1_000_000))  # however fast the test
        assert (await client.get("/api/v1/incidents", headers=old)).status == 401
        assert (await client.get("/api/v1/incidents", headers=new)).status == 200
        token_file.unlink()  # unreadable: the service says it cannot tell, rather than letting anyone in
        refused = await client.get("/api/v1/incidents", headers=new)
        assert refused.status == 503 and (await refused.json())["error"] == "auth_unavailable"
    finally:
        await client.close()
        await wd.aclose()

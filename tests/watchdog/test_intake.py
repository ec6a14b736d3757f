"""Alertmanager webhook intake through the real watchdog API on loopback.

Firing alerts open or join one incident per execution, repeats are deduplicated per episode durably,
resolved alerts close an incident that has not acted, bad input is refused with a clear 4xx and
changes nothing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.watchdog.conftest import MAX_BODY_BYTES, WATCHDOG_TOKEN, RecordingRemediate, ScriptedDiagnose
from tests.watchdog.webhook import alert, payload
from watchdog.assembly import Watchdog
from watchdog.migrations import alert_deliveries, audit_log, incidents

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": f"Bearer {WATCHDOG_TOKEN}"}


async def post(client: Client, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    response = await client.post(
        "/api/v1/alerts", json=body, headers=headers if headers is not None else AUTH
    )
    return response.status, await response.json()


async def snapshot(wd: Watchdog) -> dict[str, int]:
    async with wd.store.transaction() as tx:
        counts = {}
        for table in (incidents, alert_deliveries, audit_log):
            counts[table.name] = (
                await tx.conn.execute(sa.select(sa.func.count()).select_from(table))
            ).scalar_one()
    return counts


async def test_firing_alert_opens_an_incident_and_diagnoses_it(
    api_client: Client,
    watchdog_app: Watchdog,
    diagnose_fn: ScriptedDiagnose,
    remediate_fn: RecordingRemediate,
) -> None:
    status, body = await post(api_client, payload(alert()))
    assert status == 200
    [outcome] = body["alerts"]
    assert outcome["outcome"] == "opened" and outcome["execution_id"] == "exec-1"
    # the incident was durably written before the answer
    incident = await watchdog_app.store.get_incident(outcome["incident_id"])
    assert incident is not None and incident.source == "alert" and incident.detection_source == "prometheus"
    await asyncio.wait_for(watchdog_app.jobs.wait_idle(), 10)
    incident = await watchdog_app.store.get_incident(outcome["incident_id"])
    assert incident is not None and incident.status == "open"
    assert incident.diagnosis is not None and incident.diagnosis["stuck_node_id"] == "stuck-node"
    assert diagnose_fn.calls == ["exec-1"]
    assert remediate_fn.calls == [(incident.id, "hung_node")]


async def test_repeated_delivery_of_an_episode_is_a_no_op(
    api_client: Client,
    watchdog_app: Watchdog,
    diagnose_fn: ScriptedDiagnose,
    remediate_fn: RecordingRemediate,
) -> None:
    await post(api_client, payload(alert()))
    await asyncio.wait_for(watchdog_app.jobs.wait_idle(), 10)
    before = await snapshot(watchdog_app)
    status, body = await post(api_client, payload(alert()))
    assert status == 200 and body["alerts"][0]["outcome"] == "duplicate"
    await asyncio.wait_for(watchdog_app.jobs.wait_idle(), 10)
    assert await snapshot(watchdog_app) == before
    assert diagnose_fn.calls == ["exec-1"] and len(remediate_fn.calls) == 1
    async with watchdog_app.store.transaction() as tx:
        [delivery] = await tx.conn.execute(sa.select(alert_deliveries))
    assert delivery.repeats == 1


async def test_concurrent_deliveries_leave_one_incident_and_one_diagnosis(
    api_client: Client, watchdog_app: Watchdog, diagnose_fn: ScriptedDiagnose
) -> None:
    results = await asyncio.gather(*(post(api_client, payload(alert())) for _ in range(8)))
    assert all(status == 200 for status, _ in results)
    outcomes = sorted(body["alerts"][0]["outcome"] for _, body in results)
    assert outcomes == ["duplicate"] * 7 + ["opened"]
    await asyncio.wait_for(watchdog_app.jobs.wait_idle(), 10)
    assert len(await watchdog_app.store.list_incidents()) == 1
    assert diagnose_fn.calls == ["exec-1"]


async def test_a_new_episode_joins_the_open_incident_without_rediagnosing(
    api_client: Client, watchdog_app: Watchdog, diagnose_fn: ScriptedDiagnose
) -> None:
    _, first = await post(api_client, payload(alert()))
    _, second = await post(api_client, payload(alert(starts_at="2026-03-01T13:00:00Z")))
    assert second["alerts"][0]["outcome"] == "joined"
    assert second["alerts"][0]["incident_id"] == first["alerts"][0]["incident_id"]
    await asyncio.wait_for(watchdog_app.jobs.wait_idle(), 10)
    assert diagnose_fn.calls == ["exec-1"]


async def test_resolved_alert_closes_an_incident_that_has_not_acted(
    api_client: Client,
    watchdog_app: Watchdog,
    diagnose_fn: ScriptedDiagnose,
    remediate_fn: RecordingRemediate,
) -> None:
    _, body = await post(api_client, payload(alert()))
    await asyncio.wait_for(watchdog_app.jobs.wait_idle(), 10)
    incident_id = body["alerts"][0]["incident_id"]
    status, resolved = await post(api_client, payload(alert(status="resolved"), status="resolved"))
    assert status == 200 and resolved["alerts"][0]["outcome"] == "closed"
    incident = await watchdog_app.store.get_incident(incident_id)
    assert incident is not None and incident.status == "closed"
    # the repeat of the resolved delivery changes nothing and triggers nothing
    _, again = await post(api_client, payload(alert(status="resolved"), status="resolved"))
    assert again["alerts"][0]["outcome"] == "duplicate"
    await asyncio.wait_for(watchdog_app.jobs.wait_idle(), 10)
    assert diagnose_fn.calls == ["exec-1"] and len(remediate_fn.calls) == 1


async def test_resolved_during_diagnosis_closes_and_nothing_acts(
    api_client: Client,
    watchdog_app: Watchdog,
    diagnose_fn: ScriptedDiagnose,
    remediate_fn: RecordingRemediate,
) -> None:
    diagnose_fn.gate = asyncio.Event()
    _, body = await post(api_client, payload(alert()))
    incident_id = body["alerts"][0]["incident_id"]
    await asyncio.wait_for(diagnose_fn.entered.wait(), 10)  # the diagnosis is under way
    _, resolved = await post(api_client, payload(alert(status="resolved"), status="resolved"))
    assert resolved["alerts"][0]["outcome"] == "closed"
    diagnose_fn.gate.set()
    await asyncio.wait_for(watchdog_app.jobs.wait_idle(), 10)
    incident = await watchdog_app.store.get_incident(incident_id)
    assert incident is not None and incident.status == "closed" and incident.diagnosis is not None
    assert remediate_fn.calls == []


async def test_resolved_alert_leaves_an_incident_that_acted_to_the_remediation_loop(
    api_client: Client, watchdog_app: Watchdog
) -> None:
    _, body = await post(api_client, payload(alert()))
    await asyncio.wait_for(watchdog_app.jobs.wait_idle(), 10)
    incident_id = body["alerts"][0]["incident_id"]
    async with watchdog_app.store.transaction() as tx:
        await tx.insert_action(incident_id=incident_id, playbook="cancel", step="cancel", idempotency_key="k")
    _, resolved = await post(api_client, payload(alert(status="resolved"), status="resolved"))
    assert resolved["alerts"][0]["outcome"] == "left_open"
    incident = await watchdog_app.store.get_incident(incident_id)
    assert incident is not None and incident.status == "open"
    detail = await watchdog_app.incidents.detail(incident_id)
    assert detail.audit[-1].kind == "alert_resolved"


async def test_resolved_alert_without_an_incident_opens_nothing(
    api_client: Client, watchdog_app: Watchdog, diagnose_fn: ScriptedDiagnose
) -> None:
    status, body = await post(api_client, payload(alert(status="resolved"), status="resolved"))
    assert status == 200 and body["alerts"][0]["outcome"] == "no_incident"
    assert await watchdog_app.store.list_incidents() == []
    # a late firing delivery of that same (resolved) episode does not open one either
    _, late = await post(api_client, payload(alert()))
    assert late["alerts"][0]["outcome"] == "duplicate"
    assert await watchdog_app.store.list_incidents() == [] and diagnose_fn.calls == []


async def test_other_alert_names_are_acknowledged_and_ignored(
    api_client: Client, watchdog_app: Watchdog
) -> None:
    before = await snapshot(watchdog_app)
    other = alert(alertname="OrchestratorServiceDown", fingerprint="other")
    del other["labels"]["execution_id"]
    status, body = await post(api_client, payload(other))
    assert status == 200 and body["alerts"][0]["outcome"] == "ignored"
    assert await snapshot(watchdog_app) == before
    metrics = await (await api_client.get("/metrics")).text()
    assert (
        'gl_watchdog_alerts_received_total{alertname="OrchestratorServiceDown",status="firing"} 1.0'
        in metrics
    )


# -- bad input: a clear 4xx and nothing changes ------------------------------------------------------


JSON_AUTH = {**AUTH, "Content-Type": "application/json"}


def _encoded(*alerts: dict[str, Any], **fields: Any) -> bytes:
    return json.dumps(payload(*alerts) | fields).encode()


def _without(path: str) -> dict[str, Any]:
    """An alert without the field at `path` (e.g. "labels.execution_id")."""
    bad = alert()
    *parents, last = path.split(".")
    target = bad
    for part in parents:
        target = target[part]
    del target[last]
    return bad


def _oversized() -> dict[str, Any]:
    big = alert()
    big["annotations"]["description"] = "x" * (MAX_BODY_BYTES + 1)
    return big


@pytest.mark.parametrize(
    ("body", "headers", "status", "error", "says"),
    [
        pytest.param(
            b'{"version": "4", ', JSON_AUTH, 400, "malformed_json", "not valid JSON", id="malformed-json"
        ),
        pytest.param(
            _encoded(alert(), version="3"), JSON_AUTH, 422, "unsupported_version", "'3'", id="version-3"
        ),
        pytest.param(
            _encoded(_without("labels")), JSON_AUTH, 422, "invalid_payload", "alerts.0.labels", id="no-labels"
        ),
        pytest.param(
            _encoded(_without("labels.execution_id")),
            JSON_AUTH,
            422,
            "invalid_payload",
            "execution_id",
            id="no-execution-id-label",
        ),
        pytest.param(
            _encoded(_oversized()), JSON_AUTH, 413, "body_too_large", str(MAX_BODY_BYTES), id="body-too-large"
        ),
        pytest.param(
            _encoded(alert()),
            {"Authorization": "Bearer wrong-token", "Content-Type": "application/json"},
            401,
            "unauthorized",
            "invalid bearer token",
            id="wrong-token",
        ),
        pytest.param(
            _encoded(alert()),
            {"Content-Type": "application/json"},
            401,
            "unauthorized",
            "missing bearer token",
            id="no-token",
        ),
        pytest.param(
            _encoded(alert()),
            {**AUTH, "Content-Type": "text/plain"},
            415,
            "unsupported_media_type",
            "application/json",
            id="wrong-content-type",
        ),
    ],
)
async def test_bad_input_gets_a_clear_4xx_and_changes_nothing(
    api_client: Client,
    watchdog_app: Watchdog,
    body: bytes,
    headers: dict[str, str],
    status: int,
    error: str,
    says: str,
) -> None:
    before = await snapshot(watchdog_app)
    response = await api_client.post("/api/v1/alerts", data=body, headers=headers)
    answer = await response.json()
    assert response.status == status, answer
    assert answer["error"] == error
    assert says in answer["detail"], answer["detail"]
    assert await snapshot(watchdog_app) == before
    assert len(watchdog_app.jobs) == 0


async def test_an_invalid_alert_does_not_cost_its_group_the_valid_ones(
    api_client: Client, watchdog_app: Watchdog
) -> None:
    # Alertmanager does not retry a 4xx and re-sends the group as it is: refusing the whole payload
    # would keep exec-2's incident from ever being opened by its alert.
    no_labels = alert()
    del no_labels["labels"]
    no_execution = alert(fingerprint="fp-no-execution")
    del no_execution["labels"]["execution_id"]
    status, body = await post(
        api_client, payload(no_labels, alert("exec-2", fingerprint="fp-exec-2"), no_execution)
    )
    assert status == 200, body
    assert body["status"] == "partial"
    assert [(a["execution_id"], a["outcome"]) for a in body["alerts"]] == [("exec-2", "opened")]
    assert body["rejected"] == [
        {"index": 0, "problem": "alerts.0.labels: Field required"},
        {
            "index": 2,
            "problem": "alerts.2: an OrchestratorExecutionTimeout alert must carry a non-empty "
            "'execution_id' label",
        },
    ]
    assert [i.execution_id for i in await watchdog_app.store.list_incidents()] == ["exec-2"]
    metrics = await (await api_client.get("/metrics")).text()
    assert "gl_watchdog_alerts_rejected_total 2.0" in metrics

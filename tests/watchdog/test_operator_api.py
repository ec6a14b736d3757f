"""The operator API on the real app (SQLite and PostgreSQL): events of an incident by page and as
server-sent events, a sweep asked for, the loaded policy and modes, and the roles each needs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from tests.watchdog.conftest import WATCHDOG_TOKEN, FakeClock, ScriptedDiagnose
from tests.watchdog.identity_app import IdentityApp, serving_identity_app
from tests.watchdog.recording_playbook import RecordingPlaybook
from watchdog_sdk.registry import Registry


@pytest.fixture
async def recording_app(_no_pending_tasks: None, database_url: str) -> AsyncIterator[IdentityApp]:
    """The identity app whose `restart_agent` is a recording playbook (medium risk: no approval rule)."""
    serving = serving_identity_app(
        database_url,
        bootstrap_token=WATCHDOG_TOKEN,
        clock=FakeClock(),
        diagnose=ScriptedDiagnose(),
        registry=Registry([RecordingPlaybook()]),
    )
    async with serving as app:
        yield app


async def _incident_with_history(app: IdentityApp) -> int:
    approval = await app.prompt()
    async with app.client() as client:
        answer = await client.post(
            f"/api/v1/incidents/{approval.incident_id}/deny", json={"reason": "not now"}
        )
    assert answer.status_code == 200
    return approval.incident_id


async def test_events_come_by_page_after_a_seq(identity_app: IdentityApp) -> None:
    incident_id = await _incident_with_history(identity_app)
    viewer = await identity_app.token("val", "viewer")
    async with identity_app.client(viewer) as client:
        first = (await client.get(f"/api/v1/incidents/{incident_id}/events", params={"limit": 1})).json()
        rest = (
            await client.get(f"/api/v1/incidents/{incident_id}/events", params={"after": first["next_after"]})
        ).json()
        after_all = (
            await client.get(f"/api/v1/incidents/{incident_id}/events", params={"after": rest["next_after"]})
        ).json()
        missing = await client.get("/api/v1/incidents/999/events")
    seqs = [e["seq"] for e in first["items"] + rest["items"]]
    assert len(first["items"]) == 1 and seqs == sorted(seqs) and len(seqs) > 2
    assert {"kind": "approval_decided", "actor": "bootstrap:admin"}.items() <= next(
        e for e in rest["items"] if e["kind"] == "approval_decided"
    ).items()
    assert after_all["items"] == [] and after_all["next_after"] == rest["next_after"]
    assert missing.status_code == 404


async def test_events_stream_as_server_sent_events_and_end_on_a_closed_incident(
    identity_app: IdentityApp,
) -> None:
    incident_id = await _incident_with_history(identity_app)
    await identity_app.wd.incidents.transition(incident_id, "escalated", actor="test", reason="test")
    async with identity_app.client() as client:
        paged = (await client.get(f"/api/v1/incidents/{incident_id}/events")).json()
        streamed = await client.get(
            f"/api/v1/incidents/{incident_id}/events", headers={"Accept": "text/event-stream"}
        )
    assert streamed.headers["Content-Type"].startswith("text/event-stream")
    frames = [frame for frame in streamed.text.split("\n\n") if frame.strip()]
    audit = [f for f in frames if "event: audit" in f]
    ids = [int(f.split("\n")[0].removeprefix("id: ")) for f in audit]
    assert ids == [e["seq"] for e in paged["items"]]
    end = json.loads(frames[-1].split("data: ", 1)[1])
    assert frames[-1].startswith("event: end") and end["incident_status"] == "escalated"


async def test_a_stream_is_bounded_by_its_lifetime_and_resumes_after_the_last_event_id(
    identity_app: IdentityApp,
) -> None:
    incident_id = (await identity_app.prompt()).incident_id  # open, awaiting an answer
    async with identity_app.client() as client:
        paged = (await client.get(f"/api/v1/incidents/{incident_id}/events")).json()
        resumed = await client.get(
            f"/api/v1/incidents/{incident_id}/events",
            headers={"Accept": "text/event-stream", "Last-Event-ID": str(paged["items"][0]["seq"])},
        )
    frames = [frame for frame in resumed.text.split("\n\n") if frame.strip()]
    ids = [int(f.split("\n")[0].removeprefix("id: ")) for f in frames if "event: audit" in f]
    assert len(paged["items"]) >= 2 and ids == [e["seq"] for e in paged["items"][1:]]
    assert frames[-1].startswith("event: end")
    assert json.loads(frames[-1].split("data: ", 1)[1])["incident_status"] == "open"


async def test_a_sweep_is_for_operators_and_reports_what_it_did(identity_app: IdentityApp) -> None:
    viewer = await identity_app.token("val", "viewer")
    operator = await identity_app.token("op", "operator")
    async with identity_app.client(viewer) as client:
        refused = await client.post("/api/v1/sweeps")
    async with identity_app.client(operator) as client:
        swept = await client.post("/api/v1/sweeps")
    assert refused.status_code == 403 and "role viewer cannot sweep" in refused.json()["detail"]
    assert swept.status_code == 202 and swept.json()["sweep"] == "done"
    assert swept.json()["report"]["leader"] is True and "opened" in swept.json()["report"]


async def test_the_policy_and_the_modes_are_shown_and_the_mode_cannot_be_put(
    identity_app: IdentityApp,
) -> None:
    viewer = await identity_app.token("val", "viewer")
    async with identity_app.client(viewer) as client:
        policy = (await client.get("/api/v1/policy")).json()
        modes = (await client.get("/api/v1/modes")).json()
        put = await client.put("/api/v1/modes", json={"mode": "observe"})
    assert policy["policy"]["approval"] == {
        "high": {"role": "approver", "groups": [], "approvers_required": 2}
    }
    assert "release_lock" in policy["plugins"]["playbooks"] and policy["plugins"]["problems"] == []
    assert modes["mode"] == "recommend" and modes["live"] is False
    assert modes["playbooks"]["increase_node_timeout"] == "recommend"
    assert put.status_code == 405


async def test_a_playbook_run_on_an_unknown_playbook_or_with_bad_params_is_refused(
    identity_app: IdentityApp,
) -> None:
    approval = await identity_app.prompt()
    operator = await identity_app.token("op", "operator")
    viewer = await identity_app.token("val", "viewer")
    path = f"/api/v1/incidents/{approval.incident_id}/playbooks"
    async with identity_app.client(operator) as client:
        unknown = await client.post(f"{path}/reboot", json={})
        bad = await client.post(f"{path}/increase_node_timeout", json={"params": {"factor": "lots"}})
    async with identity_app.client(viewer) as client:
        refused = await client.post(f"{path}/cancel", json={"dry_run": True})
    assert unknown.status_code == 404 and "no playbook 'reboot'" in unknown.json()["detail"]
    assert bad.status_code == 422 and bad.json()["field"] == "params" and "factor" in bad.json()["detail"]
    assert refused.status_code == 403 and "operator or higher needed" in refused.json()["detail"]


async def test_replay_needs_one_target_and_a_valid_policy(identity_app: IdentityApp) -> None:
    async with identity_app.client() as client:
        both = await client.post(
            "/api/v1/replay", json={"incident_id": 1, "since": "7d", "policy": "version: 1"}
        )
        invalid = await client.post(
            "/api/v1/replay", json={"since": "7d", "policy": "rules: [{name: x, when: {}, playbook: reboot}]"}
        )
        window = await client.post("/api/v1/replay", json={"since": "7d", "policy": "version: 1"})
    assert both.status_code == 422 and "exactly one of incident_id and since" in both.json()["detail"]
    assert invalid.status_code == 422 and invalid.json()["field"] == "policy"
    assert window.status_code == 200 and window.json() == {"items": [], "changed": 0}


async def test_a_playbook_without_an_approval_rule_is_run_by_the_service_at_once(
    recording_app: IdentityApp,
) -> None:
    incident_id = (await recording_app.prompt()).incident_id
    olga = await recording_app.token("olga", "operator")
    playbook = recording_app.wd.remediation.registry.get("restart_agent")
    assert isinstance(playbook, RecordingPlaybook)
    async with recording_app.client(olga) as client:
        started = await client.post(
            f"/api/v1/incidents/{incident_id}/playbooks/restart_agent", json={"params": {"agent_id": "a1"}}
        )
        assert started.status_code == 202, started.text
        assert started.json()["state"] == "started" and started.json()["approval"] is None
        async with asyncio.timeout(10):  # the run is a tracked job of the service: wait for it to end
            await recording_app.wd.jobs.wait_idle()
        events = (await client.get(started.json()["events"])).json()
    assert playbook.side_effects == 1
    assert events["incident_status"] == "resolved"
    mine = {e["kind"] for e in events["items"] if e["actor"] == "token:olga"}
    assert {"playbook_requested", "apply"} <= mine

"""The incident console's actions beyond approving, over HTTP (real PostgreSQL): diagnosing again and a
playbook's dry run then run (started, or proposed for approval as through the API), who may, what
the audit names, and the pages for bad input; and the page's live updates by server-sent events."""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.watchdog.conftest import ScriptedDiagnose
from tests.watchdog.console_stack import Console, console_settings, running_console
from tests.watchdog.recording_playbook import RecordingPlaybook
from watchdog.console.live import OpenStreams
from watchdog.policy import ApprovalRule, PlaybookPolicy, Policy
from watchdog_sdk.registry import Registry

LOCAL_OPERATOR = {"console_local_mode": True, "console_local_user": "olga", "console_local_role": "operator"}
# restart_agent needs two approvers: a run asked for by one person is proposed
TWO_APPROVERS = Policy(
    playbooks={"restart_agent": PlaybookPolicy(approval=ApprovalRule(approvers_required=2))}
)


@pytest.fixture
def diagnose() -> ScriptedDiagnose:
    return ScriptedDiagnose()


@pytest.fixture
def playbook() -> RecordingPlaybook:
    """`restart_agent` as a recording playbook (medium risk: no approval rule in the shipped policy)."""
    return RecordingPlaybook()


@pytest.fixture
async def operator(
    _no_pending_tasks: None, postgres_url: str, diagnose: ScriptedDiagnose, playbook: RecordingPlaybook
) -> AsyncIterator[Console]:
    """The console in local mode, signed in as olga, an operator."""
    settings = console_settings(postgres_url, **LOCAL_OPERATOR)
    async with running_console(settings, diagnose=diagnose, registry=Registry([playbook])) as served:
        yield served


async def _audit(console: Console, incident_id: int) -> list[tuple[str, str]]:
    return [(e.kind, e.actor) for e in (await console.wd.incidents.detail(incident_id)).audit]


async def _kinds(console: Console, incident_id: int) -> set[str]:
    return {kind for kind, _ in await _audit(console, incident_id)}


async def _settle(console: Console, incident_id: int) -> None:
    await console.wd.incidents.transition(incident_id, "escalated", actor="test", reason="test")


# -- diagnosing again --------------------------------------------------------------------------------


async def test_an_operator_diagnoses_again_and_the_audit_names_them(
    operator: Console, diagnose: ScriptedDiagnose
) -> None:
    incident, _ = await operator.incident("exec-again", prompt=False)
    path = f"/console/incidents/{incident.id}"
    page = (await operator.http.get(path)).text
    assert 'action="' + path + '/diagnose"' in page and 'id="diagnose"' in page
    answer = await operator.form(f"{path}/diagnose", {})
    assert answer.status_code == 303
    assert answer.headers["Location"] == f"{path}?notice=diagnosing"
    await asyncio.wait_for(operator.wd.jobs.wait_idle(), 10)
    assert diagnose.calls == ["exec-again"]
    audit = await _audit(operator, incident.id)
    assert ("diagnosis_requested", "local:olga") in audit
    assert audit.index(("diagnosis_requested", "local:olga")) < [k for k, _ in audit].index("diagnosis")
    shown = (await operator.http.get(f"{path}?notice=diagnosing")).text
    assert "A new diagnosis is queued under your name" in shown


async def test_diagnosing_a_settled_incident_again_answers_409_naming_its_state(
    operator: Console, diagnose: ScriptedDiagnose
) -> None:
    incident, _ = await operator.incident("exec-done", prompt=False)
    await _settle(operator, incident.id)
    page = (await operator.http.get(f"/console/incidents/{incident.id}")).text
    assert 'id="diagnose"' not in page and "This incident is escalated" in page
    answer = await operator.form(f"/console/incidents/{incident.id}/diagnose", {})
    assert answer.status_code == 409
    assert f"incident {incident.id} is escalated; only an open incident is diagnosed again" in answer.text
    assert diagnose.calls == []


@pytest.mark.parametrize("role", ["viewer", "approver"])
async def test_below_operator_neither_action_is_offered_and_both_are_refused_with_the_role_needed(
    _no_pending_tasks: None, postgres_url: str, role: str
) -> None:
    settings = console_settings(postgres_url, console_local_mode=True, console_local_role=role)
    async with running_console(settings) as served:
        incident, _ = await served.incident("exec-approver", prompt=False)
        path = f"/console/incidents/{incident.id}"
        page = (await served.http.get(path)).text
        assert 'id="diagnose"' not in page and 'id="dry-run-playbook"' not in page
        assert f"Role {role} cannot diagnose again or run playbooks: operator or higher needed" in page
        again = await served.form(f"{path}/diagnose", {})
        run = await served.form(f"{path}/playbook", {"playbook": "restart_agent", "step": "run"})
        assert (
            again.status_code == 403
            and f"role {role} cannot diagnose again: operator or higher needed" in again.text
        )
        assert (
            run.status_code == 403
            and f"role {role} cannot run playbooks: operator or higher needed" in run.text
        )
        assert not await _kinds(served, incident.id) & {"diagnosis_requested", "playbook_requested"}


@pytest.mark.parametrize("action", ["diagnose", "playbook"])
async def test_an_action_posted_without_the_consoles_origin_is_refused(
    operator: Console, action: str
) -> None:
    incident, _ = await operator.incident("exec-csrf", prompt=False)
    form = {"playbook": "restart_agent", "step": "run"} if action == "playbook" else {}
    answer = await operator.form(f"/console/incidents/{incident.id}/{action}", form, origin=None)
    assert answer.status_code == 403
    assert "must be sent from the console's own page" in html.unescape(answer.text)
    kinds = await _kinds(operator, incident.id)
    assert not kinds & {"diagnosis_requested", "playbook_requested"}


# -- a playbook: dry run, then run -------------------------------------------------------------------


async def test_a_dry_run_shows_what_the_playbook_would_do_and_acts_on_nothing(
    operator: Console, playbook: RecordingPlaybook
) -> None:
    incident, _ = await operator.incident("exec-dry", prompt=False)
    path = f"/console/incidents/{incident.id}"
    page = (await operator.http.get(path)).text
    assert '<option value="restart_agent" selected>restart_agent (the plan\'s)</option>' in page
    assert incident.plan is not None and incident.plan.params  # its params fill the field to begin with
    assert f'name="params" value="{json.dumps(incident.plan.params, sort_keys=True)}"' in html.unescape(page)
    form = {"playbook": "restart_agent", "params": '{"agent_id": "a1"}', "step": "dry_run"}
    answer = await operator.form(f"{path}/playbook", form)
    assert answer.status_code == 200
    assert answer.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert answer.headers["Cache-Control"] == "no-store"
    shown = html.unescape(answer.text)
    assert "Dry run of restart_agent on incident" in shown
    assert "<li>restart a1</li>" in shown and 'id="precheck">met' in shown
    assert "none asked for: it runs at once" in shown
    assert 'name="step" value="run" id="run-playbook">Run the playbook' in shown
    assert '<input type="hidden" name="params" value="{"agent_id": "a1"}">' in shown
    assert playbook.side_effects == 0
    assert "playbook_requested" not in await _kinds(operator, incident.id)


async def test_a_playbook_run_from_its_dry_run_is_started_under_the_visitors_name(
    operator: Console, playbook: RecordingPlaybook
) -> None:
    incident, _ = await operator.incident("exec-run", prompt=False)
    path = f"/console/incidents/{incident.id}"
    form = {"playbook": "restart_agent", "params": '{"agent_id": "a1"}', "step": "run"}
    answer = await operator.form(f"{path}/playbook", form)
    assert answer.status_code == 303
    assert answer.headers["Location"] == f"{path}?notice=playbook_started"
    await asyncio.wait_for(operator.wd.jobs.wait_idle(), 10)
    assert playbook.side_effects == 1
    audit = await _audit(operator, incident.id)
    assert ("playbook_requested", "local:olga") in audit and ("apply", "local:olga") in audit
    assert (
        "The playbook is started under your name"
        in (await operator.http.get(answer.headers["Location"])).text
    )


async def test_a_playbook_the_policy_gives_two_approvers_is_proposed_with_the_requesters_vote(
    _no_pending_tasks: None, postgres_url: str, playbook: RecordingPlaybook
) -> None:
    settings = console_settings(postgres_url, **LOCAL_OPERATOR)
    async with running_console(settings, registry=Registry([playbook]), policy=TWO_APPROVERS) as served:
        incident, _ = await served.incident("exec-propose", prompt=False)
        path = f"/console/incidents/{incident.id}"
        form = {"playbook": "restart_agent", "params": '{"agent_id": "a1"}', "step": "dry_run"}
        dry = html.unescape((await served.form(f"{path}/playbook", form)).text)
        assert "2 approvers: running it proposes it for approval" in dry
        assert 'id="run-playbook">Propose for approval' in dry
        answer = await served.form(f"{path}/playbook", {**form, "step": "run"})
        assert answer.headers["Location"] == f"{path}?notice=playbook_proposed"
        pending = await served.wd.approvals.pending_of(incident.id)
        assert pending is not None and pending.votes == ["local:olga"]
        assert pending.plan.playbook == "restart_agent" and pending.plan.params["agent_id"] == "a1"
        assert playbook.side_effects == 0
        shown = (await served.http.get(answer.headers["Location"])).text
        assert 'id="approval-progress">1 of 2: local:olga' in shown
        await served.wd.jobs.wait_idle()


@pytest.mark.parametrize(
    ("form", "problem"),
    [
        ({"playbook": "reboot", "step": "dry_run"}, "playbook: no playbook 'reboot'; known: restart_agent"),
        ({"playbook": "Not A Name", "step": "dry_run"}, "playbook: "),
        (
            {"playbook": "restart_agent", "params": "{nope", "step": "dry_run"},
            "params: Value error, not JSON",
        ),
        (
            {"playbook": "restart_agent", "params": "[1]", "step": "dry_run"},
            "params: Value error, not a JSON object",
        ),
        (
            {"playbook": "restart_agent", "params": '{"agent_id": 5}', "step": "run"},
            "params: invalid params for restart_agent",
        ),
        ({"playbook": "restart_agent", "step": "maybe"}, "step: "),
    ],
)
async def test_a_bad_playbook_form_answers_400_naming_the_field(
    operator: Console, playbook: RecordingPlaybook, form: dict[str, str], problem: str
) -> None:
    incident, _ = await operator.incident("exec-bad", prompt=False)
    answer = await operator.form(f"/console/incidents/{incident.id}/playbook", form)
    assert answer.status_code == 400
    assert problem in html.unescape(answer.text)
    assert playbook.side_effects == 0


async def test_a_playbook_run_on_a_settled_incident_answers_409(
    operator: Console, playbook: RecordingPlaybook
) -> None:
    incident, _ = await operator.incident("exec-settled", prompt=False)
    await _settle(operator, incident.id)
    form = {"playbook": "restart_agent", "params": '{"agent_id": "a1"}', "step": "run"}
    answer = await operator.form(f"/console/incidents/{incident.id}/playbook", form)
    assert answer.status_code == 409
    assert f"incident {incident.id} is escalated: open a new one to act" in answer.text
    dry = (
        await operator.form(f"/console/incidents/{incident.id}/playbook", {**form, "step": "dry_run"})
    ).text
    assert 'id="run-playbook"' not in dry and "is escalated: open a new one to act" in dry
    assert playbook.side_effects == 0


# -- live updates --------------------------------------------------------------------------------------


def _frames(text: str) -> list[str]:
    return [frame for frame in text.split("\n\n") if frame.strip()]


async def test_the_page_streams_its_changes_after_the_seq_it_shows_and_ends_once_settled(
    operator: Console,
) -> None:
    incident, _ = await operator.incident("exec-events", prompt=False)
    path = f"/console/incidents/{incident.id}"
    page = (await operator.http.get(path)).text
    after = int(page.split('data-after="', 1)[1].split('"', 1)[0])
    assert 'data-events-url="' + path + '/events"' in page
    seqs = [e.id for e in (await operator.wd.incidents.detail(incident.id)).audit]
    assert after == max(seqs)
    await _settle(operator, incident.id)
    streamed = await operator.http.get(f"{path}/events", params={"after": str(after)})
    assert streamed.headers["Content-Type"].startswith("text/event-stream")
    frames = _frames(streamed.text)
    audit = [json.loads(f.split("data: ", 1)[1]) for f in frames if "event: audit" in f]
    assert [(e["kind"], e["data"]["to"]) for e in audit] == [("state", "escalated")]
    assert frames[-1].startswith("event: end")
    assert json.loads(frames[-1].split("data: ", 1)[1])["incident_status"] == "escalated"


async def test_an_open_pages_stream_tells_it_of_a_change_as_it_is_written(operator: Console) -> None:
    incident, _ = await operator.incident("exec-follow", prompt=False)
    path = f"/console/incidents/{incident.id}/events"
    after = max(e.id for e in (await operator.wd.incidents.detail(incident.id)).audit)
    seen: list[str] = []
    async with operator.http.stream("GET", path, params={"after": str(after)}, timeout=20) as stream:
        assert stream.status_code == 200
        lines = stream.aiter_lines()
        await operator.wd.incidents.record(incident.id, "note", actor="local:olga")
        async for line in lines:  # what was there is skipped: the first event is the note
            seen.append(line)
            if line.startswith("data: "):
                break
        await _settle(operator, incident.id)  # the stream then ends by itself
        seen += [line async for line in lines]
    assert json.loads(seen[2].removeprefix("data: "))["kind"] == "note"
    assert seen[1] == "event: audit" and "event: end" in seen


@pytest.mark.parametrize(
    ("query", "status", "problem"),
    [("after=-1", 400, "after: "), ("after=x", 400, "after: "), ("", 404, "no incident 999")],
)
async def test_a_bad_stream_request_answers_a_page_saying_so(
    operator: Console, query: str, status: int, problem: str
) -> None:
    incident, _ = await operator.incident("exec-q", prompt=False)
    target = incident.id if status == 400 else 999
    answer = await operator.http.get(f"/console/incidents/{target}/events?{query}")
    assert answer.status_code == status and problem in answer.text


async def test_shutting_down_ends_the_streams_being_served() -> None:
    streams = OpenStreams()
    entered = asyncio.Event()

    async def serve_forever() -> None:
        with streams.serving():
            entered.set()
            await asyncio.Event().wait()  # a stream of a live incident: it ends only when told

    task = asyncio.create_task(serve_forever())
    await entered.wait()
    await streams.close(web.Application())
    assert task.cancelled()

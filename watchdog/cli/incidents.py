"""`gl-watchdog incidents list|show`, `diagnose` and `events`: reading incidents through the API.

Where it sits: command groups of `watchdog.cli`, clients of the service's routes (`watchdog.client`):
`GET /api/v1/incidents` (filters, keyset pages), `GET /api/v1/incidents/{id}`, `POST /api/v1/
incidents[/{id}/diagnose]` and `GET /api/v1/incidents/{id}/events`. With `--local`, `incidents list`
and `diagnose` work as before on the local database and credentials (`watchdog.cli.local`), for
debugging where `gl-watchdog serve` runs.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import click
from rich.console import Group, RenderableType
from rich.text import Text

from watchdog.cli import local
from watchdog.cli.follow import DEFAULT_FOLLOW_SECONDS, SETTLED, Follower
from watchdog.cli.output import Output, brief, key_values, output_option, table
from watchdog.cli.session import Session, pass_session
from watchdog.client import ApiClient, segment
from watchdog.diagnostics import render
from watchdog.exit_codes import EXIT_FAILED, EXIT_USAGE, CliError
from watchdog.migrations import INCIDENT_STATUSES
from watchdog_sdk.diagnosis import Diagnosis

STATUSES: Final = INCIDENT_STATUSES
_DURATION = re.compile(r"([1-9][0-9]{0,5})([dhm])")
_UNITS: Final = {"d": "days", "h": "hours", "m": "minutes"}
SUMMARY_WIDTH: Final = 70
HEAD_FIELDS: Final = ("id", "status", "execution_id", "dag_id", "likely_cause", "source", "detection_source",
                      "opened_at", "updated_at", "closed_at", "summary")  # fmt: skip


def since_value(value: str, now: datetime | None = None) -> datetime:
    """`7d`, `12h`, `30m` back from now, or an ISO 8601 time (UTC when it has no offset)."""
    match = _DURATION.fullmatch(value.strip())
    if match:
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise CliError(
            f"--since {value!r} is neither a duration like 7d, 12h, 30m nor an ISO 8601 time", EXIT_USAGE
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def incident_id_argument(value: str, name: str = "INCIDENT") -> int:
    if not value.isdigit() or not 1 <= int(value) <= 2**31 - 1:
        raise CliError(f"{name} {value!r} is not an incident id (an integer 1 to 2147483647)", EXIT_USAGE)
    return int(value)


def statuses_option(value: tuple[str, ...]) -> list[str]:
    chosen = [s.strip() for item in value for s in item.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(STATUSES))
    if unknown:
        raise CliError(f"unknown status {', '.join(unknown)}; use one of {', '.join(STATUSES)}", EXIT_USAGE)
    return chosen


# -- incidents list / show --------------------------------------------------------------------------


@click.group("incidents")
def incidents_group() -> None:
    """List and show incidents (through the API; `list --local` reads the local database)."""


@incidents_group.command("list")
@click.option("--status", multiple=True, help=f"statuses, repeated or comma-separated: {', '.join(STATUSES)}")
@click.option("--dag", help="only this DAG's incidents")
@click.option("--cause", help="only this likely cause, e.g. hung_node")
@click.option("--since", help="opened since: 7d, 12h, 30m or an ISO 8601 time")
@click.option(
    "--held/--not-held",
    default=None,
    help="only the incidents a silence, a maintenance window or a failed silence check holds (or not)",
)
@click.option("--limit", type=int, default=50, show_default=True, help="page size")
@click.option("--cursor", help="the next page: the cursor printed with the previous one")
@click.option("--all", "all_pages", is_flag=True, help="every page, not only the first")
@click.option("--local", is_flag=True, help="read the local database (where `serve` runs) instead")
@local.local_settings_option
@output_option()
@pass_session
def list_incidents(
    session: Session,
    status: tuple[str, ...],
    dag: str | None,
    cause: str | None,
    since: str | None,
    held: bool | None,
    limit: int,
    cursor: str | None,
    all_pages: bool,
    local: bool,
    settings_file: str | None,
    output: str | None,
) -> None:
    """List incidents, newest first, with their pending approval and what holds them."""
    statuses = statuses_option(status)
    if limit < 1:
        raise CliError(f"--limit must be at least 1, not {limit}", EXIT_USAGE)
    out = Output.of(output)
    if local:
        _local_list(out, statuses, held, limit, settings_file, (dag, cause, since, cursor, all_pages))
        return
    query: dict[str, Any] = {
        "status": ",".join(statuses) or None,
        "dag_id": dag,
        "cause": cause,
        "opened_after": since_value(since).isoformat() if since else None,
        "held": None if held is None else str(held).lower(),
        "limit": min(limit, 1000),
        "cursor": cursor,
    }
    client = session.client()
    page = client.get("/incidents", query)
    items = page["items"]
    while all_pages and page.get("next_cursor"):
        page = client.get("/incidents", {**query, "cursor": page["next_cursor"]})
        items.extend(page["items"])
    answer = {
        "items": items,
        "next_cursor": page.get("next_cursor"),
        "total": page["total"],
    }
    out.emit(answer, lambda data: incident_table(data["items"]))
    if page.get("next_cursor") and not all_pages:
        out.note(f"showing {len(items)} of {page['total']}; next page: --cursor {page['next_cursor']}")


def _local_list(
    out: Output,
    statuses: list[str],
    held: bool | None,
    limit: int,
    settings_file: str | None,
    remote_only: tuple[Any, ...],
) -> None:
    if any(remote_only):
        raise CliError("--local lists by --status, --held/--not-held and --limit only", EXIT_USAGE)
    items, total = local.list_incidents(settings_file, statuses, limit, held)
    out.emit({"items": items, "total": total}, lambda data: incident_table(data["items"]))
    if total > len(items):  # never cut short silently
        out.note(f"showing the newest {len(items)} of {total} incidents (--limit N for more)")


def incident_table(items: list[dict[str, Any]]) -> RenderableType | str:
    if not items:
        return "no incidents"
    return table(
        ("ID", "STATUS", "EXECUTION", "DAG", "CAUSE", "SOURCE", "OPENED (UTC)", "APPROVAL", "SUMMARY"),
        (
            (
                i["id"],
                held_status(i),
                i["execution_id"],
                i["dag_id"],
                i.get("likely_cause"),
                i["source"],
                i["opened_at"],
                i.get("pending_approval"),
                shorten(i.get("summary") or "", SUMMARY_WIDTH),
            )
            for i in items
        ),
    )


def held_status(item: dict[str, Any]) -> str:
    """The status column: `open (held: silence abc, maintenance nightly)` for a held incident."""
    if not item.get("held"):
        return str(item["status"])
    holders = [
        f"{h.get('kind')} {h.get('name') or h.get('id') or ''}".strip()
        for h in item.get("suppressed_by") or []
    ]
    return f"{item['status']} (held: {', '.join(holders)})"


def shorten(text: str, width: int) -> str:
    """`text` cut at a word to `width` characters, marked with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    cut = text[: width - 2].rsplit(" ", 1)[0]
    return f"{cut} …"


@incidents_group.command("show")
@click.argument("incident")
@output_option()
@pass_session
def show_incident(session: Session, incident: str, output: str | None) -> None:
    """One incident: its diagnosis (steps 1-8), plan, approvals, actions and audit timeline."""
    incident_id = incident_id_argument(incident)
    detail = session.client().get(f"/incidents/{segment(incident_id)}")
    Output.of(output).emit(detail, incident_view)


def incident_view(detail: dict[str, Any]) -> RenderableType:
    head = {k: detail.get(k) for k in HEAD_FIELDS}
    parts: list[RenderableType] = [key_values(head, title=f"incident {detail['id']}")]
    if detail.get("diagnosis"):
        parts += [Text("\ndiagnosis", style="bold"), Text(diagnosis_text(detail["diagnosis"]))]
    if detail.get("plan"):
        parts += [Text(""), key_values(detail["plan"], title="plan")]
    parts += _section(detail, "approvals", ("id", "state", "created_at", "expires_at", "decided_by"))
    parts += _section(detail, "actions", ("playbook", "step", "state", "started_at", "finished_at"))
    audit = detail.get("audit") or []
    rows = ((e["at"], e["actor"], e["kind"], e.get("phase"), brief(e.get("data"))) for e in audit)
    parts += [Text(""), table(("AT (UTC)", "ACTOR", "KIND", "PHASE", "DATA"), rows, title="timeline")]
    return Group(*parts)


def _section(detail: dict[str, Any], key: str, fields: tuple[str, ...]) -> list[RenderableType]:
    """A titled table of `detail[key]` (a list), headed by the field names; none when it is empty."""
    if not detail.get(key):
        return []
    headers = [f.replace("_at", "").replace("_", " ").upper() for f in fields]
    return [Text(""), table(headers, ([item.get(f) for f in fields] for item in detail[key]), title=key)]


def diagnosis_text(document: dict[str, Any]) -> str:
    """The diagnosis table as `gl-watchdog diagnose --local` prints it."""
    try:
        return render.to_table(Diagnosis.model_validate(document))
    except ValueError:  # a diagnosis of another version: show what there is
        return "\n".join(f"{k}: {v}" for k, v in document.items() if not isinstance(v, list | dict))


# -- diagnose ---------------------------------------------------------------------------------------


@click.command("diagnose")
@click.argument("incident", required=False)
@click.option("--execution", help="diagnose this execution: its open incident, or a new one")
@click.option("--dag", help="with --execution: the execution's DAG (recorded on a new incident)")
@click.option("--no-wait", is_flag=True, help="start it and return (the 202) without waiting")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="seconds to wait for it")
@click.option("--local", "local_run", is_flag=True, help="run the steps here, with the local credentials")
@local.local_settings_option
@output_option("markdown")
@pass_session
def diagnose(
    session: Session,
    incident: str | None,
    execution: str | None,
    dag: str | None,
    no_wait: bool,
    timeout: float,
    local_run: bool,
    settings_file: str | None,
    output: str | None,
) -> None:
    """Diagnose an incident (or --execution ID) in the service: runbook steps 1-8, then the plan.

    With --local, EXECUTION_ID is diagnosed here with the local orchestrator credentials and Redis,
    nothing is recorded (`gl-watchdog diagnose --local EXECUTION_ID`)."""
    if local_run:
        if incident is None or execution or dag:
            raise CliError(
                "--local takes one EXECUTION_ID argument: diagnose --local EXECUTION_ID", EXIT_USAGE
            )
        local.diagnose(settings_file, incident, output or "table")
        return
    if (incident is None) == (execution is None):
        raise CliError("give either INCIDENT or --execution ID", EXIT_USAGE)
    out = Output.of("json" if output == "markdown" else output)
    client = session.client()
    if execution is not None:
        opened = client.post("/incidents", {"execution_id": execution, "dag_id": dag})
        incident_id, before = opened["incident"]["id"], None
        if not opened["created"]:
            before = _restart_diagnosis(client, incident_id)
    else:
        incident_id = incident_id_argument(incident or "")
        before = _restart_diagnosis(client, incident_id)
    if no_wait:
        out.emit(
            {"incident_id": incident_id, "diagnosis": "started"},
            lambda d: f"incident {incident_id}: diagnosis started",
        )
        return
    follower = Follower(client, out, incident_id, with_events=False)
    follower.until(lambda f: _diagnosed(f.incident, before), timeout)
    detail = follower.incident
    if output == "markdown":
        out.raw(render.to_markdown(Diagnosis.model_validate(detail["diagnosis"])))
        return
    out.emit(detail, incident_view)
    if detail.get("diagnosis") is None:
        raise CliError(f"incident {incident_id} is {detail['status']} without a diagnosis", EXIT_FAILED)


def _restart_diagnosis(client: ApiClient, incident_id: int) -> dict[str, Any] | None:
    """Ask for a new diagnosis; the one there was before (to tell the new one from it)."""
    before: dict[str, Any] | None = client.get(f"/incidents/{segment(incident_id)}").get("diagnosis")
    client.post(f"/incidents/{segment(incident_id)}/diagnose")
    return before


def _diagnosed(incident: dict[str, Any], before: dict[str, Any] | None) -> bool:
    if incident["status"] == "diagnosing":
        return False
    return incident.get("diagnosis") not in (None, before) or incident["status"] in SETTLED


# -- events -----------------------------------------------------------------------------------------


@click.command("events")
@click.argument("incident")
@click.option("--after", type=int, help="only the events after this sequence number")
@click.option("--follow", "-f", is_flag=True, help="keep printing new events until the incident settles")
@click.option(
    "--timeout", type=float, default=DEFAULT_FOLLOW_SECONDS, show_default=True, help="with --follow"
)
@output_option()
@pass_session
def events(
    session: Session, incident: str, after: int | None, follow: bool, timeout: float, output: str | None
) -> None:
    """An incident's audit events (who did what, before and after); --follow tails them."""
    incident_id = incident_id_argument(incident)
    out = Output.of(output)
    follower = Follower(session.client(), out, incident_id, after=after)
    if follow:
        follower.until(lambda f: f.final, timeout)
        return
    items = follower.events()
    if out.mode == "table":
        for event in items:
            follower.show(event)
        if not items:
            out.note(f"no events for incident {incident_id}" + (f" after {after}" if after else ""))
        return
    out.emit({"items": items, "next_after": follower.after}, lambda d: None)

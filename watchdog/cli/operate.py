"""`gl-watchdog approve|deny`, `playbook run|propose`, `sweep`, `policy show`, `modes`, `tokens`:
acting through the service.

Where it sits: commands of `watchdog.cli`, clients of the service's operator routes (`watchdog.
client`). The service does the work under the same state machine, policy, budgets and audit as an
automatic remediation, and records the caller's identity (the token's owner) as the actor. A
playbook run is followed until it settles (`watchdog.cli.follow`). `playbook run --local` and
`sweep --local` still work on the local database and credentials (`watchdog.remediation_cli`,
`watchdog.cli.local`).
"""

from __future__ import annotations

import re
from typing import Any

import click
import yaml
from rich.console import RenderableType

from watchdog import remediation_cli
from watchdog.cli import local
from watchdog.cli.follow import DEFAULT_FOLLOW_SECONDS, Follower, run_ended
from watchdog.cli.incidents import incident_id_argument
from watchdog.cli.output import Output, key_values, output_option, table
from watchdog.cli.session import Session, pass_session
from watchdog.client import segment
from watchdog.exit_codes import EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE, CliError, for_status

ROLES = ("viewer", "approver", "operator", "admin")
SWEEP_SECONDS = 120.0
APPROVAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_REFUSED = re.compile(r"answered (401|403)\b")  # the clients' OrchestratorError/KubernetesError text


# -- approve / deny ---------------------------------------------------------------------------------


def _decide(session: Session, target: str, decision: str, reason: str | None, output: str | None) -> None:
    """Decide by incident id (digits: the incident's pending approval) or by approval id."""
    if target.isdigit():
        path, body = f"/incidents/{segment(incident_id_argument(target))}/{decision}", {"reason": reason}
    elif reason:
        raise CliError("--reason is recorded with an INCIDENT id; give the incident's id", EXIT_USAGE)
    elif APPROVAL_ID.fullmatch(target):
        path, body = f"/approvals/{segment(target)}/{decision}", {}
    else:
        raise CliError(
            f"{target!r} is neither an incident id (digits) nor an approval id (1-64 of A-Z a-z 0-9 _ -)",
            EXIT_USAGE,
        )
    answer = session.client().post(path, {k: v for k, v in body.items() if v})
    Output.of(output).emit(answer, decision_line)


def decision_line(answer: dict[str, Any]) -> str:
    """`approval apr_x: approved (incident 7) by token:alice`, with `1 of 2 approvals` while pending."""
    approval = answer.get("approval", answer)
    said = f"approval {approval.get('id', '?')}: {approval.get('state', '?')}"
    if approval.get("incident_id") is not None:
        said += f" (incident {approval['incident_id']})"
    if answer.get("actor"):
        said += f" by {answer['actor']}"
    required = answer.get("approvals_required") or 1
    if approval.get("state") == "pending" and required > 1:
        said += f"; {len(approval.get('votes') or [])} of {required} approvals, another approver is needed"
    return said


def _decision_command(decision: str, summary: str) -> click.Command:
    """`approve` or `deny`: the same arguments, one decision each."""

    @click.command(decision, help=summary)
    @click.argument("target", metavar="INCIDENT|APPROVAL_ID")
    @click.option("--reason", help="why (recorded in the audit log; with an INCIDENT id)")
    @output_option()
    @pass_session
    def command(session: Session, target: str, reason: str | None, output: str | None) -> None:
        _decide(session, target, decision, reason, output)

    return command


approve = _decision_command(
    "approve", "Approve an incident's pending plan (the service then applies it), as the token's owner."
)
deny = _decision_command(
    "deny", "Deny an incident's pending plan (nothing is done; the incident is escalated)."
)


# -- playbook run / propose -------------------------------------------------------------------------


@click.group("playbook")
def playbook_group() -> None:
    """Propose or run a playbook on an incident, executed by the service."""


def _playbook_options(func: Any) -> Any:
    """NAME, --incident and --param: what `propose` and `run` share."""
    func = click.option(
        "--param", multiple=True, metavar="KEY=VALUE", help="a playbook parameter (repeatable)"
    )(func)
    func = click.option("--incident", help="the incident to act on (its execution)")(func)
    return click.argument("name")(func)


@playbook_group.command("propose")
@_playbook_options
@output_option()
@pass_session
def propose(
    session: Session, name: str, incident: str | None, param: tuple[str, ...], output: str | None
) -> None:
    """Check the preconditions and show the plan (a dry run in the service); change nothing."""
    incident_id = _incident_option(incident)
    answer = _start(session, name, incident_id, param, dry_run=True)
    Output.of(output).emit(
        answer, lambda a: key_values(a, title=f"{name} on incident {incident_id}: dry run")
    )


@playbook_group.command("run")
@_playbook_options
@click.option("--no-follow", is_flag=True, help="return once the service accepted it (202)")
@click.option(
    "--timeout", type=float, default=DEFAULT_FOLLOW_SECONDS, show_default=True, help="seconds to follow it"
)
@click.option("--local", "local_run", is_flag=True, help="run it here (local database, credentials)")
@click.option("--execution", help="with --local: the execution id")
@click.option("--dry-run", is_flag=True, help="with --local: check and plan only")
@local.local_settings_option
@output_option()
@pass_session
def run(
    session: Session,
    name: str,
    incident: str | None,
    param: tuple[str, ...],
    no_follow: bool,
    timeout: float,
    local_run: bool,
    execution: str | None,
    dry_run: bool,
    settings_file: str | None,
    output: str | None,
) -> None:
    """Run a playbook on an incident in the service (policy, budgets, approval and audit apply) and
    follow it: a live status line on a terminal, events as JSON lines with -o json. Where the policy
    wants more approvers it is proposed instead (exit 0, saying who must approve). Exit 0 when
    resolved, 1 when refused, escalated or not verified."""
    if local_run:
        if execution is None or incident is not None:
            raise CliError("--local needs --execution ID (and no --incident)", EXIT_USAGE)
        code = remediation_cli.playbook_run(settings_file, name, execution, list(param), dry_run)
        raise click.exceptions.Exit(code)
    if execution or dry_run:
        raise CliError(
            "--execution and --dry-run go with --local (`playbook propose` is the dry run)", EXIT_USAGE
        )
    incident_id = _incident_option(incident)
    out = Output.of(output)
    follower = Follower(session.client(), out, incident_id)
    follower.skip_past()
    answer = _start(session, name, incident_id, param, dry_run=False)
    if out.mode == "table":
        out.note(f"{name} {answer['state']} on incident {incident_id} ({answer.get('remediation_id')})")
    else:
        out.json_line({"accepted": answer})
    if answer["state"] == "awaiting_approval":  # the policy wants (more) approvers: nothing runs yet
        _proposed(out, incident_id, answer)
        return
    if no_follow:
        return
    follower.until(run_ended, timeout)
    result = {"incident_id": incident_id, "status": follower.status, "refused": follower.refusal,
              "remediation_id": answer.get("remediation_id")}  # fmt: skip
    if out.mode == "table":
        out.note(_ending(incident_id, follower.status, follower.refusal))
    else:
        out.json_line({"result": result})
    if follower.refusal is not None or follower.status != "resolved":
        raise click.exceptions.Exit(EXIT_FAILED)


def _proposed(out: Output, incident_id: int, answer: dict[str, Any]) -> None:
    """A run the policy's approval rule holds: say who must approve (exit 0: it was asked for)."""
    approval = answer.get("approval") or {}
    votes = ", ".join(approval.get("votes") or []) or "none"
    said = (
        f"awaiting approval {approval.get('id', '?')} (votes so far: {votes}); another approver runs it "
        f"with `gl-watchdog approve {incident_id}`"
    )
    if out.mode == "table":
        out.note(said)
    else:
        out.json_line({"result": {"incident_id": incident_id, "status": "awaiting_approval", "detail": said}})


def _ending(incident_id: int, status: str, refusal: str | None) -> str:
    if refusal is not None:
        return f"refused ({refusal}); incident {incident_id} is {status}"
    return f"incident {incident_id}: {status}"


def _incident_option(incident: str | None) -> int:
    if incident is None:
        raise CliError("--incident ID is needed (or --local --execution ID)", EXIT_USAGE)
    return incident_id_argument(incident, "--incident")


def _start(
    session: Session, name: str, incident_id: int, param: tuple[str, ...], *, dry_run: bool
) -> dict[str, Any]:
    body = {"params": remediation_cli.parse_param_pairs(param), "dry_run": dry_run}
    answer: dict[str, Any] = session.client().post(
        f"/incidents/{segment(incident_id)}/playbooks/{segment(name)}", body
    )
    return answer


# -- sweep, policy, modes ---------------------------------------------------------------------------


@click.command("sweep")
@click.option("--local", "local_run", is_flag=True, help="sweep here (local database, credentials)")
@local.local_settings_option
@output_option()
@pass_session
def sweep(session: Session, local_run: bool, settings_file: str | None, output: str | None) -> None:
    """One sweep now (as the scheduled job would): find stuck runs, open and diagnose incidents."""
    out = Output.of(output)
    if local_run:
        report = local.sweep(settings_file)
    else:  # the service answers once its sweep is done: give it longer than a plain call
        client = session.client()
        report = client.post("/sweeps", timeout=max(client.timeout, SWEEP_SECONDS))["report"]
    out.emit(report, lambda r: key_values(r, title="sweep"))
    if report.get("result") not in (None, "ok", "not_leader", "started"):
        raise click.exceptions.Exit(sweep_failure_code(str(report.get("error"))))


def sweep_failure_code(error: str) -> int:
    """A failed sweep's exit code: 4 when a backend refused our credential, else 5 (unreachable)."""
    refused = _REFUSED.search(error)
    return for_status(int(refused[1])) if refused else EXIT_UNAVAILABLE


@click.command("show")
@output_option()
@pass_session
def policy_show(session: Session, output: str | None) -> None:
    """The policy the service has loaded (rules, playbooks, approvals), as YAML in table mode."""
    policy = session.client().get("/policy")
    Output.of(output).emit(policy, lambda p: yaml.safe_dump(p, sort_keys=False, allow_unicode=True))


@click.command("modes")
@output_option()
@pass_session
def modes(session: Session, output: str | None) -> None:
    """The remediation mode, each playbook's, and the kill switch (the mode is configuration: the
    service has no live switch to set; `observe` is the kill switch)."""
    Output.of(output).emit(session.client().get("/modes"), lambda m: key_values(m, title="modes"))


@click.command("whoami")
@output_option()
@pass_session
def whoami(session: Session, output: str | None) -> None:
    """Who the service takes you for: the identity and role of your token (or proxy sign-in)."""
    Output.of(output).emit(session.client().get("/whoami"), lambda me: key_values(me, title="you"))


# -- tokens -----------------------------------------------------------------------------------------


@click.group("tokens")
def tokens_group() -> None:
    """Named API tokens (admin): create, list, revoke."""


@tokens_group.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True, help="what the token may do")
@output_option()
@pass_session
def tokens_create(session: Session, name: str, role: str, output: str | None) -> None:
    """Create a token; it is printed once, here, and stored only hashed."""
    answer = session.client().post("/tokens", {"name": name, "role": role})
    Output.of(output).emit(
        answer,
        lambda a: f"token {a['name']} ({a['role']}) created; it is shown this once:\n{a['token']}",
    )


@tokens_group.command("list")
@output_option()
@pass_session
def tokens_list(session: Session, output: str | None) -> None:
    """The named tokens (never their values)."""
    answer = session.client().get("/tokens")
    Output.of(output).emit(answer, _token_table)


def _token_table(answer: dict[str, Any]) -> RenderableType | str:
    if not answer["items"]:
        return "no named tokens"
    fields = ("name", "role", "created_at", "created_by", "last_used_at", "revoked_at")
    return table(
        ("NAME", "ROLE", "CREATED", "BY", "LAST USED", "REVOKED"),
        ([t.get(f) for f in fields] for t in answer["items"]),
    )


@tokens_group.command("revoke")
@click.argument("name")
@output_option()
@pass_session
def tokens_revoke(session: Session, name: str, output: str | None) -> None:
    """Revoke a token: refused at once from then on."""
    answer = session.client().delete(f"/tokens/{segment(name)}")
    Output.of(output).emit(answer or {"name": name, "revoked": True}, lambda a: f"token {name} revoked")

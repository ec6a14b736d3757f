"""The remediation side of `gl-watchdog`: `approve`, `deny`, `playbook run`, `demo`.

Plugged into the parser of `watchdog.cli` by `add_commands(sub, common)`; errors are raised as
`WatchdogError` subclasses, which `watchdog.cli.main` turns into one line on stderr and an exit code.

    gl-watchdog approve|deny APPROVAL_ID [--url URL]   answer a prompt through the running watchdog's API
                                                       (bearer token from settings), so the service that
                                                       owns the incident continues the remediation
    gl-watchdog playbook run NAME --execution ID [--param k=v ...] [--dry-run]
                                                       preconditions, plan, and (without --dry-run) apply
                                                       and verify, recorded in the store as a manual
                                                       incident's actions (the execution's open incident,
                                                       moved to remediating so the loop does not act at
                                                       the same time, then resolved or escalated); exit 0
                                                       only when verified. restart_agent's agent_id and
                                                       increase_node_timeout's dag_id/node_id default to
                                                       the run's one running node
    gl-watchdog demo [--yes]                           the embedded demo (`watchdog.demo`)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any, Final, TextIO

import httpx
import yaml
from pydantic import ValidationError

from playbooks.registry import default_registry
from watchdog.backends import open_clients
from watchdog.demo import run_demo
from watchdog.errors import ApprovalClosed, ApprovalNotFound, InvalidToken, InvalidTransition
from watchdog.incidents import IncidentService
from watchdog.plan import Plan
from watchdog.policy import load_policy
from watchdog.remediation import STARTABLE, StoreLedger
from watchdog.settings import WatchdogSettings, load_settings
from watchdog.store import Incident, WatchdogStore
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.errors import BackendUnavailable, ConfigError, PlaybookError, WatchdogError
from watchdog_sdk.ledger import ActionLedger, InMemoryLedger
from watchdog_sdk.playbook import Playbook, PlaybookContext, PlaybookLimits

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1


def _settings(args: argparse.Namespace) -> WatchdogSettings:
    return load_settings(args.config).with_local_secrets(create=False)


# -- approve / deny -------------------------------------------------------------------------------------


def cmd_approve(args: argparse.Namespace) -> int:
    """Approve a pending approval prompt (the watchdog then applies the plan)."""
    return _decide(args, "approve")


def cmd_deny(args: argparse.Namespace) -> int:
    """Deny a pending approval prompt (nothing is done; the incident is escalated)."""
    return _decide(args, "deny")


def _decide(args: argparse.Namespace, decision: str) -> int:
    settings = _settings(args)
    url = (args.url or settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")
    tokens = settings.api_token_values()
    headers = {"Authorization": f"Bearer {tokens[0]}"} if tokens else {}
    endpoint = f"{url}/api/v1/approvals/{args.approval_id}/{decision}"
    try:
        response = httpx.post(
            endpoint,
            headers=headers,
            json={"actor": args.actor},
            timeout=settings.orchestrator_timeout_seconds,
        )
    except httpx.HTTPError as exc:
        raise BackendUnavailable(f"watchdog API at {url} unreachable: {exc or type(exc).__name__}") from exc
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text[:200]}
    detail = str(body.get("detail", "")) if isinstance(body, dict) else ""
    if response.status_code == 404:
        raise ApprovalNotFound(detail or f"no approval {args.approval_id}")
    if response.status_code in (401, 403):
        raise InvalidToken(f"the watchdog refused the request ({response.status_code}): {detail}")
    if response.status_code == 409:
        raise ApprovalClosed(str(body.get("error", "closed")), detail)
    if response.status_code >= 400:
        raise WatchdogError(f"the watchdog answered {response.status_code}: {detail}")
    sys.stdout.write(f"approval {body['id']}: {body['state']} (incident {body['incident_id']})\n")
    return EXIT_OK


# -- playbook run ---------------------------------------------------------------------------------------


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param must be KEY=VALUE, got {pair!r}")
        params[key] = yaml.safe_load(raw) if raw else ""
    return params


def cmd_playbook_run(args: argparse.Namespace) -> int:
    """Run one playbook against one execution: preconditions, plan, apply, verify."""
    settings = _settings(args)
    return asyncio.run(_playbook_run(settings, args))


# Parameters a by-hand run may leave out: they are read from the run itself, as the planner does.
LIVE_PARAMS: Final[dict[str, tuple[str, ...]]] = {
    "restart_agent": ("agent_id",),
    "increase_node_timeout": ("dag_id", "node_id"),
}
ACTING: Final = ("remediating", "verifying")


async def _live_params(
    orchestrator: OrchestratorClient, name: str, execution_id: str, given: dict[str, Any]
) -> dict[str, Any]:
    """The missing `LIVE_PARAMS` of `name`, from the execution's one running node (none if unclear)."""
    missing = [k for k in LIVE_PARAMS.get(name, ()) if k not in given]
    if not missing:
        return {}
    try:
        trace = await orchestrator.get_trace(execution_id)
    except WatchdogError:
        return {}  # the parameter check below says what to give
    running = [(node_id, t) for node_id, t in trace.node_traces.items() if t.status == "running"]
    found: dict[str, Any] = {}
    if trace.dag_id:
        found["dag_id"] = trace.dag_id
    if len(running) == 1:
        found["node_id"] = running[0][0]
        if running[0][1].agent_id:
            found["agent_id"] = running[0][1].agent_id
    return {k: found[k] for k in missing if k in found}


async def _playbook_run(settings: WatchdogSettings, args: argparse.Namespace) -> int:
    registry = default_registry()
    playbook = registry.get(args.name)
    policy = load_policy(settings.policy_file)
    raw = {**policy.playbook(playbook.name).params, **_parse_params(args.param or [])}
    out = sys.stdout
    clients = await open_clients(settings)
    orchestrator = clients.orchestrator
    store: WatchdogStore | None = None
    try:
        live = await _live_params(orchestrator, playbook.name, args.execution, raw)
        if live:
            found = ", ".join(f"{k}={v}" for k, v in live.items())
            out.write(f"params from the run: {found} (override with --param)\n")
            raw = {**raw, **live}
        try:
            params = playbook.parse_params(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise PlaybookError(
                f"invalid params for {playbook.name}: {problems} (give them with --param KEY=VALUE)"
            ) from exc
        ledger: ActionLedger
        incidents: IncidentService | None = None
        incident: Incident | None = None
        created = False
        if args.dry_run:
            incident_id, ledger = 0, InMemoryLedger()
        else:
            store = await WatchdogStore.open(settings.database_url)
            incidents = IncidentService(store)
            opened = await incidents.open_or_join(
                args.execution, dag_id=None, source="manual", detection_source="api", actor="cli"
            )
            incident, created = opened.incident, opened.created
            if incident.status in ACTING:
                raise PlaybookError(
                    f"incident {incident.id} of execution {args.execution} is {incident.status}: "
                    "the watchdog is already acting on it; not starting a second action"
                )
            incident_id, ledger = incident.id, StoreLedger(store)
        limits = policy.limits
        ctx = PlaybookContext(
            incident_id=incident_id,
            execution_id=args.execution,
            clients=clients,
            ledger=ledger,
            limits=PlaybookLimits(
                max_node_timeout_seconds=limits.max_node_timeout_seconds,
                lock_grace_seconds=float(limits.lock_grace_seconds),
            ),
        )
        precheck = await playbook.preconditions(ctx, params)
        out.write(f"preconditions: {'ok' if precheck.ok else 'REFUSED'}: {precheck.reason}\n")
        planned = await playbook.plan(ctx, params)
        heading = "plan" if precheck.ok else "plan, were the preconditions met"
        out.write(f"{heading} ({playbook.name}, risk {playbook.risk.value}):\n")
        for action in planned:
            out.write(f"  - {action.step}: {action.description}\n")
        if args.dry_run:
            out.write("dry run: nothing was changed\n")
            return EXIT_OK if precheck.ok else EXIT_FAILED
        assert incidents is not None and incident is not None
        if not precheck.ok:
            await incidents.record(
                incident.id, "preconditions", actor="cli", data=precheck.model_dump(mode="json")
            )
            if created:  # opened only for this run, and nothing was done: do not leave it open
                await incidents.close_if_not_acted(
                    incident.id, actor="cli", reason=f"{playbook.name} by hand refused: {precheck.reason}"
                )
            out.write(f"nothing was done (incident {incident.id})\n")
            return EXIT_FAILED
        plan = Plan(
            execution_id=args.execution,
            likely_cause="manual",
            playbook=playbook.name,
            params=params.model_dump(mode="json"),
            risk=playbook.risk,
            mode=settings.mode,
            will_act=True,
            rule="manual",
            rationale=f"run by hand: gl-watchdog playbook run {playbook.name}",
            actions=list(planned),
        )
        try:  # one action in flight per execution: the loop's own guard, a compare-and-set
            await incidents.transition(
                incident.id,
                "remediating",
                actor="cli",
                reason=f"applying {playbook.name} by hand",
                expected=STARTABLE,
                plan=plan,
            )
        except InvalidTransition as exc:
            raise PlaybookError(f"not starting {playbook.name}: {exc}") from exc
        try:
            return await _apply_and_verify(out, incidents, incident.id, playbook, ctx, params)
        except asyncio.CancelledError:  # Ctrl-C: never leave the incident "remediating" for ever
            with contextlib.suppress(WatchdogError):
                await _finish(
                    incidents,
                    incident.id,
                    "escalated",
                    f"{playbook.name} by hand interrupted (Ctrl-C) before it finished; "
                    "see the incident's actions for what was done",
                )
            raise
    finally:
        await clients.aclose()
        if store is not None:
            await store.close()


async def _apply_and_verify(
    out: TextIO,
    incidents: IncidentService,
    incident_id: int,
    playbook: Playbook[Any],
    ctx: PlaybookContext,
    params: Any,
) -> int:
    """Apply and verify on the incident moved to `remediating`; leave it resolved or escalated."""
    result = await playbook.apply(ctx, params)
    await incidents.record(incident_id, "apply", actor="cli", data=result.model_dump(mode="json"))
    for step in result.steps:
        detail = f" ({step.detail})" if step.detail and step.detail != step.status.value else ""
        out.write(f"  {step.step}: {step.status.value}{detail}\n")
    if not result.ok:
        out.write(f"apply failed: {result.detail}\n")
        await _finish(incidents, incident_id, "escalated", f"{playbook.name} by hand failed: {result.detail}")
        return EXIT_FAILED
    await incidents.transition(
        incident_id,
        "verifying",
        actor="cli",
        reason=f"{playbook.name} applied",
        expected=("remediating",),
    )
    out.write("verifying (the runbook's post-resolution checks; Ctrl-C stops and escalates)\n")
    out.flush()
    verification = await playbook.verify(ctx, params)
    for check in verification.checks:
        out.write(f"  check {check.name}: {check.status.value} ({check.detail})\n")
    data = verification.model_dump(mode="json")
    if verification.ok:
        summary = f"resolved by {playbook.name} (by hand): {verification.summary()}"
        await _finish(incidents, incident_id, "resolved", summary, verification=data)
    else:
        summary = f"{playbook.name} by hand applied but verification failed: {verification.summary()}"
        await _finish(incidents, incident_id, "escalated", summary, verification=data)
    out.write(f"verified: {'yes' if verification.ok else 'NO'} (incident {incident_id})\n")
    return EXIT_OK if verification.ok else EXIT_FAILED


async def _finish(incidents: IncidentService, incident_id: int, to: str, summary: str, **values: Any) -> None:
    """Close the by-hand remediation's incident: resolved when verified, escalated otherwise."""
    await incidents.transition(
        incident_id, to, actor="cli", reason=summary, expected=ACTING, summary=summary, **values
    )


# -- demo -----------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the embedded demo: a stuck emissions report detected, diagnosed, approved, fixed, verified."""
    result = asyncio.run(run_demo(sys.stdout, yes=args.yes))
    if args.json:
        sys.stdout.write(json.dumps(result.__dict__, default=str) + "\n")
    return EXIT_OK if result.ok else EXIT_FAILED


# -- parser ---------------------------------------------------------------------------------------------


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add approve, deny, playbook run and demo to `gl-watchdog`'s subparsers."""
    for name, func in (("approve", cmd_approve), ("deny", cmd_deny)):
        doc = func.__doc__ or name
        p = sub.add_parser(name, parents=[common], help=doc.splitlines()[0].lower(), description=doc)
        p.add_argument("approval_id", metavar="APPROVAL_ID")
        p.add_argument("--url", help="the watchdog's URL (default: settings.public_url, else host:port)")
        p.add_argument("--actor", default="cli", help="who decides (recorded in the audit log)")
        p.set_defaults(func=func)

    playbook = sub.add_parser("playbook", help="run a playbook by hand", description="Playbooks by hand.")
    playbook_sub = playbook.add_subparsers(dest="playbook_command", metavar="COMMAND", required=True)
    run = playbook_sub.add_parser(
        "run",
        parents=[common],
        help="run one playbook against one execution",
        description=cmd_playbook_run.__doc__,
    )
    names = default_registry().names()
    run.add_argument("name", metavar="NAME", choices=names, help=f"the playbook: {', '.join(names)}")
    run.add_argument("--execution", required=True, metavar="ID", help="the execution id")
    run.add_argument(
        "--param", action="append", metavar="KEY=VALUE", help="a playbook parameter (repeatable)"
    )
    run.add_argument("--dry-run", action="store_true", help="check and plan only; change nothing")
    run.set_defaults(func=cmd_playbook_run)

    demo = sub.add_parser(
        "demo", parents=[common], help="run the embedded end-to-end demo", description=cmd_demo.__doc__
    )
    demo.add_argument("--yes", action="store_true", help="approve the remediation without asking")
    demo.add_argument("--json", action="store_true", help="also print the result as JSON")
    demo.set_defaults(func=cmd_demo)

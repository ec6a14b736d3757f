"""The remediation side of `gl-watchdog`: `approve`, `deny`, `playbook run`, `demo`.

Plugged into the parser of `watchdog.cli` by `add_commands(sub, common)`; errors are raised as
`WatchdogError` subclasses or `CliError`s, which `watchdog.cli.main` turns into one line on stderr and
the exit code of their kind (`watchdog.exit_codes`: 2 bad input (bad params included, checked before the
execution is looked up), 3 not found, 4 unreachable or our credential refused, 1 refused by the state
or not resolved).

    gl-watchdog approve|deny APPROVAL_ID [--url URL]   answer a prompt through the running watchdog's API
                                                       (bearer token from settings), so the service that
                                                       owns the incident continues the remediation
    gl-watchdog playbook run NAME --execution ID [--param k=v ...] [--dry-run]
                                                       preconditions and plan; without --dry-run the
                                                       service's own remediation state machine applies
                                                       and verifies (`RemediationService.run_manual`) on
                                                       the execution's incident: one action in flight,
                                                       budgets and circuit breaker, audit, resolved or
                                                       escalated (Ctrl-C escalates); exit 0 only when
                                                       verified. restart_agent's agent_id and
                                                       increase_node_timeout's dag_id/node_id default to
                                                       the run's one running node
    gl-watchdog demo [--yes]                           the embedded demo (`watchdog.demo`)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, Final, TextIO

import httpx
import yaml
from pydantic import TypeAdapter, ValidationError

from gl_common.clock import SystemClock
from gl_common.ids import ExecutionId
from playbooks.registry import default_registry
from watchdog.api_models import ApprovalId
from watchdog.assembly import build_watchdog
from watchdog.backends import open_clients
from watchdog.demo import run_demo
from watchdog.exit_codes import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, CliError, for_status
from watchdog.policy import Policy, load_policy
from watchdog.remediation_setup import ManualRun, PlaybookContexts, RemediationProgress, parse_params, preview
from watchdog.settings import WatchdogSettings, load_settings
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.errors import BackendUnavailable, ConfigError, NotFound, PlaybookError, WatchdogError
from watchdog_sdk.outcomes import ApplyResult, PlannedAction, Precheck, VerifyResult
from watchdog_sdk.playbook import Playbook


def _settings(args: argparse.Namespace) -> WatchdogSettings:
    return load_settings(args.config).with_local_secrets(create=False)


def _argument(kind: Any, value: str, name: str, rule: str) -> str:
    """`value` as the API accepts a `kind` (an id type of `watchdog.api_models`); a usage error otherwise."""
    try:
        return str(TypeAdapter(kind).validate_python(value))
    except ValidationError:
        raise CliError(f"{name} {value!r} is not valid: {rule}", EXIT_USAGE) from None


# -- approve / deny -------------------------------------------------------------------------------------


def cmd_approve(args: argparse.Namespace) -> int:
    """Approve a pending approval prompt (the watchdog then applies the plan)."""
    return _decide(args, "approve")


def cmd_deny(args: argparse.Namespace) -> int:
    """Deny a pending approval prompt (nothing is done; the incident is escalated)."""
    return _decide(args, "deny")


def _decide(args: argparse.Namespace, decision: str) -> int:
    approval_id = _argument(
        ApprovalId,
        args.approval_id,
        "APPROVAL_ID",
        "1-64 of A-Z a-z 0-9 _ -, starting with a letter or digit",
    )
    settings = _settings(args)
    url = (args.url or settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")
    tokens = settings.api_token_values()
    headers = {"Authorization": f"Bearer {tokens[0]}"} if tokens else {}
    endpoint = f"{url}/api/v1/approvals/{approval_id}/{decision}"
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
    status = response.status_code
    if status >= 400:
        if status == 404:
            message = detail or f"no approval {approval_id}"
        elif status in (401, 403):
            message = f"the watchdog refused the request ({status}): {detail} (check GL_WATCHDOG_API_TOKENS)"
        elif status == 409:
            message = detail
        else:
            message = f"the watchdog answered {status}: {detail}"
        raise CliError(message, for_status(status))
    try:
        said = f"approval {body['id']}: {body['state']} (incident {body['incident_id']})"
    except (TypeError, KeyError):
        raise CliError(
            f"the watchdog at {url} answered {status} without an approval", for_status(502)
        ) from None
    sys.stdout.write(said + "\n")
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
    _argument(
        ExecutionId,
        args.execution,
        "--execution",
        "1-64 of A-Z a-z 0-9 _ . : -, starting with a letter or digit",
    )
    _parse_params(args.param or [])  # a malformed --param is a usage error before anything is opened
    settings = _settings(args)
    return asyncio.run(_playbook_run(settings, args))


async def _require_execution(orchestrator: OrchestratorClient, execution_id: str) -> None:
    """A run by hand needs a run: an unknown one is "not found" (3), before anything is recorded."""
    try:
        await orchestrator.get_execution(execution_id)
    except NotFound as exc:
        raise CliError(f"no execution {execution_id!r} in the orchestrator", EXIT_NOT_FOUND) from exc


# Parameters a by-hand run may leave out: they are read from the run itself, as the planner does.
LIVE_PARAMS: Final[dict[str, tuple[str, ...]]] = {
    "restart_agent": ("agent_id",),
    "increase_node_timeout": ("dag_id", "node_id"),
}


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


class _Printer(RemediationProgress):
    """The run's progress, as lines on the terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.verified_ok: bool | None = None

    def checked(
        self, playbook: Playbook[Any], precheck: Precheck, actions: tuple[PlannedAction, ...]
    ) -> None:
        self.out.write(f"preconditions: {'ok' if precheck.ok else 'REFUSED'}: {precheck.reason}\n")
        heading = "plan" if precheck.ok else "plan, were the preconditions met"
        self.out.write(f"{heading} ({playbook.name}, risk {playbook.risk.value}):\n")
        for action in actions:
            self.out.write(f"  - {action.step}: {action.description}\n")

    def refused(self, reason: str) -> None:
        self.out.write(f"refused: {reason}\n")

    def applied(self, result: ApplyResult) -> None:
        for step in result.steps:
            detail = f" ({step.detail})" if step.detail and step.detail != step.status.value else ""
            self.out.write(f"  {step.step}: {step.status.value}{detail}\n")
        if not result.ok:
            self.out.write(f"apply failed: {result.detail}\n")

    def verifying(self) -> None:
        self.out.write("verifying (the runbook's post-resolution checks; Ctrl-C stops and escalates)\n")
        self.out.flush()

    def verified(self, result: VerifyResult) -> None:
        for check in result.checks:
            self.out.write(f"  check {check.name}: {check.status.value} ({check.detail})\n")
        self.verified_ok = result.ok


async def _params(
    orchestrator: OrchestratorClient, playbook: Playbook[Any], policy: Policy, args: argparse.Namespace
) -> dict[str, Any]:
    """The run's params: the policy's, then --param, then what the run itself names; validated."""
    raw = {**policy.playbook(playbook.name).params, **_parse_params(args.param or [])}
    live = await _live_params(orchestrator, playbook.name, args.execution, raw)
    if live:
        found = ", ".join(f"{k}={v}" for k, v in live.items())
        sys.stdout.write(f"params from the run: {found} (override with --param)\n")
        raw = {**raw, **live}
    try:
        return parse_params(playbook, raw).model_dump(mode="json")
    except PlaybookError as exc:
        raise CliError(f"{exc} (give them with --param KEY=VALUE)", EXIT_USAGE) from exc


async def _playbook_run(settings: WatchdogSettings, args: argparse.Namespace) -> int:
    if args.dry_run:  # no store: a dry run works while the watchdog's database is down
        policy, registry = load_policy(settings.policy_file), default_registry()
        clients = await open_clients(settings)
        try:
            playbook = registry.get(args.name)
            params = await _params(clients.orchestrator, playbook, policy, args)
            await _require_execution(clients.orchestrator, args.execution)
            contexts = PlaybookContexts(clients, policy, SystemClock())
            precheck, actions = await preview(playbook, args.execution, params, contexts)
        finally:
            await clients.aclose()
        _Printer(sys.stdout).checked(playbook, precheck, actions)
        sys.stdout.write("dry run: nothing was changed\n")
        return EXIT_OK if precheck.ok else EXIT_FAILED
    # The service's own remediation state machine: budgets, breaker, audit and restart safety hold.
    watchdog = await build_watchdog(settings, respond=False)
    try:
        remediation = watchdog.remediation
        playbook = remediation.registry.get(args.name)
        params = await _params(watchdog.clients.orchestrator, playbook, remediation.contexts.policy, args)
        await _require_execution(watchdog.clients.orchestrator, args.execution)
        run = ManualRun(
            playbook=playbook.name,
            execution_id=args.execution,
            params=params,
            actor="cli",
            rationale=f"run by hand: gl-watchdog playbook run {playbook.name}",
            interrupted_by="Ctrl-C",
        )
        printer = _Printer(sys.stdout)
        outcome = await remediation.run_manual(run, printer)
    finally:
        await watchdog.aclose()
    if outcome.status == "refused":
        sys.stdout.write(f"nothing was done (incident {outcome.incident_id})\n")
    elif printer.verified_ok is not None:
        sys.stdout.write(
            f"verified: {'yes' if printer.verified_ok else 'NO'} (incident {outcome.incident_id})\n"
        )
    return EXIT_OK if outcome.status == "resolved" else EXIT_FAILED


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

"""The local remediation commands of `gl-watchdog`: `playbook run --local` and `demo`.

Where it sits: called by `watchdog.cli` (`demo`) and `watchdog.cli.operate` (`playbook run --local`);
errors are raised as `WatchdogError` subclasses or `CliError`s, which `watchdog.cli.main` turns into
one line on stderr and the exit code of their kind (`watchdog.exit_codes`: 2 bad input (bad params
included, checked before the execution is looked up), 3 not found, 4/5 our credential refused or a
backend unreachable, 1 refused by the state or not resolved). Both work on this machine's files and
credentials; an operator elsewhere uses `gl-watchdog playbook run NAME --incident ID`, which the
service executes.

    gl-watchdog playbook run NAME --local --execution ID [--param k=v ...] [--dry-run]
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

import asyncio
import json
import sys
from dataclasses import dataclass
from typing import Any, Final, TextIO

import click
import yaml
from pydantic import TypeAdapter, ValidationError

from gl_common.clock import SystemClock
from gl_common.ids import ExecutionId
from playbooks.registry import default_registry
from watchdog.assembly import build_watchdog
from watchdog.backends import open_clients
from watchdog.demo import run_demo
from watchdog.exit_codes import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, CliError
from watchdog.policy import Policy, load_policy
from watchdog.remediation_setup import ManualRun, PlaybookContexts, RemediationProgress, parse_params, preview
from watchdog.settings import WatchdogSettings, load_settings
from watchdog_sdk.clients.orchestrator import OrchestratorClient
from watchdog_sdk.errors import ConfigError, NotFound, PlaybookError, WatchdogError
from watchdog_sdk.outcomes import ApplyResult, PlannedAction, Precheck, VerifyResult
from watchdog_sdk.playbook import Playbook


def _argument(kind: Any, value: str, name: str, rule: str) -> str:
    """`value` as the API accepts a `kind` (an id type of `watchdog.api_models`); a usage error otherwise."""
    try:
        return str(TypeAdapter(kind).validate_python(value))
    except ValidationError:
        raise CliError(f"{name} {value!r} is not valid: {rule}", EXIT_USAGE) from None


# -- playbook run ---------------------------------------------------------------------------------------


def parse_param_pairs(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`--param KEY=VALUE` pairs; each value read as YAML (numbers, booleans, lists), empty as ""."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param must be KEY=VALUE, got {pair!r}")
        try:
            params[key] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            params[key] = raw  # not YAML: the text as given
    return params


def playbook_run(
    settings_file: str | None, name: str, execution: str, params: list[str], dry_run: bool
) -> int:
    """Run one playbook against one execution here: preconditions, plan, apply, verify."""
    names = default_registry().names()
    if name not in names:
        raise CliError(f"unknown playbook {name!r}; the built-in ones are {', '.join(names)}", EXIT_USAGE)
    _argument(
        ExecutionId,
        execution,
        "--execution",
        "1-64 of A-Z a-z 0-9 _ . : -, starting with a letter or digit",
    )
    parse_param_pairs(params)  # a malformed --param is a usage error before anything is opened
    settings = load_settings(settings_file).with_local_secrets(create=False)
    return asyncio.run(_playbook_run(settings, _Run(name, execution, params, dry_run)))


@dataclass(frozen=True)
class _Run:
    name: str
    execution: str
    param: list[str]
    dry_run: bool


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
    orchestrator: OrchestratorClient, playbook: Playbook[Any], policy: Policy, args: _Run
) -> dict[str, Any]:
    """The run's params: the policy's, then --param, then what the run itself names; validated."""
    raw = {**policy.playbook(playbook.name).params, **parse_param_pairs(args.param or [])}
    live = await _live_params(orchestrator, playbook.name, args.execution, raw)
    if live:
        found = ", ".join(f"{k}={v}" for k, v in live.items())
        sys.stdout.write(f"params from the run: {found} (override with --param)\n")
        raw = {**raw, **live}
    try:
        return parse_params(playbook, raw).model_dump(mode="json")
    except PlaybookError as exc:
        raise CliError(f"{exc} (give them with --param KEY=VALUE)", EXIT_USAGE) from exc


async def _playbook_run(settings: WatchdogSettings, args: _Run) -> int:
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


@click.command("demo", short_help="(local) the embedded end-to-end demo")
@click.option("--yes", is_flag=True, help="approve the remediation without asking")
@click.option("--json", "as_json", is_flag=True, help="also print the result as JSON")
def demo(yes: bool, as_json: bool) -> None:
    """Run the embedded demo (local: in-process orchestrator, temporary files): a stuck emissions
    report detected, diagnosed, approved, fixed, verified."""
    result = asyncio.run(run_demo(sys.stdout, yes=yes))
    if as_json:
        sys.stdout.write(json.dumps(result.__dict__, default=str) + "\n")
    if not result.ok:
        raise click.exceptions.Exit(EXIT_FAILED)

"""`gl-watchdog`: the watchdog's command line (argparse, one function per subcommand).

    gl-watchdog serve [--config FILE] [--host H] [--port P]    the service (webhook, API, sweeps)
    gl-watchdog diagnose EXECUTION_ID [--format table|json|markdown]
    gl-watchdog incidents [--status S[,S]] [--format table|json]
    gl-watchdog sweep                                          one sweep now (sweep_once), then exit
    gl-watchdog policy check FILE                              validate a policy file (policy_cli)
    gl-watchdog replay INCIDENT_ID|--all --since 7d --policy FILE    plan again, act on nothing

Every subcommand takes `--config FILE` (YAML; env `GL_WATCHDOG_*` overrides it) and `--help`. Errors
are one line on stderr and a non-zero exit, never a traceback; the same kind of failure gives the same
code in every command (`watchdog.exit_codes`, which draws the table):

    0  done                                  2  bad usage, configuration or input (a 400/422)
    1  failed, or the state refused it (409)  3  not found (a 404: execution, incident, approval)
                                             4  a backend unreachable or refusing us (401/403, 5xx)

Calls the composition root (`watchdog.assembly`: serve, sweep), the diagnostic runner and renderers
(diagnose) and the store (incidents). The approve/deny/playbook/demo subcommands of the remediation
side (`watchdog.remediation_cli`) plug in at the marked place in `build_parser()`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from gl_common.auth import is_loopback
from gl_common.ids import ExecutionId
from watchdog import logs, remediation_cli
from watchdog.assembly import build_watchdog, create_app
from watchdog.backends import open_clients
from watchdog.diagnostics import render, runner
from watchdog.exit_codes import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
    exit_code,
)
from watchdog.listing import IncidentFilter, page_incidents
from watchdog.migrations import INCIDENT_STATUSES
from watchdog.plan import Plan
from watchdog.plugins import installed_plugins
from watchdog.policy import Policy, load_policy
from watchdog.policy_cli import add_commands as add_policy_commands
from watchdog.records import Incident
from watchdog.replay import Replay, replay_incident, replay_window
from watchdog.settings import WatchdogSettings, load_settings
from watchdog.store import WatchdogStore
from watchdog_sdk.diagnostic_step import DiagnosticContext
from watchdog_sdk.errors import NotFound, Unauthorized, WatchdogError
from watchdog_sdk.registry import Registry

log = logging.getLogger("watchdog")

Command = Callable[[argparse.Namespace], int]


# -- shared helpers ---------------------------------------------------------------------------------


def _settings(args: argparse.Namespace, **overrides: Any) -> WatchdogSettings:
    """The settings of a client command, with local secrets (state_dir) where none are configured."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return load_settings(args.config, **clean).with_local_secrets(create=False)


def _setup_logging(level: str, log_format: str = "text") -> None:
    """Logging on stderr (`watchdog.logs`): JSON lines for the service when configured, text otherwise."""
    logs.configure(level, log_format)


def execution_id_argument(value: str) -> str:
    """An EXECUTION_ID as the API accepts it (docs/architecture.md); a usage error (2) otherwise."""
    try:
        return TypeAdapter(ExecutionId).validate_python(value)
    except ValidationError:
        raise CliError(
            f"EXECUTION_ID {value!r} is not an execution id: 1-64 of A-Z a-z 0-9 _ . : -, "
            "starting with a letter or digit",
            EXIT_USAGE,
        ) from None


# -- serve ------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the watchdog service until SIGINT/SIGTERM."""
    settings = _settings(args, host=args.host, port=args.port)
    _setup_logging(settings.log_level, settings.log_format)
    if not settings.api_tokens and not is_loopback(settings.host):
        raise CliError(
            f"refusing to serve on {settings.host} without API tokens: set GL_WATCHDOG_API_TOKENS "
            "or api_token_file (without tokens the API is only served on a loopback address)",
            EXIT_USAGE,
        )
    if not settings.api_tokens:
        log.info("no API token configured: generating a local one in %s", settings.state_dir)
    settings = settings.with_local_secrets(create=True)
    return asyncio.run(_serve(settings))


async def _serve(settings: WatchdogSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # platforms without signal handlers
            loop.add_signal_handler(sig, stop.set)
    watchdog = await build_watchdog(settings)  # an invalid policy or key fails before anything opens
    runner_ = web.AppRunner(create_app(watchdog), access_log=None)
    try:
        await runner_.setup()
        site = web.TCPSite(runner_, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:
            raise CliError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", EXIT_FAILED
            ) from exc
        await watchdog.start()
        log.info(
            "gl-watchdog listening on http://%s:%s (store %s, condition from %s)",
            settings.host,
            settings.port,
            watchdog.store.dialect,
            "prometheus" if settings.prometheus_url else "the orchestrator API",
        )
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner_.cleanup()
        await watchdog.aclose()
    return EXIT_OK


# -- diagnose ---------------------------------------------------------------------------------------


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Diagnose one execution now and print the Diagnosis."""
    if not args.execution_id.strip():
        raise CliError("EXECUTION_ID must not be empty", EXIT_USAGE)
    execution_id_argument(args.execution_id)
    settings = _settings(args)
    _setup_logging("WARNING")
    text = asyncio.run(_diagnose(settings, args.execution_id, args.format))
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK


async def _diagnose(settings: WatchdogSettings, execution_id: str, fmt: str) -> str:
    clients = await open_clients(settings)
    ctx = DiagnosticContext(clients=clients, settings=settings.diagnostics())
    try:
        try:
            await ctx.orchestrator.get_execution(execution_id)
        except NotFound as exc:
            raise CliError(
                f"no execution {execution_id!r} in the orchestrator at {settings.orchestrator_url}",
                EXIT_NOT_FOUND,
            ) from exc
        except Unauthorized as exc:
            raise CliError(
                f"{exc} (at {settings.orchestrator_url}): check GL_WATCHDOG_ORCHESTRATOR_TOKEN "
                "or orchestrator_token_file",
                EXIT_UNAVAILABLE,
            ) from exc
        diagnosis = await runner.diagnose(ctx, execution_id, steps=installed_plugins().steps)
    finally:
        await clients.aclose()
    if fmt == "json":
        return render.to_json(diagnosis)
    if fmt == "markdown":
        return render.to_markdown(diagnosis)
    return render.to_table(diagnosis)


# -- replay -----------------------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    """Show what a policy would plan for a stored incident's diagnosis (or, with --all --since, for
    every diagnosed incident of a window), and whether the budgets and circuit breaker would allow it
    now; writes nothing and calls no outside system."""
    if (args.incident_id is None) == (not args.all):
        raise CliError("give either INCIDENT_ID or --all --since DURATION", EXIT_USAGE)
    if args.all and args.since is None:
        raise CliError("--all needs --since DURATION (e.g. 7d, 12h, 30m)", EXIT_USAGE)
    settings = _settings(args)
    catalog = installed_plugins()
    policy = load_policy(args.policy, catalog=catalog)
    results = asyncio.run(_replay(settings, args, policy, catalog.registry))
    if args.format == "json":
        items = [r.to_dict() for r in results]
        sys.stdout.write(json.dumps(items if args.all else items[0], indent=2) + "\n")
        return EXIT_OK
    rows = [("INCIDENT", "EXECUTION", "CAUSE", "RECORDED", "REPLAYED", "APPROVAL", "LIMITS NOW", "CHANGED")]
    for r in results:
        plan = r.replayed
        recorded = "no plan" if r.recorded is None else _plan_text(r.recorded)
        approval = ("needs approval" if plan.requires_approval else "none") if plan.will_act else "-"
        rows.append(
            (str(r.incident_id), r.execution_id, r.likely_cause, recorded, _plan_text(plan), approval,
             r.limits_refusal or "allow", "yes" if r.changed else "no")
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        sys.stdout.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
        sys.stdout.write("\n")
    changed = sum(r.changed for r in results)
    sys.stdout.write(f"{len(results)} incident(s) replayed, {changed} would change\n")
    return EXIT_OK


def _plan_text(plan: Plan) -> str:
    if plan.playbook is None:
        return f"escalate (rule {plan.rule})" if plan.rule else "escalate (no rule)"
    return f"{plan.playbook} {json.dumps(plan.params, sort_keys=True)}"


def since_argument(value: str) -> timedelta:
    """`7d`, `12h`, `30m`: a window back from now."""
    units = {"d": "days", "h": "hours", "m": "minutes"}
    number, unit = value[:-1], value[-1:]
    if unit not in units or not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration like 7d, 12h or 30m")
    return timedelta(**{units[unit]: int(number)})


async def _replay(
    settings: WatchdogSettings, args: argparse.Namespace, policy: Policy, registry: Registry
) -> list[Replay]:
    _require_existing_sqlite_file(settings.database_url)
    store = await WatchdogStore.open(settings.database_url)
    try:
        if args.all:
            return await replay_window(
                store, args.since, policy=policy, registry=registry, mode=settings.mode
            )
        one = await replay_incident(
            store, args.incident_id, policy=policy, registry=registry, mode=settings.mode
        )
        return [one]
    finally:
        await store.close()


# -- incidents --------------------------------------------------------------------------------------


def cmd_incidents(args: argparse.Namespace) -> int:
    """List incidents from the watchdog's store."""
    if args.limit < 1:
        raise CliError(f"--limit must be at least 1, not {args.limit}", EXIT_USAGE)
    settings = _settings(args)
    statuses = None
    if args.status:
        statuses = [s.strip() for s in args.status.split(",") if s.strip()]
        unknown = sorted(set(statuses) - set(INCIDENT_STATUSES))
        if unknown:
            raise CliError(
                f"unknown status {', '.join(unknown)}; use one of {', '.join(INCIDENT_STATUSES)}", EXIT_USAGE
            )
    incidents, total, pending = asyncio.run(_list_incidents(settings, statuses, args.limit))
    if args.format == "json":
        items = [
            {
                **i.model_dump(mode="json", exclude={"diagnosis", "plan", "verification"}),
                "pending_approval": pending.get(i.id),
            }
            for i in incidents
        ]
        sys.stdout.write(json.dumps({"items": items, "total": total}, indent=2) + "\n")
    else:
        write_incident_table(incidents, sys.stdout, pending)
    if total > len(incidents):  # never cut short silently
        sys.stderr.write(f"showing the newest {len(incidents)} of {total} incidents (--limit N for more)\n")
    return EXIT_OK


def _require_existing_sqlite_file(database_url: str) -> None:
    """A read-only command must not create an empty SQLite store and report "no incidents" from it
    (e.g. when started in another directory than `gl-watchdog serve`)."""
    try:
        url = make_url(database_url)
    except ArgumentError:
        return  # WatchdogStore.open reports the bad URL
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return
    path = Path(url.database)
    if not path.exists():
        raise CliError(
            f"no watchdog database at {path.resolve()}: run this where `gl-watchdog serve` runs, or point "
            "GL_WATCHDOG_DATABASE_URL (or --config) at the database it uses",
            EXIT_UNAVAILABLE,
        )


async def _list_incidents(
    settings: WatchdogSettings, statuses: list[str] | None, limit: int
) -> tuple[list[Incident], int, dict[int, str]]:
    """The newest `limit` incidents, how many match in all, and the pending approval prompt of each
    that has one (for `gl-watchdog approve` when the notifier never delivered the link)."""
    _require_existing_sqlite_file(settings.database_url)
    store = await WatchdogStore.open(settings.database_url, pool=settings.db_pool())
    try:
        where = IncidentFilter(statuses=tuple(statuses) if statuses else None)
        page = await page_incidents(store, where, before=None, limit=limit)
        async with store.transaction() as tx:
            prompts = await tx.list_approvals(states=["pending"])
        return page.incidents, page.total, {p.incident_id: p.id for p in prompts}
    finally:
        await store.close()


def write_incident_table(
    incidents: Sequence[Incident], out: TextIO, pending: Mapping[int, str] | None = None
) -> None:
    """A plain-text table of incidents, newest first, with each one's pending approval prompt."""
    if not incidents:
        out.write("no incidents\n")
        return
    pending = pending or {}
    header = (
        "ID",
        "STATUS",
        "EXECUTION",
        "DAG",
        "SOURCE",
        "DETECTED BY",
        "OPENED (UTC)",
        "APPROVAL",
        "SUMMARY",
    )
    rows = [
        (
            str(i.id),
            i.status,
            i.execution_id,
            i.dag_id or "-",
            i.source,
            i.detection_source,
            i.opened_at.strftime("%Y-%m-%d %H:%M:%S"),
            pending.get(i.id, "-"),
            textwrap.shorten(i.summary or "", width=70, placeholder=" …"),
        )
        for i in incidents
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    for row in [header, *rows]:
        out.write("  ".join(cell.ljust(widths[c]) for c, cell in enumerate(row)).rstrip() + "\n")


# -- sweep ------------------------------------------------------------------------------------------


def cmd_sweep(args: argparse.Namespace) -> int:
    """One sweep now (as the scheduled job would), waiting for the diagnoses it starts."""
    settings = _settings(args)
    _setup_logging("WARNING")
    report = asyncio.run(_sweep(settings))
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    if report["result"] == "ok":
        return EXIT_OK
    if report["result"] == "not_leader":
        return EXIT_OK
    return EXIT_UNAVAILABLE


async def _sweep(settings: WatchdogSettings) -> dict[str, Any]:
    watchdog = await build_watchdog(settings, respond=False)  # diagnoses, reports, acts on nothing
    try:
        report = await watchdog.sweeper.sweep_once()
        await watchdog.jobs.wait_idle()
        return report.as_json()
    finally:
        await watchdog.aclose()


# -- the parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `gl-watchdog` argument parser (every subcommand sets `func`)."""
    parser = argparse.ArgumentParser(
        prog="gl-watchdog",
        description="Alert responder for stuck DAG executions: intake, diagnosis, remediation.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        help="YAML settings file (GL_WATCHDOG_* environment variables override it)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve", parents=[common], help="run the watchdog service", description=cmd_serve.__doc__
    )
    serve.add_argument("--host", help="listen address (default: settings.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: settings.port, 8081)")
    serve.set_defaults(func=cmd_serve)

    diagnose = sub.add_parser(
        "diagnose",
        parents=[common],
        help="diagnose one execution (runbook steps 1-8)",
        description=cmd_diagnose.__doc__,
    )
    diagnose.add_argument("execution_id", metavar="EXECUTION_ID")
    diagnose.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    diagnose.set_defaults(func=cmd_diagnose)

    incidents = sub.add_parser(
        "incidents", parents=[common], help="list incidents", description=cmd_incidents.__doc__
    )
    incidents.add_argument("--status", help=f"comma-separated statuses: {', '.join(INCIDENT_STATUSES)}")
    incidents.add_argument("--format", choices=("table", "json"), default="table")
    incidents.add_argument(
        "--limit", type=int, default=100, help="at most this many, newest first (default 100)"
    )
    incidents.set_defaults(func=cmd_incidents)

    sweep = sub.add_parser("sweep", parents=[common], help="run one sweep now", description=cmd_sweep.__doc__)
    sweep.set_defaults(func=cmd_sweep)

    replay = sub.add_parser(
        "replay",
        parents=[common],
        help="what a policy would plan for a stored incident (acts on nothing)",
        description=cmd_replay.__doc__,
    )
    replay.add_argument("incident_id", metavar="INCIDENT_ID", type=int, nargs="?")
    replay.add_argument("--all", action="store_true", help="every diagnosed incident opened --since ago")
    replay.add_argument("--since", type=since_argument, metavar="DURATION", help="7d, 12h, 30m (with --all)")
    replay.add_argument("--policy", metavar="FILE", required=True, help="the policy file to replay under")
    replay.add_argument("--format", choices=("table", "json"), default="table")
    replay.set_defaults(func=cmd_replay)

    # -- remediation side: approve / deny / playbook run / demo subcommands are added here ---------
    remediation_cli.add_commands(sub, common)
    add_policy_commands(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `gl-watchdog`; returns the exit code (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except (CliError, WatchdogError) as exc:
        _fail(str(exc))
        return exit_code(exc)
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130


def _fail(message: str) -> None:
    sys.stderr.write(f"gl-watchdog: error: {message}\n")


if __name__ == "__main__":
    sys.exit(main())

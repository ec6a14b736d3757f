"""The local commands of `gl-watchdog`: they work on this machine's files and credentials, not
through the API.

Where it sits: `serve` and `replay` are commands of `watchdog.cli`; `list_incidents`, `diagnose` and
`sweep` are the `--local` paths of `incidents list`, `diagnose` and `sweep` (`watchdog.cli.incidents`,
`watchdog.cli.operate`), for debugging where `gl-watchdog serve` runs. Each reads the service's
settings (`--settings FILE`, YAML; `GL_WATCHDOG_*` environment variables override it) and calls the
composition root (`watchdog.assembly`: serve, sweep), the diagnostic runner and renderers
(diagnose), the store (incidents) and `watchdog.replay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import yaml
from aiohttp import web
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from gl_common.auth import is_loopback
from gl_common.ids import ExecutionId
from watchdog import logs
from watchdog.api_models import IncidentListItem
from watchdog.assembly import build_watchdog, create_app
from watchdog.backends import open_clients
from watchdog.cli.output import Output, output_option, table
from watchdog.diagnostics import render, runner
from watchdog.exit_codes import (
    EXIT_FAILED,
    EXIT_FORBIDDEN,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
)
from watchdog.listing import IncidentFilter, page_incidents
from watchdog.plan import Plan
from watchdog.plugins import installed_plugins
from watchdog.policy import Policy, load_policy
from watchdog.replay import Replay, replay_incident, replay_window
from watchdog.settings import WatchdogSettings, load_settings
from watchdog.store import WatchdogStore
from watchdog_sdk.diagnostic_step import DiagnosticContext
from watchdog_sdk.errors import NotFound, Unauthorized
from watchdog_sdk.registry import Registry

log = logging.getLogger("watchdog")

settings_option = click.option(
    "--settings",
    "settings_file",
    metavar="FILE",
    help="the service's settings (YAML; GL_WATCHDOG_* environment variables override it)",
)
local_settings_option = click.option(
    "--settings", "settings_file", metavar="FILE", help="with --local: the service's settings (YAML)"
)


def settings_of(settings_file: str | None, **overrides: Any) -> WatchdogSettings:
    """The settings of a local command, with local secrets (state_dir) where none are configured."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return load_settings(settings_file, **clean).with_local_secrets(create=False)


def setup_logging(level: str, log_format: str = "text") -> None:
    """Logging on stderr (`watchdog.logs`): JSON lines for the service when configured, text otherwise.

    Like `logging.basicConfig`, it leaves a root logger that already has handlers alone (a process
    that embeds the CLI, or a test run, keeps its own).
    """
    if not logging.getLogger().handlers:
        logs.configure(level, log_format)


def execution_id_argument(value: str) -> str:
    """An EXECUTION_ID as the API accepts it (docs/architecture.md); a usage error (2) otherwise."""
    if not value.strip():
        raise CliError("EXECUTION_ID must not be empty", EXIT_USAGE)
    try:
        return TypeAdapter(ExecutionId).validate_python(value)
    except ValidationError:
        raise CliError(
            f"EXECUTION_ID {value!r} is not an execution id: 1-64 of A-Z a-z 0-9 _ . : -, "
            "starting with a letter or digit",
            EXIT_USAGE,
        ) from None


# -- serve ------------------------------------------------------------------------------------------


@click.command("serve", short_help="(local) run the watchdog service here")
@settings_option
@click.option("--host", help="listen address (default: settings.host, 127.0.0.1)")
@click.option("--port", type=int, help="listen port (default: settings.port, 8081)")
def serve(settings_file: str | None, host: str | None, port: int | None) -> None:
    """Run the watchdog service until SIGINT/SIGTERM (local: reads the settings and files here)."""
    settings = settings_of(settings_file, host=host, port=port)
    setup_logging(settings.log_level, settings.log_format)
    if not settings.api_tokens and not is_loopback(settings.host):
        raise CliError(
            f"refusing to serve on {settings.host} without API tokens: set GL_WATCHDOG_API_TOKENS "
            "or api_token_file (without tokens the API is only served on a loopback address)",
            EXIT_USAGE,
        )
    if not settings.api_tokens:
        log.info("no API token configured: generating a local one in %s", settings.state_dir)
    asyncio.run(_serve(settings.with_local_secrets(create=True)))


async def _serve(settings: WatchdogSettings) -> None:
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
        # Everything made so far (modules, settings, the app, the store's engine) lives as long as the
        # process: out of the cyclic collector's way, its full collections traverse only what requests
        # and diagnoses made since (as `gl-orchestrator serve` does).
        gc.collect()
        gc.freeze()
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


# -- diagnose --local -------------------------------------------------------------------------------


def diagnose(settings_file: str | None, execution_id: str, fmt: str) -> None:
    """Diagnose one execution here, with the local credentials, and print the Diagnosis."""
    execution_id_argument(execution_id)
    settings = settings_of(settings_file)
    setup_logging("WARNING")
    text = asyncio.run(_diagnose(settings, execution_id, fmt))
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


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
                EXIT_FORBIDDEN,
            ) from exc
        diagnosis = await runner.diagnose(ctx, execution_id, steps=installed_plugins().steps)
    finally:
        await clients.aclose()
    if fmt in ("json", "yaml"):
        return render.to_json(diagnosis) if fmt == "json" else _yaml(render.to_dict(diagnosis))
    if fmt == "markdown":
        return render.to_markdown(diagnosis)
    return render.to_table(diagnosis)


def _yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# -- replay -----------------------------------------------------------------------------------------


def since_argument(value: str) -> timedelta:
    """`7d`, `12h`, `30m`: a window back from now."""
    units = {"d": "days", "h": "hours", "m": "minutes"}
    number, unit = value[:-1], value[-1:]
    if unit not in units or not number.isdigit() or int(number) < 1:
        raise CliError(f"--since {value!r} is not a duration like 7d, 12h or 30m", EXIT_USAGE)
    return timedelta(**{units[unit]: int(number)})


@click.command("replay", short_help="(local) what a policy would plan for stored incidents")
@click.argument("incident_id", metavar="INCIDENT_ID", type=int, required=False)
@click.option("--all", "all_", is_flag=True, help="every diagnosed incident opened --since ago")
@click.option("--since", metavar="DURATION", help="7d, 12h, 30m (with --all)")
@click.option(
    "--policy", "policy_file", metavar="FILE", required=True, help="the policy file to replay under"
)
@settings_option
@output_option()
def replay(
    incident_id: int | None,
    all_: bool,
    since: str | None,
    policy_file: str,
    settings_file: str | None,
    output: str | None,
) -> None:
    """Show what a policy would plan for a stored incident's diagnosis (or, with --all --since, for
    every diagnosed incident of a window), and whether the budgets and circuit breaker would allow it
    now; writes nothing and calls no outside system (local: reads the watchdog's database here)."""
    if (incident_id is None) == (not all_):
        raise CliError("give either INCIDENT_ID or --all --since DURATION", EXIT_USAGE)
    if all_ and since is None:
        raise CliError("--all needs --since DURATION (e.g. 7d, 12h, 30m)", EXIT_USAGE)
    window = since_argument(since) if since else None
    settings = settings_of(settings_file)
    catalog = installed_plugins()
    policy = load_policy(policy_file, catalog=catalog)
    results = asyncio.run(_replay(settings, incident_id, window, policy, catalog.registry))
    items = [r.to_dict() for r in results]
    out = Output.of(output)
    out.emit(items if all_ else items[0], lambda _: _replay_table(results))
    if out.mode == "table":
        changed = sum(r.changed for r in results)
        out.raw(f"{len(results)} incident(s) replayed, {changed} would change\n")


def _replay_table(results: list[Replay]) -> Any:
    def row(r: Replay) -> tuple[Any, ...]:
        plan = r.replayed
        recorded = "no plan" if r.recorded is None else _plan_text(r.recorded)
        approval = ("needs approval" if plan.requires_approval else "none") if plan.will_act else "-"
        return (r.incident_id, r.execution_id, r.likely_cause, recorded, _plan_text(plan), approval,
                r.limits_refusal or "allow", "yes" if r.changed else "no")  # fmt: skip

    columns = ("INCIDENT", "EXECUTION", "CAUSE", "RECORDED", "REPLAYED", "APPROVAL", "LIMITS NOW", "CHANGED")
    return table(columns, (row(r) for r in results))


def _plan_text(plan: Plan) -> str:
    if plan.playbook is None:
        return f"escalate (rule {plan.rule})" if plan.rule else "escalate (no rule)"
    return f"{plan.playbook} {json.dumps(plan.params, sort_keys=True)}"


async def _replay(
    settings: WatchdogSettings,
    incident_id: int | None,
    window: timedelta | None,
    policy: Policy,
    registry: Registry,
) -> list[Replay]:
    _require_existing_sqlite_file(settings.database_url)
    store = await WatchdogStore.open(settings.database_url)
    try:
        if window is not None:
            return await replay_window(store, window, policy=policy, registry=registry, mode=settings.mode)
        assert incident_id is not None
        one = await replay_incident(store, incident_id, policy=policy, registry=registry, mode=settings.mode)
        return [one]
    finally:
        await store.close()


# -- incidents list --local -------------------------------------------------------------------------


def list_incidents(
    settings_file: str | None, statuses: list[str], limit: int, held: bool | None
) -> tuple[list[dict[str, Any]], int]:
    """The newest `limit` incidents of the local store (held or not, when `held` says) as the API
    shows them, each with its pending approval prompt, and how many match in all."""
    settings = settings_of(settings_file)
    return asyncio.run(_list_incidents(settings, statuses, limit, held))


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
            f"no watchdog database at {path.resolve()}: run this where `gl-watchdog serve` runs, point "
            "GL_WATCHDOG_DATABASE_URL (or --settings) at the database it uses, or drop --local to ask "
            "the service",
            EXIT_UNAVAILABLE,
        )


async def _list_incidents(
    settings: WatchdogSettings, statuses: list[str], limit: int, held: bool | None
) -> tuple[list[dict[str, Any]], int]:
    _require_existing_sqlite_file(settings.database_url)
    store = await WatchdogStore.open(settings.database_url, pool=settings.db_pool())
    try:
        where = IncidentFilter(statuses=tuple(statuses) if statuses else None, held=held)
        page = await page_incidents(store, where, before=None, limit=limit)
    finally:
        await store.close()
    items = [
        IncidentListItem.listed(i, page.pending_approvals.get(i.id)).model_dump(mode="json")
        for i in page.incidents
    ]
    return items, page.total


# -- sweep --local ----------------------------------------------------------------------------------


def sweep(settings_file: str | None) -> dict[str, Any]:
    """One sweep here (as the scheduled job would), waiting for the diagnoses it starts."""
    settings = settings_of(settings_file)
    setup_logging("WARNING")
    return asyncio.run(_sweep(settings))


async def _sweep(settings: WatchdogSettings) -> dict[str, Any]:
    watchdog = await build_watchdog(settings, respond=False)  # diagnoses, reports, acts on nothing
    try:
        report = await watchdog.sweeper.sweep_once()
        await watchdog.jobs.wait_idle()
        return report.as_json()
    finally:
        await watchdog.aclose()

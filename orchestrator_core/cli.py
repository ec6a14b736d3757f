"""`gl-orchestrator`: the command line of the orchestrator (click, the same conventions as `gl-watchdog`).

Where it sits: the console script (pyproject `gl-orchestrator = orchestrator_core.cli:main`).

- `gl-orchestrator serve [--config FILE] [--host H] [--port P]`: builds `OrchestratorSettings`
  (env `GL_ORCHESTRATOR_*` over the YAML file over defaults), opens the `OrchestratorService`, serves
  `api.build_app` and runs the maintenance loop. SIGTERM/SIGINT: stop admitting, give running runs
  `shutdown_grace_seconds`, mark what is left `interrupted`, release locks, stop the HTTP server, exit 0.
  Once started it moves every object made so far (modules, settings, the store's engine) out of the
  cyclic garbage collector's way (`gc.freeze`): its full collections, which runs trigger, then traverse
  only what the runs made (a few tens of milliseconds each otherwise).
- `gl-orchestrator run DAG_FILE [--input JSON] [--database-url URL] [--timeout S] [-o table|json|yaml]`:
  runs one DAG on the embedded defaults (in-process agents, a throw-away SQLite store unless a URL is
  given), shows node events on stderr as they happen and prints the final trace on stdout: JSON
  (the default when stdout is not a terminal) or YAML, or a table of its nodes (the default on a
  terminal; colour only there, never with NO_COLOR).

Exit codes, as `gl-watchdog`'s: 0 done (the run completed), 1 failed (the run did not complete, the
service could not start), 2 bad usage or input (a DAG, --input, a settings file). Errors are one line
on stderr, never a traceback. `--version`; shell completion with `_GL_ORCHESTRATOR_COMPLETE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import click
import yaml
from aiohttp import web
from rich.console import Console
from rich.table import Table

from gl_common.auth import is_loopback
from gl_common.logs import configure_logging
from orchestrator_core.agents import AgentRegistry
from orchestrator_core.api import build_app
from orchestrator_core.dag import load_document
from orchestrator_core.engine import Engine
from orchestrator_core.errors import ConfigError, DagValidationError, OrchestratorError
from orchestrator_core.events import (
    EngineObserver,
    ExecutionEvent,
    NodeAttemptEvent,
    NodeTimeoutEvent,
    RetryEvent,
)
from orchestrator_core.malloc import limit_malloc_arenas
from orchestrator_core.records import ExecutionOptions
from orchestrator_core.service import OrchestratorService
from orchestrator_core.settings import OrchestratorSettings, load_settings

log = logging.getLogger("orchestrator_core.cli")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


EXIT_CODES_HELP = """Exit codes: 0 done (the run completed); 1 failed (the run did not complete, the
service could not start); 2 bad usage or input (DAG, --input, settings)."""


def _version() -> str:
    try:
        return version("gl-watchdog")
    except PackageNotFoundError:  # pragma: no cover - a source tree without installing
        return "unknown"


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog=EXIT_CODES_HELP,
)
@click.version_option(_version(), "--version", prog_name="gl-orchestrator")
def cli() -> None:
    """A compact DAG orchestrator: checkpoints, ownership locks and the runbook's REST API."""


@cli.command("serve")
@click.option("--config", type=click.Path(path_type=Path), help="YAML settings file")
@click.option("--host", help="listen address (overrides settings)")
@click.option("--port", type=int, help="listen port (overrides settings)")
def serve_command(config: Path | None, host: str | None, port: int | None) -> None:
    """Run the orchestrator service (REST API, metrics, admission, locks). Settings come from
    GL_ORCHESTRATOR_* environment variables over --config FILE over defaults (docs/architecture.md)."""
    _serve_command(config, host, port)


@cli.command("run")
@click.argument("dag_file", type=click.Path(path_type=Path), metavar="DAG_FILE")
@click.option("--input", "input_json", default="null", help="input_data as JSON (default: null)")
@click.option("--database-url", help="store URL (default: a temporary SQLite file)")
@click.option("--timeout", type=float, help="cancel the run after this many seconds")
@click.option("--deterministic", is_flag=True, help="deterministic mode (stable order, seeded jitter)")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json", "yaml"]),
    help="the trace: table (default on a terminal), json (default otherwise), yaml",
)
def run_command(
    dag_file: Path,
    input_json: str,
    database_url: str | None,
    timeout: float | None,
    deterministic: bool,
    output: str | None,
) -> None:
    """Run a DAG (JSON or YAML) locally with the in-process agents and print its trace."""
    code = _run_command(dag_file, input_json, database_url, timeout, deterministic, output)
    if code:
        raise click.exceptions.Exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `gl-orchestrator`; returns the exit code (EXIT_CODES_HELP)."""
    try:
        args = list(argv) if argv is not None else None
        result = cli.main(args=args, prog_name="gl-orchestrator", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"gl-orchestrator: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DagValidationError as exc:
        print(f"gl-orchestrator: invalid DAG: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OrchestratorError as exc:
        print(f"gl-orchestrator: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, click.exceptions.Abort):
        return EXIT_FAILED
    return result if isinstance(result, int) else EXIT_OK  # click returns an Exit's code


# -- serve ------------------------------------------------------------------------------------------


def _serve_command(config: Path | None, host: str | None, port: int | None) -> None:
    settings = load_settings(config)
    overrides: dict[str, Any] = {}
    if host:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if overrides:
        try:
            settings = OrchestratorSettings.model_validate({**settings.model_dump(), **overrides})
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    configure_logging(settings.log_level)
    if not settings.resolved_api_tokens():
        if settings.api_token_file is not None:
            raise ConfigError(
                f"api_token_file {settings.api_token_file} holds no token (one token per line); "
                "every API call would be refused"
            )
        if not is_loopback(settings.host):
            raise ConfigError(
                f"refusing to serve on {settings.host} without API tokens: set GL_ORCHESTRATOR_API_TOKENS "
                "or GL_ORCHESTRATOR_API_TOKEN_FILE (a generated local token is only used on loopback)"
            )
        settings = settings.with_local_token()
        log.info("no API token configured: using the local token in %s", settings.api_token_file)
    limit_malloc_arenas(settings.malloc_arena_max)  # before any thread: arenas made stay
    asyncio.run(serve(settings, freeze_gc=True))


async def serve(
    settings: OrchestratorSettings, *, stop: asyncio.Event | None = None, freeze_gc: bool = False
) -> None:
    """Run the service until SIGTERM/SIGINT (or until `stop` is set), then shut down gracefully.

    `freeze_gc`: `gc.freeze()` once started (the process's own service; not for a service in a process
    that goes on after it, whose objects would never be collected)."""
    stop = stop or asyncio.Event()
    tokens = settings.token_source()
    if not tokens.tokens():
        log.warning("no API tokens configured (api_tokens / api_token_file): every API call will get 401")
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    service = await OrchestratorService.open(settings)
    runner = web.AppRunner(build_app(service, tokens), access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:  # port in use, address not local, permission denied
            reason = exc.strerror or str(exc)
            raise OrchestratorError(f"cannot listen on {settings.host}:{settings.port}: {reason}") from exc
        await service.start()
        if freeze_gc:
            gc.collect()
            gc.freeze()
        log.info(
            "orchestrator listening",
            extra={"host": settings.host, "port": settings.port, "replica_id": settings.replica_id},
        )
        await stop.wait()
        log.info(
            "stop requested: graceful shutdown", extra={"grace_seconds": settings.shutdown_grace_seconds}
        )
    finally:
        interrupted = await service.shutdown()
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
        log.info("orchestrator stopped", extra={"interrupted": interrupted})


# -- run --------------------------------------------------------------------------------------------


class _Progress(EngineObserver):
    """Node events on stderr as they happen."""

    def execution_started(self, event: ExecutionEvent) -> None:
        print(f"run {event.execution_id} of {event.dag_id} v{event.dag_version} started", file=sys.stderr)

    def node_attempt_started(self, event: NodeAttemptEvent) -> None:
        print(f"  {event.node_id} ({event.agent_id}) attempt {event.attempt} ...", file=sys.stderr)

    def node_attempt_finished(self, event: NodeAttemptEvent) -> None:
        took = f" in {event.duration_seconds:.3f}s" if event.duration_seconds is not None else ""
        error = f": {event.error}" if event.error else ""
        print(f"  {event.node_id} attempt {event.attempt} {event.outcome}{took}{error}", file=sys.stderr)

    def node_retry(self, event: RetryEvent) -> None:
        print(f"  {event.node_id} retry in {event.delay_seconds:.2f}s", file=sys.stderr)

    def node_timeout(self, event: NodeTimeoutEvent) -> None:
        print(f"  {event.node_id} timed out after {event.timeout_seconds:g}s", file=sys.stderr)

    def execution_finished(self, event: ExecutionEvent) -> None:
        error = f": {event.error}" if event.error else ""
        print(f"run {event.execution_id} {event.status}{error}", file=sys.stderr)


def _run_command(
    path: Path,
    input_json: str,
    database_url: str | None,
    timeout: float | None,
    deterministic: bool,
    output: str | None,
) -> int:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    document = load_document(text, "yaml" if path.suffix.lower() in (".yaml", ".yml") else "json")
    try:
        input_data = json.loads(input_json)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--input is not valid JSON: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="gl-orchestrator-run-") as tmp:
        url = database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'run.db'}"
        try:
            settings = OrchestratorSettings(database_url=url, redis_url=None, log_level="WARNING")
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        configure_logging(settings.log_level)
        options = ExecutionOptions(checkpoint_enabled=True, deterministic_mode=deterministic)
        trace, status = asyncio.run(_run(settings, document, input_data, options, timeout))
    _print_trace(trace, output)
    return EXIT_OK if status == "completed" else EXIT_FAILED


def _print_trace(trace: dict[str, Any], output: str | None) -> None:
    """The trace as JSON, YAML, or a table of its nodes (the default on a terminal)."""
    mode = output or ("table" if sys.stdout.isatty() else "json")
    if mode == "json":
        print(json.dumps(trace, indent=2))
        return
    if mode == "yaml":
        print(yaml.safe_dump(json.loads(json.dumps(trace, default=str)), sort_keys=False), end="")
        return
    console = Console(no_color=bool(os.environ.get("NO_COLOR")) or None, highlight=False)
    nodes = Table("NODE", "AGENT", "STATUS", "ATTEMPTS", "ERROR", box=None, header_style="bold")
    for node_id, node in (trace.get("node_traces") or {}).items():
        error = node.get("error") or ""
        nodes.add_row(node_id, str(node.get("agent_id")), str(node.get("status")),
                      str(node.get("attempt_count")), str(error)[:80])  # fmt: skip
    console.print(f"execution {trace.get('execution_id')} of {trace.get('dag_id')}: {trace.get('status')}")
    console.print(nodes)


async def _run(
    settings: OrchestratorSettings,
    document: Any,
    input_data: Any,
    options: ExecutionOptions,
    limit_seconds: float | None,
) -> tuple[dict[str, Any], str]:
    engine = await Engine.open(settings, registry=AgentRegistry.from_entry_points(), observer=_Progress())
    try:
        dag = await engine.register_dag(document)
        record = await engine.execute(dag.dag_id, input_data, options, owner="cli")
        # SIGTERM (e.g. `timeout 60 gl-orchestrator run ...`) cancels the run like --timeout does,
        # instead of killing the process with the run left `running` and no trace printed.
        terminated = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, terminated.set)
        try:
            done = asyncio.create_task(engine.wait(record.execution_id))
            stop = asyncio.create_task(terminated.wait())
            try:
                await asyncio.wait([done, stop], timeout=limit_seconds, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                if not done.done():
                    done.cancel()
                await asyncio.gather(done, stop, return_exceptions=True)
            failure = None if done.cancelled() else done.exception()
            if failure is not None:
                raise failure
            if done.cancelled():
                why = "SIGTERM received" if terminated.is_set() else f"--timeout {limit_seconds}s exceeded"
                print(f"run {record.execution_id}: {why}: cancelling", file=sys.stderr)
                await engine.cancel(record.execution_id, reason=why)
                await engine.wait(record.execution_id)
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGTERM)
        trace = await engine.get_trace(record.execution_id)
        return trace.to_json(), trace.status
    finally:
        await engine.close()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

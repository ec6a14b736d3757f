"""`gl-orchestrator`: the command line of the orchestrator.

Where it sits: the console script (pyproject `gl-orchestrator = orchestrator_core.cli:main`).

- `gl-orchestrator serve [--config FILE] [--host H] [--port P]`: builds `OrchestratorSettings`
  (env `GL_ORCHESTRATOR_*` over the YAML file over defaults), opens the `OrchestratorService`, serves
  `api.build_app` and runs the maintenance loop. SIGTERM/SIGINT: stop admitting, give running runs
  `shutdown_grace_seconds`, mark what is left `interrupted`, release locks, stop the HTTP server, exit 0.
  Once started it moves every object made so far (modules, settings, the store's engine) out of the
  cyclic garbage collector's way (`gc.freeze`): its full collections, which runs trigger, then traverse
  only what the runs made (a few tens of milliseconds each otherwise).
- `gl-orchestrator run DAG_FILE [--input JSON] [--database-url URL] [--timeout S]`: runs one DAG on the
  embedded defaults (in-process agents, a throw-away SQLite store unless a URL is given), shows node
  events on stderr as they happen and prints the final trace as JSON on stdout. Exit 0 when the run
  completed, 1 when it did not, 2 on bad input.

Errors are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from gl_common.auth import is_loopback
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
from orchestrator_core.logs import configure_logging
from orchestrator_core.records import ExecutionOptions
from orchestrator_core.service import OrchestratorService
from orchestrator_core.settings import OrchestratorSettings, load_settings

log = logging.getLogger("orchestrator_core.cli")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gl-orchestrator",
        description="A compact DAG orchestrator: checkpoints, ownership locks and the runbook's REST API.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the orchestrator service (REST API, metrics, admission, locks)",
        description="Run the orchestrator service. Settings come from GL_ORCHESTRATOR_* environment "
        "variables over --config FILE over defaults (see docs/architecture.md).",
    )
    serve.add_argument("--config", type=Path, help="YAML settings file")
    serve.add_argument("--host", help="listen address (overrides settings)")
    serve.add_argument("--port", type=int, help="listen port (overrides settings)")

    run = commands.add_parser(
        "run",
        help="run one DAG file locally and print its trace",
        description="Run a DAG (JSON or YAML) with the in-process agents and print its trace as JSON.",
    )
    run.add_argument("dag_file", type=Path, metavar="DAG_FILE", help="DAG definition (.json, .yaml, .yml)")
    run.add_argument("--input", dest="input_json", default="null", help="input_data as JSON (default: null)")
    run.add_argument("--database-url", help="store URL (default: a temporary SQLite file)")
    run.add_argument("--timeout", type=float, help="cancel the run after this many seconds")
    run.add_argument(
        "--deterministic", action="store_true", help="deterministic mode (stable order, seeded jitter)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve_command(args)
        return _run_command(args)
    except ConfigError as exc:
        print(f"gl-orchestrator: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DagValidationError as exc:
        print(f"gl-orchestrator: invalid DAG: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OrchestratorError as exc:
        print(f"gl-orchestrator: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


# -- serve ------------------------------------------------------------------------------------------


def _serve_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
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
    asyncio.run(serve(settings, freeze_gc=True))
    return EXIT_OK


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


def _run_command(args: argparse.Namespace) -> int:
    path: Path = args.dag_file
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    document = load_document(text, "yaml" if path.suffix.lower() in (".yaml", ".yml") else "json")
    try:
        input_data = json.loads(args.input_json)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--input is not valid JSON: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="gl-orchestrator-run-") as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'run.db'}"
        try:
            settings = OrchestratorSettings(database_url=url, redis_url=None, log_level="WARNING")
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        configure_logging(settings.log_level)
        options = ExecutionOptions(checkpoint_enabled=True, deterministic_mode=bool(args.deterministic))
        trace, status = asyncio.run(_run(settings, document, input_data, options, args.timeout))
    print(json.dumps(trace, indent=2))
    return EXIT_OK if status == "completed" else EXIT_FAILED


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

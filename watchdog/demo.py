"""`gl-watchdog demo`: the whole product on a laptop, in under a minute.

Starts the embedded orchestrator in-process (its real aiohttp app on a free loopback port, SQLite in
a temp dir) — this module is the one part of the watchdog allowed to import `orchestrator_core`, and
only to start it: everything after goes over HTTP, as in production. Then starts the watchdog
in-process (store, API and approval page on another loopback port, short `for_duration`), runs the
emissions-reporting DAG (intake → validation → scope 1 ‖ scope 2 → aggregation → report) whose scope 2
node hangs on an external emission-factor lookup, and shows the watchdog at work: detected → diagnosed
(the diagnosis table) → approval prompt at the terminal (or `--yes`) → remediation (restart_agent) →
verification → report produced with a valid provenance chain → a summary with the time to detect, to
diagnose and to remediate. Exit code 0 only when all of it happened.

Called by `gl-watchdog demo` (`watchdog.cli`); tests call `run_demo()` and the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web

from orchestrator_core.api import build_app
from orchestrator_core.emissions import emissions_dag, emissions_demo_input
from orchestrator_core.service import OrchestratorService
from orchestrator_core.settings import OrchestratorSettings
from watchdog.approvals import Decision
from watchdog.assembly import Watchdog, build_watchdog, create_app
from watchdog.diagnostics import render
from watchdog.errors import ApprovalClosed
from watchdog.notifier import EscalationMessage, NotifyResult, PromptMessage
from watchdog.records import Approval, Incident
from watchdog.settings import Mode, WatchdogSettings
from watchdog_sdk.diagnosis import Diagnosis

Ask = Callable[[str], Awaitable[bool]]
DEMO_DAG = "emissions-report"


@dataclass
class DemoResult:
    """What the demo saw; `ok` decides the exit code."""

    ok: bool = False
    execution_id: str = ""
    incident_id: int | None = None
    incident_status: str = ""
    execution_status: str = ""
    chain_valid: bool = False
    approved: bool | None = None
    actions: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    failure: str = ""


class TerminalNotifier:
    """The demo's notifier: prints the prompt (with its link) and escalations to the terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.prompts: list[PromptMessage] = []

    async def approval_requested(self, message: PromptMessage) -> NotifyResult:
        self.prompts.append(message)
        return NotifyResult(ok=True, sent=True, detail="shown at the terminal")

    async def escalated(self, message: EscalationMessage) -> NotifyResult:
        self.out.write(f"  ! escalated: {message.reason}\n")
        return NotifyResult(ok=True, sent=True, detail="shown at the terminal")


async def read_answer(fd: int) -> str:
    """One line typed on `fd` ("" at end of input), read without a blocking thread.

    The loop watches `fd` and reads only what is there, so Ctrl-C (which cancels the demo's task)
    ends the wait at once; a thread blocked in `input()` would keep the process alive until Enter.
    Input the loop cannot watch (a regular file, /dev/null) never blocks, so it is read directly.
    """
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            ready.put_nowait(os.read(fd, 1024))
        except OSError:
            ready.put_nowait(b"")

    try:
        loop.add_reader(fd, readable)
    except (OSError, ValueError, NotImplementedError):
        return os.read(fd, 1024).decode(errors="replace")
    line = b""
    try:
        while b"\n" not in line:
            chunk = await ready.get()
            if not chunk:
                break
            line += chunk
    finally:
        loop.remove_reader(fd)
    return line.decode(errors="replace")


async def ask_terminal(question: str) -> bool:
    """Ask on stdin while the watchdog keeps running; end of input counts as no."""
    sys.stdout.write(question)
    sys.stdout.flush()
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1
    try:
        answer = await read_answer(fd) if fd >= 0 else ""
    except asyncio.CancelledError:  # Ctrl-C, or decided on the page: end the prompt's line
        sys.stdout.write("\n")
        raise
    if not answer:
        print("\n          no terminal input: denied (`gl-watchdog demo --yes` approves without asking)")
        return False
    return answer.strip().lower() in ("y", "yes")


def paused(deadline: asyncio.Timeout, ask: Ask) -> Ask:
    """`ask`, with `deadline` stopped while the human thinks: the time limit is for the machine's part."""

    async def ask_paused(question: str) -> bool:
        loop = asyncio.get_running_loop()
        when = deadline.when()
        remaining = None if when is None else max(0.0, when - loop.time())
        deadline.reschedule(None)
        try:
            return await ask(question)
        finally:
            if remaining is not None:
                deadline.reschedule(loop.time() + remaining)

    return ask_paused


def _bind() -> socket.socket:
    """A listening socket on a free loopback port (kept open, so no other process can take the port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def _serve(app: web.Application, sock: socket.socket) -> AsyncIterator[None]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def embedded_orchestrator(workdir: Path, token: str) -> AsyncIterator[tuple[OrchestratorService, str]]:
    """The orchestrator service in-process on a free loopback port; yields it and its base URL."""
    settings = OrchestratorSettings(
        database_url=f"sqlite+aiosqlite:///{workdir / 'orchestrator.db'}",
        api_tokens=[token],
        replica_id="demo-orchestrator",
        shutdown_grace_seconds=0.0,
    )
    service = await OrchestratorService.open(settings)
    sock = _bind()
    port = sock.getsockname()[1]
    try:
        async with _serve(build_app(service), sock):
            await service.start()
            yield service, f"http://127.0.0.1:{port}"
    finally:
        await service.shutdown(grace_seconds=0)
        sock.close()


def _since(start: float) -> float:
    return round(time.monotonic() - start, 1)


@contextlib.contextmanager
def _quiet_orchestrator_logs() -> Iterator[None]:
    """The embedded orchestrator's run logs would drown the demo's progress: keep them off the terminal."""
    logger = logging.getLogger("orchestrator_core")
    saved = (logger.propagate, list(logger.handlers))
    logger.propagate = False
    logger.handlers = [logging.NullHandler()]
    try:
        yield
    finally:
        logger.propagate, logger.handlers = saved[0], saved[1]


async def run_demo(
    out: TextIO,
    *,
    yes: bool = False,
    ask: Ask = ask_terminal,
    deadline_seconds: float = 55.0,
    workdir: Path | None = None,
) -> DemoResult:
    """Run the demo, writing progress to `out`; never raises for a failed step (the result says)."""
    result = DemoResult()
    with tempfile.TemporaryDirectory(prefix="gl-watchdog-demo-") as tmp:
        base = workdir or Path(tmp)
        try:
            async with asyncio.timeout(deadline_seconds) as deadline:
                with _quiet_orchestrator_logs():
                    await _run(out, base, yes, paused(deadline, ask), result)
        except TimeoutError:
            result.failure = result.failure or f"the demo did not finish within {deadline_seconds:.0f}s"
    if not result.ok and not result.failure:
        result.failure = "the stuck run was not remediated and verified"
    _summary(out, result)
    return result


async def _run(out: TextIO, base: Path, yes: bool, ask: Ask, result: DemoResult) -> None:
    token = secrets.token_urlsafe(24)
    w = out.write
    w("gl-watchdog demo: an emissions report whose scope 2 node hangs on an external API\n\n")
    async with embedded_orchestrator(base, token) as (_service, orchestrator_url):
        w(f"  orchestrator   {orchestrator_url} (embedded, SQLite in {base})\n")
        sock = _bind()
        port = sock.getsockname()[1]
        settings = WatchdogSettings(
            port=port,
            public_url=f"http://127.0.0.1:{port}",
            database_url=f"sqlite+aiosqlite:///{base / 'watchdog.db'}",
            orchestrator_url=orchestrator_url,
            orchestrator_token=token,
            for_duration_seconds=2.0,
            sweep_interval_seconds=0.5,
            step_timeout_seconds=5.0,
            mode=Mode.RECOMMEND,
            approval_signing_key=secrets.token_urlsafe(32),
            approval_ttl_seconds=300,
            api_tokens=[secrets.token_urlsafe(24)],
        )
        notifier = TerminalNotifier(out)
        watchdog = await build_watchdog(settings, notifier=notifier, poll_interval_seconds=0.2)
        try:
            async with _serve(create_app(watchdog), sock):
                w(f"  watchdog       http://127.0.0.1:{port} (embedded, mode recommend, for 2s)\n\n")
                await watchdog.start(sweeps=False, expiry_interval_seconds=1.0)
                await _scenario(out, watchdog, notifier, yes, ask, result)
        finally:
            await watchdog.aclose(grace_seconds=5)
            sock.close()


async def _scenario(
    out: TextIO,
    wd: Watchdog,
    notifier: TerminalNotifier,
    yes: bool,
    ask: Ask,
    result: DemoResult,
) -> None:
    w = out.write
    client = wd.clients.orchestrator
    await client.register_dag(
        emissions_dag(dag_id=DEMO_DAG, execution_timeout_seconds=3.0, log_interval_seconds=0.5)
    )
    execution = await client.execute(DEMO_DAG, emissions_demo_input())
    result.execution_id = execution.execution_id
    start = time.monotonic()
    w(f"[{_since(start):5.1f}s] started run {execution.execution_id} of {DEMO_DAG} (DAG timeout 3s)\n")

    incident: Incident | None = None
    seen: set[str] = set()
    while True:
        if incident is None:
            await wd.sweeper.sweep_once()
            found = await wd.store.list_incidents()
            incident = next((i for i in found if i.execution_id == execution.execution_id), None)
            if incident is not None:
                result.incident_id = incident.id
                result.timings["detect"] = _since(start)
                w(
                    f"[{_since(start):5.1f}s] detected: run over its timeout for 2s → incident {incident.id} "
                    f"(source {incident.source}, via {incident.detection_source})\n"
                )
        else:
            incident = await wd.incidents.get(incident.id)
            if incident.diagnosis is not None and "diagnosed" not in seen:
                seen.add("diagnosed")
                result.timings["diagnose"] = _since(start)
                diagnosis = Diagnosis.model_validate(incident.diagnosis)
                w(f"[{_since(start):5.1f}s] diagnosed: {incident.summary}\n\n")
                w(f"{render.to_table(diagnosis)}\n\n")
            if notifier.prompts and "prompt" not in seen:
                seen.add("prompt")
                await _answer(out, wd, notifier.prompts[-1], yes, ask, result, start)
            for status in ("remediating", "verifying"):
                if incident.status == status and status not in seen:
                    seen.add(status)
                    w(f"[{_since(start):5.1f}s] {status}\n")
            if incident.status in ("resolved", "escalated", "closed"):
                result.incident_status = incident.status
                if incident.status == "resolved":
                    result.timings["remediate"] = _since(start)
                w(f"[{_since(start):5.1f}s] incident {incident.status}: {incident.summary}\n")
                break
        await asyncio.sleep(0.2)

    await wd.jobs.wait_idle()
    detail = await wd.incidents.detail(incident.id)
    result.actions = [f"{a.playbook}.{a.step} ({a.state})" for a in detail.actions]
    final = await client.get_execution(execution.execution_id)
    result.execution_status = final.status
    provenance = await client.get_provenance(execution.execution_id)
    result.chain_valid = provenance.chain_valid
    trace = await client.get_trace(execution.execution_id)
    report = trace.node_traces.get("report")
    report_done = report is not None and report.status == "completed"
    w(
        f"[{_since(start):5.1f}s] run {final.status}; report node "
        f"{'completed' if report_done else 'not completed'}; provenance chain "
        f"{'valid' if provenance.chain_valid else 'INVALID'} ({len(provenance.chain)} records)\n"
    )
    result.ok = (
        result.incident_status == "resolved"
        and final.status == "completed"
        and provenance.chain_valid
        and report_done
    )


async def _answer(
    out: TextIO,
    wd: Watchdog,
    prompt: PromptMessage,
    yes: bool,
    ask: Ask,
    result: DemoResult,
    start: float,
) -> None:
    w = out.write
    w(f"[{_since(start):5.1f}s] approval needed ({prompt.approval_id}, expires {prompt.expires_at})\n")
    w(f"          plan: {prompt.plan_headline}\n          why:  {prompt.rationale}\n")
    for action in prompt.actions:
        w(f"          does: {action}\n")
    w(f"          page: {prompt.page_url}\n")
    out.flush()
    if yes:
        approved, actor = True, "demo --yes"
        w("          approved (--yes)\n")
    else:
        w("          approve here, or open the page above and decide there\n")
        elsewhere = await _ask_or_page(wd, prompt.approval_id, ask)
        if isinstance(elsewhere, bool):
            approved, actor = elsewhere, "terminal"
        else:  # decided on the page (its handler continues the remediation), or expired
            state = "approved" if elsewhere.state == "used" else elsewhere.state  # used: already acting
            w(f"\n          {state} by {elsewhere.decided_by} (not at the terminal)\n")
            result.approved = state == "approved"
            if result.approved:
                result.timings["approved"] = _since(start)
            return
    result.approved = approved
    if approved:
        result.timings["approved"] = _since(start)
    try:
        decided = await wd.approvals.decide(
            prompt.approval_id,
            Decision.APPROVE if approved else Decision.DENY,
            actor=actor,
            authenticated=True,
        )
    except ApprovalClosed as exc:  # e.g. answered after the prompt expired: nothing acts on it
        w(f"          too late: {exc}\n")
        return
    wd.responder.start_decision(decided)


async def _ask_or_page(wd: Watchdog, approval_id: str, ask: Ask) -> bool | Approval:
    """The terminal's answer, or the prompt once it is no longer pending (decided on the page, expired)."""

    async def settled_elsewhere() -> Approval:
        while True:
            approval = await wd.approvals.get(approval_id)
            if approval.state != "pending":
                return approval
            await asyncio.sleep(0.2)

    asking = asyncio.ensure_future(ask("          Approve? [y/N] "))
    watching = asyncio.ensure_future(settled_elsewhere())
    try:
        await asyncio.wait({asking, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (asking, watching):
            if not task.done():
                task.cancel()
        await asyncio.gather(asking, watching, return_exceptions=True)
    return asking.result() if asking.done() and not asking.cancelled() else watching.result()


def _summary(out: TextIO, result: DemoResult) -> None:
    w = out.write
    t = result.timings
    w("\nSummary\n")
    spans = (
        ("time to detect", "start", "detect", "run started → incident opened"),
        ("time to diagnose", "detect", "diagnose", "incident → diagnosis"),
        ("time to remediate", "approved", "remediate", "approved → remediated and verified"),
    )
    for label, begin, end, what in spans:
        if end in t and (begin == "start" or begin in t):
            seconds = t[end] - (0.0 if begin == "start" else t[begin])
            w(f"  {label:<18} {seconds:.1f}s ({what})\n")
        else:
            w(f"  {label:<18} -\n")
    w(f"  what was done      {', '.join(result.actions) or 'nothing'}\n")
    w(f"  incident           {result.incident_id} {result.incident_status or '-'}\n")
    w(f"  run                {result.execution_id} {result.execution_status or '-'}\n")
    w(f"  provenance chain   {'valid' if result.chain_valid else 'not verified'}\n")
    w(f"  result             {'OK' if result.ok else 'FAILED: ' + result.failure}\n")


def summary_json(result: DemoResult) -> dict[str, Any]:
    """The result as JSON (for `--json` and tests)."""
    return dict(result.__dict__)

"""Shared pieces of the watchdog-side benchmarks: services as subprocesses, the machine, results.

Where it sits: imported by `bench/intake.py`, `bench/sweep.py`, `bench/diagnosis.py` and
`bench/capacity.py` (each run as `python bench/<name>.py`, which puts this directory on `sys.path`).
It starts the services the way an operator does — `gl-orchestrator serve`, `gl-watchdog serve`, a
private `redis-server`, a fresh PostgreSQL database — on 127.0.0.1 with env settings, and stops every
process it started when the script exits (normally, on an error, on SIGINT or SIGTERM). The scripts
drive the services over their HTTP APIs only; nothing here imports the services' modules.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
BIN_DIR = Path(sys.executable).parent  # the venv's bin: gl-orchestrator, gl-watchdog
LOOPBACK = "127.0.0.1"
POSTGRES_ADMIN_DSN = f"postgresql://postgres@{LOOPBACK}:5432/postgres"
# The bearer token of every service a benchmark starts; kept in the environment so that the
# benchmark's own child processes (client processes, reference servers) use the same one.
TOKEN = os.environ.setdefault("GL_BENCH_TOKEN", secrets.token_urlsafe(16))
ORCH_API = "/api/v1/orchestrator"
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=60)


class BenchError(Exception):
    """A benchmark that cannot go on (a service would not start, a bound was passed)."""


# -- the machine ------------------------------------------------------------------------------------


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as `/proc/loadavg` prints them."""
    return " ".join(Path("/proc/loadavg").read_text(encoding="ascii").split()[:3])


def machine() -> dict[str, Any]:
    """What a result needs to be read against: cores, versions, the time, the load now."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=BENCH_DIR,
        check=False,
        timeout=10,
    ).stdout.strip()
    return {
        "at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "commit": commit or None,
        "loadavg": loadavg(),
    }


def proc_status(pid: int) -> dict[str, float]:
    """`VmRSS` and `VmHWM` (peak RSS) of a process, in MB (empty when it is gone)."""
    found: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = round(int(value.split()[0]) / 1024, 1)
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (`/proc/<pid>/stat`)."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- figures ----------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of `values`, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def ms(seconds: float | None) -> str:
    """Seconds as milliseconds for a table cell."""
    return "-" if seconds is None else f"{seconds * 1000:,.1f}"


def ratio(part: float | None, whole: float | None) -> str:
    """`part / whole` as a percentage for a table cell."""
    if part is None or not whole:
        return "-"
    return f"{100 * part / whole:.0f}%"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table on stdout."""
    print("| " + " | ".join(headers) + " |")
    print("| " + " | ".join("---" for _ in headers) + " |")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print()


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write `data` as JSON to bench/results/<name>-<UTC time>.json; returns the path."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


# -- processes --------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on the loopback address now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


_STARTED: list[Service] = []


def stop_all() -> None:
    """Stop every process this script started that is still running, newest first."""
    for service in reversed(_STARTED):
        service.stop()


def main(name: str, args: Any, run: Any, report: Any) -> int:
    """A benchmark's main: `run(args)` (a coroutine) with cleanup installed, `report` the result, write
    its JSON. Returns the exit code: 0, or 1 with one line on stderr when the benchmark could not run."""
    install_cleanup()
    try:
        result = asyncio.run(run(args))
    except (BenchError, OSError, aiohttp.ClientError, TimeoutError, sqlite3.Error) as exc:
        # A service that went away or answered nonsense: one line, not a traceback.
        print(f"{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    report(result)
    print(f"results: {write_results(name, result)}")
    return 0


def install_cleanup() -> None:
    """Stop every started process at exit, also after SIGTERM/SIGHUP (SIGINT raises KeyboardInterrupt)."""
    atexit.register(stop_all)

    def _exit(signum: int, _frame: object) -> None:
        print(f"stopping on signal {signum}: stopping the processes started", file=sys.stderr)
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit)


def service_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a started service: ours without any GL_* setting or proxy, plus `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GL_ORCHESTRATOR_", "GL_WATCHDOG_")) and "proxy" not in key.lower()
    }
    env.update(extra)
    return env


class Service:
    """One started process: its log file, its readiness URL, its resource figures."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        workdir: Path,
        *,
        port: int,
        ready_path: str | None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.workdir = workdir
        self.port = port
        self.base_url = f"http://{LOOPBACK}:{port}"
        self.ready_path = ready_path
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not started"
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> Service:
        """Start the process and wait until it is ready: its readiness path answers 200, or (no
        path) its port takes a connection."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        _STARTED.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            if self._ready():
                return self
            time.sleep(0.1)
        raise BenchError(f"{self.name} not ready after {timeout:.0f}s: {self.log_tail()}")

    def _ready(self) -> bool:
        with contextlib.suppress(OSError, urllib.error.URLError):
            if self.ready_path is None:
                with socket.create_connection((LOOPBACK, self.port), timeout=1):
                    return True
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(self.base_url + self.ready_path, timeout=2) as answer:
                return bool(answer.status == 200)
        return False

    def stop(self, timeout: float = 40.0) -> None:
        """SIGTERM, wait up to `timeout` for a graceful exit, then SIGKILL. Idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def status(self) -> dict[str, float]:
        """RSS and peak RSS in MB."""
        return proc_status(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


def _server(program: str, prefix: str, directory: Path, name: str, settings: dict[str, str]) -> Service:
    """`<program> serve` on a free loopback port, with the settings every benchmark service shares."""
    port = free_port()
    env = {
        f"{prefix}HOST": LOOPBACK,
        f"{prefix}PORT": str(port),
        f"{prefix}API_TOKENS": json.dumps([TOKEN]),
        f"{prefix}STATE_DIR": str(directory / f"{name}-state"),
        f"{prefix}REPLICA_ID": f"bench-{name}",
        f"{prefix}LOG_LEVEL": "WARNING",
        **settings,
    }
    argv = [str(BIN_DIR / program), "serve"]
    return Service(name, argv, service_env(env), directory, port=port, ready_path="/readyz")


def orchestrator(
    directory: Path, database_url: str, *, name: str = "orchestrator", env: dict[str, str] | None = None
) -> Service:
    """`gl-orchestrator serve` (not started yet). `env`: more GL_ORCHESTRATOR_* settings."""
    settings = {"GL_ORCHESTRATOR_DATABASE_URL": database_url, **(env or {})}
    return _server("gl-orchestrator", "GL_ORCHESTRATOR_", directory, name, settings)


def add_watchdog_env(parser: argparse.ArgumentParser) -> None:
    """`--watchdog-env NAME=VALUE` (repeatable): settings of the watchdog under test."""
    parser.add_argument(
        "--watchdog-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a GL_WATCHDOG_* setting for the watchdog under test (repeatable)",
    )


def watchdog(
    directory: Path,
    database_url: str,
    orchestrator_url: str,
    *,
    name: str = "watchdog",
    env: dict[str, str] | None = None,
) -> Service:
    """`gl-watchdog serve` (not started yet) watching `orchestrator_url`. `env`: more GL_WATCHDOG_*."""
    settings = {
        "GL_WATCHDOG_DATABASE_URL": database_url,
        "GL_WATCHDOG_ORCHESTRATOR_URL": orchestrator_url,
        "GL_WATCHDOG_ORCHESTRATOR_TOKEN": TOKEN,
        "GL_WATCHDOG_APPROVAL_SIGNING_KEY": secrets.token_urlsafe(32),
        **(env or {}),
    }
    return _server("gl-watchdog", "GL_WATCHDOG_", directory, name, settings)


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[str]:
    """A private `redis-server` on a free loopback port (no persistence); yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not on PATH (apt-get install redis-server)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"]
    service = Service(
        "redis", [*argv, "--dir", str(workdir)], dict(os.environ), workdir, port=port, ready_path=None
    )
    try:
        service.start(timeout=10)
        yield f"redis://{LOOPBACK}:{port}/0"
    finally:
        service.stop()


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[tuple[str, str]]:
    """A fresh PostgreSQL database on 127.0.0.1:5432, dropped afterwards.

    Yields (SQLAlchemy URL for the services, plain DSN for asyncpg).
    """
    import asyncpg

    name = f"gl_bench_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchError(f"PostgreSQL at {POSTGRES_ADMIN_DSN} not reachable: {exc}") from exc
    try:
        await admin.execute(f'CREATE DATABASE "{name}"', timeout=60)
    finally:
        await admin.close()
    dsn = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield dsn.replace("postgresql://", "postgresql+asyncpg://", 1), dsn
    finally:
        admin = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', timeout=60)
        finally:
            await admin.close()


@contextlib.contextmanager
def workdir(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary working directory (service logs, SQLite files); removed unless `keep`."""
    path = Path(tempfile.mkdtemp(prefix=f"gl-bench-{prefix}-"))
    try:
        yield path
    finally:
        stop_all()
        if keep:
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


# -- talking to the orchestrator ---------------------------------------------------------------------


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def hang_dag(dag_id: str, timeout_seconds: float | None) -> dict[str, Any]:
    """A one-node DAG whose node never returns (`builtin.hang`), with a DAG-level timeout."""
    return {
        "dag_id": dag_id,
        "nodes": {"wait": {"agent_id": "builtin.hang"}},
        "execution_timeout_seconds": timeout_seconds,
    }


async def register_dag(session: aiohttp.ClientSession, base_url: str, dag: dict[str, Any]) -> None:
    async with session.post(f"{base_url}{ORCH_API}/dags", json=dag, headers=auth()) as answer:
        if answer.status >= 300:
            raise BenchError(f"registering {dag['dag_id']}: {answer.status} {await answer.text()}")


async def submit_runs(
    session: aiohttp.ClientSession,
    base_urls: Sequence[str],
    dag_id: str,
    count: int,
    *,
    concurrency: int,
    deadline: float,
) -> dict[str, Any]:
    """POST `count` runs of `dag_id` as fast as the API takes them, round-robin over `base_urls`.

    Returns the ids accepted (in submission order), the rate, latencies and errors by status. Stops
    early at `deadline` (time.monotonic()).
    """
    ids: list[tuple[int, str]] = []
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(count))
    started = time.monotonic()

    async def client() -> None:
        for index in counter:
            if time.monotonic() > deadline:
                return
            url = f"{base_urls[index % len(base_urls)]}{ORCH_API}/dags/{dag_id}/execute"
            sent = time.monotonic()
            try:
                async with session.post(url, json={"input_data": {"n": index}}, headers=auth()) as answer:
                    body = await answer.json(content_type=None)
                    if answer.status == 202:
                        ids.append((index, body["execution_id"]))
                    else:
                        errors[str(answer.status)] = errors.get(str(answer.status), 0) + 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            latencies.append(time.monotonic() - sent)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    took = time.monotonic() - started
    return {
        "ids": [execution_id for _, execution_id in sorted(ids)],
        "accepted": len(ids),
        "seconds": round(took, 2),
        "per_second": round(len(ids) / took, 1) if took else None,
        "p50_ms": round(1000 * (percentile(latencies, 50) or 0), 1),
        "p99_ms": round(1000 * (percentile(latencies, 99) or 0), 1),
        "errors": errors,
    }


async def service_metrics(session: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    """`GET /api/v1/orchestrator/metrics`: active, max and queued executions of one replica."""
    async with session.get(f"{base_url}{ORCH_API}/metrics", headers=auth()) as answer:
        if answer.status != 200:
            raise BenchError(f"{base_url} metrics: {answer.status} {await answer.text()}")
        data: dict[str, Any] = await answer.json()
        return data


async def wait_active(
    session: aiohttp.ClientSession, base_url: str, expected: int, within_seconds: float
) -> tuple[int, float]:
    """Poll the replica's active executions until `expected` or `within_seconds`; (active, seconds)."""
    started = time.monotonic()
    active = -1
    while time.monotonic() - started < within_seconds:
        active = int((await service_metrics(session, base_url))["active_executions"])
        if active >= expected:
            break
        await asyncio.sleep(0.5)
    return active, time.monotonic() - started


def prometheus_samples(text: str, name: str) -> list[tuple[str, float]]:
    """The samples of one metric family in a Prometheus exposition: (label text, value)."""
    found = []
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            labels = head[len(name) :]
            if labels == "" or labels.startswith("{"):
                found.append((labels, float(value)))
    return found


# -- the stores, read directly (counts and references only) ------------------------------------------


class Database:
    """One store a benchmark gives a service: its URL, and direct access for counts and references."""

    def __init__(self, url: str, *, sqlite_path: Path | None = None, dsn: str | None = None) -> None:
        self.url = url  # SQLAlchemy URL, as the service's setting
        self.sqlite_path = sqlite_path
        self.dsn = dsn  # asyncpg DSN (PostgreSQL)
        self.last_query_seconds = 0.0  # of the last `fetch`, the statement alone (no connecting)

    @property
    def kind(self) -> str:
        return "sqlite" if self.sqlite_path is not None else "postgres"

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        """Run one read-only statement (no parameters) and return its rows."""
        if self.sqlite_path is not None:
            return await asyncio.to_thread(self._sqlite_fetch, sql)
        import asyncpg

        conn = await asyncpg.connect(self.dsn, timeout=10)
        try:
            started = time.perf_counter()
            rows = [tuple(row) for row in await conn.fetch(sql, timeout=120)]
            self.last_query_seconds = time.perf_counter() - started
            return rows
        finally:
            await conn.close()

    def _sqlite_fetch(self, sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=30)
        try:
            started = time.perf_counter()
            rows = list(conn.execute(sql).fetchall())
            self.last_query_seconds = time.perf_counter() - started
            return rows
        finally:
            conn.close()

    async def count_by_status(self, table: str = "executions") -> dict[str, int]:
        """Rows of the orchestrator's executions table by status."""
        rows = await self.fetch(f"SELECT status, COUNT(*) FROM {table} GROUP BY status ORDER BY status")
        return {str(status): int(count) for status, count in rows}


@contextlib.asynccontextmanager
async def database(kind: str, directory: Path, name: str) -> AsyncIterator[Database]:
    """A fresh store: a SQLite file in `directory`, or a fresh PostgreSQL database (dropped after)."""
    if kind == "sqlite":
        path = directory / f"{name}.db"
        yield Database(f"sqlite+aiosqlite:///{path}", sqlite_path=path)
        return
    async with postgres_database() as (url, dsn):
        yield Database(url, dsn=dsn)

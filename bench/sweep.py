"""Sweep benchmark (not a test): does a sweep find every stuck run among many running ones, and how fast.

    .venv/bin/python bench/sweep.py [--runs 10000] [--stuck 5]           # SQLite, real runs
    .venv/bin/python bench/sweep.py --postgres [--runs 100000]           # PostgreSQL, seeded rows

Where it sits: a real `gl-orchestrator serve` (subprocess, env settings) holds `--runs` running
executions, the `--stuck` oldest of which are over their DAG-level timeout; the watchdog sweeps it
through the orchestrator's REST API, as in production. Two ways to get the runs:

- `--populate api` (default on SQLite): real runs of one-node `builtin.hang` DAGs submitted through
  `POST .../dags/{id}/execute`; the stuck ones first (DAG timeout 1 s), then the others (timeout one
  day). The replica runs with `max_concurrent_executions` = runs and a one-hour lock TTL so that it
  keeps them all while the sweep is measured (holding them with default settings is what
  `bench/capacity.py` measures);
- `--populate seed` (default on PostgreSQL, where 100,000 real runs would take the replica's whole
  capacity and an hour to submit): one real run is submitted and becomes the template; the other rows
  are copies of its `executions` row written straight into the store, each with a new id and times
  (the stuck ones started an hour ago with a 60 s timeout, the others in the last seconds with a day).
  The replica runs with `max_concurrent_executions` = 1, which its own run fills, so it never takes
  the seeded rows over.

Timed: `sweep_once()` of a watchdog built in this process with its composition root
(`watchdog.assembly.build_watchdog`; `for_duration_seconds=0`, so a run over its timeout fires at
once; diagnoses of the incidents it opens are parked until the timing is done) — `--repeat` times;
then `gl-watchdog sweep` as a process (start-up, the sweep, and the diagnoses it waits for).
The sweep includes the search for the stuck runs the timeout cannot see (issue 16: every page of
`GET .../running-nodes` of the nodes old enough to stall, judged by the stall rule, and four filtered
listings). The runs here are minutes old, younger than the default thresholds allow a stall, so the
same sweeps are timed again with 1 s thresholds, where every running node is read (the case of
10,000 runs all older than ten minutes), and without the search (`stuck_run_detection: false`), as a
reference of what it adds.
References in the same run, best of `--repeat`: `GET .../executions?status=running&limit=5000`
(the API's largest page), and a bare SQL select of every running row (the statement alone, not
connecting) with the over-timeout test done in Python.

Prints a table and writes JSON to bench/results/. Every process it starts is stopped when it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import harness
from harness import (
    BIN_DIR,
    ORCH_API,
    TOKEN,
    BenchError,
    Database,
    auth,
    database,
    hang_dag,
    loadavg,
    machine,
    ms,
    orchestrator,
    print_table,
    register_dag,
    service_env,
    submit_runs,
    wait_active,
    workdir,
)

STUCK_DAG = "bench-sweep-stuck"
HEALTHY_DAG = "bench-sweep-healthy"
TARGET_SECONDS = 1.0
RUNNING_ROWS = "SELECT execution_id, started_at, timeout_seconds FROM executions WHERE status = 'running'"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Sweep over many running executions with a few stuck old ones: found? how fast? "
        "Next to one API listing and a bare SQL select.",
    )
    parser.add_argument("--runs", type=int, help="running executions (default 10000; 100000 with --postgres)")
    parser.add_argument("--stuck", type=int, default=5, help="of which stuck, the oldest (default 5)")
    parser.add_argument("--postgres", action="store_true", help="orchestrator store on PostgreSQL")
    parser.add_argument(
        "--populate", choices=("api", "seed"), help="real runs (api; SQLite default) or copied rows (seed)"
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent submitting clients (default 32)")
    parser.add_argument("--submit-limit", type=float, default=600, help="give up submitting after (600 s)")
    parser.add_argument("--repeat", type=int, default=3, help="sweeps timed in process (default 3)")
    parser.add_argument("--no-cli", action="store_true", help="skip the `gl-watchdog sweep` process")
    parser.add_argument("--cli-limit", type=float, default=300, help="kill `gl-watchdog sweep` after (300 s)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, SQLite)")
    args = parser.parse_args(argv)
    args.runs = args.runs or (100_000 if args.postgres else 10_000)
    args.populate = args.populate or ("seed" if args.postgres else "api")
    if args.stuck < 1 or args.runs <= args.stuck or args.repeat < 1 or args.clients < 1:
        parser.error("need --stuck >= 1, --runs > --stuck, --repeat >= 1, --clients >= 1")
    return args


# -- populating ------------------------------------------------------------------------------------


async def populate_api(
    session: aiohttp.ClientSession, url: str, args: argparse.Namespace
) -> tuple[list[str], dict[str, Any]]:
    """Real runs: the stuck ones first, one by one (so their order is their age), then the rest."""
    deadline = time.monotonic() + args.submit_limit
    stuck = await submit_runs(session, [url], STUCK_DAG, args.stuck, concurrency=1, deadline=deadline)
    rest = await submit_runs(
        session, [url], HEALTHY_DAG, args.runs - args.stuck, concurrency=args.clients, deadline=deadline
    )
    active, waited = await wait_active(session, url, args.runs, within_seconds=120)
    await asyncio.sleep(1.5)  # the last stuck run is over its 1 s timeout by now
    info = {"submitted_per_second": rest["per_second"], "errors": rest["errors"], "active": active}
    print(f"populated through the API: {info} (waited {waited:.0f} s for admission)", file=sys.stderr)
    return stuck["ids"], info


async def populate_seed(
    session: aiohttp.ClientSession, url: str, store: Database, args: argparse.Namespace
) -> tuple[list[str], dict[str, Any]]:
    """One real run as the template, the other rows copied from its `executions` row."""
    template = await submit_runs(
        session, [url], HEALTHY_DAG, 1, concurrency=1, deadline=time.monotonic() + 60
    )
    if not template["ids"]:
        raise BenchError(f"the template run was not accepted: {template['errors']}")
    await wait_active(session, url, 1, within_seconds=60)
    now = datetime.now(UTC)
    stuck_ids = [f"seed-stuck-{i:06d}" for i in range(args.stuck)]
    copies = [
        (i, STUCK_DAG, now - timedelta(hours=1) + timedelta(seconds=i), 60.0) for i in range(args.stuck)
    ]
    healthy = args.runs - args.stuck - 1
    copies += [
        (args.stuck + i, HEALTHY_DAG, now - timedelta(microseconds=100 * (healthy - i)), 86_400.0)
        for i in range(healthy)
    ]
    started = time.monotonic()
    await copy_rows(store, template["ids"][0], copies, stuck_ids)
    info = {"seeded": len(copies), "seed_seconds": round(time.monotonic() - started, 1)}
    print(f"seeded: {info}", file=sys.stderr)
    return stuck_ids, info


async def copy_rows(
    store: Database, template_id: str, copies: list[tuple[int, str, datetime, float]], stuck_ids: list[str]
) -> None:
    """Insert copies of the template's executions row: (index, dag_id, started_at, timeout_seconds)."""
    if store.sqlite_path is not None:
        await asyncio.to_thread(_copy_sqlite, store.sqlite_path, template_id, copies, stuck_ids)
        return
    import asyncpg

    conn = await asyncpg.connect(store.dsn, timeout=10)
    try:
        row = dict(
            await conn.fetchrow("SELECT * FROM executions WHERE execution_id = $1", template_id, timeout=30)
        )
        columns = list(row)
        records = [tuple(_copy(row, copy, stuck_ids).values()) for copy in copies]
        await conn.copy_records_to_table("executions", records=records, columns=columns, timeout=600)
    finally:
        await conn.close()


def _copy(
    row: dict[str, Any], copy: tuple[int, str, datetime, float], stuck_ids: list[str]
) -> dict[str, Any]:
    index, dag_id, started_at, timeout_seconds = copy
    stamp: Any = started_at
    if isinstance(row["started_at"], str):  # SQLite keeps naive UTC text
        stamp = started_at.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    execution_id = stuck_ids[index] if index < len(stuck_ids) else f"seed-{index:07d}"
    return {
        **row,
        "execution_id": execution_id,
        "dag_id": dag_id,
        "created_at": stamp,
        "started_at": stamp,
        "updated_at": stamp,
        "timeout_seconds": timeout_seconds,
    }


def _copy_sqlite(
    path: Path, template_id: str, copies: list[tuple[int, str, datetime, float]], stuck_ids: list[str]
) -> None:
    import sqlite3

    conn = sqlite3.connect(path, timeout=60)
    try:
        conn.row_factory = sqlite3.Row
        row = dict(conn.execute("SELECT * FROM executions WHERE execution_id = ?", (template_id,)).fetchone())
        columns = list(row)
        sql = f"INSERT INTO executions ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
        with conn:
            conn.executemany(sql, [tuple(_copy(row, copy, stuck_ids).values()) for copy in copies])
    finally:
        conn.close()


# -- measuring -------------------------------------------------------------------------------------


async def time_sweeps(settings_values: dict[str, Any], repeat: int, stuck: list[str]) -> list[dict[str, Any]]:
    """`sweep_once()` of a watchdog built here, `repeat` times; diagnoses parked until the end."""
    from watchdog.assembly import build_watchdog
    from watchdog.settings import load_settings

    release = asyncio.Event()

    async def parked(execution_id: str) -> Any:
        await release.wait()
        raise TimeoutError("bench: diagnoses are not part of the sweep")

    wd = await build_watchdog(load_settings(None, **settings_values), diagnose=parked)
    sweeps = []
    try:
        for _ in range(repeat):
            started = time.perf_counter()
            report = await wd.sweeper.sweep_once()
            seconds = time.perf_counter() - started
            summary = report.as_json()
            sweeps.append(
                {
                    "seconds": seconds,
                    **found(summary, stuck),
                    "stuck_runs": len(summary["stuck"]),
                    "stuck_errors": summary["stuck_errors"],
                }
            )
            print(f"  sweep_once: {seconds:.3f} s {sweeps[-1]}", file=sys.stderr)
    finally:
        release.set()
        await wd.aclose()
    return sweeps


def found(report: dict[str, Any], stuck: list[str]) -> dict[str, Any]:
    """How many of the stuck runs a sweep report names as firing, and whether the oldest is one."""
    firing = set(report.get("firing") or [])
    return {
        "result": report.get("result"),
        "error": report.get("error"),
        "firing": len(firing),
        **_found_in(firing, stuck),
    }


def time_cli(settings_values: dict[str, Any], stuck: list[str], limit: float) -> dict[str, Any]:
    """`gl-watchdog sweep` as a process: wall time, and what its report found."""
    env = service_env({f"GL_WATCHDOG_{k.upper()}": str(v) for k, v in settings_values.items()})
    env["GL_WATCHDOG_API_TOKENS"] = json.dumps([TOKEN])
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [str(BIN_DIR / "gl-watchdog"), "sweep", "--local", "-o", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=limit,
        )
    except subprocess.TimeoutExpired:
        return {"seconds": None, "error": f"killed after {limit:.0f} s"}
    seconds = time.perf_counter() - started
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        return {"seconds": seconds, "error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
    return {"seconds": seconds, "exit": done.returncode, **found(report, stuck)}


async def time_references(
    session: aiohttp.ClientSession, url: str, store: Database, stuck: list[str], repeat: int
) -> dict[str, Any]:
    """The best of `repeat` API listings and of `repeat` bare selects (with the over-timeout test)."""
    api: dict[str, Any] = {}
    sql: dict[str, Any] = {}
    for _ in range(repeat):
        started = time.perf_counter()
        listing = f"{url}{ORCH_API}/executions?status=running&limit=5000"
        async with session.get(listing, headers=auth()) as answer:
            items = (await answer.json())["items"]
        seconds = time.perf_counter() - started
        if not api or seconds < api["seconds"]:
            listed = {item["execution_id"] for item in items}
            api = {"seconds": seconds, "rows": len(items), **_found_in(listed, stuck)}
        rows = await store.fetch(RUNNING_ROWS)
        started = time.perf_counter()
        now = datetime.now(UTC)
        over = set()
        for execution_id, started_at, timeout_seconds in rows:
            moment = datetime.fromisoformat(started_at) if isinstance(started_at, str) else started_at
            moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
            if timeout_seconds is not None and (now - moment).total_seconds() > timeout_seconds:
                over.add(execution_id)
        seconds = store.last_query_seconds + time.perf_counter() - started
        if not sql or seconds < sql["seconds"]:
            sql = {"seconds": seconds, "rows": len(rows), **_found_in(over, stuck)}
    return {"api": api, "sql": sql}


def _found_in(ids: set[str], stuck: list[str]) -> dict[str, Any]:
    return {"stuck_found": len(ids & set(stuck)), "oldest_found": stuck[0] in ids}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "command": " ".join(sys.argv)}
    kind = "postgres" if args.postgres else "sqlite"
    with workdir("sweep", args.keep) as wd:
        async with database(kind, wd, "orchestrator") as store:
            limit = args.runs + 10 if args.populate == "api" else 1
            env = {
                "GL_ORCHESTRATOR_MAX_CONCURRENT_EXECUTIONS": str(limit),
                "GL_ORCHESTRATOR_LOCK_TTL_SECONDS": "3600",
            }
            orch = orchestrator(wd, store.url, env=env).start()
            timeout = aiohttp.ClientTimeout(total=300)
            connector = aiohttp.TCPConnector(limit=args.clients)
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
                await register_dag(
                    session, orch.base_url, hang_dag(STUCK_DAG, 1 if args.populate == "api" else 60)
                )
                await register_dag(session, orch.base_url, hang_dag(HEALTHY_DAG, 86_400))
                if args.populate == "api":
                    stuck, info = await populate_api(session, orch.base_url, args)
                else:
                    stuck, info = await populate_seed(session, orch.base_url, store, args)
                result["population"] = {**info, "store": await store.count_by_status()}
                if len(stuck) < args.stuck:
                    raise BenchError(f"only {len(stuck)} of {args.stuck} stuck runs were accepted")
                result["orchestrator_rss_mb"] = orch.status()
                watchdog_settings = {
                    "database_url": f"sqlite+aiosqlite:///{wd / 'watchdog.db'}",
                    "orchestrator_url": orch.base_url,
                    "orchestrator_token": TOKEN,
                    "for_duration_seconds": 0,
                    "state_dir": str(wd / "watchdog-state"),
                    "log_level": "WARNING",
                }
                result["load_before"] = loadavg()
                result["sweeps"] = await time_sweeps(watchdog_settings, args.repeat, stuck)
                # Every running node old enough to stall (1 s thresholds): what reading all of them costs.
                every_node = {
                    **watchdog_settings,
                    "database_url": f"sqlite+aiosqlite:///{wd / 'every-node.db'}",
                    "stuck_runs": {"stall": {"floor_seconds": 1.0, "no_progress_seconds": 1.0}},
                }
                result["sweeps_every_node_read"] = await time_sweeps(every_node, args.repeat, stuck)
                without = {**watchdog_settings, "stuck_run_detection": False}
                without["database_url"] = f"sqlite+aiosqlite:///{wd / 'without.db'}"
                result["sweeps_without_stuck_search"] = await time_sweeps(without, args.repeat, stuck)
                result["references"] = await time_references(
                    session, orch.base_url, store, stuck, args.repeat
                )
                if not args.no_cli:
                    cli_settings = {
                        **watchdog_settings,
                        "database_url": f"sqlite+aiosqlite:///{wd / 'cli.db'}",
                    }
                    result["cli"] = time_cli(cli_settings, stuck, args.cli_limit)
                result["load_after"] = loadavg()
            orch.stop(timeout=60)
    return result


def report(result: dict[str, Any]) -> None:
    args = result["args"]
    stuck = args["stuck"]
    sql = result["references"]["sql"]
    sweeps = result["sweeps"]
    best = min(sweeps, key=lambda s: s["seconds"])
    kind = "PostgreSQL" if args["postgres"] else "SQLite"
    print(
        f"\n{args['runs']:,} running executions ({args['populate']}, {kind}), {stuck} of them stuck; "
        f"store: {result['population']['store']}\n"
    )

    def row(name: str, figures: dict[str, Any], rows: Any = "-") -> list[Any]:
        seconds = figures.get("seconds")
        return [
            name,
            ms(seconds),
            ratio_to(seconds, sql["seconds"]),
            rows,
            f"{figures.get('stuck_found', '-')} of {stuck}",
            "yes" if figures.get("oldest_found") else "no",
            figures.get("error") or "",
        ]

    without = result["sweeps_without_stuck_search"]
    best_without = min(without, key=lambda s: s["seconds"])
    rows = [
        row("sweep_once(), first", sweeps[0]),
        row(f"sweep_once(), best of {len(sweeps)}", best),
        row(f"reference: sweep_once() without the stuck-run search, best of {len(without)}", best_without),
    ]
    every = result.get("sweeps_every_node_read")
    if every:
        best_every = min(every, key=lambda s: s["seconds"])
        rows.insert(
            2, row(f"sweep_once(), every running node old enough to stall, best of {len(every)}", best_every)
        )
    if "cli" in result:
        rows.append(row("gl-watchdog sweep (process: start, sweep, its diagnoses)", result["cli"]))
    api = result["references"]["api"]
    rows.append(row("reference: GET executions?status=running&limit=5000", api, f"{api['rows']:,}"))
    rows.append(row("reference: bare SQL select of the running rows + over test", sql, f"{sql['rows']:,}"))
    print_table(["what", "ms", "time / SQL", "rows", "stuck found", "oldest found", "error"], rows)
    met = best["stuck_found"] == stuck and best["oldest_found"] and best["seconds"] <= TARGET_SECONDS
    verdict = "met" if met else "missed"
    print(f"target (issue 11): every stuck run found, the oldest included, a sweep ≤ 1 s: {verdict}")
    print(
        f"stuck-run search: {ratio_to(best['seconds'], best_without['seconds'])} the sweep without it; "
        f"found {best['stuck_runs']} stuck runs, errors {best['stuck_errors']}"
    )
    print(f"load average before {result['load_before']}, after {result['load_after']}")


def ratio_to(seconds: float | None, reference: float) -> str:
    return "-" if seconds is None or not reference else f"{seconds / reference:.1f}x"


def main(argv: list[str] | None = None) -> int:
    return harness.main("sweep", parse_args(argv), run, report)


if __name__ == "__main__":
    sys.exit(main())

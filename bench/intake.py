"""Alert intake benchmark (not a test): Alertmanager deliveries per second into `gl-watchdog serve`.

    .venv/bin/python bench/intake.py [--clients 50] [--seconds 10] [--backends sqlite,postgres]

Where it sits: drives a real `gl-watchdog serve` (started here with env settings, next to an empty
`gl-orchestrator serve` that the diagnoses of the opened incidents ask) over `POST /api/v1/alerts`
only. Each delivery is an Alertmanager webhook payload, version 4, with one firing
`OrchestratorExecutionTimeout` alert labelled `execution_id` and `dag_id`:

- repeated: the same alert (same fingerprint and startsAt) every time, as Alertmanager re-sends it
  every repeat_interval and as both members of an HA pair deliver it: one incident, then duplicates;
- distinct: a new execution id and fingerprint every time: an incident opened (and a diagnosis
  queued) per delivery.

The same client loop (`--clients` concurrent coroutines on aiohttp keep-alive sessions, in
`--client-procs` processes, for `--seconds`) drives, in the same run:

- null: an aiohttp handler that reads the body and answers at once: the client's own ceiling;
- reference: a minimal aiohttp handler that parses the payload and does one INSERT per request
  (SQLite with the plain `sqlite3` module, WAL, the watchdog's journal settings; PostgreSQL with an
  asyncpg pool of 10), i.e. what one durable write per delivery costs on this machine;
- the watchdog, on SQLite and on PostgreSQL (a fresh store and process per case).

Reported per case: deliveries/s, p50/p99/max latency, errors by status, and the watchdog's rate as a
share of the reference's. Prints tables and writes JSON to bench/results/. Every process it starts is
stopped when it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import aiohttp
import harness
from aiohttp import web
from harness import (
    LOOPBACK,
    TOKEN,
    Service,
    database,
    free_port,
    loadavg,
    machine,
    ms,
    orchestrator,
    percentile,
    print_table,
    prometheus_samples,
    ratio,
    service_env,
    watchdog,
    workdir,
)

ALERT = "OrchestratorExecutionTimeout"
STARTS_AT = "2026-01-01T00:00:00Z"
TARGETS = {"repeated": 2000, "distinct": 1000}  # deliveries/s (issue 11)
TARGET_SHARE = 1 / 3
TARGET_P99 = 0.100


def delivery(execution_id: str, fingerprint: str) -> bytes:
    """One webhook payload (version 4) with one firing alert, as Alertmanager sends it."""
    labels = {"alertname": ALERT, "execution_id": execution_id, "dag_id": "bench-dag", "severity": "warning"}
    return json.dumps(
        {
            "version": "4",
            "groupKey": '{}:{alertname="OrchestratorExecutionTimeout"}',
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "gl-watchdog",
            "groupLabels": {"alertname": ALERT},
            "commonLabels": labels,
            "commonAnnotations": {},
            "externalURL": "http://127.0.0.1:9093",
            "alerts": [
                {
                    "status": "firing",
                    "labels": labels,
                    "annotations": {"summary": f"execution {execution_id} over its timeout"},
                    "startsAt": STARTS_AT,
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://127.0.0.1:9090/graph",
                    "fingerprint": fingerprint,
                }
            ],
        }
    ).encode()


# -- the client loop (one per client process) --------------------------------------------------------


def client_process(
    url: str, kind: str, clients: int, start_at: float, seconds: float, tag: str
) -> dict[str, Any]:
    """Run `clients` coroutines posting deliveries from `start_at` (epoch) for `seconds`."""
    return asyncio.run(_client_loop(url, kind, clients, start_at, seconds, tag))


async def _client_loop(
    url: str, kind: str, clients: int, start_at: float, seconds: float, tag: str
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    repeated = delivery("bench-repeated-run", "00000000bench001")
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    last_done = start_at

    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:

        async def worker(index: int) -> None:
            nonlocal last_done
            await asyncio.sleep(max(0.0, start_at - time.time()))
            end = start_at + seconds
            sequence = 0
            while time.time() < end:
                if kind == "repeated":
                    body = repeated
                else:
                    sequence += 1
                    body = delivery(f"bench-{tag}-{index}-{sequence}", f"{tag}{index:04x}{sequence:08x}")
                sent = time.perf_counter()
                try:
                    async with session.post(url, data=body) as answer:
                        await answer.read()
                        statuses[str(answer.status)] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    statuses[type(exc).__name__] += 1
                latencies.append(time.perf_counter() - sent)
                last_done = max(last_done, time.time())

        await asyncio.gather(*(worker(i) for i in range(clients)))
    return {"latencies": latencies, "statuses": dict(statuses), "last_done": last_done}


def drive(url: str, kind: str, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    """The client loop against `url`, split over `--client-procs` processes; the merged figures."""
    procs = args.client_procs
    start_at = time.time() + 1.0 + 0.5 * procs  # every process connected and waiting by then
    shares = [args.clients // procs + (1 if i < args.clients % procs else 0) for i in range(procs)]
    with ProcessPoolExecutor(max_workers=procs, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(client_process, url, kind, share, start_at, args.seconds, f"{tag}{i:02x}")
            for i, share in enumerate(shares)
        ]
        parts = [future.result() for future in futures]
    latencies = [value for part in parts for value in part["latencies"]]
    statuses: Counter[str] = Counter()
    for part in parts:
        statuses.update(part["statuses"])
    elapsed = max(part["last_done"] for part in parts) - start_at
    ok = statuses.get("200", 0)
    return {
        "requests": len(latencies),
        "ok": ok,
        "per_second": round(ok / elapsed, 1) if elapsed > 0 else None,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies, default=None),
        "errors": {status: count for status, count in statuses.items() if status != "200"},
        "seconds": round(elapsed, 2),
    }


# -- the reference servers (run as subprocesses of this script: --serve KIND) ------------------------


def serve_reference(kind: str, port: int, target: str) -> None:
    """A minimal webhook handler: `null` answers at once; `sqlite`/`postgres` INSERT one row first."""

    async def start(app: web.Application) -> None:
        if kind == "sqlite":
            import sqlite3

            conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS deliveries (id INTEGER PRIMARY KEY, fingerprint TEXT, "
                "starts_at TEXT, execution_id TEXT, received_at REAL)"
            )
            app["sqlite"] = conn
        elif kind == "postgres":
            import asyncpg

            pool = await asyncpg.create_pool(target, min_size=10, max_size=10, timeout=10)
            await pool.execute(
                "CREATE TABLE IF NOT EXISTS deliveries (id BIGSERIAL PRIMARY KEY, fingerprint TEXT, "
                "starts_at TEXT, execution_id TEXT, received_at DOUBLE PRECISION)",
                timeout=30,
            )
            app["pg"] = pool

    async def alerts(request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401)
        if kind == "null":
            return web.json_response({"status": "ok"})
        alert = json.loads(body)["alerts"][0]
        row = (alert["fingerprint"], alert["startsAt"], alert["labels"]["execution_id"], time.time())
        if kind == "sqlite":
            request.app["sqlite"].execute(
                "INSERT INTO deliveries (fingerprint, starts_at, execution_id, received_at) "
                "VALUES (?, ?, ?, ?)",
                row,
            )
        else:
            await request.app["pg"].execute(
                "INSERT INTO deliveries (fingerprint, starts_at, execution_id, received_at) "
                "VALUES ($1, $2, $3, $4)",
                *row,
                timeout=10,
            )
        return web.json_response({"status": "ok"})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.on_startup.append(start)
    app.router.add_post("/api/v1/alerts", alerts)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host=LOOPBACK, port=port, access_log=None, print=None)


def reference_server(kind: str, directory: Path, target: str) -> Service:
    port = free_port()
    argv = [sys.executable, __file__, "--serve", kind, "--port", str(port), "--target", target]
    return Service(f"reference-{kind}", argv, service_env({}), directory, port=port, ready_path="/healthz")


# -- the run ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Alertmanager deliveries per second into gl-watchdog serve (SQLite and PostgreSQL), "
        "next to a minimal one-INSERT handler driven by the same clients.",
    )
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--seconds", type=float, default=10, help="seconds per case (default 10)")
    parser.add_argument("--client-procs", type=int, default=1, help="client processes (default 1)")
    parser.add_argument(
        "--backends", default="sqlite,postgres", help="stores to run on: sqlite,postgres (default both)"
    )
    parser.add_argument(
        "--kinds", default="repeated,distinct", help="alert mixes: repeated,distinct (default both)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, SQLite)")
    harness.add_watchdog_env(parser)
    parser.add_argument("--serve", choices=("null", "sqlite", "postgres"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--target", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not set(args.backends) <= {"sqlite", "postgres"} or not args.backends:
        parser.error("--backends: sqlite and/or postgres")
    if not set(args.kinds) <= {"repeated", "distinct"} or not args.kinds:
        parser.error("--kinds: repeated and/or distinct")
    if args.clients < 1 or args.client_procs < 1 or args.client_procs > args.clients:
        parser.error("--clients and --client-procs must be at least 1, and procs at most clients")
    if not 0 < args.seconds <= 600:
        parser.error("--seconds must be in (0, 600]")
    return args


async def watchdog_counts(url: str) -> dict[str, float]:
    """Incidents opened and diagnoses finished so far, from the watchdog's /metrics."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as answer:
        text = await answer.text()
    opened = sum(v for _, v in prometheus_samples(text, "gl_watchdog_incidents_opened_total"))
    diagnosed = sum(v for _, v in prometheus_samples(text, "gl_watchdog_diagnoses_total"))
    return {"incidents_opened": opened, "diagnoses_done": diagnosed}


def case(label: str, figures: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    print(
        f"  {label}: {figures['per_second']}/s p99 {ms(figures['p99'])} ms errors {figures['errors']}",
        file=sys.stderr,
    )
    return {"case": label, **figures, **(extra or {})}


async def run_backend(
    backend: str, args: argparse.Namespace, wd: Path, orch: Service
) -> list[dict[str, Any]]:
    """Reference and watchdog cases on one store kind."""
    cases = []
    async with database(backend, wd, f"reference-{backend}") as store:
        target = str(store.sqlite_path) if store.sqlite_path is not None else str(store.dsn)
        ref = reference_server(backend, wd, target).start()
        for kind in args.kinds:
            figures = drive(f"{ref.base_url}/api/v1/alerts", kind, args, "r")
            cases.append(case(f"{backend} {kind} reference", figures, {"backend": backend, "kind": kind}))
        ref.stop()
    for kind in args.kinds:
        async with database(backend, wd, f"watchdog-{backend}-{kind}") as store:
            settings = dict(item.split("=", 1) for item in args.watchdog_env)
            wd_service = watchdog(
                wd, store.url, orch.base_url, name=f"watchdog-{backend}-{kind}", env=settings
            )
            wd_service.start()
            load = loadavg()
            figures = drive(f"{wd_service.base_url}/api/v1/alerts", kind, args, "w")
            extra = {
                "backend": backend,
                "kind": kind,
                "load_before": load,
                "load_after": loadavg(),
                "rss_mb": wd_service.status(),
                **await watchdog_counts(wd_service.base_url),
            }
            cases.append(case(f"{backend} {kind} watchdog", figures, extra))
            wd_service.stop()
    return cases


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "command": " ".join(sys.argv)}
    with workdir("intake", args.keep) as wd:
        orch = orchestrator(wd, f"sqlite+aiosqlite:///{wd / 'orchestrator.db'}").start()
        null = reference_server("null", wd, "").start()
        result["client_check"] = case(
            "null handler", drive(f"{null.base_url}/api/v1/alerts", "repeated", args, "n")
        )
        null.stop()
        cases = []
        for backend in args.backends:
            cases.extend(await run_backend(backend, args, wd, orch))
        result["cases"] = cases
        result["load_after"] = loadavg()
    return result


def report(result: dict[str, Any]) -> None:
    check = result["client_check"]
    print(
        f"\nclient alone against the null handler: {check['per_second']:,.0f}/s "
        f"(p99 {ms(check['p99'])} ms) with {result['args']['clients']} clients\n"
    )
    rows, verdicts = [], []
    references = {(c["backend"], c["kind"]): c for c in result["cases"] if c["case"].endswith("reference")}
    for c in result["cases"]:
        is_watchdog = c["case"].endswith("watchdog")
        ref = references.get((c["backend"], c["kind"]))
        share = ratio(c["per_second"], ref["per_second"]) if is_watchdog and ref else "-"
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(c["errors"].items())) or "none"
        server = "watchdog" if is_watchdog else "reference"
        rate = f"{c['per_second']:,.0f}"
        rows.append(
            [c["backend"], c["kind"], server, rate, ms(c["p50"]), ms(c["p99"]), ms(c["max"]), errors, share]
        )
        if is_watchdog and ref:
            met = (
                (c["per_second"] or 0) >= TARGETS[c["kind"]]
                and (c["per_second"] or 0) >= TARGET_SHARE * (ref["per_second"] or 0)
                and (c["p99"] or 1e9) <= TARGET_P99
                and not c["errors"]
            )
            verdicts.append(
                [
                    c["backend"],
                    c["kind"],
                    f"≥ {TARGETS[c['kind']]:,}/s, ≥ 33% of reference, p99 ≤ 100 ms, no errors",
                    "met" if met else "missed",
                    f"{c['incidents_opened']:.0f} opened / {c['diagnoses_done']:.0f} diagnosed",
                    c["load_before"] + " → " + c["load_after"],
                ]
            )
    headers = ["store", "alerts", "server", "deliveries/s", "p50 ms", "p99 ms", "max ms", "errors", "vs ref"]
    print_table(headers, rows)
    print_table(["store", "alerts", "target (issue 11)", "result", "incidents", "load avg"], verdicts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve_reference(args.serve, args.port, args.target)
        return 0
    return harness.main("intake", args, run, report)


if __name__ == "__main__":
    sys.exit(main())

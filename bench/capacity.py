"""Orchestrator capacity benchmark (not a test): how many hanging runs a replica holds, and at what cost.

    .venv/bin/python bench/capacity.py [--runs 10000] [--settle 60]
    .venv/bin/python bench/capacity.py --replicas 2 --runs 20000      # two replicas on one PostgreSQL

Where it sits: drives `gl-orchestrator serve` (one or more replicas, started here as subprocesses with
env settings, Redis ownership locks on a private `redis-server`) through its REST API only. Every
setting is the default except `max_concurrent_executions`, which is set to the runs per replica (the
default, 50, would queue all the others). Steps:

1. submit `--runs` runs of a one-node `builtin.hang` DAG as fast as the API takes them (`--clients`
   concurrent keep-alive clients, round-robin over the replicas);
2. let them settle for `--settle` seconds, sampling every `--sample-every` seconds: active runs per
   replica (`GET /api/v1/orchestrator/metrics`), RSS, and the store's runs by status;
3. after the settle: runs `running` vs `interrupted` (self-fenced), RSS and peak RSS, the CPU the idle
   replica uses over `--cpu-window` seconds, the maintenance loops' rounds and mean duration
   (`gl_orchestrator_maintenance_tick_seconds{part}`) and the self-fenced runs by reason;
4. reference, in the same run once the replicas are stopped: a bare redis-py asyncio loop doing the
   same number of round trips one maintenance tick needs for the locks (one PEXPIRE per run), one
   after the other and pipelined, against the same redis-server.

Prints a table and writes JSON to bench/results/. Every process it starts is stopped when it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from typing import Any

import aiohttp
import harness
import redis.asyncio as aioredis
from harness import (
    BenchError,
    Service,
    database,
    hang_dag,
    loadavg,
    machine,
    orchestrator,
    print_table,
    private_redis,
    prometheus_samples,
    register_dag,
    service_metrics,
    submit_runs,
    workdir,
)

DAG_ID = "bench-capacity-hang"
DEFAULT_TICK_SECONDS = 5.0  # min(lock_ttl 15 s, heartbeat_ttl 15 s) / 3 with default settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Orchestrator capacity: hanging runs held per replica, self-fencing, RSS, idle CPU; "
        "next to a bare Redis renewal loop.",
    )
    parser.add_argument("--runs", type=int, default=10_000, help="runs to submit in all (default 10000)")
    parser.add_argument("--replicas", type=int, default=1, help="orchestrator replicas (default 1)")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="store on a fresh PostgreSQL database (default: SQLite; implied by --replicas > 1)",
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent submitting clients (default 32)")
    parser.add_argument(
        "--submit-limit", type=float, default=600, help="stop submitting after this many seconds (600)"
    )
    parser.add_argument("--settle", type=float, default=60, help="seconds to wait after submission (60)")
    parser.add_argument("--sample-every", type=float, default=10, help="seconds between samples (10)")
    parser.add_argument("--cpu-window", type=float, default=15, help="seconds of idle CPU measured (15)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, SQLite)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.replicas < 1 or args.clients < 1:
        parser.error("--runs, --replicas and --clients must be at least 1")
    if min(args.settle, args.cpu_window, args.submit_limit) < 0 or args.sample_every <= 0:
        parser.error("durations must not be negative (--sample-every above 0)")
    if args.replicas > 1:
        args.postgres = True
    return args


async def sample(
    session: aiohttp.ClientSession, replicas: list[Service], store: Any, started: float
) -> dict[str, Any]:
    """One look at the replicas and the store."""
    active = {}
    for replica in replicas:
        try:
            active[replica.name] = (await service_metrics(session, replica.base_url))["active_executions"]
        except (aiohttp.ClientError, TimeoutError, BenchError) as exc:
            active[replica.name] = f"error: {type(exc).__name__}"
    return {
        "t": round(time.monotonic() - started, 1),
        "active": active,
        "rss_mb": {r.name: r.status().get("VmRSS") for r in replicas},
        "store": await store.count_by_status(),
    }


async def tick_metrics(session: aiohttp.ClientSession, replica: Service) -> dict[str, float]:
    """The maintenance loops' cost and the self-fenced runs, from the replica's `/metrics`: per part of
    `gl_orchestrator_maintenance_tick_seconds`, its rounds and mean seconds, and the share of rounds
    over 1 s; `gl_orchestrator_self_fenced_executions_total` by reason."""
    async with session.get(f"{replica.base_url}/metrics") as answer:
        text = await answer.text()
    found: dict[str, float] = {}
    family = "gl_orchestrator_maintenance_tick_seconds"
    counts = dict(prometheus_samples(text, f"{family}_count"))
    sums = dict(prometheus_samples(text, f"{family}_sum"))
    buckets = dict(prometheus_samples(text, f"{family}_bucket"))
    for labels, count in counts.items():
        part = labels.split('"')[1] if '"' in labels else labels
        found[f"{part} rounds"] = count
        if count:
            found[f"{part} mean s"] = round(sums.get(labels, 0.0) / count, 4)
            within = buckets.get(f'{{le="1.0",part="{part}"}}', count)
            found[f"{part} over 1 s"] = round(1 - within / count, 3)
    for labels, value in prometheus_samples(text, "gl_orchestrator_self_fenced_executions_total"):
        found[f"self-fenced {labels}"] = value
    return found


async def redis_reference(redis_url: str, keys: int) -> dict[str, Any]:
    """One tick's lock renewals without the orchestrator: `keys` SETs, then `keys` PEXPIREs."""
    client = aioredis.Redis.from_url(
        redis_url.rsplit("/", 1)[0] + "/1", socket_timeout=30, socket_connect_timeout=5
    )
    try:
        await client.flushdb()
        names = [f"bench:lock:{i}" for i in range(keys)]
        started = time.perf_counter()
        for name in names:
            await client.set(name, "x", px=15_000)
        set_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for name in names:
            await client.pexpire(name, 15_000)
        sequential = time.perf_counter() - started
        started = time.perf_counter()
        for first in range(0, keys, 1000):
            pipe = client.pipeline(transaction=False)
            for name in names[first : first + 1000]:
                pipe.pexpire(name, 15_000)
            await pipe.execute()
        pipelined = time.perf_counter() - started
        await client.flushdb()
    finally:
        await client.aclose()
    return {
        "keys": keys,
        "set_sequential_s": round(set_seconds, 3),
        "pexpire_sequential_s": round(sequential, 3),
        "pexpire_pipelined_s": round(pipelined, 3),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    kind = "postgres" if args.postgres else "sqlite"
    per_replica = math.ceil(args.runs / args.replicas)
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "command": " ".join(sys.argv)}
    with workdir("capacity", args.keep) as wd, private_redis(wd) as redis_url:
        async with database(kind, wd, "orchestrator") as store:
            env = {
                "GL_ORCHESTRATOR_REDIS_URL": redis_url,
                "GL_ORCHESTRATOR_MAX_CONCURRENT_EXECUTIONS": str(per_replica),
            }
            replicas = [
                orchestrator(wd, store.url, name=f"replica{i}", env=env) for i in range(args.replicas)
            ]
            for replica in replicas:
                replica.start()
            result["rss_start_mb"] = {r.name: r.status() for r in replicas}
            connector = aiohttp.TCPConnector(limit=args.clients)
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                await register_dag(session, replicas[0].base_url, hang_dag(DAG_ID, None))
                result["load_before"] = loadavg()
                started = time.monotonic()
                submission = await submit_runs(
                    session,
                    [r.base_url for r in replicas],
                    DAG_ID,
                    args.runs,
                    concurrency=args.clients,
                    deadline=started + args.submit_limit,
                )
                submission.pop("ids")
                result["submission"] = submission
                print(
                    f"submitted {submission['accepted']} runs in {submission['seconds']} s "
                    f"({submission['per_second']}/s), errors {submission['errors']}",
                    file=sys.stderr,
                )
                timeline = [await sample(session, replicas, store, started)]
                settle_end = time.monotonic() + args.settle
                while time.monotonic() < settle_end:
                    await asyncio.sleep(min(args.sample_every, max(0.0, settle_end - time.monotonic())))
                    timeline.append(await sample(session, replicas, store, started))
                    print(f"  {timeline[-1]}", file=sys.stderr)
                result["timeline"] = timeline
                cpu_before = {r.name: r.cpu_seconds() for r in replicas}
                window_start = time.monotonic()
                await asyncio.sleep(args.cpu_window)
                window = time.monotonic() - window_start
                result["idle_cpu_cores"] = {
                    r.name: round((r.cpu_seconds() - cpu_before[r.name]) / window, 2) for r in replicas
                }
                result["final"] = await sample(session, replicas, store, started)
                result["rss_end_mb"] = {r.name: r.status() for r in replicas}
                result["tick_metrics"] = {r.name: await tick_metrics(session, r) for r in replicas}
                result["load_after"] = loadavg()
            for replica in replicas:
                replica.stop(timeout=60)
        result["reference"] = await redis_reference(redis_url, per_replica)
    return result


def double_counted(timeline: list[dict[str, Any]]) -> int:
    """The largest excess, over the samples, of the replicas' summed active gauges over the store's
    running runs."""
    excess = 0
    for point in timeline:
        active = [v for v in point["active"].values() if isinstance(v, int)]
        if len(active) == len(point["active"]):
            excess = max(excess, sum(active) - point["store"].get("running", 0))
    return excess


def report(result: dict[str, Any]) -> None:
    final = result["final"]
    store = final["store"]
    submission = result["submission"]
    reference = result["reference"]
    rows = []
    for name, active in final["active"].items():
        held = [(t["active"][name], t["t"]) for t in result["timeline"] if isinstance(t["active"][name], int)]
        peak, peak_at = max(held, default=(0, 0.0))
        start = result["rss_start_mb"][name].get("VmRSS") or 0
        end = result["rss_end_mb"][name]
        per_run = f"{1024 * ((end.get('VmHWM') or 0) - start) / peak:.0f}" if peak else "-"
        rows.append(
            [
                name,
                f"{peak} (t = {peak_at:.0f} s)",
                active,
                f"{start:.0f} → {end.get('VmRSS', 0):.0f} (peak {end.get('VmHWM', 0):.0f})",
                per_run,
                result["idle_cpu_cores"][name],
                ", ".join(f"{k}={v:g}" for k, v in result["tick_metrics"][name].items()) or "not exposed",
            ]
        )
    print(
        f"\nsubmitted {submission['accepted']} of {result['args']['runs']} runs in {submission['seconds']} s "
        f"= {submission['per_second']}/s (p50 {submission['p50_ms']} ms, p99 {submission['p99_ms']} ms, "
        f"errors {submission['errors'] or 'none'}); store after the settle: {store}\n"
    )
    print(
        "most runs the replicas' active gauges counted above the store's running runs (a run active on "
        f"two replicas, or not yet recorded): {double_counted(result['timeline'])}\n"
    )
    headers = [
        "replica",
        "most runs held (sampled)",
        "held after the settle",
        "RSS MB start → end",
        "peak KB per held run",
        "idle CPU (cores)",
        "tick metric",
    ]
    print_table(headers, rows)
    tick = DEFAULT_TICK_SECONDS
    print_table(
        ["reference: one tick's renewals (bare redis-py asyncio)", "seconds", "share of the 5 s tick"],
        [
            [f"{reference['keys']} SET PX, one after the other", reference["set_sequential_s"], "-"],
            [
                f"{reference['keys']} PEXPIRE, one after the other",
                reference["pexpire_sequential_s"],
                f"{100 * reference['pexpire_sequential_s'] / tick:.0f}%",
            ],
            [
                f"{reference['keys']} PEXPIRE, pipelined by 1,000",
                reference["pexpire_pipelined_s"],
                f"{100 * reference['pexpire_pipelined_s'] / tick:.0f}%",
            ],
        ],
    )
    print(f"load average before {result['load_before']}, after {result['load_after']}")


def main(argv: list[str] | None = None) -> int:
    return harness.main("capacity", parse_args(argv), run, report)


if __name__ == "__main__":
    sys.exit(main())

"""Diagnosis benchmark (not a test): how long a diagnosis takes as the number of running runs grows.

    .venv/bin/python bench/diagnosis.py [--sizes 0,1000,10000] [--samples 20] [--burst 30]

Where it sits: a real `gl-orchestrator serve` (SQLite; `max_concurrent_executions` above the
population and a one-hour lock TTL, so that it keeps every run while the watchdog is measured; holding
them with default settings is `bench/capacity.py`'s subject) and a real `gl-watchdog serve` (SQLite,
mode `observe`, no Prometheus, Redis or Kubernetes — the embedded defaults —, one sweep an hour so that
sweeps stay out of the figures), both subprocesses with env settings, driven over their HTTP APIs.

For each size N (ascending; the population only grows): N background runs of a one-node
`builtin.hang` DAG, plus the runs diagnosed, all running. Then:

- `--samples` diagnoses one after the other: `POST /api/v1/incidents {"execution_id"}` opens an
  incident, whose diagnosis starts at once in the background (as `POST .../diagnose` starts one; in
  observe mode a diagnosed incident is escalated, so a second diagnosis of it is refused); the client
  polls `GET /api/v1/incidents/{id}` until the audit log has the diagnosis' "after" entry. Reported:
  the diagnosis itself (audit "before" → "after") and the client's wait (request → seen done);
- `--burst` alerts at once: as many `POST /api/v1/alerts` deliveries, each one firing
  `OrchestratorExecutionTimeout` for another run, sent together; reported: delivery → diagnosis done
  (queueing for the watchdog's diagnosis slots included), and whether all were diagnosed within
  `--burst-limit`;
- the watchdog's RSS and peak RSS (`/proc/<pid>/status`) after each size.

Reference in the same run: as many `GET .../executions/{id}/trace` calls, one after the other and
`--burst` at once. Prints a table and writes JSON to bench/results/. Every process it starts is
stopped when it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import datetime
from typing import Any

import aiohttp
import harness
from harness import (
    ORCH_API,
    BenchError,
    Service,
    auth,
    hang_dag,
    loadavg,
    machine,
    ms,
    orchestrator,
    percentile,
    print_table,
    register_dag,
    submit_runs,
    wait_active,
    watchdog,
    workdir,
)

DAG_ID = "bench-diagnosis-hang"
POLL_SECONDS = 0.025
TARGET_P95 = 1.0
TARGET_BURST_P95 = 2.0
TARGET_RSS_MB = 150


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Diagnosis latency with 0, 1,000, 10,000 running executions, one at a time and in a "
        "burst of alerts; watchdog RSS. Next to the same number of trace reads.",
    )
    parser.add_argument("--sizes", default="0,1000,10000", help="running runs (default 0,1000,10000)")
    parser.add_argument("--samples", type=int, default=20, help="diagnoses one after the other (20)")
    parser.add_argument("--burst", type=int, default=30, help="alerts sent at once (default 30)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent submitting clients (32)")
    parser.add_argument("--submit-limit", type=float, default=600, help="give up submitting after (600 s)")
    parser.add_argument("--sample-limit", type=float, default=120, help="give up one diagnosis after (120 s)")
    parser.add_argument("--burst-limit", type=float, default=300, help="give up a burst after (300 s)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, SQLite)")
    harness.add_watchdog_env(parser)
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        parser.error("--sizes: comma-separated whole numbers")
    if not args.sizes or args.sizes[0] < 0 or args.samples < 1 or args.burst < 1 or args.clients < 1:
        parser.error("--sizes must be >= 0; --samples, --burst and --clients at least 1")
    return args


def _at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def diagnosis_times(detail: dict[str, Any]) -> tuple[float, float, str | None, str | None] | None:
    """(started, finished, error, likely cause) of the incident's first diagnosis from its audit log;
    None while it runs."""
    started = finished = None
    error = cause = None
    for entry in detail.get("audit", []):
        if entry["kind"] != "diagnosis":
            continue
        if entry["phase"] == "before" and started is None:
            started = _at(entry["at"])
        elif entry["phase"] == "after" and started is not None:
            finished = _at(entry["at"])
            error = (entry.get("data") or {}).get("error")
            cause = (entry.get("data") or {}).get("likely_cause")
            break
    return None if started is None or finished is None else (started, finished, error, cause)


async def incident_detail(session: aiohttp.ClientSession, wd: Service, incident_id: int) -> dict[str, Any]:
    async with session.get(f"{wd.base_url}/api/v1/incidents/{incident_id}", headers=auth()) as answer:
        if answer.status != 200:
            raise BenchError(f"incident {incident_id}: {answer.status} {await answer.text()}")
        detail: dict[str, Any] = await answer.json()
        return detail


async def one_diagnosis(
    session: aiohttp.ClientSession, wd: Service, execution_id: str, limit: float
) -> dict[str, Any]:
    """Open an incident for the run and wait until its diagnosis is done."""
    sent = time.time()
    body = {"execution_id": execution_id, "dag_id": DAG_ID}
    async with session.post(f"{wd.base_url}/api/v1/incidents", json=body, headers=auth()) as answer:
        if answer.status not in (200, 201):
            raise BenchError(f"opening an incident: {answer.status} {await answer.text()}")
        incident_id = (await answer.json())["incident"]["id"]
    while time.time() - sent < limit:
        detail = await incident_detail(session, wd, incident_id)
        times = diagnosis_times(detail)
        if times is not None:
            seen = time.time()
            return {
                "diagnosis": times[1] - times[0],
                "client": seen - sent,
                "error": times[2],
                "likely_cause": times[3],
            }
        await asyncio.sleep(POLL_SECONDS)
    return {"diagnosis": None, "client": None, "error": f"not done after {limit:.0f} s"}


async def burst(
    session: aiohttp.ClientSession, wd: Service, targets: list[str], limit: float
) -> list[dict[str, Any]]:
    """`len(targets)` alert deliveries at once; delivery → diagnosis done for each."""

    async def deliver(execution_id: str) -> tuple[float, int]:
        labels = {"alertname": "OrchestratorExecutionTimeout", "execution_id": execution_id, "dag_id": DAG_ID}
        alert = {"status": "firing", "labels": labels, "startsAt": "2026-01-01T00:00:00Z"}
        alert["fingerprint"] = execution_id.replace("-", "")[:16]
        payload = {"version": "4", "status": "firing", "alerts": [alert]}
        sent = time.time()
        async with session.post(f"{wd.base_url}/api/v1/alerts", json=payload, headers=auth()) as answer:
            if answer.status != 200:
                raise BenchError(f"alert delivery: {answer.status} {await answer.text()}")
            outcome = (await answer.json())["alerts"][0]
        return sent, int(outcome["incident_id"])

    delivered = await asyncio.gather(*(deliver(t) for t in targets))
    started = time.time()
    results: dict[int, dict[str, Any]] = {}
    while len(results) < len(delivered) and time.time() - started < limit:
        for sent, incident_id in delivered:
            if incident_id in results:
                continue
            times = diagnosis_times(await incident_detail(session, wd, incident_id))
            if times is not None:
                results[incident_id] = {
                    "done": times[1] - sent,
                    "diagnosis": times[1] - times[0],
                    "error": times[2],
                }
        await asyncio.sleep(0.2)
    return [results.get(i, {"done": None, "diagnosis": None, "error": "not done"}) for _, i in delivered]


async def trace_reads(
    session: aiohttp.ClientSession, orch: Service, ids: list[str], together: bool
) -> list[float]:
    """`GET .../executions/{id}/trace` for each id: one after the other, or all at once."""

    async def read(execution_id: str) -> float:
        started = time.perf_counter()
        async with session.get(
            f"{orch.base_url}{ORCH_API}/executions/{execution_id}/trace", headers=auth()
        ) as answer:
            await answer.read()
            if answer.status != 200:
                raise BenchError(f"trace of {execution_id}: {answer.status}")
        return time.perf_counter() - started

    if together:
        return list(await asyncio.gather(*(read(i) for i in ids)))
    return [await read(i) for i in ids]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "command": " ".join(sys.argv)}
    per_size = args.samples + args.burst
    capacity = args.sizes[-1] + per_size * len(args.sizes) + 10
    with workdir("diagnosis", args.keep) as wd:
        env = {
            "GL_ORCHESTRATOR_MAX_CONCURRENT_EXECUTIONS": str(capacity),
            "GL_ORCHESTRATOR_LOCK_TTL_SECONDS": "3600",
        }
        orch = orchestrator(wd, f"sqlite+aiosqlite:///{wd / 'orchestrator.db'}", env=env).start()
        wd_env = {"GL_WATCHDOG_MODE": "observe", "GL_WATCHDOG_SWEEP_INTERVAL_SECONDS": "3600"}
        wd_env.update(item.split("=", 1) for item in args.watchdog_env)
        wd_service = watchdog(
            wd, f"sqlite+aiosqlite:///{wd / 'watchdog.db'}", orch.base_url, env=wd_env
        ).start()
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=64)
        ) as session:
            await register_dag(session, orch.base_url, hang_dag(DAG_ID, 1))
            background = 0
            sizes = []
            for size in args.sizes:
                deadline = time.monotonic() + args.submit_limit
                more = await submit_runs(
                    session,
                    [orch.base_url],
                    DAG_ID,
                    size - background,
                    concurrency=args.clients,
                    deadline=deadline,
                )
                background += more["accepted"]
                targets = await submit_runs(
                    session, [orch.base_url], DAG_ID, per_size, concurrency=4, deadline=deadline
                )
                expected = background + sum(s["targets"] for s in sizes) + targets["accepted"]
                active, _ = await wait_active(session, orch.base_url, expected, within_seconds=120)
                ids = targets["ids"]
                load = loadavg()
                print(f"size {size}: {active} running; {args.samples} diagnoses one by one", file=sys.stderr)
                samples = [
                    await one_diagnosis(session, wd_service, i, args.sample_limit)
                    for i in ids[: args.samples]
                ]
                reference = await trace_reads(session, orch, ids[: args.samples], together=False)
                print(f"size {size}: burst of {args.burst} alerts", file=sys.stderr)
                burst_ids = ids[args.samples :]
                bursted = await burst(session, wd_service, burst_ids, args.burst_limit)
                burst_reference = await trace_reads(session, orch, burst_ids, together=True)
                sizes.append(
                    {
                        "size": size,
                        "running": active,
                        "targets": targets["accepted"],
                        "samples": samples,
                        "reference": reference,
                        "burst": bursted,
                        "burst_reference": burst_reference,
                        "watchdog_rss_mb": wd_service.status(),
                        "orchestrator_rss_mb": orch.status(),
                        "load_before": load,
                        "load_after": loadavg(),
                    }
                )
                print(f"  {summarise(sizes[-1])}", file=sys.stderr)
            result["sizes"] = sizes
    return result


def summarise(size: dict[str, Any]) -> dict[str, Any]:
    """The figures of one size: p50/p95 of each series, counts of failures."""

    def values(items: list[dict[str, Any]], key: str) -> list[float]:
        return [item[key] for item in items if item.get(key) is not None]

    diagnosis = values(size["samples"], "diagnosis")
    client = values(size["samples"], "client")
    done = values(size["burst"], "done")
    return {
        "size": size["size"],
        "running": size["running"],
        "diagnosis_p50": percentile(diagnosis, 50),
        "diagnosis_p95": percentile(diagnosis, 95),
        "client_p50": percentile(client, 50),
        "client_p95": percentile(client, 95),
        "reference_p50": percentile(size["reference"], 50),
        "reference_p95": percentile(size["reference"], 95),
        "burst_done": len(done),
        "burst_p95": percentile(done, 95),
        "burst_max": max(done, default=None),
        "burst_reference_p95": percentile(size["burst_reference"], 95),
        "errors": sorted({str(i["error"]) for i in size["samples"] + size["burst"] if i.get("error")}),
        "causes": sorted({str(i.get("likely_cause")) for i in size["samples"]}),
        "rss": size["watchdog_rss_mb"],
    }


def report(result: dict[str, Any]) -> None:
    args = result["args"]
    rows, verdicts = [], []
    for size in result["sizes"]:
        s = summarise(size)
        rows.append(
            [
                f"{s['size']:,} ({s['running']:,})",
                f"{ms(s['diagnosis_p50'])} / {ms(s['diagnosis_p95'])}",
                f"{ms(s['client_p50'])} / {ms(s['client_p95'])}",
                f"{ms(s['reference_p50'])} / {ms(s['reference_p95'])}",
                f"{s['burst_done']} of {args['burst']}",
                f"{ms(s['burst_p95'])} / {ms(s['burst_max'])}",
                ms(s["burst_reference_p95"]),
                f"{s['rss'].get('VmRSS', 0):.0f} / {s['rss'].get('VmHWM', 0):.0f}",
                f"{size['load_before']} → {size['load_after']}",
            ]
        )
        met = (
            (s["diagnosis_p95"] or 1e9) <= TARGET_P95
            and s["burst_done"] == args["burst"]
            and (s["burst_p95"] or 1e9) <= TARGET_BURST_P95
            and (s["rss"].get("VmHWM") or 1e9) <= TARGET_RSS_MB
        )
        verdicts.append(
            [f"{s['size']:,}", "met" if met else "missed", ", ".join(s["causes"]), "; ".join(s["errors"])]
        )
    headers = [
        "background runs (all running)",
        "diagnosis p50 / p95 ms",
        "client wait p50 / p95 ms",
        "reference: trace read p50 / p95 ms",
        "burst diagnosed",
        "burst delivery → done p95 / max ms",
        "reference: burst of trace reads p95 ms",
        "watchdog RSS / peak MB",
        "load avg",
    ]
    print()
    print_table(headers, rows)
    print_table(
        [
            "background runs",
            "targets (diagnosis p95 ≤ 1 s; burst: all done, p95 ≤ 2 s; peak RSS ≤ 150 MB)",
            "likely causes",
            "errors",
        ],
        verdicts,
    )


def main(argv: list[str] | None = None) -> int:
    return harness.main("diagnosis", parse_args(argv), run, report)


if __name__ == "__main__":
    sys.exit(main())

"""The REST API of the stuck-run signals (issue 16): progress reports, node-duration history, the
running nodes of every replica, and what the trace and the execution objects gain from them.

Where it sits: `api.py` calls `declare(ROUTE_TABLE)` to add these routes to its table (same
validation, auth, errors and OpenAPI document as every route) and uses `trace_signals` and
`owner_liveness` for the trace and the execution objects. Handlers read through
`service.engine.signals` (`progress.RunSignals`) and its history (`node_history.NodeHistory`).
docs/architecture.md "Stuck-run signals" is the contract.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gl_common.http import bad_request, json_model_response
from gl_common.openapi import Inputs, RouteTable
from orchestrator_core.locks import InProcessLockBackend
from orchestrator_core.node_history import NormalDuration
from orchestrator_core.records import iso
from orchestrator_core.service import OrchestratorService
from orchestrator_core.signal_models import (
    NodeDurations,
    ProgressOut,
    ProgressRequest,
    RunningNodesPage,
    RunningNodesQuery,
)
from orchestrator_core.store.signals import DurationKey, RunningNode

SERVICE_KEY = web.AppKey("service", OrchestratorService)


def _service(request: web.Request) -> OrchestratorService:
    return request.app[SERVICE_KEY]


def _respond(model: type[BaseModel], data: Any, status: int = 200) -> web.Response:
    return json_model_response(model.model_validate(data), status)


def _normal(sketches: dict[DurationKey, Any], key: DurationKey) -> dict[str, Any] | None:
    sketch = sketches.get(key)
    return None if sketch is None else NormalDuration.of(sketch).to_json()


# -- handlers -----------------------------------------------------------------------------------------


async def report_progress(request: web.Request, inputs: Inputs) -> web.Response:
    body = inputs.body(ProgressRequest)
    execution_id, node_id = inputs.path["execution_id"], inputs.path["node_id"]
    try:
        ack = await _service(request).engine.signals.report(
            execution_id, node_id, body.message, body.fraction
        )
    except ValueError as exc:  # the model checks the same; kept for a report the model let through
        raise bad_request(str(exc), "message" if "message" in str(exc) else "fraction") from None
    return _respond(
        ProgressOut,
        {
            "execution_id": ack.execution_id,
            "node_id": ack.node_id,
            "progress_at": iso(ack.progress_at),
            "reports": ack.reports,
        },
    )


async def node_durations(request: web.Request, inputs: Inputs) -> web.Response:
    engine = _service(request).engine
    dag_id = inputs.path["dag_id"]
    sketches = await engine.signals.history.of_dag(dag_id)
    if not sketches:
        await engine.get_dag(dag_id)  # 404 for an unknown DAG; a known one may have no history yet
    nodes = [
        {"node_id": key[1], "agent_id": key[2], **NormalDuration.of(sketch).to_json()}
        for key, sketch in sorted(sketches.items())
    ]
    return _respond(NodeDurations, {"dag_id": dag_id, "nodes": nodes})


async def running_nodes(request: web.Request, inputs: Inputs) -> web.Response:
    query = inputs.query(RunningNodesQuery)
    after = query.position()
    signals = _service(request).engine.signals
    page = await signals.running_page(query.to_filter(), after=after, limit=query.limit)
    sketches = await signals.history.sketches({_key(node) for node in page.nodes})
    items = [
        {
            "execution_id": node.execution_id,
            "dag_id": node.dag_id,
            "node_id": node.node_id,
            "agent_id": node.agent_id,
            "attempt": node.attempt,
            "started_at": iso(node.started_at),
            "last_progress_at": iso(node.last_progress_at),
            "progress_message": node.progress_message,
            "progress_fraction": node.progress_fraction,
            "progress_reports": node.progress_reports,
            "normal_duration": _normal(sketches, _key(node)),
        }
        for node in page.nodes
    ]
    return _respond(
        RunningNodesPage,
        {"items": items, "next_cursor": query.next_cursor(page.next), "total": page.total},
    )


def _key(node: RunningNode) -> DurationKey:
    return (node.dag_id, node.node_id, node.agent_id)


def declare(table: RouteTable) -> None:
    """Add the signal routes to the API's route table."""
    table.route(
        "POST /executions/{execution_id}/nodes/{node_id}/progress",
        "Report progress of a running node (an HTTP agent's way; in-process agents call "
        "ctx.report_progress): a node that reports progress is slow, not hung",
        body=ProgressRequest,
        response=ProgressOut,
        errors=(404, 409, 413, 415, 503),
    )(report_progress)
    table.route(
        "GET /dags/{dag_id}/node-durations",
        "The history of successful durations of every node (and agent) of a DAG: count, p50, p95, p99",
        response=NodeDurations,
        errors=(404, 503),
    )(node_durations)
    table.route(
        "GET /running-nodes",
        "The running nodes of every replica's runs, oldest started first, keyset pages with an exact "
        "total (what the stall sweep reads)",
        query=RunningNodesQuery,
        response=RunningNodesPage,
        errors=(503,),
    )(running_nodes)


# -- what the trace and the execution objects gain ---------------------------------------------------


async def trace_signals(service: OrchestratorService, trace: dict[str, Any]) -> dict[str, Any]:
    """Add progress (running nodes) and `normal_duration` (every node) to a trace's node traces."""
    signals = service.engine.signals
    nodes: dict[str, dict[str, Any]] = trace.get("node_traces", {})
    dag_id = trace["dag_id"]
    running: dict[str, RunningNode] = {}
    if any(node.get("status") == "running" for node in nodes.values()):
        await signals.flush_running_of(trace["execution_id"])
        running = {
            row.node_id: row for row in await service.engine.store.signals.running_of(trace["execution_id"])
        }
    sketches = await signals.history.sketches({(dag_id, n, node["agent_id"]) for n, node in nodes.items()})
    for node_id, node in nodes.items():
        row = running.get(node_id) if node.get("status") == "running" else None
        node["last_progress_at"] = iso(row.last_progress_at) if row else None
        node["progress_message"] = row.progress_message if row else None
        node["progress_fraction"] = row.progress_fraction if row else None
        node["progress_reports"] = row.progress_reports if row else 0
        node["normal_duration"] = _normal(sketches, (dag_id, node_id, node["agent_id"]))
    return trace


async def owner_liveness(
    service: OrchestratorService, owners: Iterable[str | None]
) -> dict[str | None, bool | None]:
    """Per owner: whether its heartbeat is present (True), gone (False), or unknown (None: no owner,
    or an embedded orchestrator, whose in-process heartbeats know only the replicas of its process)."""
    embedded = isinstance(service.locks, InProcessLockBackend)
    alive: dict[str | None, bool | None] = {}
    for owner in set(owners):
        if owner is None:
            alive[owner] = None
            continue
        beating = await service.locks.is_alive(owner)
        alive[owner] = (True if beating else None) if embedded else beating
    return alive


async def gone_owners(service: OrchestratorService, gone: bool) -> tuple[str | None, ...]:
    """The owners of running runs whose heartbeat is gone (`gone`) or present (not `gone`)."""
    owners = await service.engine.store.executions.running_owners()
    alive = await owner_liveness(service, owners)
    if gone:
        return tuple(owner for owner, beating in alive.items() if beating is False)
    return tuple(owner for owner, beating in alive.items() if beating is True)

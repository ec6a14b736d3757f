"""The OpenAPI 3 document of the orchestrator REST API, generated from `api.ROUTES`.

Where it sits: `api.build_app` calls `build_openapi(ROUTES)` once and serves the result at
`GET /api/v1/orchestrator/openapi.json`. The route table is the only list of routes, so the document
cannot drift from the router (a test compares the document with the app's registered routes). This
module defines `Route` and holds the JSON Schemas of the shapes in docs/architecture.md; their enums
and field lists come from the records and the DAG model. It imports nothing from `api`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, get_args

from aiohttp import web

from orchestrator_core.dag import OnFailure, OnTimeout, RetryStrategy
from orchestrator_core.records import EXECUTION_STATUSES, NODE_STATUSES, ProvenanceEntry
from orchestrator_core.settings import MAX_CONCURRENT_EXECUTIONS_BOUND, MAX_PARALLEL_NODES_BOUND

OPENAPI_VERSION = "3.0.3"
API_TITLE = "gl-orchestrator"
API_VERSION = "1"

_TS = {"type": "string", "format": "date-time", "nullable": True}
_STR_OR_NULL = {"type": "string", "nullable": True}
_NUM_OR_NULL = {"type": "number", "nullable": True}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string"},
            "detail": {"type": "string"},
            "field": {"type": "string"},
        },
    },
    "Execution": {
        "type": "object",
        "required": ["execution_id", "dag_id", "status"],
        "properties": {
            "execution_id": {"type": "string"},
            "dag_id": {"type": "string"},
            "dag_version": {"type": "integer"},
            "status": {"type": "string", "enum": list(EXECUTION_STATUSES)},
            "created_at": _TS,
            "started_at": _TS,
            "completed_at": _TS,
            "timeout_seconds": _NUM_OR_NULL,
            "error": _STR_OR_NULL,
            "owner": _STR_OR_NULL,
            "input_data": {},
            "execution_options": {"$ref": "#/components/schemas/ExecutionOptions"},
        },
    },
    "ExecutionList": {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Execution"}}},
    },
    "ExecutionOptions": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"checkpoint_enabled": {"type": "boolean"}, "deterministic_mode": {"type": "boolean"}},
    },
    "NodeTrace": {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": list(NODE_STATUSES)},
            "duration_ms": _NUM_OR_NULL,
            "attempt_count": {"type": "integer"},
            "error": _STR_OR_NULL,
            "agent_id": {"type": "string"},
            "started_at": _TS,
            "completed_at": _TS,
            "input_hash": _STR_OR_NULL,
            "timeout_seconds": _NUM_OR_NULL,
        },
    },
    "Trace": {
        "type": "object",
        "required": ["execution_id", "status", "topology_levels", "node_traces"],
        "properties": {
            "execution_id": {"type": "string"},
            "dag_id": {"type": "string"},
            "status": {"type": "string"},
            "topology_levels": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
            "node_traces": {
                "type": "object",
                "additionalProperties": {"$ref": "#/components/schemas/NodeTrace"},
            },
        },
    },
    "ResumeResult": {
        "type": "object",
        "required": ["execution_id", "status", "nodes_skipped", "nodes_remaining"],
        "properties": {
            "execution_id": {"type": "string"},
            "status": {"type": "string"},
            "nodes_skipped": {"type": "array", "items": {"type": "string"}},
            "nodes_remaining": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Provenance": {
        "type": "object",
        "required": ["execution_id", "chain_valid", "chain"],
        "properties": {
            "execution_id": {"type": "string"},
            "chain_valid": {"type": "boolean"},
            "chain": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        name: {"type": "integer"} if name == "seq" else {"type": "string"}
                        for name in ProvenanceEntry._fields
                    },
                },
            },
            "problems": {"type": "array", "items": {"type": "string"}},
        },
    },
    "LogLines": {
        "type": "object",
        "required": ["lines"],
        "properties": {
            "execution_id": {"type": "string"},
            "lines": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "ts": {"type": "string"},
                        "level": {"type": "string"},
                        "message": {"type": "string"},
                        "execution_id": {"type": "string"},
                        "node_id": _STR_OR_NULL,
                        "agent_id": _STR_OR_NULL,
                    },
                    "additionalProperties": True,
                },
            },
        },
    },
    "Checkpoints": {
        "type": "object",
        "required": ["execution_id", "checkpoints"],
        "properties": {
            "execution_id": {"type": "string"},
            "checkpoints": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "node_id": {"type": "string"},
                        "status": {"type": "string"},
                        "created_at": _TS,
                    },
                },
            },
        },
    },
    "Limits": {
        "type": "object",
        "required": [
            "active_executions",
            "max_concurrent_executions",
            "queued_executions",
            "max_parallel_nodes",
        ],
        "properties": {
            "active_executions": {"type": "integer"},
            "max_concurrent_executions": {"type": "integer"},
            "queued_executions": {"type": "integer"},
            "max_parallel_nodes": {"type": "integer"},
            "replica_id": {"type": "string"},
            "configured": {
                "type": "object",
                "description": "this replica's own limits (settings, env), in force where not overridden",
                "properties": {
                    "max_parallel_nodes": {"type": "integer"},
                    "max_concurrent_executions": {"type": "integer"},
                },
            },
            "overrides": {
                "type": "object",
                "description": "live limits set through PUT and applied by every replica, by name",
                "additionalProperties": {
                    "type": "object",
                    "required": ["value", "set_by", "updated_at"],
                    "properties": {
                        "value": {"type": "integer"},
                        "set_by": {"type": "string"},
                        "updated_at": _TS,
                    },
                },
            },
            "unshared": {
                "type": "object",
                "description": "limits changed on this replica while the store was unavailable; "
                "stored (and so applied everywhere) when it answers again",
                "additionalProperties": {"type": "integer"},
            },
        },
    },
    "LimitsRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "max_parallel_nodes": {"type": "integer", "minimum": 1, "maximum": MAX_PARALLEL_NODES_BOUND},
            "max_concurrent_executions": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_CONCURRENT_EXECUTIONS_BOUND,
            },
        },
    },
    "Dag": {
        "type": "object",
        "required": ["dag_id", "nodes"],
        "description": "A DAG definition (DESIGN.md 'Orchestrator core contracts'); nodes keyed by node_id.",
        "properties": {
            "dag_id": {"type": "string"},
            "version": {"type": "integer"},
            "description": {"type": "string"},
            "nodes": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Node"}},
            "execution_timeout_seconds": _NUM_OR_NULL,
            "max_parallel_nodes": {"type": "integer", "nullable": True},
            "on_failure": {"type": "string", "enum": list(get_args(OnFailure))},
        },
    },
    "Node": {
        "type": "object",
        "required": ["agent_id"],
        "properties": {
            "node_id": {"type": "string"},
            "agent_id": {"type": "string"},
            "depends_on": {"type": "array", "items": {"type": "string"}},
            "params": {"type": "object"},
            "timeout_policy": {
                "type": "object",
                "properties": {
                    "timeout_seconds": {"type": "number"},
                    "on_timeout": {"type": "string", "enum": list(get_args(OnTimeout))},
                },
            },
            "retry_policy": {
                "type": "object",
                "properties": {
                    "max_retries": {"type": "integer"},
                    "strategy": {"type": "string", "enum": list(get_args(RetryStrategy))},
                    "base_delay": {"type": "number"},
                    "max_delay": {"type": "number"},
                    "jitter": {"type": "boolean"},
                    "retryable_exceptions": {"type": "array", "items": {"type": "string"}},
                },
            },
            "compensation": _STR_OR_NULL,
        },
    },
    "DagPatch": {
        "type": "object",
        "description": "Partial DAG document deep-merged into the latest version, e.g. "
        '{"nodes": {"<node_id>": {"timeout_policy": {"timeout_seconds": 300}}}}.',
    },
    "ExecuteRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "input_data": {},
            "execution_options": {"$ref": "#/components/schemas/ExecutionOptions"},
        },
    },
    "AgentList": {
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "agent_id": {"type": "string"},
                        "kind": {"type": "string", "enum": ["inprocess", "http"]},
                        "restarts": {"type": "integer"},
                        "running_nodes": {"type": "array", "items": {"type": "string"}},
                    },
                },
            }
        },
    },
    "AgentRestart": {
        "type": "object",
        "required": ["agent_id", "restarts", "interrupted_nodes"],
        "properties": {
            "agent_id": {"type": "string"},
            "restarts": {"type": "integer"},
            "interrupted_nodes": {"type": "array", "items": {"type": "string"}},
        },
    },
}

# 503: the store or Redis is unreachable, or the replica is shutting down (every authenticated route
# reads the store or the token file).
_ERRORS_FOR = {
    "GET": ("400", "401", "404", "503"),
    "POST": ("400", "401", "404", "409", "413", "415", "503"),
    "PUT": ("400", "401", "404", "413", "415", "503"),
}


@dataclass(frozen=True)
class Route:
    """One route of the API: the router registers `handler`, the document describes the rest."""

    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    auth: bool = True
    ok_status: int = 200
    body: str | None = None  # name of the request schema in SCHEMAS
    response: str | None = None  # name of the response schema in SCHEMAS
    query: tuple[str, ...] = ()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RouteTable:
    """Routes declared next to their handlers with `@table.route("GET /path", summary, ...)`, in
    declaration order. Paths are under `prefix` unless `prefixed=False` (health, the Prometheus page).
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._routes: list[Route] = []

    def route(
        self, operation: str, summary: str, *, prefixed: bool = True, **options: Any
    ) -> Callable[[Handler], Handler]:
        method, path = operation.split(" ", 1)

        def declare(handler: Handler) -> Handler:
            full = self.prefix + path if prefixed else path
            self._routes.append(Route(method, full, handler, summary, **options))
            return handler

        return declare

    def routes(self) -> tuple[Route, ...]:
        return tuple(self._routes)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def build_openapi(routes: Iterable[Route]) -> dict[str, Any]:
    """An OpenAPI 3 document with one operation per route."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{re.sub(r'[^a-zA-Z0-9]+', '_', route.path).strip('_')}",
            "responses": {},
        }
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", route.path)
        ]
        params += [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in route.query
        ]
        if params:
            operation["parameters"] = params
        if route.body:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(route.body)}},
            }
        ok: dict[str, Any] = {"description": "OK"}
        if route.path == "/metrics":
            ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
        elif route.response:
            ok["content"] = {"application/json": {"schema": _ref(route.response)}}
        else:
            ok["content"] = {"application/json": {"schema": {"type": "object"}}}
        operation["responses"][str(route.ok_status)] = ok
        if route.auth:
            operation["security"] = [{"bearerAuth": []}]
            for status in _ERRORS_FOR.get(route.method, ("401",)):
                operation["responses"][status] = {
                    "description": "error",
                    "content": {"application/json": {"schema": _ref("Error")}},
                }
        else:
            operation["security"] = []
        if route.path.endswith("/resume"):
            operation["responses"]["202"] = {
                "description": "queued: this replica runs max_concurrent_executions already; the run "
                "resumes from its checkpoints when admitted",
                "content": {"application/json": {"schema": _ref("ResumeResult")}},
            }
        if route.path == "/readyz":
            operation["responses"]["503"] = {
                "description": "not ready",
                "content": {"application/json": {"schema": _ref("Error")}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": API_TITLE,
            "version": API_VERSION,
            "description": "The orchestrator REST API used by the stuck-DAG runbook and the watchdog.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
        },
        "security": [{"bearerAuth": []}],
    }

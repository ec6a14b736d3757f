"""DAG definitions: the pydantic v2 model, whole-graph validation, and topological levels.

Where it sits: the REST API (`POST/PUT /dags`) and the CLI parse documents with `parse_dag` /
`DagDefinition.from_document`; `engine.Engine.register_dag` stores them; the executor runs
`DagDefinition.levels()` (through `plan.RunPlan`). Everything here is pure (no I/O).

Every invalid definition raises `errors.DagValidationError` whose `problems` name the field:
a cycle is reported with its nodes in order (`nodes.a.depends_on: cycle a -> b -> c -> a`), an unknown
dependency, a duplicate node id (duplicate keys in the JSON/YAML `nodes` mapping or duplicate
`node_id`s in the list form are detected while parsing, which a plain `json.loads` cannot do), and
each bad policy field with its path (`nodes.x.retry_policy.strategy: Input should be ...`).

`nodes` may be written as a mapping keyed by node id (canonical) or as a list of nodes each carrying
`node_id`; both normalise to the mapping, and every node carries its own `node_id`.
"""

from __future__ import annotations

import heapq
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gl_common.documents import MAX_DEPTH, MAX_VALUES, json_shape_problem
from orchestrator_core.errors import DagValidationError

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN)

OnTimeout = Literal["fail", "skip", "compensate"]
RetryStrategy = Literal["exponential", "linear", "fixed"]
OnFailure = Literal["fail_fast", "continue", "compensate"]


class TimeoutPolicy(BaseModel):
    """Per-attempt wall-clock limit of a node and what happens when it is reached.

    `fail`: the node ends `timed_out` and counts as a failure for the DAG's `on_failure`.
    `skip`: the node ends `skipped`; downstream nodes run without its result (`upstream[node] = None`).
    `compensate`: the node's `compensation` agent runs, the node ends `timed_out`, counted as a failure.
    A timeout is retried first when the retry policy names `NodeTimeout` or `TimeoutError`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_seconds: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    on_timeout: OnTimeout = "fail"


class RetryPolicy(BaseModel):
    """How often and how soon a failed attempt is retried (delays in seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_retries: int = Field(default=0, ge=0, le=100)
    strategy: RetryStrategy = "exponential"
    base_delay: float = Field(default=1.0, ge=0, le=3600)
    max_delay: float = Field(default=30.0, ge=0, le=24 * 3600)
    jitter: bool = False
    retryable_exceptions: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _delays_ordered(self) -> RetryPolicy:
        if self.max_delay < self.base_delay:
            raise ValueError("max_delay must be >= base_delay")
        return self

    @field_validator("retryable_exceptions")
    @classmethod
    def _names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not name.isidentifier():
                raise ValueError(f"{name!r} is not an exception class name")
        return names


class Node(BaseModel):
    """One node: which agent runs it, what it depends on, its static params and policies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: str = Field(pattern=ID_PATTERN)
    agent_id: str = Field(pattern=ID_PATTERN)
    depends_on: tuple[str, ...] = ()
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_policy: TimeoutPolicy = Field(default_factory=TimeoutPolicy)
    retry_policy: RetryPolicy = Field(default_factory=RetryPolicy)
    compensation: str | None = Field(default=None, pattern=ID_PATTERN)
    description: str = ""


class DagDefinition(BaseModel):
    """A versioned DAG definition (DESIGN.md "Orchestrator core contracts")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dag_id: str = Field(pattern=ID_PATTERN)
    version: int = Field(default=1, ge=1)
    description: str = ""
    nodes: dict[str, Node]
    execution_timeout_seconds: float | None = Field(default=None, gt=0)
    max_parallel_nodes: int | None = Field(default=None, ge=1, le=10_000)
    on_failure: OnFailure = "fail_fast"

    @model_validator(mode="before")
    @classmethod
    def _normalise_nodes(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        nodes = data.get("nodes")
        normalised: dict[str, Any] = {}
        if isinstance(nodes, list):
            for index, item in enumerate(nodes):
                if not isinstance(item, Mapping) or not isinstance(item.get("node_id"), str):
                    raise DagValidationError([(f"nodes[{index}]", "must be an object with a string node_id")])
                if item["node_id"] in normalised:
                    problem = (f"nodes[{index}].node_id", f"duplicate node id {item['node_id']!r}")
                    raise DagValidationError([problem])
                normalised[item["node_id"]] = dict(item)
        elif isinstance(nodes, Mapping):
            for key, item in nodes.items():
                if isinstance(item, Mapping):
                    item = dict(item)
                    declared = item.setdefault("node_id", key)
                    if declared != key:
                        problem = (f"nodes.{key}.node_id", f"declares a different node_id {declared!r}")
                        raise DagValidationError([problem])
                normalised[key] = item
        else:
            return data
        return {**data, "nodes": normalised}

    @model_validator(mode="after")
    def _graph(self) -> DagDefinition:
        problems = graph_problems(self)
        if problems:
            raise DagValidationError(problems)
        return self

    # -- loading -----------------------------------------------------------------------------------

    @classmethod
    def from_document(cls, document: Any) -> DagDefinition:
        """Validate a parsed document; every problem becomes a `DagValidationError` naming its field."""
        if not isinstance(document, Mapping):
            raise DagValidationError([("", f"a DAG must be an object, not {type(document).__name__}")])
        try:
            return cls.model_validate(document)
        except DagValidationError:
            raise
        except ValidationError as exc:
            raise DagValidationError(_pydantic_problems(exc)) from None

    def to_document(self) -> dict[str, Any]:
        """The JSON-able document form (mapping of nodes), as stored and returned by the API."""
        return self.model_dump(mode="json")

    # -- graph -------------------------------------------------------------------------------------

    def levels(self) -> list[list[str]]:
        """Topological levels: level k holds nodes whose longest dependency path has k edges.

        Node ids inside a level are sorted, so the plan is the same in every process.
        """
        depth: dict[str, int] = {}
        for node_id in topological_order(self):
            deps = self.nodes[node_id].depends_on
            depth[node_id] = 1 + max((depth[d] for d in deps), default=-1)
        levels: list[list[str]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
        for node_id in sorted(depth):
            levels[depth[node_id]].append(node_id)
        return levels

    def dependents(self) -> dict[str, list[str]]:
        """For each node, the nodes that depend on it (sorted)."""
        out: dict[str, list[str]] = {node_id: [] for node_id in self.nodes}
        for node_id in sorted(self.nodes):
            for dep in self.nodes[node_id].depends_on:
                out[dep].append(node_id)
        return out

    def same_topology(self, other: DagDefinition) -> bool:
        """True when both define the same node ids, agents and dependencies (policies may differ)."""
        if set(self.nodes) != set(other.nodes):
            return False
        return all(
            self.nodes[n].depends_on == other.nodes[n].depends_on
            and self.nodes[n].agent_id == other.nodes[n].agent_id
            for n in self.nodes
        )


def topological_order(dag: DagDefinition) -> list[str]:
    """Kahn's algorithm with sorted tie-breaking (assumes `graph_problems(dag)` is empty)."""
    indegree = {node_id: len(set(node.depends_on)) for node_id, node in dag.nodes.items()}
    dependents = dag.dependents()
    ready = sorted(n for n, d in indegree.items() if d == 0)
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node_id = heapq.heappop(ready)
        order.append(node_id)
        for child in dependents[node_id]:
            indegree[child] -= 1
            if indegree[child] == 0:
                heapq.heappush(ready, child)
    return order


def graph_problems(dag: DagDefinition) -> list[tuple[str, str]]:
    """Whole-graph problems: empty DAG, self/unknown/duplicate dependencies, cycles (named in order)."""
    problems: list[tuple[str, str]] = []
    if not dag.nodes:
        return [("nodes", "a DAG needs at least one node")]
    for node_id in sorted(dag.nodes):
        node = dag.nodes[node_id]
        seen: set[str] = set()
        for index, dep in enumerate(node.depends_on):
            field = f"nodes.{node_id}.depends_on[{index}]"
            if dep == node_id:
                problems.append((field, f"node {node_id!r} depends on itself"))
            elif dep not in dag.nodes:
                problems.append((field, f"unknown dependency {dep!r}"))
            elif dep in seen:
                problems.append((field, f"duplicate dependency {dep!r}"))
            seen.add(dep)
    if problems:
        return problems
    cycle = find_cycle({n: list(dag.nodes[n].depends_on) for n in dag.nodes})
    if cycle:
        path = " -> ".join([*cycle, cycle[0]])
        problems.append((f"nodes.{cycle[0]}.depends_on", f"cycle {path}"))
    return problems


def find_cycle(graph: Mapping[str, list[str]]) -> list[str]:
    """One cycle of `graph` (node -> its dependencies) in dependency order, or [] if acyclic.

    Iterative DFS in sorted order, so the same graph always reports the same cycle. The cycle is
    rotated to start at its smallest node id: `a -> b -> c -> a` means a depends on b, b on c, c on a.
    """
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    adjacency = {node: sorted(deps) for node, deps in graph.items()}
    for root in sorted(graph):
        if color[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        color[root] = grey
        while stack:
            node, index = stack[-1]
            deps = adjacency[node]
            if index < len(deps):
                stack[-1] = (node, index + 1)
                dep = deps[index]
                if color[dep] == grey:
                    cycle = path[path.index(dep) :]
                    start = cycle.index(min(cycle))
                    return cycle[start:] + cycle[:start]
                if color[dep] == white:
                    color[dep] = grey
                    stack.append((dep, 0))
                    path.append(dep)
            else:
                color[node] = black
                stack.pop()
                path.pop()
    return []


def _pydantic_problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for error in exc.errors():
        loc = [part for part in error["loc"] if part not in ("function-after", "function-before")]
        field = ""
        for part in loc:
            field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append((field, message))
    return problems


# -- parsing with duplicate-key detection ----------------------------------------------------------


class _Obj(dict[str, Any]):
    """A parsed mapping that remembers which keys appeared more than once."""

    duplicates: list[str]


def _pairs_hook(pairs: list[tuple[Any, Any]]) -> _Obj:
    out = _Obj()
    out.duplicates = []
    for key, value in pairs:
        if key in out:
            out.duplicates.append(str(key))
        out[key] = value
    return out


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> _Obj:
    loader.flatten_mapping(node)
    pairs = [
        (loader.construct_object(k, deep=True), loader.construct_object(v, deep=True)) for k, v in node.value
    ]
    return _pairs_hook(pairs)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _duplicate_problems(value: Any, path: str) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key in getattr(value, "duplicates", []):
            what = "duplicate node id" if path == "nodes" else "duplicate key"
            problems.append((path, f"{what} {key!r}"))
        for key, child in value.items():
            problems += _duplicate_problems(child, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            problems += _duplicate_problems(child, f"{path}[{index}]")
    return problems


MAX_DOCUMENT_DEPTH = MAX_DEPTH
MAX_DOCUMENT_VALUES = MAX_VALUES


def check_document_shape(
    value: Any, *, max_depth: int = MAX_DOCUMENT_DEPTH, max_values: int = MAX_DOCUMENT_VALUES
) -> None:
    """Refuse a parsed document nested deeper than `max_depth`, holding more than `max_values` values
    (YAML aliases count each time they are used) or a string UTF-8 cannot encode
    (`gl_common.documents`). It runs before anything recursive touches the document."""
    problem = json_shape_problem(value, max_depth=max_depth, max_values=max_values)
    if problem is not None:
        raise DagValidationError([("", f"document {problem}")])


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_plain(child) for child in value]
    return value


def load_document(text: str | bytes, fmt: Literal["json", "yaml"] = "json") -> Any:
    """Parse JSON or YAML, refusing duplicate keys (a duplicate node id is reported as such)."""
    try:
        if fmt == "json":
            document = json.loads(text, object_pairs_hook=_pairs_hook)
        else:
            document = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DagValidationError([("", f"not valid JSON: {exc}")]) from None
    except yaml.YAMLError as exc:
        raise DagValidationError([("", f"not valid YAML: {exc}")]) from None
    except RecursionError:
        raise DagValidationError([("", f"document nested deeper than {MAX_DOCUMENT_DEPTH} levels")]) from None
    check_document_shape(document)
    problems = _duplicate_problems(document, "")
    if problems:
        raise DagValidationError(problems)
    return _plain(document)


def parse_dag(text: str | bytes, fmt: Literal["json", "yaml"] = "json") -> DagDefinition:
    """Parse and validate a DAG document (JSON by default, YAML with `fmt="yaml"`)."""
    return DagDefinition.from_document(load_document(text, fmt))


def deep_merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge used by partial DAG updates: mappings merge, everything else replaces."""
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out

"""DAG model validation and level planning (pure, no I/O)."""

from __future__ import annotations

import json

import pytest

from orchestrator_core.dag import DagDefinition, find_cycle, parse_dag
from orchestrator_core.errors import DagValidationError


def _problems(document: object, fmt: str = "json") -> list[tuple[str, str]]:
    text = document if isinstance(document, str) else json.dumps(document)
    with pytest.raises(DagValidationError) as info:
        parse_dag(text, fmt)  # type: ignore[arg-type]
    return info.value.problems


def test_levels_follow_the_longest_dependency_path_and_are_sorted() -> None:
    dag = DagDefinition.from_document(
        {
            "dag_id": "d",
            "nodes": {
                "z": {"agent_id": "e"},
                "a": {"agent_id": "e"},
                "m": {"agent_id": "e", "depends_on": ["a"]},
                "b": {"agent_id": "e", "depends_on": ["a", "m"]},
                "c": {"agent_id": "e", "depends_on": ["z"]},
            },
        }
    )
    assert dag.levels() == [["a", "z"], ["c", "m"], ["b"]]


def test_list_form_and_yaml_form_normalise_to_the_mapping() -> None:
    yaml_text = """
dag_id: report
version: 3
on_failure: continue
nodes:
  - node_id: a
    agent_id: builtin.echo
  - node_id: b
    agent_id: builtin.echo
    depends_on: [a]
    retry_policy: {max_retries: 2, strategy: linear, retryable_exceptions: [ConnectionError]}
"""
    dag = parse_dag(yaml_text, "yaml")
    assert list(dag.nodes) == ["a", "b"] and dag.nodes["b"].node_id == "b"
    assert dag.nodes["b"].retry_policy.retryable_exceptions == ("ConnectionError",)
    assert dag.version == 3 and dag.on_failure == "continue"
    assert DagDefinition.from_document(dag.to_document()) == dag


def test_cycle_is_named_in_order() -> None:
    problems = _problems(
        {
            "dag_id": "d",
            "nodes": {
                "start": {"agent_id": "e"},
                "a": {"agent_id": "e", "depends_on": ["start", "c"]},
                "b": {"agent_id": "e", "depends_on": ["a"]},
                "c": {"agent_id": "e", "depends_on": ["b"]},
            },
        }
    )
    assert problems == [("nodes.a.depends_on", "cycle a -> c -> b -> a")]


def test_find_cycle_on_acyclic_graph_is_empty() -> None:
    assert find_cycle({"a": [], "b": ["a"], "c": ["a", "b"]}) == []


def test_unknown_dependency_names_the_field() -> None:
    problems = _problems({"dag_id": "d", "nodes": {"a": {"agent_id": "e", "depends_on": ["ghost"]}}})
    assert problems == [("nodes.a.depends_on[0]", "unknown dependency 'ghost'")]


def test_self_dependency() -> None:
    problems = _problems({"dag_id": "d", "nodes": {"a": {"agent_id": "e", "depends_on": ["a"]}}})
    assert problems == [("nodes.a.depends_on[0]", "node 'a' depends on itself")]


def test_duplicate_node_id_in_json_mapping() -> None:
    text = '{"dag_id": "d", "nodes": {"a": {"agent_id": "e"}, "a": {"agent_id": "f"}}}'
    assert _problems(text) == [("nodes", "duplicate node id 'a'")]


def test_duplicate_node_id_in_yaml_mapping() -> None:
    text = "dag_id: d\nnodes:\n  a: {agent_id: e}\n  a: {agent_id: f}\n"
    assert _problems(text, "yaml") == [("nodes", "duplicate node id 'a'")]


def test_duplicate_node_id_in_list_form() -> None:
    problems = _problems(
        {"dag_id": "d", "nodes": [{"node_id": "a", "agent_id": "e"}, {"node_id": "a", "agent_id": "e"}]}
    )
    assert problems == [("nodes[1].node_id", "duplicate node id 'a'")]


@pytest.mark.parametrize(
    ("policy", "field", "fragment"),
    [
        ({"retry_policy": {"strategy": "random"}}, "nodes.a.retry_policy.strategy", "exponential"),
        ({"retry_policy": {"max_retries": -1}}, "nodes.a.retry_policy.max_retries", "greater than or equal"),
        ({"retry_policy": {"base_delay": 5, "max_delay": 1}}, "nodes.a.retry_policy", "max_delay must be >="),
        (
            {"retry_policy": {"retryable_exceptions": ["not a name"]}},
            "nodes.a.retry_policy.retryable_exceptions",
            "not an exception",
        ),
        (
            {"timeout_policy": {"timeout_seconds": 0}},
            "nodes.a.timeout_policy.timeout_seconds",
            "greater than 0",
        ),
        (
            {"timeout_policy": {"on_timeout": "retry"}},
            "nodes.a.timeout_policy.on_timeout",
            "'fail', 'skip' or 'compensate'",
        ),
        (
            {"timeout_policy": {"timeout_seconds": 1, "extra": 1}},
            "nodes.a.timeout_policy.extra",
            "Extra inputs",
        ),
    ],
)
def test_bad_policy_fields_are_named(policy: dict[str, object], field: str, fragment: str) -> None:
    problems = _problems({"dag_id": "d", "nodes": {"a": {"agent_id": "e", **policy}}})
    assert len(problems) == 1
    assert problems[0][0] == field
    assert fragment in problems[0][1]


def test_bad_dag_level_fields() -> None:
    problems = _problems(
        {"dag_id": "d", "on_failure": "explode", "max_parallel_nodes": 0, "nodes": {"a": {"agent_id": "e"}}}
    )
    assert {p[0] for p in problems} == {"on_failure", "max_parallel_nodes"}


def test_empty_dag_and_not_json() -> None:
    assert _problems({"dag_id": "d", "nodes": {}}) == [("nodes", "a DAG needs at least one node")]
    assert _problems("{not json")[0][1].startswith("not valid JSON")
    assert _problems("[1, 2]")[0][1].startswith("a DAG must be an object")

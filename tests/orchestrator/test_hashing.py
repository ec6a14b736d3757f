"""The hashing shortcuts on the engine's hot path give the same bytes as the generic canonical JSON."""

from __future__ import annotations

import json
import random
import string
from typing import Any

import pytest

from orchestrator_core.provenance import input_hash, record_hash
from orchestrator_core.store import canonical_json, sha256_hex
from tests.orchestrator.conftest import Harness

ALPHABET = string.printable + '"\\\x00\x1f\u2028\u00e9\U0001f600'


def _generic_record_hash(*fields: Any) -> str:
    names = ("seq", "node_id", "input_hash", "output_hash", "status", "prev_hash")
    return sha256_hex(canonical_json(dict(zip(names, fields, strict=True))))


def test_record_hash_equals_the_canonical_json_of_its_fields() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        texts = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 16))) for _ in range(5)]
        fields = [rng.randint(0, 10**15), *texts]
        assert record_hash(*fields) == _generic_record_hash(*fields)


@pytest.mark.parametrize(
    "value",
    [None, 0, -1.5, 1e300, 'x\u2028"', [1, [], {}], {"b": [True, None], "a": {"\u00e9": 2}}, {2: 1, 1: 2}],
)
def test_canonical_json_matches_json_dumps(value: Any) -> None:
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    assert canonical_json(value) == expected


def test_canonical_json_errors_are_unchanged() -> None:
    with pytest.raises(ValueError):
        canonical_json(float("nan"))
    with pytest.raises(TypeError):
        canonical_json({"a": object()})
    circular: list[Any] = []
    circular.append(circular)
    with pytest.raises(ValueError, match="Circular"):
        canonical_json(circular)
    assert canonical_json({"a": [1]}) == '{"a":[1]}'  # still fine after the errors


async def test_node_input_hashes_follow_the_definition(harness: Harness) -> None:
    """Each node's `input_hash` is `provenance.input_hash` of its agent, the run input's hash, its params
    and its dependencies' output hashes, as recorded in the chain (the executor builds it faster)."""
    dag = {
        "dag_id": "hashes",
        "nodes": {
            "a": {"agent_id": "builtin.echo", "params": {"note": 'caf\u00e9 "q"', "n": [1, 2.5]}},
            "b.1": {"agent_id": "builtin.echo", "depends_on": ["a"]},
            "c-2": {"agent_id": "test.record", "depends_on": ["a"], "params": {"value": 3}},
            "d": {"agent_id": "builtin.echo", "depends_on": ["c-2", "b.1", "a"]},
        },
    }
    input_data = {"year": 2025, "\u00e9": None}
    record = await harness.run(dag, input_data, checkpoint_enabled=False)
    assert record.status == "completed"
    trace = await harness.engine.get_trace(record.execution_id)
    chain = {e.node_id: e for e in (await harness.engine.get_provenance(record.execution_id)).chain}
    run_input = sha256_hex(canonical_json(input_data))
    for node_id, node in dag["nodes"].items():
        upstream = {dep: chain[dep].output_hash for dep in node.get("depends_on", [])}
        expected = input_hash(node["agent_id"], run_input, node.get("params", {}), upstream)
        assert trace.node_traces[node_id].input_hash == chain[node_id].input_hash == expected, node_id

"""The hashing shortcuts on the engine's hot path give the same bytes as the plain definitions.

The definitions (docs/architecture.md): canonical JSON is `json.dumps(sort_keys=True, separators=(",",
":"), ensure_ascii=False, allow_nan=False)`; a node's input hash and a provenance record's hash are the
SHA-256 of the canonical JSON of their documents. Generated values (hypothesis) check that
`orchestrator_core.hashing` gives exactly those bytes.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator_core.hashing import InputHasher, canonical_json, input_hash, record_hash, sha256_hex
from tests.orchestrator.conftest import Harness

ALPHABET = string.printable + '"\\\x00\x1f\u2028\u00e9\U0001f600'


def _plain_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _plain_sha256(value: Any) -> str:
    return hashlib.sha256(_plain_json(value).encode("utf-8")).hexdigest()


# Text that UTF-8 can encode (no lone surrogates), with the characters JSON escapes well represented.
TEXT = st.text(
    st.characters(exclude_categories=["Cs"]) | st.sampled_from('"\\\x00\x1f\x7f\u2028'), max_size=12
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=20,
)
HASHES = st.text("0123456789abcdef", min_size=64, max_size=64) | TEXT


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_canonical_json_is_json_dumps_with_the_documented_settings(value: Any) -> None:
    assert canonical_json(value) == _plain_json(value)


@settings(max_examples=300, deadline=None)
@given(TEXT, HASHES, JSON_VALUES, st.dictionaries(TEXT, HASHES, max_size=5))
def test_input_hash_is_the_hash_of_its_documented_document(
    agent_id: str, run_input: str, params: Any, upstream: dict[str, str]
) -> None:
    document = {"agent_id": agent_id, "input": run_input, "params": params, "upstream": upstream}
    expected = _plain_sha256(document)
    assert input_hash(agent_id, run_input, params, upstream) == expected
    assert InputHasher(agent_id, params, list(upstream))(run_input, upstream) == expected


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**63), TEXT, HASHES, HASHES, TEXT, HASHES)
def test_record_hash_is_the_hash_of_its_documented_fields(
    seq: int, node_id: str, in_hash: str, out_hash: str, status: str, prev: str
) -> None:
    fields = {
        "seq": seq,
        "node_id": node_id,
        "input_hash": in_hash,
        "output_hash": out_hash,
        "status": status,
        "prev_hash": prev,
    }
    assert record_hash(seq, node_id, in_hash, out_hash, status, prev) == _plain_sha256(fields)


def test_hashes_of_values_that_a_fast_json_library_would_write_differently() -> None:
    """Small floats keep Python's exponent form, big integers and non-string keys are accepted: the
    canonical form is json's, byte for byte (why the module does not use orjson)."""
    assert canonical_json({"a": [1.5e-07, 1e300, 2**70]}) == '{"a":[1.5e-07,1e+300,1180591620717411303424]}'
    assert canonical_json({2: 1, 1: 2}) == '{"1":2,"2":1}'
    assert sha256_hex("null") == _plain_sha256(None)


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

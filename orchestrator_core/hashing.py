"""Canonical JSON and the hashes built on it: one implementation of each, used everywhere.

Where it sits: at the bottom of the package, beside `records.py`. `provenance.py` builds its chain
from `record_hash` and `input_hash`; the executor hashes each node's input through an `InputHasher`
prepared once per DAG version (`plan.RunPlan`); the store encodes what it stores with `canonical_json`.

The contract (docs/architecture.md, "Orchestrator REST API", provenance):

- `canonical_json(value)` is exactly `json.dumps(value, sort_keys=True, separators=(",", ":"),
  ensure_ascii=False, allow_nan=False)`: keys sorted, no spaces, non-ASCII characters as they are,
  NaN and infinities refused (`ValueError`), values JSON cannot hold refused (`TypeError`).
- `sha256_hex(text)` is the SHA-256 of the text's UTF-8 bytes, as lowercase hex.
- A node's input hash is `sha256_hex(canonical_json({"agent_id", "input": <hash of the run's
  input_data>, "params", "upstream": {dependency: its output hash}}))`.
- A provenance record's hash is `sha256_hex(canonical_json({"seq", "node_id", "input_hash",
  "output_hash", "status", "prev_hash"}))`.

The two per-node hashes are assembled from pre-encoded pieces instead of encoding a dict each time
(they run once per node of every run); `tests/orchestrator/test_hashing.py` checks on generated values
that the assembly and the plain definition above agree byte for byte.

Why not orjson: it writes `1.5e-7` where `json` writes `1.5e-07`, refuses integers beyond 64 bits and
non-string keys, so its output is not this canonical form, and chains stored by earlier versions would
stop verifying. Only the public `json.JSONEncoder` API is used here (its `encode` of a `str` is the
plain string escape).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

# The JSON text of one string (quotes and escapes included): what `canonical_json` writes for a `str`.
_string = json_string = _CANONICAL.encode


def canonical_json(value: Any) -> str:
    """The one JSON encoding used for hashing and storing: sorted keys, no spaces, no NaN."""
    return _CANONICAL.encode(value)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


NO_OUTPUT_HASH = sha256_hex("null")
"""The output hash of a node without output (`None`), and of a node that has not produced one."""


class InputHasher:
    """The input hash of one node, prepared from the parts that belong to the DAG version.

    `InputHasher(agent_id, params, dependencies)(run_input_hash, output_hashes)` equals
    `input_hash(agent_id, run_input_hash, params, {dep: output_hashes[dep] for dep in dependencies})`:
    the agent id and params are encoded once, and each run only adds the run input's hash and the
    dependencies' output hashes (`output_hashes` may hold other nodes' hashes too).
    """

    __slots__ = ("_head", "_keys", "_middle")

    def __init__(self, agent_id: str, params: Any, dependencies: Iterable[str]) -> None:
        self._head = '{"agent_id":' + canonical_json(agent_id) + ',"input":'
        self._middle = ',"params":' + canonical_json(params) + ',"upstream":{'
        # Sorted like `sort_keys` sorts them; each key pre-encoded with its colon.
        self._keys = [(dep, _string(dep) + ":") for dep in sorted(dependencies)]

    def __call__(self, run_input_hash: str, output_hashes: Mapping[str, str]) -> str:
        return self.with_encoded_input(json_string(run_input_hash), output_hashes)

    def with_encoded_input(self, run_input_json: str, output_hashes: Mapping[str, str]) -> str:
        """`self(run_input_hash, ...)` given `json_string(run_input_hash)`, which a run encodes once
        for all its nodes."""
        upstream = ",".join([key + _string(output_hashes[dep]) for dep, key in self._keys])
        return sha256_hex(f"{self._head}{run_input_json}{self._middle}{upstream}}}}}")


def input_hash(agent_id: str, input_data_hash: str, params: Any, upstream: Mapping[str, str]) -> str:
    """A node's `input_hash`: SHA-256 of the canonical JSON of its agent, the run input's hash, its
    params, and the output hash of each dependency (`upstream`: node id → output hash). Dependencies
    enter by the hash of their output (what their provenance records carry), not by the output itself:
    the same inputs give the same hash, and a large output is not encoded again for every node
    downstream of it."""
    if all(type(key) is str and type(value) is str for key, value in upstream.items()):
        return InputHasher(agent_id, params, upstream)(input_data_hash, upstream)
    document = {"agent_id": agent_id, "input": input_data_hash, "params": params, "upstream": upstream}
    return sha256_hex(canonical_json(document))


def record_hash(
    seq: int, node_id: str, input_hash: str, output_hash: str, status: str, prev_hash: str
) -> str:
    """A provenance record's `hash`: SHA-256 of the canonical JSON of its other fields."""
    if (
        type(seq) is int
        and type(node_id) is str
        and type(input_hash) is str
        and type(output_hash) is str
        and type(status) is str
        and type(prev_hash) is str
    ):
        # The canonical JSON of the fields below (keys in sorted order), assembled directly.
        return sha256_hex(
            f'{{"input_hash":{_string(input_hash)},"node_id":{_string(node_id)},'
            f'"output_hash":{_string(output_hash)},"prev_hash":{_string(prev_hash)},'
            f'"seq":{int.__repr__(seq)},"status":{_string(status)}}}'
        )
    return sha256_hex(
        canonical_json(
            {
                "seq": seq,
                "node_id": node_id,
                "input_hash": input_hash,
                "output_hash": output_hash,
                "status": status,
                "prev_hash": prev_hash,
            }
        )
    )

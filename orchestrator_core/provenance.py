"""Provenance: a hash chain over the node records of one execution, and its verification.

Where it sits: `levels.LevelRunner` appends one record per node when the node's level is sealed (after the
level's barrier, in node-id order), through `ChainBuilder`; `checkpoints.RunWriter` persists them with
the execution's fencing token; `engine.Engine.get_provenance` reads and `verify`s the chain.

Each record is `(seq, node_id, input_hash, output_hash, status, prev_hash)` and its `hash` is the
SHA-256 of the canonical JSON of those fields (`hashing.record_hash`; a node's `input_hash` is
`hashing.input_hash`). The first record's `prev_hash` is the genesis hash of
the run: SHA-256 over the DAG id and the canonical input data — no execution id, no timestamps — so
the same DAG and input give the same chain byte for byte in any process. Records are sealed per level
in sorted node order, never in completion order, for the same reason; a resumed run seals the levels it
finishes, so the chain continues across the resume exactly as if the run had never stopped.

`verify` finds: an altered record (its hash no longer matches its fields), a removed or reordered
record (a `seq` gap or a `prev_hash` that is not the previous record's hash), and a removed tail (the
chain's last hash/length differ from the head recorded on the execution row).
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from typing import Any

from orchestrator_core.hashing import canonical_json, record_hash, sha256_hex
from orchestrator_core.records import ProvenanceEntry


def genesis_hash(dag_id: str, input_data: Any) -> str:
    """The `prev_hash` of the first record of a run of `dag_id` on `input_data`."""
    return sha256_hex(
        canonical_json({"genesis": "gl-orchestrator/provenance/v1", "dag_id": dag_id, "input": input_data})
    )


_NO_NODES: frozenset[str] = frozenset()


class ChainBuilder:
    """Appends records to a run's chain, continuing from the records already stored."""

    __slots__ = ("_continued", "_head", "entries", "genesis")

    def __init__(self, genesis: str, existing: Sequence[ProvenanceEntry] = ()) -> None:
        self.genesis = genesis
        self.entries: list[ProvenanceEntry] = list(existing)
        # The node ids of the records continued from (a resume's); none for a run's first start.
        self._continued = frozenset(entry.node_id for entry in self.entries) or _NO_NODES
        self._head = self.entries[-1].hash if self.entries else genesis

    @property
    def head(self) -> str:
        return self._head

    def continued_nodes(self) -> Set[str]:
        """Node ids that have a record in the chain this builder continued from (the records stored
        before a resume), not in the records appended since: a node restored from its checkpoint is
        sealed again only if the run before the resume had not sealed it."""
        return self._continued

    def append(self, node_id: str, input_hash: str, output_hash: str, status: str) -> ProvenanceEntry:
        seq = len(self.entries) + 1
        prev = self._head
        self._head = digest = record_hash(seq, node_id, input_hash, output_hash, status, prev)
        # `tuple.__new__` itself: the named tuple's own `__new__` is a Python function, a frame per node.
        entry = tuple.__new__(ProvenanceEntry, (seq, node_id, input_hash, output_hash, status, prev, digest))
        self.entries.append(entry)
        return entry


def verify(
    entries: Sequence[ProvenanceEntry], genesis: str, *, head: str | None = None, length: int | None = None
) -> list[str]:
    """Problems found in the chain (empty when it verifies)."""
    problems: list[str] = []
    prev = genesis
    for index, entry in enumerate(entries):
        expected_seq = index + 1
        if entry.seq != expected_seq:
            problems.append(
                f"record {index}: seq {entry.seq}, expected {expected_seq} (record removed or reordered)"
            )
        if entry.prev_hash != prev:
            problems.append(
                f"record seq {entry.seq} ({entry.node_id}): prev_hash does not match the previous record "
                "(record removed, inserted or reordered)"
            )
        recomputed = record_hash(
            entry.seq, entry.node_id, entry.input_hash, entry.output_hash, entry.status, entry.prev_hash
        )
        if recomputed != entry.hash:
            problems.append(
                f"record seq {entry.seq} ({entry.node_id}): hash does not match its fields (altered)"
            )
        prev = entry.hash
    if length is not None and length != len(entries):
        problems.append(
            f"chain has {len(entries)} records but the execution recorded {length} (records removed)"
        )
    if head is not None and entries and entries[-1].hash != head:
        problems.append("last record's hash differs from the head recorded on the execution")
    if head is None and length and not entries:
        problems.append("chain is empty but the execution recorded records")
    return problems

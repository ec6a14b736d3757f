"""Provenance chain verification on a real store: an untouched chain verifies; an altered, removed,
reordered or truncated record is detected (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from orchestrator_core.provenance import ChainBuilder, genesis_hash, verify
from orchestrator_core.store.schema import provenance
from tests.orchestrator.conftest import Harness

DAG = {
    "dag_id": "chain",
    "nodes": {
        "a": {"agent_id": "test.record"},
        "b": {"agent_id": "test.record", "depends_on": ["a"]},
        "c": {"agent_id": "test.record", "depends_on": ["a"]},
        "d": {"agent_id": "test.record", "depends_on": ["b", "c"]},
    },
}


async def _run(harness: Harness) -> str:
    record = await harness.run(DAG, {"year": 2025})
    assert record.status == "completed"
    report = await harness.engine.get_provenance(record.execution_id)
    assert report.chain_valid and report.problems == []
    assert [e.seq for e in report.chain] == [1, 2, 3, 4]
    return str(record.execution_id)


async def _sql(harness: Harness, statement: Any) -> None:
    async with harness.engine.store.engine.begin() as conn:
        await conn.execute(statement)


def _row(execution_id: str, seq: int) -> Any:
    return sa.and_(provenance.c.execution_id == execution_id, provenance.c.seq == seq)


async def test_altered_record_is_detected(harness: Harness) -> None:
    execution_id = await _run(harness)
    await _sql(harness, provenance.update().where(_row(execution_id, 2)).values(output_hash="0" * 64))
    report = await harness.engine.get_provenance(execution_id)
    assert not report.chain_valid
    assert any("seq 2" in p and "altered" in p for p in report.problems)


async def test_removed_record_is_detected(harness: Harness) -> None:
    execution_id = await _run(harness)
    await _sql(harness, provenance.delete().where(_row(execution_id, 2)))
    report = await harness.engine.get_provenance(execution_id)
    assert not report.chain_valid
    assert any("removed" in p for p in report.problems)


async def test_reordered_records_are_detected(harness: Harness) -> None:
    execution_id = await _run(harness)
    # swap the contents of records 2 and 3 while keeping each seq: an order change
    async with harness.engine.store.engine.begin() as conn:
        rows = {
            r.seq: r
            for r in (
                await conn.execute(provenance.select().where(provenance.c.execution_id == execution_id))
            ).all()
        }
        for seq, other in ((2, 3), (3, 2)):
            src = rows[other]
            await conn.execute(
                provenance.update()
                .where(_row(execution_id, seq))
                .values(
                    node_id=src.node_id,
                    input_hash=src.input_hash,
                    output_hash=src.output_hash,
                    status=src.status,
                    prev_hash=src.prev_hash,
                    hash=src.hash,
                )
            )
    report = await harness.engine.get_provenance(execution_id)
    assert not report.chain_valid
    assert any("reordered" in p for p in report.problems)


async def test_truncated_tail_is_detected(harness: Harness) -> None:
    execution_id = await _run(harness)
    await _sql(harness, provenance.delete().where(_row(execution_id, 4)))
    report = await harness.engine.get_provenance(execution_id)
    assert not report.chain_valid
    assert any("records removed" in p for p in report.problems)


def test_chain_hashes_do_not_depend_on_the_execution_id_or_time() -> None:
    genesis = genesis_hash("chain", {"year": 2025})
    one, two = ChainBuilder(genesis), ChainBuilder(genesis)
    for chain in (one, two):
        chain.append("a", "1" * 64, "2" * 64, "completed")
        chain.append("b", "3" * 64, "4" * 64, "failed")
    assert one.entries == two.entries
    assert verify(one.entries, genesis) == []
    assert verify(one.entries, genesis_hash("chain", {"year": 2024})) != []

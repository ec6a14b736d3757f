"""Renderers: JSON (round-trips), Markdown (table, escaping), terminal table (aligned, wrapped)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from watchdog.diagnostics.render import to_dict, to_json, to_markdown, to_table
from watchdog_sdk.diagnosis import Diagnosis, Finding, StepStatus

STARTED = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
DONE = datetime(2026, 3, 1, 12, 0, 2, 500000, tzinfo=UTC)


def _diagnosis(summary3: str = "node scope1 running for 1140s, past its own 120s timeout") -> Diagnosis:
    return Diagnosis(
        execution_id="ex-1",
        started_at=STARTED,
        completed_at=DONE,
        findings=[
            Finding(
                step=1, name="execution", status=StepStatus.PROBLEM, summary="900s over", duration_ms=12.4
            ),
            Finding(
                step=3, name="bottleneck", status=StepStatus.PROBLEM, summary=summary3, evidence={"n": 1}
            ),
            Finding(step=6, name="locks", status=StepStatus.UNKNOWN, summary="Redis not configured"),
            Finding(step=8, name="checkpoints", status=StepStatus.OK, summary="a | b", duration_ms=1234.0),
        ],
        likely_cause="agent_unresponsive",
        cause_evidence=["step 3 (bottleneck): node scope1 past its timeout"],
        dag_id="emissions",
        stuck_node_id="scope1",
        agent_id="emissions.scope1",
    )


def test_json_round_trips() -> None:
    diagnosis = _diagnosis()
    text = to_json(diagnosis)
    assert Diagnosis.model_validate_json(text) == diagnosis
    data = json.loads(text)
    assert data["likely_cause"] == "agent_unresponsive" and data["findings"][1]["evidence"] == {"n": 1}
    assert to_dict(diagnosis)["findings"][0]["status"] == "problem"


def test_markdown_has_facts_evidence_and_a_row_per_step() -> None:
    md = to_markdown(_diagnosis())
    assert "- **stuck node:** `scope1`" in md and "- **likely cause:** `agent_unresponsive`" in md
    assert "- step 3 (bottleneck): node scope1 past its timeout" in md
    assert "| 1 | execution | PROBLEM | 900s over |" in md
    assert "| 8 | checkpoints | OK | a \\| b |" in md  # pipes in a summary do not break the table
    assert "in 2.5s" in md


def test_table_columns_are_aligned() -> None:
    lines = to_table(_diagnosis()).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("STEP"))
    rows = lines[header : header + 5]
    status_col = rows[0].index("STATUS")
    summary_col = rows[0].index("SUMMARY")
    assert [row[status_col:].split()[0] for row in rows] == ["STATUS", "PROBLEM", "PROBLEM", "UNKNOWN", "OK"]
    assert {row[summary_col - 2 : summary_col] for row in rows} == {"  "}
    assert rows[1][summary_col:] == "900s over" and rows[4][summary_col:] == "a | b"
    assert rows[4].split()[3] == "1234ms"
    assert lines[0] == "execution     ex-1" and lines[4] == "likely cause  agent_unresponsive"


def test_table_wraps_long_summaries_under_the_summary_column() -> None:
    long = " ".join(["word"] * 60)
    lines = to_table(_diagnosis(summary3=long), summary_width=40).splitlines()
    header = next(line for line in lines if line.startswith("STEP"))
    summary_col = header.index("SUMMARY")
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("3 "))
    continuation = lines[start + 1]
    assert continuation[:summary_col].strip() == "" and continuation[summary_col:].startswith("word")
    assert all(len(line) <= summary_col + 40 for line in lines[start : start + 3])
    parts = [lines[start][summary_col:]]
    for line in lines[start + 1 :]:
        if line[:summary_col].strip():
            break
        parts.append(line[summary_col:])
    wrapped = " ".join(parts)
    assert wrapped.split().count("word") == 60


def test_table_is_plain_ascii() -> None:
    assert to_table(_diagnosis()).isascii()

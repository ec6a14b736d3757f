"""Structured JSON run logs and the per-execution ring buffer."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from gl_common.logs import JsonFormatter
from orchestrator_core.events import LogEvent, NodeAttemptEvent, NodeTimeoutEvent
from orchestrator_core.logs import RUN_LOGGER, LogObserver, RunLog

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(RUN_LOGGER)
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(old)


def test_lines_are_json_with_run_ids(captured: io.StringIO) -> None:
    run_log = RunLog()
    LogObserver(run_log).node_timeout(
        NodeTimeoutEvent("e1", "d", "scope2", "calc.scope2", 1, 5.0, "fail", T0)
    )
    line = json.loads(captured.getvalue().strip())
    assert line["execution_id"] == "e1"
    assert line["node_id"] == "scope2"
    assert line["agent_id"] == "calc.scope2"
    assert line["level"] == "WARNING"
    assert "timeout" in line["message"]
    assert line["ts"].endswith("Z")


def test_extra_fields_may_not_break_logging(captured: io.StringIO) -> None:
    run_log = RunLog()
    LogObserver(run_log).log(LogEvent("info", "agent says", T0, "e1", "n1", "a1", {"name": "x", "rows": 3}))
    line = json.loads(captured.getvalue().strip())
    assert line["field_name"] == "x" and line["rows"] == 3


def test_ring_buffer_per_execution_and_node_filter() -> None:
    run_log = RunLog(lines_per_execution=3)
    observer = LogObserver(run_log)
    for attempt in range(1, 5):
        observer.node_attempt_started(NodeAttemptEvent("e1", "d", f"n{attempt % 2}", "a", attempt, T0))
    observer.node_attempt_started(NodeAttemptEvent("e2", "d", "other", "a", 1, T0))
    lines = run_log.lines("e1")
    assert [line["attempt"] for line in lines] == [2, 3, 4]
    assert [line["attempt"] for line in run_log.lines("e1", node_id="n0")] == [2, 4]
    assert [line["attempt"] for line in run_log.lines("e1", limit=1)] == [4]
    assert run_log.lines("unknown") == []
    assert run_log.lines("e2")[0]["node_id"] == "other"


def test_buffer_keeps_bounded_number_of_executions() -> None:
    run_log = RunLog(max_executions=2)
    for execution_id in ("e1", "e2", "e3"):
        run_log.info("hello", execution_id=execution_id)
    assert run_log.lines("e1") == []
    assert len(run_log.lines("e2")) == 1 and len(run_log.lines("e3")) == 1

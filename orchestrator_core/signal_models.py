"""The REST API's models of the stuck-run signals (issue 16): progress reports, node-duration history
and the running nodes of every replica, with the running-nodes cursor.

Where it sits: beside `api_models.py` (which takes `NormalDurationOut` for the trace's nodes);
`api_signals.py` declares the routes with these models, so what is documented, accepted and answered
is one definition (docs/architecture.md "Stuck-run signals").
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from gl_common.http import bad_request, decode_cursor, encode_cursor
from gl_common.ids import DagId
from orchestrator_core.signals import MAX_PROGRESS_MESSAGE
from orchestrator_core.store.signals import RunningFilter, RunningPosition

DEFAULT_RUNNING_PAGE = 500
MAX_RUNNING_PAGE = 5000
MAX_CURSOR_LENGTH = 512
_CURSOR_PURPOSE = "gl-orchestrator running nodes"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProgressRequest(_Request):
    """`POST /executions/{execution_id}/nodes/{node_id}/progress` (no body: a report without detail)."""

    # Strict: `true` or "0.5" are refused rather than read as numbers.
    model_config = ConfigDict(extra="forbid", strict=True)

    message: (
        Annotated[
            str,
            StringConstraints(max_length=MAX_PROGRESS_MESSAGE, pattern=r"^[^\x00-\x08\x0b-\x1f\x7f]*$"),
        ]
        | None
    ) = Field(None, description="what the agent is doing: at most 500 characters, no control character")
    fraction: float | None = Field(
        None, ge=0, le=1, allow_inf_nan=False, description="how much of the work is done, 0 to 1"
    )


class ProgressOut(_Answer):
    execution_id: str
    node_id: str
    progress_at: datetime
    reports: int = Field(
        description="the node's progress reports as far as the answering replica knows (GET "
        "/running-nodes has every replica's)"
    )


class NormalDurationOut(_Answer):
    """A node's history of successful durations (null: none yet)."""

    count: int
    p50_seconds: float | None
    p95_seconds: float | None
    p99_seconds: float | None


class NodeDurationOut(NormalDurationOut):
    node_id: str
    agent_id: str


class NodeDurations(_Answer):
    """`GET /dags/{dag_id}/node-durations`: the history of every node (and agent) of the DAG."""

    dag_id: str
    nodes: list[NodeDurationOut]


class RunningNodesQuery(_Request):
    """`GET /running-nodes`: filters, cursor and page size."""

    dag_id: DagId | None = None
    started_before: AwareDatetime | None = Field(
        None, description="nodes that started running before (ISO 8601 with offset)"
    )
    cursor: Annotated[str, StringConstraints(min_length=1, max_length=MAX_CURSOR_LENGTH)] | None = Field(
        None, description="next_cursor of the previous page (same filters)"
    )
    limit: int = Field(DEFAULT_RUNNING_PAGE, ge=1, le=MAX_RUNNING_PAGE, description="page size")

    def to_filter(self) -> RunningFilter:
        return RunningFilter(dag_id=self.dag_id, started_before=self.started_before)

    def _filters(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"cursor", "limit"}, exclude_none=True)

    def position(self) -> RunningPosition | None:
        """Where `cursor` says the page starts (None: from the first); 400 naming `cursor` else."""
        if self.cursor is None:
            return None
        data = decode_cursor(self.cursor, self._filters(), purpose=_CURSOR_PURPOSE)
        try:
            at = datetime.fromisoformat(data["at"])
            execution_id, node_id = data["e"], data["n"]
        except (KeyError, TypeError, ValueError):
            at, execution_id = None, None
        if (
            at is None
            or at.tzinfo is None
            or not isinstance(execution_id, str)
            or not isinstance(node_id, str)
        ):
            raise bad_request("cursor: not a cursor of this listing (use next_cursor as given)", "cursor")
        return RunningPosition(at, execution_id, node_id)

    def next_cursor(self, position: RunningPosition | None) -> str | None:
        if position is None:
            return None
        fields = {"at": position.at.isoformat(), "e": position.execution_id, "n": position.node_id}
        return encode_cursor(fields, self._filters(), purpose=_CURSOR_PURPOSE)


class RunningNodeOut(_Answer):
    execution_id: str
    dag_id: str
    node_id: str
    agent_id: str
    attempt: int
    started_at: datetime
    last_progress_at: datetime | None
    progress_message: str | None
    progress_fraction: float | None
    progress_reports: int
    normal_duration: NormalDurationOut | None


class RunningNodesPage(_Answer):
    """`GET /running-nodes`: one page (oldest started first), the cursor of the next one (null: the
    last page) and how many running nodes match in all."""

    items: list[RunningNodeOut]
    next_cursor: str | None
    total: int

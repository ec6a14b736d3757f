"""The id formats both services accept: one definition of an execution id, a DAG id, a node id and an
agent id, and of printable text.

Where it sits: `orchestrator_core.api_models` validates the ids of its routes with these types, and
the watchdog validates the same ids where they reach it (`watchdog.api_models` for its routes,
`watchdog.intake` for the labels of an Alertmanager alert), so an id the orchestrator could have made
is accepted by the watchdog and anything else is refused at both boundaries with the same message.

An id is 1 to its maximum length of `A-Z a-z 0-9 _ . : -`, starting with a letter or digit: no space,
no slash, no control character or NUL, nothing a path, a log line, a Redis key or a column could
misread. Execution ids are at most 64 characters, DAG, node and agent ids at most 128.
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import Field, StringConstraints

ID_CHARS: Final = "A-Za-z0-9_.:-"
EXECUTION_ID_MAX: Final = 64
DAG_ID_MAX: Final = 128
NODE_ID_MAX: Final = 128
AGENT_ID_MAX: Final = 128
# No C0 control character (NUL, CR, LF, TAB, ...) and no DEL.
PRINTABLE_PATTERN: Final = r"^[^\x00-\x1f\x7f]*$"


def id_pattern(max_length: int, first: str = "A-Za-z0-9", rest: str = ID_CHARS) -> str:
    """The regular expression of an id: one of `first`, then up to `max_length - 1` of `rest`."""
    return rf"^[{first}][{rest}]{{0,{max_length - 1}}}$"


def id_text(what: str, max_length: int) -> str:
    """How an id is described in documents and refusals."""
    return f"{what}: 1-{max_length} of A-Z a-z 0-9 _ . : -, starting with a letter or digit"


def _id(max_length: int) -> StringConstraints:
    return StringConstraints(pattern=id_pattern(max_length), max_length=max_length)


ExecutionId = Annotated[
    str, _id(EXECUTION_ID_MAX), Field(description=id_text("execution id", EXECUTION_ID_MAX))
]
DagId = Annotated[str, _id(DAG_ID_MAX), Field(description=id_text("DAG id", DAG_ID_MAX))]
NodeId = Annotated[str, _id(NODE_ID_MAX), Field(description=id_text("node id", NODE_ID_MAX))]
AgentId = Annotated[str, _id(AGENT_ID_MAX), Field(description=id_text("agent id", AGENT_ID_MAX))]


def printable(max_length: int, *, min_length: int = 0) -> StringConstraints:
    """Constraints of a text of printable characters (no control character, no NUL)."""
    return StringConstraints(min_length=min_length, max_length=max_length, pattern=PRINTABLE_PATTERN)

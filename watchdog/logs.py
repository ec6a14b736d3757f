"""The watchdog's log: JSON lines (or text) with the incident and execution a line is about.

`configure(level, format)` is called once by the CLI (`gl-watchdog serve`, the client commands); the
format is `gl_common.logs` (shared with the orchestrator: `ts`, `level`, `logger`, `message`, extra
fields, and `trace_id`/`span_id` inside a span). `incident_context()` marks what the current task is
working on; `watchdog.tracing.IncidentTracer.span` enters it for a diagnosis or a remediation, and
`IncidentFields` adds `incident_id` and `execution_id` to every line written meanwhile, so
`grep <execution_id>` (or a Loki query on the field) finds everything the watchdog did about a run.

Secrets are `SecretStr` in the settings and never passed to a log call; a value that is not JSON is
written as `str()`, which for a `SecretStr` is `**********`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final, TextIO

from gl_common.logs import configure_logging

INCIDENT_ID: Final[ContextVar[int | None]] = ContextVar("incident_id", default=None)
EXECUTION_ID: Final[ContextVar[str | None]] = ContextVar("execution_id", default=None)
# Libraries that log every request (httpx) or job run (APScheduler) at INFO: noise over the watchdog's
# own lines. Their failures reach the log through the clients' errors and the sweep report anyway.
CHATTY: Final = ("httpx", "apscheduler")


@contextmanager
def incident_context(incident_id: int | None, execution_id: str | None) -> Iterator[None]:
    """Lines logged in this block (by this task and the tasks it starts) name the incident and run."""
    incident_token = INCIDENT_ID.set(incident_id)
    execution_token = EXECUTION_ID.set(execution_id)
    try:
        yield
    finally:
        EXECUTION_ID.reset(execution_token)
        INCIDENT_ID.reset(incident_token)


class IncidentFields(logging.Filter):
    """Adds `incident_id` and `execution_id` of the current `incident_context` to a record (when set,
    and when the caller did not pass its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in (("incident_id", INCIDENT_ID), ("execution_id", EXECUTION_ID)):
            value = var.get()
            if value is not None and not hasattr(record, name):
                setattr(record, name, value)
        return True


def configure(level: str, log_format: str = "text", stream: TextIO | None = None) -> None:
    """Root logging as JSON lines (`log_format` "json") or text, with the incident fields."""
    configure_logging(level, stream, json_lines=log_format == "json", filters=[IncidentFields()])
    if logging.getLogger().getEffectiveLevel() >= logging.INFO:
        for chatty in CHATTY:
            logging.getLogger(chatty).setLevel(logging.WARNING)

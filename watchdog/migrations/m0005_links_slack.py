"""Migration 5: links and Slack. `incidents.alert_links`, what the opening alert said of itself (its
`runbook_url`, `summary` and `description` annotations and its `generatorURL`; NULL for sweep
incidents and those recorded before), and on `approvals` the Slack message of the prompt
(`slack_channel`, `slack_ts`: set when the bot posted it with chat.postMessage, so that every state
change can chat.update it; NULL in incoming-webhook mode).

Where it sits: one of the frozen migrations of `watchdog.migrations.SCHEMA`, after version 4.
Released: never edited.
"""

from __future__ import annotations

import sqlalchemy as sa

from gl_common.migrations import AddColumn, Migration
from watchdog.migrations.m0001_initial import JSON_TYPE


def _alert_links() -> sa.Column[object]:
    return sa.Column("alert_links", JSON_TYPE, nullable=True)


def _slack_channel() -> sa.Column[str]:
    return sa.Column("slack_channel", sa.String(64), nullable=True)


def _slack_ts() -> sa.Column[str]:
    return sa.Column("slack_ts", sa.String(32), nullable=True)


MIGRATION = Migration(
    5,
    "incidents.alert_links (runbook, summary, generatorURL); approvals.slack_channel/slack_ts",
    (
        AddColumn("incidents", _alert_links),
        AddColumn("approvals", _slack_channel),
        AddColumn("approvals", _slack_ts),
    ),
)

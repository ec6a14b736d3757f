"""Migration 4: identity. `api_tokens`, the named API tokens (stored as SHA-256 digests, each with a
role; queried by `watchdog.tokens` only), and the votes of two-person approvals on `approvals`
(`votes`: the actors who approved so far, `vote_count`: how many, the compare-and-set of a vote;
both NULL for prompts recorded before).

Where it sits: one of the frozen migrations of `watchdog.migrations.SCHEMA`, after version 3.
Released: never edited.
"""

from __future__ import annotations

import sqlalchemy as sa

from gl_common.migrations import AddColumn, CreateTable, Migration
from gl_common.sqltypes import UTCDateTime
from watchdog.migrations.m0001_initial import JSON_TYPE

ROLES = ("viewer", "approver", "operator", "admin")


def _api_tokens() -> list[sa.schema.SchemaItem]:
    role = sa.Column("role", sa.String(16), nullable=False)
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        role,
        sa.Column("token_hash", sa.String(64), nullable=False),  # sha256 hex of the whole token
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("revoked_at", UTCDateTime, nullable=True),
        sa.Column("last_used_at", UTCDateTime, nullable=True),  # written at most once a minute
        sa.UniqueConstraint("name", name="uq_api_tokens_name"),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
        sa.CheckConstraint("role IN (" + ", ".join(f"'{r}'" for r in ROLES) + ")", name="ck_api_tokens_role"),
    ]


def _votes() -> sa.Column[object]:
    return sa.Column("votes", JSON_TYPE, nullable=True)


def _vote_count() -> sa.Column[int]:
    return sa.Column("vote_count", sa.Integer, nullable=True)


MIGRATION = Migration(
    4,
    "api_tokens: named API tokens with roles; approvals.votes for two-person approval",
    (
        CreateTable("api_tokens", _api_tokens),
        AddColumn("approvals", _votes),
        AddColumn("approvals", _vote_count),
    ),
)

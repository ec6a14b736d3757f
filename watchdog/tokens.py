"""Named API tokens: each with a name and a role, shown once, stored as a SHA-256 digest.

Where it sits: the admin routes of `watchdog.operator_api` (`POST/GET /api/v1/tokens`, `DELETE
/api/v1/tokens/{name}`) create, list and revoke them; the auth middleware (`watchdog.http`) turns a
presented bearer token into its `Identity` (`identify`) when it is not one of the settings' bootstrap
tokens. Stored in the `api_tokens` table (migration 4), queried here only.

A token is `glw_` and 32 random bytes in base64url. Only its SHA-256 (hex) is kept, and a presented
token is looked up by that digest (an index lookup: nothing secret is compared byte by byte in
Python). A revoked token is refused at once (the lookup reads `revoked_at` each time). `last_used_at`
is written at most once a minute per token, as a conditional UPDATE, so a busy client does not write
on every request; failing to write it never fails the request (logged).

Creation and revocation are audited (`token_created`, `token_revoked`; no incident) with who did it;
the token itself is never logged or audited.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import sqlalchemy as sa

from watchdog.identity import Identity, Role
from watchdog.migrations import api_tokens
from watchdog.store import WatchdogStore
from watchdog_sdk.errors import WatchdogError

log = logging.getLogger(__name__)

TOKEN_PREFIX: Final = "glw_"
TOKEN_BYTES: Final = 32
LAST_USED_EVERY: Final = timedelta(minutes=1)
NAME_PATTERN: Final = r"[a-z0-9][a-z0-9._@-]{0,63}"
_TOKEN_SHAPE: Final = re.compile(r"glw_[A-Za-z0-9_-]{43}")


class TokenNameTaken(Exception):
    """A token of this name exists already (revoked ones too: names are never reused)."""


class TokenNotFound(Exception):
    """No token of this name."""


@dataclass(frozen=True)
class ApiToken:
    """A named token as listed (never its digest)."""

    name: str
    role: Role
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    last_used_at: datetime | None


def digest(token: str) -> str:
    """The SHA-256 hex digest a token is stored and looked up by."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh token: `glw_` + 32 random bytes, base64url without padding."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def _record(row: sa.Row[object]) -> ApiToken:
    values = row._mapping
    return ApiToken(
        name=values["name"],
        role=Role(values["role"]),
        created_at=values["created_at"],
        created_by=values["created_by"],
        revoked_at=values["revoked_at"],
        last_used_at=values["last_used_at"],
    )


class TokenStore:
    """The named tokens over the watchdog's store."""

    def __init__(self, store: WatchdogStore) -> None:
        self.store = store
        self.clock = store.clock

    async def create(self, name: str, role: Role, *, created_by: str) -> tuple[ApiToken, str]:
        """A new token named `name`; returns its record and the token (the only time it is shown).
        Raises TokenNameTaken."""
        token = new_token()
        now = self.clock.now()
        async with self.store.transaction("create API token") as tx:
            taken = await tx.conn.execute(sa.select(api_tokens.c.id).where(api_tokens.c.name == name))
            if taken.first() is not None:
                raise TokenNameTaken(f"a token named {name!r} exists already (names are never reused)")
            result = await tx.conn.execute(
                api_tokens.insert()
                .values(
                    name=name,
                    role=role.value,
                    token_hash=digest(token),
                    created_at=now,
                    created_by=created_by,
                )
                .returning(*api_tokens.c)
            )
            record = _record(result.one())
            await tx.add_audit(
                None, "token_created", actor=created_by, data={"name": name, "role": role.value}
            )
        return record, token

    async def list(self) -> list[ApiToken]:
        """Every token, revoked ones too, oldest first."""
        async with self.store.read("list API tokens") as tx:
            result = await tx.conn.execute(sa.select(api_tokens).order_by(api_tokens.c.id))
            return [_record(row) for row in result]

    async def revoke(self, name: str, *, revoked_by: str) -> ApiToken:
        """Revoke the token `name` (refused from now on); revoking twice keeps the first time.
        Raises TokenNotFound."""
        async with self.store.transaction("revoke API token") as tx:
            await tx.conn.execute(
                sa.update(api_tokens)
                .where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=self.clock.now())
            )
            result = await tx.conn.execute(sa.select(api_tokens).where(api_tokens.c.name == name))
            row = result.first()
            if row is None:
                raise TokenNotFound(f"no token named {name!r}")
            await tx.add_audit(None, "token_revoked", actor=revoked_by, data={"name": name})
        return _record(row)

    async def identify(self, token: str) -> Identity | None:
        """The identity of a presented token, or None (unknown, malformed or revoked)."""
        if _TOKEN_SHAPE.fullmatch(token) is None:
            return None
        async with self.store.read("API token lookup") as tx:
            result = await tx.conn.execute(
                sa.select(api_tokens).where(api_tokens.c.token_hash == digest(token))
            )
            row = result.first()
        if row is None or row._mapping["revoked_at"] is not None:
            return None
        record = _record(row)
        await self._touch(record)
        return Identity(name=record.name, role=record.role, source="token")

    async def _touch(self, record: ApiToken) -> None:
        now = self.clock.now()
        if record.last_used_at is not None and now - record.last_used_at < LAST_USED_EVERY:
            return
        due = now - LAST_USED_EVERY
        try:
            async with self.store.transaction("API token last used") as tx:
                await tx.conn.execute(
                    sa.update(api_tokens)
                    .where(
                        api_tokens.c.name == record.name,
                        sa.or_(api_tokens.c.last_used_at.is_(None), api_tokens.c.last_used_at <= due),
                    )
                    .values(last_used_at=now)
                )
        except WatchdogError as exc:
            log.warning("token %s: last use not recorded: %s", record.name, exc)

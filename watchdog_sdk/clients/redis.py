"""Redis as the watchdog sees it: the orchestrator's run-ownership locks and heartbeats, and the
watchdog's own sweep-leader key.

Used by diagnostic step 6 (`scan_locks`, `get_lock`, `heartbeat`), the `release_lock` playbook
(`compare_and_delete_lock`, fencing-token checked in a Lua script, never a bare `DEL`) and the sweeps
(`acquire_leader` / `renew_leader` / `release_leader`). Keys come from `watchdog_sdk.constants`; lock keys
are listed with `SCAN` (never `KEYS`, which blocks Redis). Every command runs with socket timeouts;
redis-py errors are converted here: connection errors and timeouts → `RedisUnavailable`, refused
commands (script errors, wrong types) → `LockError`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from gl_common.clock import Clock, SystemClock
from watchdog_sdk.constants import (
    LEADER_KEY,
    LOCK_SCAN_PATTERN,
    execution_id_from_lock_key,
    heartbeat_key,
    lock_key,
)
from watchdog_sdk.errors import LockError, RedisUnavailable

T = TypeVar("T")

# KEYS[1] lock key; ARGV[1] expected fencing token. Deletes only when the stored JSON's token matches.
_COMPARE_AND_DELETE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 'absent' end
local ok, value = pcall(cjson.decode, raw)
if not ok or type(value) ~= 'table' or value['token'] == nil then return 'unparsable' end
if tostring(value['token']) ~= ARGV[1] then return 'token_mismatch' end
redis.call('DEL', KEYS[1])
return 'released'
"""

# KEYS[1] leader key; ARGV[1] replica id; ARGV[2] ttl ms. Renews only our own leadership.
_RENEW_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_DELETE_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class ReleaseResult(StrEnum):
    """Outcome of `compare_and_delete_lock`."""

    RELEASED = "released"
    ABSENT = "absent"  # nobody holds the lock any more
    TOKEN_MISMATCH = "token_mismatch"  # someone else holds it now (new fencing token): left alone
    UNPARSABLE = "unparsable"  # the value is not the orchestrator's JSON: left alone


@dataclass(frozen=True)
class LockInfo:
    """One ownership lock: who holds it, its fencing token, its TTL (-1: no TTL, i.e. never expires)."""

    key: str
    execution_id: str
    ttl_seconds: float
    owner: str | None = None
    pod: str | None = None
    token: int | None = None
    acquired_at: str | None = None
    raw: str | None = None
    parse_error: str | None = None

    @property
    def has_ttl(self) -> bool:
        return self.ttl_seconds >= 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "execution_id": self.execution_id,
            "ttl_seconds": self.ttl_seconds,
            "owner": self.owner,
            "pod": self.pod,
            "token": self.token,
            "acquired_at": self.acquired_at,
            "parse_error": self.parse_error,
        }


@dataclass(frozen=True)
class HeartbeatInfo:
    """An orchestrator replica's heartbeat: present or not, its pod, and how old it is."""

    replica_id: str
    exists: bool
    pod: str | None = None
    at: datetime | None = None
    age_seconds: float | None = None
    ttl_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "replica_id": self.replica_id,
            "exists": self.exists,
            "pod": self.pod,
            "at": self.at.isoformat() if self.at else None,
            "age_seconds": self.age_seconds,
            "ttl_seconds": self.ttl_seconds,
        }


class RedisClient:
    """Async Redis access with socket timeouts; every redis-py error converted at this boundary."""

    def __init__(self, url: str, *, timeout: float = 5.0, clock: Clock | None = None) -> None:
        self.url = url
        self._clock = clock or SystemClock()
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
            retry_on_timeout=False,
        )
        self._compare_and_delete = self._redis.register_script(_COMPARE_AND_DELETE)
        self._renew_if_owner = self._redis.register_script(_RENEW_IF_OWNER)
        self._delete_if_owner = self._redis.register_script(_DELETE_IF_OWNER)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            raise RedisUnavailable(f"Redis unavailable during {what}: {exc or type(exc).__name__}") from exc
        except redis_errors.RedisError as exc:
            raise LockError(f"Redis refused {what}: {exc}") from exc

    async def ping(self) -> bool:
        """True when Redis answers (readiness)."""

        async def run() -> Any:
            return await cast(Awaitable[Any], self._redis.ping())

        return bool(await self._call("PING", run))

    # -- locks ------------------------------------------------------------------------------------

    async def scan_locks(self, count: int = 200) -> list[LockInfo]:
        """Every `gl:orchestrator:lock:*` key with its value and TTL, found with SCAN (never KEYS)."""

        async def scan() -> list[str]:
            return [key async for key in self._redis.scan_iter(match=LOCK_SCAN_PATTERN, count=count)]

        keys = await self._call("SCAN of lock keys", scan)
        locks = []
        for key in sorted(set(keys)):
            info = await self._read_lock(key)
            if info is not None:
                locks.append(info)
        return locks

    async def lock_ttls(self, count: int = 1000) -> dict[str, float]:
        """The TTL of every `gl:orchestrator:lock:*` key, by execution id (-1.0: no TTL), found with
        SCAN (never KEYS) and read with one pipelined PTTL per SCAN page: a few round trips for
        thousands of locks, and no lock value read (`get_lock` reads the one that matters)."""

        async def scan() -> dict[str, float]:
            ttls: dict[str, float] = {}
            cursor = 0
            while True:
                cursor, keys = await self._redis.scan(cursor=cursor, match=LOCK_SCAN_PATTERN, count=count)
                if keys:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for key in keys:
                            pipe.pttl(key)
                        answers = await pipe.execute()
                    for key, pttl in zip(keys, answers, strict=True):
                        if int(pttl) != -2:  # -2: expired between the SCAN and the PTTL
                            ttl = -1.0 if int(pttl) == -1 else max(int(pttl), 0) / 1000.0
                            ttls[execution_id_from_lock_key(key)] = ttl
                if int(cursor) == 0:
                    return ttls

        return await self._call("SCAN of lock keys", scan)

    async def get_lock(self, execution_id: str) -> LockInfo | None:
        """The ownership lock of one execution, or None when no replica holds it."""
        return await self._read_lock(lock_key(execution_id))

    async def _read_lock(self, key: str) -> LockInfo | None:
        async def read() -> tuple[Any, Any]:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                raw, pttl = await pipe.execute()
            return raw, pttl

        raw, pttl = await self._call(f"read of {key}", read)
        if raw is None:
            return None
        ttl = -1.0 if int(pttl) == -1 else max(int(pttl), 0) / 1000.0
        execution_id = execution_id_from_lock_key(key)
        try:
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            token = value.get("token")
            return LockInfo(
                key=key,
                execution_id=execution_id,
                ttl_seconds=ttl,
                owner=_opt_str(value.get("owner")),
                pod=_opt_str(value.get("pod")),
                token=int(token) if token is not None else None,
                acquired_at=_opt_str(value.get("acquired_at")),
                raw=raw,
            )
        except (ValueError, TypeError) as exc:
            return LockInfo(
                key=key, execution_id=execution_id, ttl_seconds=ttl, raw=raw, parse_error=str(exc)
            )

    async def compare_and_delete_lock(self, execution_id: str, token: int) -> ReleaseResult:
        """Delete the execution's lock only if it still carries fencing `token` (atomic, Lua)."""
        key = lock_key(execution_id)

        async def run() -> Any:
            return await self._compare_and_delete(keys=[key], args=[str(token)])

        return ReleaseResult(str(await self._call(f"compare-and-delete of {key}", run)))

    # -- heartbeats -------------------------------------------------------------------------------

    async def heartbeat(self, replica_id: str) -> HeartbeatInfo:
        """The replica's heartbeat key: whether it exists, its pod and age (by the injected clock)."""
        key = heartbeat_key(replica_id)

        async def read() -> tuple[Any, Any]:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                raw, pttl = await pipe.execute()
            return raw, pttl

        raw, pttl = await self._call(f"read of {key}", read)
        if raw is None:
            return HeartbeatInfo(replica_id=replica_id, exists=False)
        ttl = -1.0 if int(pttl) == -1 else max(int(pttl), 0) / 1000.0
        pod: str | None = None
        at: datetime | None = None
        try:
            value = json.loads(raw)
            if isinstance(value, dict):
                pod = _opt_str(value.get("pod"))
                at = _parse_time(value.get("at"))
        except ValueError:
            pass
        age = (self._clock.now() - at).total_seconds() if at is not None else None
        return HeartbeatInfo(
            replica_id=replica_id, exists=True, pod=pod, at=at, age_seconds=age, ttl_seconds=ttl
        )

    # -- sweep leader election --------------------------------------------------------------------

    async def acquire_leader(self, replica_id: str, ttl_seconds: float) -> bool:
        """Become sweep leader if nobody is (SET NX PX); True if we are the leader now."""
        ttl_ms = max(int(ttl_seconds * 1000), 1)

        async def run() -> bool:
            if await self._redis.set(LEADER_KEY, replica_id, nx=True, px=ttl_ms):
                return True
            return bool(await self._redis.get(LEADER_KEY) == replica_id)

        return await self._call("leader acquire", run)

    async def renew_leader(self, replica_id: str, ttl_seconds: float) -> bool:
        """Extend our leadership; False when we are not (or no longer) the leader."""
        ttl_ms = max(int(ttl_seconds * 1000), 1)

        async def run() -> Any:
            return await self._renew_if_owner(keys=[LEADER_KEY], args=[replica_id, str(ttl_ms)])

        return bool(await self._call("leader renew", run))

    async def release_leader(self, replica_id: str) -> bool:
        """Give up leadership if we hold it; True when the key was ours and is gone."""

        async def run() -> Any:
            return await self._delete_if_owner(keys=[LEADER_KEY], args=[replica_id])

        return bool(await self._call("leader release", run))

    async def current_leader(self) -> str | None:
        """The replica id of the current sweep leader, if any."""

        async def run() -> Any:
            return await self._redis.get(LEADER_KEY)

        return _opt_str(await self._call("leader read", run))


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

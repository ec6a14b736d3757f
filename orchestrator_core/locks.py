"""Run ownership locks: who runs which execution, with fencing tokens and heartbeats.

Where it sits: `service.OrchestratorService` acquires a lock before it starts or resumes an execution,
renews it while the run is going, and releases it when the run ends; it refreshes its own heartbeat
on a timer. The watchdog (through Redis, never through this module) reads the same keys to tell a
live holder from a dead one. Nothing else writes these keys.

Two backends with one interface (`LockBackend`):

- `InProcessLockBackend`: embedded mode (one replica, no Redis). Same semantics, kept in a dict, with
  an injected clock so TTLs are testable without sleeping.
- `RedisLockBackend`: production. `gl:orchestrator:lock:<execution_id>` is taken by one Lua script
  (absent → `INCR gl:orchestrator:fence` → `SET PX`) and holds JSON `{"owner", "pod", "token",
  "acquired_at"}`. Renewal is a Lua compare-and-pexpire and release a Lua compare-and-delete, both
  keyed on the token, so a replica never extends or drops a lock it no longer holds.
  `gl:orchestrator:heartbeat:<replica_id>` holds `{"pod", "at"}` with a TTL.

Fencing tokens only ever grow, per execution, in every mode: `acquire(..., after=stored)` takes the
token the execution's record holds now and returns a token above it, raising the shared counter to
it when the counter is behind. The counter alone cannot promise that: the in-process one starts at 0
in every process (a restarted embedded orchestrator), and Redis's `gl:orchestrator:fence` is lost
when Redis restarts without persistence; the token stored with the run survives both, so the first
resume or takeover after any restart claims the run on the first try. (The store still refuses a
token that is not newer than the stored one: a claim raced by another replica fails, as it must.)

Every Redis call has socket and connect timeouts; redis-py errors are converted to
`LockBackendUnavailable` here and never leak further.

Key names live in this module only (`lock_key`, `heartbeat_key`, `FENCE_KEY`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from orchestrator_core.errors import LockBackendUnavailable

LOCK_KEY_PREFIX = "gl:orchestrator:lock:"
FENCE_KEY = "gl:orchestrator:fence"
HEARTBEAT_KEY_PREFIX = "gl:orchestrator:heartbeat:"


def lock_key(execution_id: str) -> str:
    """Redis key of the ownership lock of one execution."""
    return f"{LOCK_KEY_PREFIX}{execution_id}"


def heartbeat_key(replica_id: str) -> str:
    """Redis key of one replica's heartbeat."""
    return f"{HEARTBEAT_KEY_PREFIX}{replica_id}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Lease:
    """A lock this replica holds: what it needs to renew or release it, and the fencing token."""

    execution_id: str
    owner: str
    pod: str
    token: int
    acquired_at: str

    def to_json(self) -> str:
        return json.dumps(
            {"owner": self.owner, "pod": self.pod, "token": self.token, "acquired_at": self.acquired_at},
            sort_keys=True,
        )


@dataclass(frozen=True)
class LockHolder:
    """What the lock key says about its current holder."""

    execution_id: str
    owner: str
    pod: str
    token: int
    acquired_at: str
    ttl_ms: int | None


class LockBackend(Protocol):
    """Ownership locks and heartbeats; `replica_id`/`pod` name this replica."""

    replica_id: str
    pod: str

    async def acquire(self, execution_id: str, ttl_seconds: float, *, after: int = 0) -> Lease | None:
        """Take the lock if free, with a fencing token greater than `after` (the token stored with the
        execution) and than any this backend issued before; None when someone else holds it."""

    async def renew(self, lease: Lease, ttl_seconds: float) -> bool:
        """Extend the TTL if the lock is still ours (same token); False when lost."""

    async def renew_many(self, leases: Sequence[Lease], ttl_seconds: float) -> list[bool]:
        """`renew` of every lease in one round trip; one answer per lease, in order."""

    async def retake_many(self, leases: Sequence[Lease], ttl_seconds: float) -> list[bool]:
        """Set again, unchanged (same token), the locks among `leases` that expired and that nobody
        took since; one answer per lease (False: someone holds it now). In one round trip."""

    async def release(self, lease: Lease) -> bool:
        """Delete the lock if it is still ours; False when it was already gone or taken over."""

    async def holder(self, execution_id: str) -> LockHolder | None:
        """The current holder, or None when the lock is free."""

    async def heartbeat(self, ttl_seconds: float) -> None:
        """Refresh this replica's heartbeat key."""

    async def is_alive(self, replica_id: str) -> bool:
        """True while `replica_id`'s heartbeat key exists."""

    async def drop_heartbeat(self) -> None:
        """Delete this replica's heartbeat (graceful shutdown: show the replica gone at once)."""

    async def ping(self) -> None:
        """Raise `LockBackendUnavailable` when the backend cannot be reached (readiness)."""

    async def close(self) -> None:
        """Release connections."""


# -- in-process ------------------------------------------------------------------------------------


class InProcessLockSpace:
    """The shared state of in-process locks: one per process (embedded mode has one replica, but
    several `InProcessLockBackend` views can share a space, e.g. two services in one test)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.fence = 0
        self.locks: dict[str, tuple[Lease, float]] = {}
        self.heartbeats: dict[str, float] = {}


class InProcessLockBackend:
    """Embedded mode: locks in an `InProcessLockSpace`, expiring on its injected monotonic clock."""

    def __init__(self, replica_id: str, pod: str, space: InProcessLockSpace | None = None) -> None:
        self.replica_id = replica_id
        self.pod = pod
        self._space = space or InProcessLockSpace()
        self._clock = self._space.clock
        self._locks = self._space.locks
        self._heartbeats = self._space.heartbeats

    def _live(self, execution_id: str) -> tuple[Lease, float] | None:
        entry = self._locks.get(execution_id)
        if entry is not None and entry[1] <= self._clock():
            del self._locks[execution_id]
            return None
        return entry

    async def acquire(self, execution_id: str, ttl_seconds: float, *, after: int = 0) -> Lease | None:
        if self._live(execution_id) is not None:
            return None
        self._space.fence = max(self._space.fence, after) + 1
        lease = Lease(execution_id, self.replica_id, self.pod, self._space.fence, _iso(datetime.now(UTC)))
        self._locks[execution_id] = (lease, self._clock() + ttl_seconds)
        return lease

    async def renew(self, lease: Lease, ttl_seconds: float) -> bool:
        entry = self._live(lease.execution_id)
        if entry is None or entry[0].token != lease.token:
            return False
        self._locks[lease.execution_id] = (entry[0], self._clock() + ttl_seconds)
        return True

    async def renew_many(self, leases: Sequence[Lease], ttl_seconds: float) -> list[bool]:
        return [await self.renew(lease, ttl_seconds) for lease in leases]

    async def retake_many(self, leases: Sequence[Lease], ttl_seconds: float) -> list[bool]:
        taken = []
        for lease in leases:
            free = self._live(lease.execution_id) is None
            if free:
                self._locks[lease.execution_id] = (lease, self._clock() + ttl_seconds)
            taken.append(free)
        return taken

    async def release(self, lease: Lease) -> bool:
        entry = self._live(lease.execution_id)
        if entry is None or entry[0].token != lease.token:
            return False
        del self._locks[lease.execution_id]
        return True

    async def holder(self, execution_id: str) -> LockHolder | None:
        entry = self._live(execution_id)
        if entry is None:
            return None
        lease, expires = entry
        ttl_ms = int((expires - self._clock()) * 1000)
        return LockHolder(execution_id, lease.owner, lease.pod, lease.token, lease.acquired_at, ttl_ms)

    async def heartbeat(self, ttl_seconds: float) -> None:
        self._heartbeats[self.replica_id] = self._clock() + ttl_seconds

    async def is_alive(self, replica_id: str) -> bool:
        expires = self._heartbeats.get(replica_id)
        return expires is not None and expires > self._clock()

    async def drop_heartbeat(self) -> None:
        self._heartbeats.pop(self.replica_id, None)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


# -- Redis -----------------------------------------------------------------------------------------

# KEYS[1] = lock key, KEYS[2] = fence counter; ARGV[1] = the execution's stored token, ARGV[2] = TTL
# in ms, ARGV[3] = owner, ARGV[4] = pod, ARGV[5] = acquired_at. Returns the token, or 0 when held.
_ACQUIRE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[1])
if token <= floor then
  token = floor + 1
  redis.call('SET', KEYS[2], token)
end
local value = cjson.encode({owner = ARGV[3], pod = ARGV[4], token = token, acquired_at = ARGV[5]})
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return token
"""

# KEYS[1] = lock key; ARGV[1] = expected token; ARGV[2] = TTL in ms.
_RENEW_LUA = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local ok, value = pcall(cjson.decode, raw)
if not ok or tostring(value['token']) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""

# KEYS = lock keys; ARGV[1] = TTL in ms, ARGV[i + 1] = the expected token of KEYS[i]. Returns 1 or 0
# per key. Renewing every lease of a replica is one call per `RENEW_CHUNK` keys, all in one pipeline.
_RENEW_MANY_LUA = """
local renewed = {}
for i, key in ipairs(KEYS) do
  renewed[i] = 0
  local raw = redis.call('GET', key)
  if raw then
    local ok, value = pcall(cjson.decode, raw)
    if ok and type(value) == 'table' and tostring(value['token']) == ARGV[i + 1] then
      renewed[i] = redis.call('PEXPIRE', key, ARGV[1])
    end
  end
end
return renewed
"""
# KEYS = lock keys; ARGV[1] = TTL in ms, ARGV[i + 1] = the value of KEYS[i] (the lease, unchanged).
# Sets each key that does not exist; returns 1 or 0 per key.
_RETAKE_MANY_LUA = """
local taken = {}
for i, key in ipairs(KEYS) do
  taken[i] = 0
  if redis.call('SET', key, ARGV[i + 1], 'NX', 'PX', ARGV[1]) then taken[i] = 1 end
end
return taken
"""

# Keys per renewal script call: long enough to make one round trip of thousands of leases, short enough
# that one call holds Redis for about a millisecond.
RENEW_CHUNK = 500

# KEYS[1] = lock key; ARGV[1] = expected token.
_RELEASE_LUA = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local ok, value = pcall(cjson.decode, raw)
if not ok or tostring(value['token']) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


class RedisLockBackend:
    """Production: locks and heartbeats in Redis, every call bounded by `timeout_seconds`."""

    def __init__(self, url: str, replica_id: str, pod: str, timeout_seconds: float = 2.0) -> None:
        self.replica_id = replica_id
        self.pod = pod
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            decode_responses=True,
        )
        self._acquire = self._redis.register_script(_ACQUIRE_LUA)
        self._renew = self._redis.register_script(_RENEW_LUA)
        self._renew_many = self._redis.register_script(_RENEW_MANY_LUA)
        self._retake_many = self._redis.register_script(_RETAKE_MANY_LUA)
        self._release = self._redis.register_script(_RELEASE_LUA)

    async def acquire(self, execution_id: str, ttl_seconds: float, *, after: int = 0) -> Lease | None:
        acquired_at = _iso(datetime.now(UTC))
        try:
            token = await self._acquire(
                keys=[lock_key(execution_id), FENCE_KEY],
                args=[int(after), _ms(ttl_seconds), self.replica_id, self.pod, acquired_at],
            )
        except RedisError as exc:
            raise LockBackendUnavailable(f"redis lock acquire failed: {exc}") from exc
        if not token:
            return None
        return Lease(execution_id, self.replica_id, self.pod, int(token), acquired_at)

    async def renew(self, lease: Lease, ttl_seconds: float) -> bool:
        try:
            result = await self._renew(
                keys=[lock_key(lease.execution_id)], args=[lease.token, _ms(ttl_seconds)]
            )
        except RedisError as exc:
            raise LockBackendUnavailable(f"redis lock renew failed: {exc}") from exc
        return bool(result)

    async def renew_many(self, leases: Sequence[Lease], ttl_seconds: float) -> list[bool]:
        return await self._per_lease(
            self._renew_many, leases, ttl_seconds, lambda lease: lease.token, "renewal"
        )

    async def retake_many(self, leases: Sequence[Lease], ttl_seconds: float) -> list[bool]:
        return await self._per_lease(self._retake_many, leases, ttl_seconds, Lease.to_json, "retake")

    async def _per_lease(
        self,
        script: AsyncScript,
        leases: Sequence[Lease],
        ttl_seconds: float,
        argument: Callable[[Lease], str | int],
        what: str,
    ) -> list[bool]:
        """One script call per `RENEW_CHUNK` leases (KEYS: their lock keys; ARGV: the TTL, then
        `argument(lease)` of each), all in one pipeline: one round trip. Flags in the leases' order."""
        if not leases:
            return []
        ttl = _ms(ttl_seconds)

        async def send() -> list[list[int]]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for first in range(0, len(leases), RENEW_CHUNK):
                    chunk = leases[first : first + RENEW_CHUNK]
                    keys = [lock_key(lease.execution_id) for lease in chunk]
                    pipe.evalsha(script.sha, len(keys), *keys, ttl, *(argument(lease) for lease in chunk))
                return await pipe.execute()

        try:
            try:
                answers = await send()
            except NoScriptError:  # a restarted Redis forgot the script: load it, send once more
                await self._redis.script_load(script.script)
                answers = await send()
        except RedisError as exc:
            raise LockBackendUnavailable(f"redis lock {what} failed: {exc}") from exc
        return [bool(flag) for chunk in answers for flag in chunk]

    async def release(self, lease: Lease) -> bool:
        try:
            result = await self._release(keys=[lock_key(lease.execution_id)], args=[lease.token])
        except RedisError as exc:
            raise LockBackendUnavailable(f"redis lock release failed: {exc}") from exc
        return bool(result)

    async def holder(self, execution_id: str) -> LockHolder | None:
        key = lock_key(execution_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                raw, pttl = await pipe.execute()
        except RedisError as exc:
            raise LockBackendUnavailable(f"redis lock read failed: {exc}") from exc
        if raw is None:
            return None
        try:
            value = json.loads(raw)
            return LockHolder(
                execution_id,
                str(value["owner"]),
                str(value.get("pod", "")),
                int(value["token"]),
                str(value.get("acquired_at", "")),
                int(pttl) if int(pttl) >= 0 else None,
            )
        except (ValueError, KeyError, TypeError):
            # Not written by us: report it as held by an unknown owner rather than as free.
            return LockHolder(execution_id, "unknown", "", -1, "", int(pttl) if int(pttl) >= 0 else None)

    async def heartbeat(self, ttl_seconds: float) -> None:
        value = json.dumps({"pod": self.pod, "at": _iso(datetime.now(UTC))})
        try:
            await self._redis.set(heartbeat_key(self.replica_id), value, px=_ms(ttl_seconds))
        except RedisError as exc:
            raise LockBackendUnavailable(f"redis heartbeat failed: {exc}") from exc

    async def is_alive(self, replica_id: str) -> bool:
        try:
            return bool(await self._redis.exists(heartbeat_key(replica_id)))
        except RedisError as exc:
            raise LockBackendUnavailable(f"redis heartbeat read failed: {exc}") from exc

    async def drop_heartbeat(self) -> None:
        try:
            await self._redis.delete(heartbeat_key(self.replica_id))
        except RedisError as exc:
            raise LockBackendUnavailable(f"redis heartbeat delete failed: {exc}") from exc

    async def ping(self) -> None:
        try:
            await self._redis.ping()  # type: ignore[misc]  # redis-py types ping as sync|async
        except RedisError as exc:
            raise LockBackendUnavailable(f"redis ping failed: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))

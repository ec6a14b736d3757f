"""The Redis client against a real redis-server: SCAN of locks, TTLs, heartbeats, fenced release,
leader election, and conversion of connection failures."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.conftest import free_port
from tests.watchdog.conftest import FakeClock
from watchdog_sdk.clients.redis import RedisClient, ReleaseResult
from watchdog_sdk.constants import LEADER_KEY, heartbeat_key, lock_key
from watchdog_sdk.errors import RedisUnavailable

pytestmark = pytest.mark.redis


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=2)
    yield client
    await client.aclose()


def _lock_value(owner: str = "replica-a", token: int = 7, pod: str = "orch-0") -> str:
    return json.dumps({"owner": owner, "pod": pod, "token": token, "acquired_at": "2026-03-01T11:59:00Z"})


async def test_scan_locks_lists_every_lock_with_ttl(raw: aioredis.Redis, redis_client: RedisClient) -> None:
    for i in range(250):  # more than one SCAN page
        await raw.set(lock_key(f"ex-{i:03d}"), _lock_value(token=i), ex=30)
    await raw.set(lock_key("no-ttl"), _lock_value(token=999))
    await raw.set("gl:orchestrator:fence", 1000)
    await raw.set(heartbeat_key("replica-a"), "{}", ex=15)
    locks = await redis_client.scan_locks(count=50)
    assert len(locks) == 251
    by_id = {lock.execution_id: lock for lock in locks}
    assert (
        by_id["ex-042"].token == 42
        and by_id["ex-042"].owner == "replica-a"
        and by_id["ex-042"].pod == "orch-0"
    )
    assert 0 < by_id["ex-042"].ttl_seconds <= 30 and by_id["ex-042"].has_ttl
    assert by_id["no-ttl"].ttl_seconds == -1 and not by_id["no-ttl"].has_ttl


async def test_scan_locks_uses_scan_never_keys(raw: aioredis.Redis, redis_client: RedisClient) -> None:
    await raw.set(lock_key("ex-1"), _lock_value(), ex=30)
    await raw.config_resetstat()
    await redis_client.scan_locks()
    stats = await raw.info("commandstats")
    assert "cmdstat_scan" in stats
    assert "cmdstat_keys" not in stats


async def test_get_lock_absent_and_unparsable(raw: aioredis.Redis, redis_client: RedisClient) -> None:
    assert await redis_client.get_lock("nope") is None
    await raw.set(lock_key("weird"), "not json", ex=10)
    lock = await redis_client.get_lock("weird")
    assert lock is not None and lock.parse_error is not None and lock.owner is None


async def test_heartbeat_age_uses_the_injected_clock(
    raw: aioredis.Redis, redis_client: RedisClient, clock: FakeClock
) -> None:
    await raw.set(
        heartbeat_key("replica-a"), json.dumps({"pod": "orch-0", "at": "2026-03-01T11:59:50Z"}), ex=15
    )
    beat = await redis_client.heartbeat("replica-a")
    assert beat.exists and beat.pod == "orch-0" and beat.age_seconds == 10.0
    assert beat.ttl_seconds is not None and 0 < beat.ttl_seconds <= 15
    clock.advance(20)
    assert (await redis_client.heartbeat("replica-a")).age_seconds == 30.0
    assert (await redis_client.heartbeat("replica-b")).exists is False


async def test_compare_and_delete_releases_only_with_the_token(
    raw: aioredis.Redis, redis_client: RedisClient
) -> None:
    await raw.set(lock_key("ex-1"), _lock_value(token=7))
    assert await redis_client.compare_and_delete_lock("ex-1", 8) is ReleaseResult.TOKEN_MISMATCH
    assert await raw.exists(lock_key("ex-1")) == 1
    assert await redis_client.compare_and_delete_lock("ex-1", 7) is ReleaseResult.RELEASED
    assert await raw.exists(lock_key("ex-1")) == 0
    assert await redis_client.compare_and_delete_lock("ex-1", 7) is ReleaseResult.ABSENT


async def test_compare_and_delete_leaves_foreign_values(
    raw: aioredis.Redis, redis_client: RedisClient
) -> None:
    await raw.set(lock_key("ex-1"), "plain-string")
    assert await redis_client.compare_and_delete_lock("ex-1", 7) is ReleaseResult.UNPARSABLE
    assert await raw.get(lock_key("ex-1")) == "plain-string"


async def test_leader_election(raw: aioredis.Redis, redis_client: RedisClient) -> None:
    assert await redis_client.acquire_leader("w1", 30) is True
    assert await redis_client.acquire_leader("w1", 30) is True  # re-entrant for the holder
    assert await redis_client.acquire_leader("w2", 30) is False
    assert await redis_client.current_leader() == "w1"
    assert await redis_client.renew_leader("w2", 30) is False
    assert await redis_client.renew_leader("w1", 60) is True
    assert 30_000 < await raw.pttl(LEADER_KEY) <= 60_000
    assert await redis_client.release_leader("w2") is False
    assert await redis_client.release_leader("w1") is True
    assert await redis_client.current_leader() is None
    assert await redis_client.acquire_leader("w2", 30) is True


async def test_unreachable_redis_is_converted_fast() -> None:
    client = RedisClient(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(RedisUnavailable):
            await client.scan_locks()
        with pytest.raises(RedisUnavailable):
            await client.ping()
    finally:
        await client.aclose()
    assert time.monotonic() - started < 3.0

"""Ownership locks: the same behaviour from the in-process backend and from real Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from orchestrator_core.errors import LockBackendUnavailable
from orchestrator_core.locks import (
    FENCE_KEY,
    InProcessLockBackend,
    InProcessLockSpace,
    LockBackend,
    RedisLockBackend,
    heartbeat_key,
    lock_key,
)
from tests.conftest import free_port


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["inprocess", "redis"])
async def backends(request: pytest.FixtureRequest) -> AsyncIterator[tuple[LockBackend, LockBackend]]:
    """Two replicas' backends sharing one lock space."""
    if request.param == "inprocess":
        space = InProcessLockSpace()
        yield InProcessLockBackend("r1", "pod-1", space), InProcessLockBackend("r2", "pod-2", space)
        return
    url = request.getfixturevalue("redis_url")
    one = RedisLockBackend(url, "r1", "pod-1")
    two = RedisLockBackend(url, "r2", "pod-2")
    try:
        yield one, two
    finally:
        await one.close()
        await two.close()


async def test_only_one_replica_acquires(backends: tuple[LockBackend, LockBackend]) -> None:
    one, two = backends
    lease = await one.acquire("e1", 10)
    assert lease is not None and lease.owner == "r1" and lease.pod == "pod-1"
    assert await two.acquire("e1", 10) is None
    holder = await two.holder("e1")
    assert holder is not None and holder.owner == "r1" and holder.token == lease.token


async def test_fencing_tokens_increase(backends: tuple[LockBackend, LockBackend]) -> None:
    one, two = backends
    first = await one.acquire("e1", 10)
    assert first is not None
    assert await one.release(first)
    second = await two.acquire("e1", 10)
    assert second is not None and second.token > first.token


async def test_token_is_above_the_stored_one_even_when_the_counter_is_behind(
    backends: tuple[LockBackend, LockBackend],
) -> None:
    one, two = backends
    first = await one.acquire("e1", 10, after=41)  # the run's record holds token 41
    assert first is not None and first.token > 41
    assert await one.release(first)
    # The counter followed: a later lock of another run, with no stored token, still gets a newer one.
    second = await two.acquire("e2", 10)
    assert second is not None and second.token > first.token


async def test_renew_and_release_only_by_holder(backends: tuple[LockBackend, LockBackend]) -> None:
    one, two = backends
    first = await one.acquire("e1", 10)
    assert first is not None
    assert await one.release(first)
    second = await two.acquire("e1", 10)
    assert second is not None
    # The old lease can neither extend nor drop the new holder's lock.
    assert not await one.renew(first, 10)
    assert not await one.release(first)
    assert (await two.holder("e1")).owner == "r2"  # type: ignore[union-attr]
    assert await two.renew(second, 10)
    assert await two.release(second)
    assert await one.holder("e1") is None


async def test_renew_many_answers_per_lease_in_order(backends: tuple[LockBackend, LockBackend]) -> None:
    one, two = backends
    leases = [await one.acquire(f"many-{index}", 10) for index in range(1200)]  # more than a chunk
    assert all(lease is not None for lease in leases)
    held = [lease for lease in leases if lease is not None]
    assert await one.release(held[700])
    assert await two.acquire("many-700", 10) is not None  # someone else's now
    assert await one.release(held[3])  # gone
    answers = await one.renew_many(held, 10)
    assert len(answers) == 1200
    assert [index for index, renewed in enumerate(answers) if not renewed] == [3, 700]
    assert await one.renew_many([], 10) == []


async def test_retake_sets_only_the_locks_nobody_holds(backends: tuple[LockBackend, LockBackend]) -> None:
    one, two = backends
    mine = await one.acquire("retake-a", 10)
    theirs = await one.acquire("retake-b", 10)
    assert mine is not None and theirs is not None
    assert await one.release(mine) and await one.release(theirs)  # both expired
    assert await two.acquire("retake-b", 10) is not None  # and one was taken meanwhile
    assert await one.retake_many([mine, theirs], 10) == [True, False]
    holder = await two.holder("retake-a")
    assert holder is not None and holder.owner == "r1" and holder.token == mine.token
    assert await one.renew(mine, 10)


async def test_heartbeat_marks_replica_alive(backends: tuple[LockBackend, LockBackend]) -> None:
    one, two = backends
    assert not await two.is_alive("r1")
    await one.heartbeat(10)
    assert await two.is_alive("r1")
    await one.drop_heartbeat()
    assert not await two.is_alive("r1")


async def test_inprocess_lock_expires_after_ttl() -> None:
    clock = FakeClock()
    backend = InProcessLockBackend("r1", "pod-1", InProcessLockSpace(clock))
    lease = await backend.acquire("e1", 5)
    assert lease is not None
    clock.now += 4
    assert await backend.renew(lease, 5)
    clock.now += 4.9
    assert (await backend.holder("e1")) is not None
    clock.now += 0.2
    assert await backend.holder("e1") is None
    assert not await backend.renew(lease, 5)
    assert await backend.acquire("e1", 5) is not None


async def test_inprocess_counter_of_a_new_process_starts_above_the_stored_token() -> None:
    crashed = InProcessLockBackend("r1", "pod-1", InProcessLockSpace())
    old = await crashed.acquire("e1", 5)
    assert old is not None and old.token == 1
    restarted = InProcessLockBackend("r1", "pod-1", InProcessLockSpace())  # counter back at 0
    lease = await restarted.acquire("e1", 5, after=old.token)
    assert lease is not None and lease.token == 2


async def test_inprocess_heartbeat_expires() -> None:
    clock = FakeClock()
    backend = InProcessLockBackend("r1", "pod-1", InProcessLockSpace(clock))
    await backend.heartbeat(3)
    assert await backend.is_alive("r1")
    clock.now += 3.1
    assert not await backend.is_alive("r1")


@pytest.mark.redis
async def test_redis_keys_values_and_ttls(redis_url: str) -> None:
    backend = RedisLockBackend(redis_url, "r1", "pod-1")
    raw = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=2)
    try:
        lease = await backend.acquire("exec-42", 7)
        assert lease is not None
        value = json.loads(await raw.get("gl:orchestrator:lock:exec-42"))
        assert value == {
            "owner": "r1",
            "pod": "pod-1",
            "token": lease.token,
            "acquired_at": lease.acquired_at,
        }
        assert lease.acquired_at.endswith("Z")
        assert 0 < await raw.pttl(lock_key("exec-42")) <= 7000
        assert int(await raw.get(FENCE_KEY)) == lease.token
        await backend.heartbeat(9)
        beat = json.loads(await raw.get("gl:orchestrator:heartbeat:r1"))
        assert beat["pod"] == "pod-1" and beat["at"].endswith("Z")
        assert 0 < await raw.pttl(heartbeat_key("r1")) <= 9000
        holder = await backend.holder("exec-42")
        assert holder is not None and holder.ttl_ms is not None and 0 < holder.ttl_ms <= 7000
    finally:
        await backend.close()
        await raw.aclose()


@pytest.mark.redis
async def test_redis_lock_expires_and_can_be_taken_over(redis_url: str) -> None:
    one = RedisLockBackend(redis_url, "r1", "pod-1")
    two = RedisLockBackend(redis_url, "r2", "pod-2")
    raw = aioredis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        lease = await one.acquire("e1", 30)
        assert lease is not None
        await raw.delete(lock_key("e1"))  # as if the TTL ran out (the holder died)
        taken = await two.acquire("e1", 30)
        assert taken is not None and taken.owner == "r2"
        holder = await two.holder("e1")
        assert holder is not None and holder.owner == "r2"
        assert not await one.renew(lease, 30)
    finally:
        await one.close()
        await two.close()
        await raw.aclose()


@pytest.mark.redis
async def test_redis_fence_lost_with_a_restart_still_gives_a_newer_token(redis_url: str) -> None:
    backend = RedisLockBackend(redis_url, "r1", "pod-1")
    raw = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=2)
    try:
        await raw.delete(FENCE_KEY)  # Redis restarted without persistence
        lease = await backend.acquire("e-fence", 5, after=500)
        assert lease is not None and lease.token == 501
        assert int(await raw.get(FENCE_KEY)) == 501  # raised to it: the next token is newer still
        assert json.loads(await raw.get(lock_key("e-fence")))["token"] == 501
        assert await backend.renew(lease, 5) and await backend.release(lease)
        other = await backend.acquire("e-other", 5)
        assert other is not None and other.token == 502
        await backend.release(other)
    finally:
        await backend.close()
        await raw.aclose()


@pytest.mark.redis
async def test_foreign_lock_value_is_reported_as_held(redis_url: str) -> None:
    backend = RedisLockBackend(redis_url, "r1", "pod-1")
    raw = aioredis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        await raw.set(lock_key("e1"), "not json")
        holder = await backend.holder("e1")
        assert holder is not None and holder.owner == "unknown"
        assert await backend.acquire("e1", 5) is None
    finally:
        await backend.close()
        await raw.aclose()


async def test_unreachable_redis_raises_typed_error() -> None:
    backend = RedisLockBackend(f"redis://127.0.0.1:{free_port()}/0", "r1", "pod-1", timeout_seconds=0.5)
    try:
        with pytest.raises(LockBackendUnavailable):
            await backend.ping()
        with pytest.raises(LockBackendUnavailable):
            await backend.acquire("e1", 5)
    finally:
        await backend.close()

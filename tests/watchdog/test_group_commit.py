"""Deliveries that arrive while the intake's transaction runs are applied together in the next one."""

from __future__ import annotations

import asyncio

import pytest

from watchdog.episodes import GroupCommit


class Recorder:
    """An `apply` that records its batches; the first batch waits for `release`."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, items: list[str]) -> list[str | BaseException]:
        self.batches.append(items)
        if len(self.batches) == 1:
            self.started.set()
            await self.release.wait()
        return [ValueError(f"refused {item}") if item.startswith("bad") else item.upper() for item in items]


def _commit(apply: Recorder, *, max_size: int = 100, concurrency: int = 1) -> GroupCommit[str, str]:
    return GroupCommit(apply, max_size=max_size, size=len, concurrency=concurrency, name="test-batches")


async def test_items_arriving_during_a_batch_are_applied_together_in_the_next() -> None:
    apply = Recorder()
    commit = _commit(apply)
    first = asyncio.create_task(commit.submit("a"))
    await apply.started.wait()
    later = [asyncio.create_task(commit.submit(item)) for item in ("b", "c", "d")]
    apply.release.set()
    assert await asyncio.gather(first, *later) == ["A", "B", "C", "D"]
    assert apply.batches == [["a"], ["b", "c", "d"]]


async def test_a_refused_item_fails_only_its_own_submitter() -> None:
    apply = Recorder()
    apply.release.set()
    commit = _commit(apply)
    answers = await asyncio.gather(commit.submit("x"), commit.submit("bad"), return_exceptions=True)
    assert answers[0] == "X" and isinstance(answers[1], ValueError) and "refused bad" in str(answers[1])


async def test_a_batch_holds_at_most_max_size_but_always_one_item() -> None:
    apply = Recorder()
    commit = _commit(apply, max_size=4)
    first = asyncio.create_task(commit.submit("a"))
    await apply.started.wait()
    later = [asyncio.create_task(commit.submit(item)) for item in ("bb", "cc", "ddddd", "e")]
    apply.release.set()
    await asyncio.gather(first, *later)
    assert apply.batches == [["a"], ["bb", "cc"], ["ddddd"], ["e"]]


async def test_a_bug_in_apply_reaches_every_submitter_of_the_batch_and_the_next_batch_still_runs() -> None:
    calls = []

    async def apply(items: list[str]) -> list[str | BaseException]:
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("bug")
        return items

    commit: GroupCommit[str, str] = GroupCommit(apply, max_size=10, size=len, concurrency=1, name="t")
    with pytest.raises(RuntimeError, match="bug"):
        await commit.submit("a")
    assert await commit.submit("b") == "b"

"""Test doubles shared across layers (for unit tests of one component)."""

from __future__ import annotations

import asyncio
import heapq
from typing import Any, Awaitable


class FakeTime:
    """A clock plus an async sleep that only returns when ``run`` moves the clock to its time."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._timers, (self.now + max(0.0, delay), self._seq, fut))
        await fut

    async def at(self, when: float, aw: Awaitable[Any]) -> Any:
        """Start ``aw`` at fake time ``when``."""
        await self.sleep(when - self.now)
        return await aw

    async def run(self, *aws: Awaitable[Any], until: float | None = None, max_steps: int = 10_000) -> list[Any]:
        """Run to completion (results), or until the clock would pass ``until`` (the tasks, still
        running); whenever every task is blocked, jump to the next timer."""
        tasks = [asyncio.ensure_future(a) for a in aws]
        for _ in range(max_steps):
            for _ in range(20):
                await asyncio.sleep(0)
            if all(t.done() for t in tasks):
                return [t.result() for t in tasks]
            while self._timers and self._timers[0][2].done():
                heapq.heappop(self._timers)
            assert self._timers, "deadlock: tasks wait and no timer is pending"
            when, _, fut = self._timers[0]
            if until is not None and when > until:
                self.now = until
                return tasks
            heapq.heappop(self._timers)
            self.now = max(self.now, when)
            fut.set_result(None)
        raise AssertionError("did not finish")


class PausingConsumer:
    """What the dispatcher's readers ask of an aiokafka consumer to hold a partition back:
    pause / resume, and the assignment."""

    def __init__(self, *assigned: Any) -> None:
        self.paused: set[Any] = set()
        self.assigned = set(assigned)

    def pause(self, *tps: Any) -> None:
        self.paused.update(tps)

    def resume(self, *tps: Any) -> None:
        self.paused.difference_update(tps)

    def assignment(self) -> set[Any]:
        return self.assigned

"""The one virtual clock of the tests: a :class:`sidecar.ports.Clock` whose time moves only
when a test moves it or when every task waits on it.

- :meth:`VirtualClock.advance` moves time by hand (a session's token ageing, a scrape later);
- :meth:`VirtualClock.run` drives loops: it lets every runnable task run, then wakes the
  earliest sleeper and moves time to its deadline, so an hour of refreshes takes
  milliseconds; at ``until`` seconds it sets the ``stop`` event. Several loops sharing it
  share one time line (replicas coordinating through one secret).

The monotonic reading starts at 1000 and the wall clock at ``start`` (2027-01-15), so a test
can tell them apart.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Coroutine
from typing import Any

__all__ = ["START", "VirtualClock"]

START = 1_800_000_000.0
"""The wall clock's first reading, in Unix seconds."""


class VirtualClock:
    def __init__(self, start: float = START) -> None:
        self.mono = 1000.0
        self.wall_offset = start - self.mono
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    # -- sidecar.ports.Clock -------------------------------------------------------------

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.mono + self.wall_offset

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._sleepers, (self.mono + max(timeout, 0.0), self._seq, future))

        async def until_set() -> None:
            await event.wait()

        waiter = asyncio.ensure_future(until_set())
        try:
            await asyncio.wait([future, waiter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not future.done():
                future.cancel()
        return event.is_set()

    # -- moving time ---------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        self.mono += seconds

    async def run(self, until: float, stop: asyncio.Event, tasks: list[asyncio.Task[Any]]) -> None:
        """Run ``tasks`` on virtual time until they finish; set ``stop`` at ``until`` seconds."""
        deadline = self.mono + until
        for _ in range(1_000_000):
            for _ in range(30):
                await asyncio.sleep(0)
            if all(t.done() for t in tasks):
                return
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)
            if not self._sleepers or self._sleepers[0][0] >= deadline:
                self.mono = max(self.mono, deadline)
                stop.set()
                if not self._sleepers:
                    continue
            when, _, future = heapq.heappop(self._sleepers)
            self.mono = max(self.mono, when)
            future.set_result(None)
        raise AssertionError("virtual time did not finish: a hot loop?")

    async def drive(
        self, work: Coroutine[Any, Any, Any], until: float, stop: asyncio.Event
    ) -> None:
        """Run one coroutine (a refresher's loop) on virtual time; ``stop`` at ``until``."""
        task = asyncio.ensure_future(work)
        await self.run(until, stop, [task])
        await task

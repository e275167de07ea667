"""One event loop per test, for tests that drive async code from sync test functions.

An ``httpx.AsyncClient`` (the Vault session's, say) belongs to the loop it first ran on, as in
the sidecar, so every step of a test must run on the same loop:

    LOOP = PerTestLoop()
    run = LOOP.run

    @pytest.fixture(autouse=True)
    def event_loop_of_the_test() -> Iterator[None]:
        with LOOP.scope():
            yield
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["PerTestLoop"]

T = TypeVar("T")


class PerTestLoop:
    def __init__(self) -> None:
        self._loops: list[asyncio.AbstractEventLoop] = []

    @contextlib.contextmanager
    def scope(self) -> Iterator[asyncio.AbstractEventLoop]:
        loop = asyncio.new_event_loop()
        self._loops.append(loop)
        try:
            yield loop
        finally:
            self._loops.remove(loop)
            loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if not self._loops:
            coro.close()
            raise RuntimeError("no event loop: the test module's loop fixture is not active")
        return self._loops[-1].run_until_complete(coro)

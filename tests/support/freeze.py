"""Freezing a process the tests started: SIGSTOP, and wait until it has taken effect.

``kill(pid, SIGSTOP)`` returns before the process stops: until every thread of it has been
stopped, a request already on its way can still be answered, and a test that expects a
hang sees an answer instead. :func:`freeze` returns only once every thread is stopped.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

__all__ = ["freeze", "thaw"]

_STOPPED = frozenset("TtZX")  # stopped, traced; a zombie or dead thread runs nothing either


def freeze(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP ``pid`` and return once all its threads are stopped; TimeoutError otherwise."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while not _all_stopped(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} did not stop within {timeout}s of SIGSTOP")
        time.sleep(0.001)


def thaw(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


def _all_stopped(pid: int) -> bool:
    tasks = Path(f"/proc/{pid}/task")
    try:
        threads = list(tasks.iterdir())
    except FileNotFoundError:
        return True  # gone
    for thread in threads:
        try:
            stat = (thread / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # "tid (comm) S ...": the state follows the last ")" (comm may hold one)
        if stat.rsplit(")", 1)[1].split()[0] not in _STOPPED:
            return False
    return True

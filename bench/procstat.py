"""What a running process costs, read from ``/proc`` (Linux only; no third-party library).

- :func:`rss_kb`: ``VmRSS`` from ``/proc/<pid>/status``, the figure ``top`` and the kubelet's
  working set start from (file-backed pages such as a binary's text count, as they should).
- :func:`cpu_seconds`: user + system time of every thread, alive or already gone, from
  ``/proc/<pid>/stat`` (clock ticks, usually 10 ms).
- :func:`cpu_ns`: the same from each live thread's ``/proc/<pid>/task/<tid>/schedstat``
  (nanoseconds). Precise, but a thread that exits between two readings takes its time with
  it; :class:`CpuMeter` takes both and uses the precise one only when no thread came or went.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuMeter", "cpu_ns", "cpu_seconds", "rss_kb", "status_kb", "thread_ids"]

_TICK = os.sysconf("SC_CLK_TCK")


def status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``RssAnon``, ``VmHWM``, ...)."""
    with Path(f"/proc/{pid}/status").open(encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_kb(pid: int) -> int:
    return status_kb(pid, "VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def thread_ids(pid: int) -> set[int]:
    return {int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()}


def cpu_ns(pid: int) -> tuple[int, set[int]]:
    """Nanoseconds on CPU summed over the live threads, and which threads those were."""
    total = 0
    tids = set()
    for tid in thread_ids(pid):
        try:
            schedstat = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text(encoding="ascii")
            total += int(schedstat.split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
        tids.add(tid)
    return total, tids


@dataclass
class CpuMeter:
    """CPU time of one process between :meth:`start` and :meth:`stop`."""

    pid: int
    _ticks: float = 0.0
    _ns: int = 0
    _tids: frozenset[int] = frozenset()

    def start(self) -> None:
        self._ticks = cpu_seconds(self.pid)
        ns, tids = cpu_ns(self.pid)
        self._ns, self._tids = ns, frozenset(tids)

    def stop(self) -> dict[str, float | bool]:
        ticks = cpu_seconds(self.pid) - self._ticks
        ns, tids = cpu_ns(self.pid)
        precise = frozenset(tids) == self._tids
        seconds = (ns - self._ns) / 1e9 if precise else ticks
        return {"seconds": seconds, "tick_seconds": ticks, "precise": precise}

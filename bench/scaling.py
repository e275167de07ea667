"""Measurement 3: 1, 10 and 100 credentials in one sidecar; cost per extra credential; on time.

Three sidecars run side by side with 1, 10 and 100 credentials, each credential its own grant
and KV secret, access tokens of ``ttl`` seconds (so every credential refreshes several times in
the window). After every credential has its first token and ``settle`` seconds have passed,
the window starts: CPU over it, ``VmRSS`` at its end. Per extra credential:
``(X(100) - X(1)) / 99`` (and ``(X(10) - X(1)) / 9`` as a check).

"On time": a reader polls every credential's ``token.json`` and ``access_token`` every
``poll`` seconds, as an app would. A refresh is late when the token changed more than the
policy's latest refresh delay (plus the poll interval and one second of slack for the loaded
machine) after the previous change; an expired token on disk is a failure outright.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench.lab import Lab, Sidecar, wait_until
from bench.procstat import CpuMeter, rss_kb, status_kb

__all__ = ["measure_scaling"]

SLACK = 1.0


class _Reader(threading.Thread):
    """Reads every token file like an app would, and notes each change and anything expired."""

    def __init__(self, directories: list[Path], poll: float) -> None:
        super().__init__(name="bench-token-reader", daemon=True)
        self.directories = directories
        self.poll = poll
        self.stopping = threading.Event()
        self.changes: dict[Path, list[float]] = {d: [] for d in directories}
        self.last: dict[Path, str] = {}
        self.expired = 0
        self.reads = 0

    def run(self) -> None:
        while not self.stopping.wait(self.poll):
            now = time.time()
            for directory in self.directories:
                try:
                    token = (directory / "access_token").read_text()
                    doc = json.loads((directory / "token.json").read_text())
                except (OSError, ValueError):
                    continue
                self.reads += 1
                expires = datetime.fromisoformat(doc["expires_at"]).timestamp()
                # expires_at is rounded down to the second: the token lasts until the next one
                if expires + 1 <= now:
                    self.expired += 1
                if self.last.get(directory) != token:
                    if directory in self.last:
                        self.changes[directory].append(now)
                    self.last[directory] = token


def _all_written(sidecar: Sidecar) -> bool:
    return all((d / "access_token").exists() for d in sidecar.output_dirs)


def _window(ttl: float, refresh: dict[str, float]) -> tuple[float, float]:
    """The policy's earliest and latest refresh delay for a token of ``ttl``."""
    from sidecar.config import RefreshConfig  # noqa: PLC0415
    from sidecar.policies import schedule_policy  # noqa: PLC0415
    from sidecar.schedule import refresh_window  # noqa: PLC0415

    return refresh_window(
        ttl, schedule_policy(RefreshConfig(min_margin_seconds=refresh["min_margin_seconds"]))
    )


def measure_scaling(
    lab: Lab,
    *,
    counts: tuple[int, ...],
    ttl: int,
    window: float,
    settle: float,
    poll: float = 0.25,
) -> dict[str, Any]:
    refresh = {"min_margin_seconds": 2.0}
    sidecars: dict[int, Sidecar] = {}
    try:
        for count in counts:
            credentials = []
            for index in range(count):
                path = f"scale-{count}-{index}"
                lab.seed(path, "scale")
                credentials.append((f"c{index:03d}", path, "scale"))
            sidecars[count] = lab.launch(f"scale-{count}", credentials, refresh=refresh)
        for count, sidecar in sidecars.items():
            if not wait_until(partial(_all_written, sidecar), 60, 0.05):
                raise RuntimeError(f"{count} credentials: not every token written in 60 s")
        time.sleep(settle)
        directories = [d for s in sidecars.values() for d in s.output_dirs]
        reader = _Reader(directories, poll)
        meters = {count: CpuMeter(s.pid) for count, s in sidecars.items()}
        for meter in meters.values():
            meter.start()
        reader.start()
        started = time.monotonic()
        time.sleep(window)
        cpu = {count: meter.stop() for count, meter in meters.items()}
        elapsed = time.monotonic() - started
        reader.stopping.set()
        reader.join()
        rss = {count: rss_kb(s.pid) for count, s in sidecars.items()}
        anon = {count: status_kb(s.pid, "RssAnon") for count, s in sidecars.items()}
        alive = {count: s.process.poll() is None for count, s in sidecars.items()}
    finally:
        for sidecar in sidecars.values():
            sidecar.stop()

    earliest, latest = _window(ttl, refresh)
    budget = latest + poll + SLACK
    expected = int(elapsed // budget)
    per_count: dict[str, Any] = {}
    for count, sidecar in sidecars.items():
        gaps = [
            later - earlier
            for directory in sidecar.output_dirs
            for earlier, later in zip(
                reader.changes[directory], reader.changes[directory][1:], strict=False
            )
        ]
        refreshes = sum(len(reader.changes[d]) for d in sidecar.output_dirs)
        missed = sum(len(reader.changes[d]) < expected for d in sidecar.output_dirs)
        per_count[str(count)] = {
            "rss_kb": rss[count],
            "rss_anon_kb": anon[count],
            "cpu_seconds": round(float(cpu[count]["seconds"]), 4),
            "cpu_precise": bool(cpu[count]["precise"]),
            "refreshes_seen": refreshes,
            "late": sum(gap > budget for gap in gaps),
            "credentials_short_of_refreshes": missed,
            "max_gap_seconds": round(max(gaps), 3) if gaps else None,
            "alive": alive[count],
        }
    low, high = min(counts), max(counts)
    extra = high - low
    mid = sorted(counts)[1] if len(counts) > 2 else high
    result: dict[str, Any] = {
        "ttl_seconds": ttl,
        "window_seconds": round(elapsed, 3),
        "refresh_window_seconds": [round(earliest, 3), round(latest, 3)],
        "refreshes_expected_per_credential_at_least": expected,
        "late_budget_seconds": round(budget, 3),
        "by_credentials": per_count,
        "expired_reads": reader.expired,
        "reads": reader.reads,
        "rss_kb_per_extra_credential": round((rss[high] - rss[low]) / extra, 2),
        "rss_kb_per_extra_credential_small": round((rss[mid] - rss[low]) / (mid - low), 2),
        "cpu_seconds_per_minute_per_extra_credential": round(
            (float(cpu[high]["seconds"]) - float(cpu[low]["seconds"])) / extra * 60 / elapsed, 5
        ),
    }
    result["all_on_time"] = reader.expired == 0 and all(
        v["late"] == 0 and v["alive"] and v["credentials_short_of_refreshes"] == 0
        for v in per_count.values()
    )
    return result

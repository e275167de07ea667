"""Measurement 2: resident memory after settling and CPU over an idle minute, against the agent.

``count`` sidecars (one credential each, a one-hour access token, so no refresh falls in the
window) and ``count`` agents (one template each; their Vault token lasts an hour and a static
secret is re-rendered every five minutes, so neither renews in the window) start together,
write their first file, and settle for ``settle`` seconds. Then the same idle minute is measured
for all of them at once: CPU from ``/proc`` (see :mod:`bench.procstat`) and ``VmRSS`` at its end.
The median over the instances is the figure; min and max are the spread.

Meanwhile :mod:`bench.run` lets the fleet simulation (which needs no servers) run in a child
process: it keeps one of the two cores busy, which does not change how much CPU an idle process
uses, and saves a minute of wall time.
"""

from __future__ import annotations

import time
from typing import Any

from bench.lab import Lab, wait_until
from bench.peer import Agent
from bench.procstat import CpuMeter, rss_kb, status_kb
from bench.stats import summary

__all__ = ["measure_idle"]


def measure_idle(
    lab: Lab,
    *,
    count: int,
    window: float,
    settle: float,
) -> dict[str, Any]:
    sidecars = []
    agents: list[Agent] = []
    try:
        for index in range(count):
            path = f"idle-{index}"
            lab.seed(path, "main")
            sidecars.append(lab.launch(f"idle-{index}", [("app", path, "main")]))
            agents.append(lab.launch_agent(f"idle-{index}"))
        for sidecar in sidecars:
            if not wait_until(sidecar.token_file().exists, 30, 0.02):
                raise RuntimeError(f"idle sidecar wrote no token: {sidecar.log_lines()[-5:]}")
        for agent in agents:
            if not wait_until(agent.destination.exists, 30, 0.02):
                raise RuntimeError("idle agent wrote no file")
        time.sleep(settle)
        pids = {"sidecar": [s.pid for s in sidecars], "agent": [a.pid for a in agents]}
        meters = {who: [CpuMeter(pid) for pid in group] for who, group in pids.items()}
        rss_start = {who: [rss_kb(pid) for pid in group] for who, group in pids.items()}
        for each in meters.values():
            for meter in each:
                meter.start()
        started = time.monotonic()
        time.sleep(window)
        cpu = {who: [m.stop() for m in each] for who, each in meters.items()}
        measured = time.monotonic() - started
        result: dict[str, Any] = {"window_seconds": round(measured, 3), "instances": count}
        for who, group in pids.items():
            result[who] = {
                "rss_kb": summary([rss_kb(pid) for pid in group], digits=0),
                "rss_kb_at_window_start": summary(rss_start[who], digits=0),
                "rss_anon_kb": summary([status_kb(pid, "RssAnon") for pid in group], digits=0),
                "rss_file_kb": summary([status_kb(pid, "RssFile") for pid in group], digits=0),
                "peak_rss_kb": summary([status_kb(pid, "VmHWM") for pid in group], digits=0),
                "cpu_seconds": summary([float(c["seconds"]) for c in cpu[who]]),
                "cpu_tick_seconds": summary([float(c["tick_seconds"]) for c in cpu[who]]),
                "cpu_precise": all(bool(c["precise"]) for c in cpu[who]),
            }
        return result
    finally:
        for sidecar in sidecars:
            sidecar.stop()
        for agent in agents:
            agent.stop()

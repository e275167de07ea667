"""Measurement 1: process start to the first token file, sidecar against agent, interleaved.

Each sidecar start gets a secret seeded just before (a fresh grant, no shared access token), so
every start logs in, reads, claims, exchanges at the token endpoint, writes the rotated token
back and publishes: the whole job, not a reuse. The clock starts just before the process is
created and stops when the file is seen (polled every millisecond). Runs alternate sidecar and
agent, in alternating order, after one untimed warm-up of each (page cache, bytecode).

For the sidecar, its own log lines (JSON, timestamped in microseconds) split the time into
interpreter + imports + configuration (``sidecar.started``), the Vault login, and the rest of
the first rotation.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from bench.lab import Lab, Sidecar, wait_until
from bench.stats import summary

__all__ = ["measure_startup"]

_MILESTONES = ("sidecar.started", "vault.login", "token.refreshed")


def _milestones(sidecar: Sidecar) -> dict[str, float]:
    seen: dict[str, float] = {}
    for line in sidecar.log_lines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        event = entry.get("event")
        if event in _MILESTONES and event not in seen:
            when = datetime.fromisoformat(entry["timestamp"]).timestamp()
            seen[event] = when - sidecar.started
    return seen


def _sidecar_once(lab: Lab, index: int) -> tuple[float, dict[str, float]]:
    path = f"startup-{index}"
    lab.seed(path, "main")
    sidecar = lab.launch(f"startup-{index}", [("app", path, "main")])
    try:
        if not wait_until(sidecar.token_file().exists, 30):
            raise RuntimeError(f"sidecar wrote no token file: {sidecar.log_lines()[-5:]}")
        elapsed = time.time() - sidecar.started
    finally:
        sidecar.stop()
    return elapsed, _milestones(sidecar)


def _agent_once(lab: Lab, index: int) -> float:
    agent = lab.launch_agent(f"startup-{index}")
    try:
        if not wait_until(agent.destination.exists, 30):
            raise RuntimeError("agent wrote no file")
        return time.time() - agent.started
    finally:
        agent.stop()


def measure_startup(lab: Lab, runs: int) -> dict[str, Any]:
    _sidecar_once(lab, 0)
    _agent_once(lab, 0)
    ours: list[float] = []
    peer: list[float] = []
    phases: dict[str, list[float]] = {m: [] for m in _MILESTONES}
    for index in range(1, runs + 1):
        order = ("sidecar", "agent") if index % 2 else ("agent", "sidecar")
        for who in order:
            if who == "agent":
                peer.append(_agent_once(lab, index))
            else:
                elapsed, seen = _sidecar_once(lab, index)
                ours.append(elapsed)
                for name, offset in seen.items():
                    phases[name].append(offset)
    ratios = [o / p for o, p in zip(ours, peer, strict=True)]
    return {
        "sidecar_seconds": summary(ours),
        "agent_seconds": summary(peer),
        "ratio": summary(ratios, digits=3),
        "sidecar_milestones_seconds": {name: summary(v) for name, v in phases.items()},
    }

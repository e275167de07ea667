"""One soak from start to verdict: set up, shake, calm down, recover, stop, judge.

:func:`soak` returns a record (plain JSON data) of everything counted; :func:`failures` lists
what the record shows broken, empty when the soak passed. The pytest variants and
``python -m tests.soak`` (``make soak``) share both.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sidecar import __version__
from tests.soak.chaos import Chaos
from tests.soak.ledger import FAULT_KINDS, judge
from tests.soak.plan import Plan
from tests.support.deployment import assert_vault_holds_the_live_token, set_up
from tests.support.idp import IdpServer
from tests.support.openbao import OpenBaoServer

__all__ = ["failures", "machine", "soak"]

RECOVERY_SECONDS = 120.0
"""How long the replicas get, once the chaos stops, to be ready again with the chain moving."""


def soak(openbao: OpenBaoServer, idp: IdpServer, root: Path, plan: Plan) -> dict[str, Any]:
    """Run one soak in ``root`` against the two servers and return its record."""
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    chaos = Chaos(openbao, idp, set_up(openbao, idp, root), plan)
    try:
        chaos.start()
        chaos.run()
        chaos.calm()
        recovered = chaos.recover(timeout=RECOVERY_SECONDS)
        exit_codes = chaos.stop()
    except BaseException:
        chaos.abort()
        raise
    ledger = chaos.ledger_settled()
    stats = idp.stats()
    verdict = judge(ledger, stats["revoked_grants"], retry_within=plan.retry_within)
    try:
        assert_vault_holds_the_live_token(chaos.first)
        live = True
    except AssertionError:
        live = False
    ended = datetime.now(UTC)
    counts = chaos.counts
    readiness_problems = [
        f"{r.name}: {problem}" for r in chaos.replicas for problem in r.watcher.problems
    ]
    return {
        "meta": {
            "started_at": started.isoformat(timespec="seconds"),
            "ended_at": ended.isoformat(timespec="seconds"),
            "duration_seconds": round((ended - started).total_seconds()),
            "seed": plan.seed,
            "sidecar_version": __version__,
            "commit": _commit(),
            "machine": {**machine(), "load_average_before": _load(load_before)},
        },
        "plan": plan.describe(),
        "chaos": {
            "seconds": counts["chaos_seconds"],
            "kills": counts["kills"],
            "restarts": counts["restarts"],
            "freezes": counts["freezes"],
            "freezes_declined": counts["freezes_declined"],
            "seconds_frozen": round(chaos.seconds_frozen),
            "faults_injected": {kind: chaos.injected[kind] for kind in FAULT_KINDS},
            "faults_applied": verdict.faults,
            "seals": counts["seals"],
            "seals_cut_short": counts["seals_cut_short"],
            "seconds_sealed": round(chaos.seconds_sealed),
        },
        "server": {
            "token_requests": verdict.requests,
            "exchanges": verdict.exchanges,
            "rotations": verdict.rotations,
            "presented_twice": verdict.presented_twice,
            "permitted_retries": verdict.permitted_retries,
            "reuse": len(verdict.unexplained),
            "reuse_detail": list(verdict.unexplained),
            "reuse_counted_by_provider": stats["refresh_token_reuse"],
            "grants_revoked": len(verdict.revoked),
            "revoked_grants": len(verdict.revoked_unexplained),
        },
        "operator": {
            "reseeds_after_window": counts["reseeds_window"],
            "reseeds_after_revocation": counts["reseeds_revoked"],
            "reseeds_after_rejection": counts["reseeds_rejected"],
            "window_hits": len(chaos.window_hits),
            "window_detail": chaos.window_hits,
        },
        "readiness": {
            "ready_answers_checked": sum(r.watcher.ready_checks for r in chaos.replicas),
            "problems": readiness_problems,
        },
        "end": {
            "recovered_in_seconds": recovered,
            "exit_codes": exit_codes,
            "unexpected_exits": chaos.unexpected_exits,
            "vault_holds_live_token": live,
            "load_average_after": _load(os.getloadavg()),
        },
    }


def failures(record: dict[str, Any]) -> list[str]:
    """Everything the record shows broken; empty when the soak passed."""
    plan, chaos, server = record["plan"], record["chaos"], record["server"]
    operator, end = record["operator"], record["end"]
    found: list[str] = []

    def expect(ok: bool, message: str) -> None:
        if not ok:
            found.append(message)

    expect(server["reuse"] == 0, f"refresh tokens presented twice: {server['reuse_detail']}")
    expect(server["revoked_grants"] == 0, "grants revoked without a permitted retry")
    expect(
        server["reuse_counted_by_provider"] == server["permitted_retries"],
        f"the provider counted {server['reuse_counted_by_provider']} presentations of spent "
        f"tokens, the ledger explains {server['permitted_retries']}",
    )
    expect(not record["readiness"]["problems"], f"readiness: {record['readiness']['problems']}")
    expect(end["vault_holds_live_token"], "Vault does not hold the live refresh token")
    expect(end["recovered_in_seconds"] is not None, "the replicas did not recover after the chaos")
    expect(all(code == 0 for code in end["exit_codes"].values()), f"exits {end['exit_codes']}")
    expect(not end["unexpected_exits"], f"replicas exited by themselves: {end['unexpected_exits']}")
    allowed = max(1, chaos["kills"] // 50)
    expect(
        operator["window_hits"] <= allowed,
        f"{operator['window_hits']} rotations lost between commit and journal "
        f"(at most {allowed} for {chaos['kills']} kills)",
    )
    expect(chaos["kills"] >= plan["min_kills"], f"only {chaos['kills']} kills")
    expect(chaos["freezes"] >= 1, "no replica was frozen past its claim")
    expect(chaos["seals"] >= 1, "Vault was never sealed")
    missing = [kind for kind, n in chaos["faults_applied"].items() if n == 0]
    expect(not missing, f"faults never applied: {missing}")
    expect(
        server["rotations"] >= plan["seconds"] / 8,
        f"only {server['rotations']} rotations in {plan['seconds']:.0f} s",
    )
    return found


def machine() -> dict[str, Any]:
    """What the soak ran on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def _load(values: tuple[float, float, float]) -> list[float]:
    return [round(v, 2) for v in values]


def _commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None

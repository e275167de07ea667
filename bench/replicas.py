"""Measurement 5: exchanges at the token endpoint per rotation period, 1, 3 and 10 replicas.

Each group of replicas shares one KV secret and has its own authorization server (so its
``refresh_succeeded`` counter is its own); all groups run side by side as real processes. Access
tokens last ``ttl`` seconds. After every replica has published a token, the servers' counters
are reset and ``window`` seconds pass; then:

    exchanges per rotation period = refresh_succeeded * period / window

where ``period`` is the middle of the policy's refresh window for that lifetime (what one
replica alone would do). Several replicas wake at their own random points in that window and
the first one refreshes for all, so a perfect group still lands a little above 1 (the earliest
of N draws comes sooner than the middle).

Also reported per group: Vault requests on the secret per period (from OpenBao's audit log),
and the server's reuse and ``invalid_grant`` counters, which must stay at zero (R1).

Beside each group, in the same window and against the same server, as many replicas with
``grant: client_credentials`` share a secret holding only the client's credentials: they
share no token (see :mod:`sidecar.client_grant`), so this measures what that choice costs the
authorization server (``client_credentials_issued`` per period) and Vault.
"""

from __future__ import annotations

import time
from typing import Any

from bench.lab import Lab, Sidecar, wait_until

__all__ = ["measure_replicas"]


def measure_replicas(
    lab: Lab,
    *,
    groups: tuple[int, ...],
    ttl: int,
    window: float,
    settle: float,
) -> dict[str, Any]:
    from sidecar.config import RefreshConfig  # noqa: PLC0415
    from sidecar.policies import schedule_policy  # noqa: PLC0415
    from sidecar.schedule import refresh_window  # noqa: PLC0415

    refresh = {"min_margin_seconds": 2.0}
    low, high = refresh_window(
        ttl, schedule_policy(RefreshConfig(min_margin_seconds=refresh["min_margin_seconds"]))
    )
    period = (low + high) / 2
    members: dict[int, list[Sidecar]] = {}
    clients: dict[int, list[Sidecar]] = {}
    try:
        for size in groups:
            path = f"replicas-{size}"
            lab.seed(path, f"rep{size}")
            members[size] = [
                lab.launch(f"rep{size}-{i}", [("app", path, f"rep{size}")], refresh=refresh)
                for i in range(size)
            ]
            secret = lab.idps[f"rep{size}"].client_secret("client-basic")
            lab.seed_static(f"cc-{size}", {"client_id": "client-basic", "client_secret": secret})
            clients[size] = [
                lab.launch(
                    f"cc{size}-{i}",
                    [("app", f"cc-{size}", f"rep{size}")],
                    refresh=refresh,
                    grant="client_credentials",
                )
                for i in range(size)
            ]
        for size, group in [*members.items(), *clients.items()]:
            for sidecar in group:
                if not wait_until(sidecar.token_file().exists, 60, 0.05):
                    raise RuntimeError(f"{size} replicas: {sidecar.root.name} wrote no token")
        time.sleep(settle)
        mark = lab.vault.audit_mark()
        for size in groups:
            lab.idps[f"rep{size}"].reset()
        started = time.monotonic()
        time.sleep(window)
        stats = {size: lab.idps[f"rep{size}"].stats() for size in groups}
        elapsed = time.monotonic() - started
        audit = lab.vault.audit_requests(since=mark)
        alive = {
            size: all(s.process.poll() is None for s in group) for size, group in members.items()
        }
        valid = {
            size: all(float(s.token_file().stat().st_mtime) > time.time() - ttl for s in group)
            for size, group in members.items()
        }
    finally:
        for group in [*members.values(), *clients.values()]:
            for sidecar in group:
                sidecar.stop()

    periods = elapsed / period
    result: dict[str, Any] = {
        "ttl_seconds": ttl,
        "window_seconds": round(elapsed, 3),
        "rotation_period_seconds": round(period, 3),
        "periods_in_window": round(periods, 2),
        "by_replicas": {},
        "client_credentials": {},
    }
    for size in groups:
        counters = stats[size]
        data_path = f"secret/data/bench/replicas-{size}"
        reads = sum(1 for op, p in audit if p == data_path and op == "read")
        writes = sum(1 for op, p in audit if p == data_path and op in ("create", "update"))
        result["by_replicas"][str(size)] = {
            "exchanges": counters["refresh_succeeded"],
            "exchanges_per_period": round(counters["refresh_succeeded"] / periods, 3),
            "vault_reads_per_period": round(reads / periods, 2),
            "vault_writes_per_period": round(writes / periods, 2),
            "refresh_token_reuse": counters["refresh_token_reuse"],
            "invalid_grant": counters["refresh_invalid_grant"],
            "grants_revoked": counters["grants_revoked"],
            "all_alive": alive[size],
            "all_files_fresh": valid[size],
        }
        cc_path = f"secret/data/bench/cc-{size}"
        issued = counters.get("client_credentials_issued", 0)
        result["client_credentials"][str(size)] = {
            "exchanges": issued,
            "exchanges_per_period": round(issued / periods, 3),
            "vault_reads_per_period": round(
                sum(1 for op, p in audit if p == cc_path and op == "read") / periods, 2
            ),
            "vault_writes_per_period": round(
                sum(1 for op, p in audit if p == cc_path and op in ("create", "update")) / periods,
                2,
            ),
            "errors": sum(counters.get("client_credentials_errors", {}).values()),
        }
    return result

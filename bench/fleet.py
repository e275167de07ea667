"""Measurement 6: a fleet of sidecars on a fake clock, driven by the sidecar's pure scheduler.

No processes and no servers: ``sidecars`` independent sidecars (one credential each, each its
own secret) over ``duration`` simulated seconds, deciding exactly as the refresher does, with
the sidecar's own pure functions and its default configuration:

- after a successful exchange at ``t`` the next refresh is at
  ``t + refresh_delay(effective_lifetime(expires_in))`` (:mod:`sidecar.schedule`);
- a failed exchange (the authorization server is down: connection refused, no
  ``Retry-After``) does what :class:`sidecar.refresher.Refresher` does: the shared backoff
  ``next_attempt_at = t + backoff_delay(failures)`` goes into the secret, and the loop itself
  sleeps its own ``backoff_delay(failures)`` (:mod:`sidecar.backoff`); waking before
  ``next_attempt_at``, :func:`sidecar.coordination.decide` says WAIT and the loop sleeps the
  rest times ``uniform(1.0, 1.2)``, as the refresher does.

Time is a plain float (the fake clock); randomness is one seeded ``random.Random``.

The fleet starts in steady state: each sidecar's last exchange is drawn uniformly over one
mean refresh interval before a warm-up hour, which is simulated but not counted.

Figures (bucket: ``bucket`` seconds, one minute by default):

- steady state, from the start until the outage: mean and peak exchanges per bucket, and their
  ratio;
- after the outage, from the server's return to the end of the run: peak per bucket against
  the same steady mean (the recovery burst, and its echoes one refresh interval later);
- ``all_valid_after``: seconds from the server's return until every sidecar holds an
  unexpired access token again;
- ``all_fresh_after``: seconds from the server's return until every sidecar whose refresh came
  due during the outage has exchanged successfully (nobody is still overdue).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from sidecar.backoff import BackoffPolicy, backoff_delay
from sidecar.coordination import Action, CoordinationPolicy, SharedState, decide
from sidecar.schedule import SchedulePolicy, effective_lifetime, refresh_delay, refresh_window

__all__ = ["FleetResult", "FleetScenario", "default_policies", "simulate"]

WARM_UP = 3600.0


@dataclass(frozen=True, slots=True)
class FleetScenario:
    sidecars: int = 10_000
    duration: float = 86_400.0
    expires_in: float = 300.0
    """What the authorization server sends; the sidecar clamps it (effective_lifetime)."""
    outage_start: float | None = 43_200.0
    outage_seconds: float = 600.0
    bucket: float = 60.0
    seed: int = 1
    warm_up: float = WARM_UP

    @property
    def outage_end(self) -> float | None:
        return None if self.outage_start is None else self.outage_start + self.outage_seconds


@dataclass(slots=True)
class FleetResult:
    scenario: FleetScenario
    attempts: list[int]
    """Exchanges the authorization server received, per bucket (none while it is down)."""
    refused: list[int]
    """Attempts while the server was down (connection refused), per bucket."""
    all_valid_after: float | None = None
    all_fresh_after: float | None = None
    lapsed: int = 0
    """Sidecars whose access token expired before their first exchange after the return."""
    overdue_at_return: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def _window(self, start: float, end: float) -> list[int]:
        size = self.scenario.bucket
        return self.attempts[int(start // size) : math.ceil(end / size)]

    @property
    def steady(self) -> list[int]:
        end = self.scenario.outage_start
        return self._window(0.0, end if end is not None else self.scenario.duration)

    @property
    def steady_mean(self) -> float:
        steady = self.steady
        return sum(steady) / len(steady)

    @property
    def steady_peak_to_mean(self) -> float:
        return max(self.steady) / self.steady_mean

    @property
    def after(self) -> list[int]:
        end = self.scenario.outage_end
        return [] if end is None else self._window(end, self.scenario.duration)

    @property
    def recovery_peak_to_mean(self) -> float | None:
        after = self.after
        return max(after) / self.steady_mean if after else None

    def summary(self) -> dict[str, Any]:
        s = self.scenario
        after = self.after
        return {
            "sidecars": s.sidecars,
            "duration_seconds": s.duration,
            "expires_in_seconds": s.expires_in,
            "bucket_seconds": s.bucket,
            "outage": None
            if s.outage_start is None
            else {"start_seconds": s.outage_start, "duration_seconds": s.outage_seconds},
            "exchanges": sum(self.attempts),
            "steady_mean_per_bucket": round(self.steady_mean, 2),
            "steady_peak_per_bucket": max(self.steady),
            "steady_peak_to_mean": round(self.steady_peak_to_mean, 3),
            "after_outage_peak_per_bucket": max(after) if after else None,
            "after_outage_peak_at_seconds_after_return": (
                after.index(max(after)) * s.bucket if after else None
            ),
            "after_outage_peak_to_mean": (
                round(self.recovery_peak_to_mean, 3) if self.recovery_peak_to_mean else None
            ),
            "refused_while_down": sum(self.refused),
            "tokens_lapsed": self.lapsed,
            "overdue_at_return": self.overdue_at_return,
            "all_valid_after_seconds": _round(self.all_valid_after),
            "all_fresh_after_seconds": _round(self.all_fresh_after),
            **self.extra,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def default_policies() -> tuple[SchedulePolicy, BackoffPolicy, CoordinationPolicy]:
    """The policies a sidecar runs with when its configuration sets nothing."""
    from sidecar.config import CoordinationConfig, RefreshConfig  # noqa: PLC0415
    from sidecar.policies import (  # noqa: PLC0415
        backoff_policy,
        coordination_policy,
        schedule_policy,
    )

    refresh = RefreshConfig()
    return (
        schedule_policy(refresh),
        backoff_policy(refresh),
        coordination_policy(CoordinationConfig(holder="fleet")),
    )


@dataclass(slots=True)
class _Fleet:
    """What one simulation run shares: policies, the server's state, and the tallies."""

    scenario: FleetScenario
    schedule: SchedulePolicy
    backoff: BackoffPolicy
    coordination: CoordinationPolicy
    rng: random.Random
    lifetime: float
    result: FleetResult
    worst_valid: float = 0.0
    worst_fresh: float = 0.0

    def sidecar(self) -> None:
        """One sidecar's whole day, decided as the refresher decides."""
        s, rng, result = self.scenario, self.rng, self.result
        down_from = s.outage_start if s.outage_start is not None else math.inf
        back_at = s.outage_end if s.outage_end is not None else math.inf
        low, high = refresh_window(self.lifetime, self.schedule)
        # Steady state: the last exchange happened somewhere in one mean interval.
        last = -s.warm_up - rng.uniform(0.0, (low + high) / 2)
        expires_at = last + self.lifetime
        t = due = last + refresh_delay(self.lifetime, self.schedule, rng)
        failures = 0
        next_attempt_at: float | None = None
        while t < s.duration:
            if next_attempt_at is not None:
                state = SharedState(next_attempt_at=next_attempt_at, failures=failures)
                decision = decide(
                    "token",
                    state,
                    now=t,
                    me="me",
                    fresh_until=None,
                    policy=self.coordination,
                    draw=rng.random(),
                )
                if decision.action is Action.WAIT and decision.until is not None:
                    t = decision.until
                    continue
            index = int(t // s.bucket) if t >= 0 else -1
            if down_from <= t < back_at:
                if index >= 0:
                    result.refused[index] += 1
                failures += 1
                # Refresher._after_failure shares a backoff; Refresher._fail sleeps its own.
                next_attempt_at = t + backoff_delay(failures, self.backoff, rng)
                t += backoff_delay(failures, self.backoff, rng)
                continue
            if index >= 0:
                result.attempts[index] += 1
            if last < back_at <= t:  # the first exchange after the server's return
                if expires_at <= t:
                    result.lapsed += 1
                    self.worst_valid = max(self.worst_valid, t - back_at)
                if due < back_at:
                    result.overdue_at_return += 1
                    self.worst_fresh = max(self.worst_fresh, t - back_at)
            failures = 0
            next_attempt_at = None
            last = t
            expires_at = t + self.lifetime
            t = due = t + refresh_delay(self.lifetime, self.schedule, rng)


def simulate(
    scenario: FleetScenario,
    schedule: SchedulePolicy,
    backoff: BackoffPolicy,
    coordination: CoordinationPolicy,
    rng: random.Random | None = None,
) -> FleetResult:
    buckets = math.ceil(scenario.duration / scenario.bucket)
    fleet = _Fleet(
        scenario=scenario,
        schedule=schedule,
        backoff=backoff,
        coordination=coordination,
        rng=rng or random.Random(scenario.seed),  # noqa: S311  # a simulation, not cryptography
        lifetime=effective_lifetime(scenario.expires_in, schedule),
        result=FleetResult(scenario=scenario, attempts=[0] * buckets, refused=[0] * buckets),
    )
    for _ in range(scenario.sidecars):
        fleet.sidecar()
    result = fleet.result
    if scenario.outage_start is not None:
        result.all_valid_after = fleet.worst_valid
        result.all_fresh_after = fleet.worst_fresh
    low, high = refresh_window(fleet.lifetime, schedule)
    result.extra["refresh_window_seconds"] = [round(low, 3), round(high, 3)]
    result.extra["backoff"] = {"initial": backoff.initial, "maximum": backoff.maximum}
    return result


def scenarios() -> dict[str, FleetScenario]:
    """What ``make bench`` simulates: the default lifetime, and an hour for comparison."""
    return {
        "expires_in_300": FleetScenario(expires_in=300.0),
        "expires_in_3600": FleetScenario(expires_in=3600.0),
    }


def main() -> int:
    """Run :func:`scenarios` with the default policies; print one JSON document."""
    import json  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import time  # noqa: PLC0415

    schedule, backoff, coordination = default_policies()
    out: dict[str, Any] = {}
    for name, scenario in scenarios().items():
        started = time.perf_counter()
        result = simulate(scenario, schedule, backoff, coordination)
        summary = result.summary()
        summary["simulation_seconds"] = round(time.perf_counter() - started, 2)
        if scenario.outage_start is not None:
            first = int(scenario.outage_start // scenario.bucket) - 5
            summary["per_bucket_around_outage"] = {
                "from_seconds": first * scenario.bucket,
                "exchanges": result.attempts[first : first + 40],
                "refused": result.refused[first : first + 40],
            }
        out[name] = summary
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

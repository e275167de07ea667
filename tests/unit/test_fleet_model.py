"""The fleet simulation behind ``make bench`` (bench/fleet.py) counts what it claims to count.

Small fleets with jitter switched off, so every exchange time can be worked out by hand.
"""

from __future__ import annotations

import random

import pytest

from bench.fleet import FleetScenario, simulate
from tests.support import policies

# expires_in 300 and no jitter: every refresh exactly 200 s after the exchange.
SCHEDULE = policies.schedule(fraction=2 / 3, jitter=0.0, min_margin=60.0)
BACKOFF = policies.backoff(initial=1.0, maximum=300.0)
COORDINATION = policies.coordination()


class LowEnd(random.Random):
    """Every draw at the low end of its range: equal-jitter backoff waits half its ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return a


def test_steady_fleet_exchanges_once_per_interval() -> None:
    scenario = FleetScenario(
        sidecars=3, duration=3600.0, expires_in=300.0, outage_start=None, warm_up=0.0
    )
    result = simulate(scenario, SCHEDULE, BACKOFF, COORDINATION, random.Random(7))
    # First refresh somewhere in (0, 200], then every 200 s: 18 exchanges in an hour each.
    assert sum(result.attempts) == 3 * 18
    assert len(result.attempts) == 60
    assert sum(result.refused) == 0
    assert result.all_valid_after is None
    assert result.steady_mean == pytest.approx(54 / 60)
    assert result.steady_peak_to_mean == max(result.attempts) / (54 / 60)


def test_outage_recovery_follows_the_backoff_sequence() -> None:
    # All in step (LowEnd): exchanges at 200, 400, ..., 1000 falls in the outage [1000, 1600).
    scenario = FleetScenario(
        sidecars=4,
        duration=2400.0,
        expires_in=300.0,
        outage_start=1000.0,
        outage_seconds=600.0,
        bucket=60.0,
        warm_up=0.0,
    )
    result = simulate(scenario, SCHEDULE, BACKOFF, COORDINATION, LowEnd())
    # Waits after failure n are half of min(300, 2**(n-1)): 0.5, 1, 2, ... 64, 150, 150.
    # Attempts at 1000, 1000.5, 1001.5, 1003.5, 1007.5, 1015.5, 1031.5, 1063.5, 1127.5,
    # 1255.5, 1405.5, 1555.5 are refused; 1705.5 succeeds.
    assert sum(result.refused) == 4 * 12
    assert result.all_valid_after == pytest.approx(105.5)
    assert result.all_fresh_after == pytest.approx(105.5)
    assert result.lapsed == 4  # the token from 800 expired at 1100
    assert result.overdue_at_return == 4
    assert result.attempts[int(1705.5 // 60)] == 4
    # Before the outage: 200, 400, 600, 800 -> 4 exchanges each; after: 1705.5, 1905.5, 2105.5,
    # 2305.5 -> 4 each.
    assert sum(result.attempts) == 4 * 8
    assert result.recovery_peak_to_mean == pytest.approx(4 / result.steady_mean)


def test_summary_reports_the_headline_figures() -> None:
    scenario = FleetScenario(sidecars=50, duration=7200.0, outage_start=3600.0, warm_up=600.0)
    summary = simulate(scenario, SCHEDULE, BACKOFF, COORDINATION, random.Random(1)).summary()
    assert summary["steady_peak_to_mean"] >= 1.0
    assert summary["after_outage_peak_to_mean"] >= 1.0
    assert summary["tokens_lapsed"] == 50  # 300-second tokens cannot outlive a 10-minute outage
    assert 0 < summary["all_valid_after_seconds"] <= 300 * 1.2
    assert summary["refused_while_down"] >= 50

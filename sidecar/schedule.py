"""When to refresh: pure functions of the token's lifetime, the policy and a random source.

The refresh happens at about ``fraction`` (2/3) of the lifetime, spread by ``jitter`` so that a
fleet started together does not refresh together, and never later than ``min_margin`` before
expiry. For tokens too short for that margin the margin shrinks to half the lifetime, and no
delay is ever shorter than ``min_interval`` (so an absurd ``expires_in`` cannot make a hot loop).

``expires_in`` as sent by the server is clamped first (:func:`effective_lifetime`):

==========================  ==========================================
absent, not a number        ``default_expires_in`` (default 300 s)
zero or negative            ``min_expires_in`` (default 5 s)
astronomically large        ``max_expires_in`` (default 1 day)
==========================  ==========================================
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = ["SchedulePolicy", "effective_lifetime", "refresh_delay", "refresh_window"]


@dataclass(frozen=True, slots=True)
class SchedulePolicy:
    """The ``refresh`` settings this module reads, in seconds (see sidecar.config).

    No defaults here: the wiring builds the policy from the settings, where each default is.
    """

    fraction: float
    jitter: float
    min_margin: float
    min_interval: float
    default_expires_in: float
    min_expires_in: float
    max_expires_in: float


def effective_lifetime(expires_in: float | None, policy: SchedulePolicy) -> float:
    """The lifetime to plan with, in seconds, after the documented defaults and clamps.

    A short but positive ``expires_in`` is believed as it is: stretching it would publish an
    ``expires_at`` later than the server's.
    """
    if expires_in is None or not math.isfinite(expires_in):
        return policy.default_expires_in
    if expires_in <= 0:
        return policy.min_expires_in
    return min(expires_in, policy.max_expires_in)


def refresh_window(lifetime: float, policy: SchedulePolicy) -> tuple[float, float]:
    """Earliest and latest refresh delay after the token was requested, before jitter is drawn.

    Replicas sharing a token reuse it until the earliest point; each then wakes at its own
    random point in the window, and the first one awake refreshes for all.
    """
    latest_allowed = max(lifetime - policy.min_margin, lifetime / 2)
    low = lifetime * (policy.fraction - policy.jitter)
    high = lifetime * (policy.fraction + policy.jitter)
    return (
        max(min(low, latest_allowed), policy.min_interval),
        max(min(high, latest_allowed), policy.min_interval),
    )


def refresh_delay(lifetime: float, policy: SchedulePolicy, rng: random.Random) -> float:
    """Seconds after the token was requested at which to refresh it."""
    low, high = refresh_window(lifetime, policy)
    return rng.uniform(low, high)

"""When to refresh: pure functions of the token's lifetime, the policy and a random source.

The refresh happens at about ``fraction`` (2/3) of the lifetime, spread by ``jitter`` so that a
fleet started together does not refresh together, and never later than ``min_margin`` before
expiry. For tokens too short for that margin the margin shrinks to half the lifetime, and no
delay is ever shorter than ``min_interval`` (so an absurd ``expires_in`` cannot make a hot loop).

``expires_in`` as sent by the server is clamped first (:func:`effective_lifetime`):

==========================  ==========================================
absent, not a number        ``default_expires_in`` (default 300 s)
zero or negative            0: the token is already expired
astronomically large        ``max_expires_in`` (default 1 day)
==========================  ==========================================

RFC 6749 defines ``expires_in`` as the token's lifetime in seconds, so zero means a token that
is expired when it arrives, like a negative value; no guess stretches it into a usable
lifetime. The refresher never publishes such a token (see ``ExpiredAnswer``).

Readiness uses the schedule too (:func:`ready_margin_cap`): ``/readyz`` asks for a token valid
for ``ready_margin_seconds`` more, but never for as much as is left of the token when its
refresh is due, or a sidecar doing everything right would report not ready before every
refresh of a short token.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import Enum

from sidecar.backoff import BackoffPolicy
from sidecar.coordination import CoordinationPolicy, SharedAccess

__all__ = [
    "LIVENESS_SLACK",
    "Answer",
    "RefreshPolicy",
    "SchedulePolicy",
    "access_window",
    "effective_lifetime",
    "judge_answer",
    "ready_margin_cap",
    "refresh_delay",
    "refresh_window",
]


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
    max_expires_in: float


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """Everything a credential's loop decides with, in seconds; built by the wiring from the
    settings (:func:`sidecar.policies.refresh_policy`)."""

    schedule: SchedulePolicy
    backoff: BackoffPolicy
    coordination: CoordinationPolicy
    secret_poll: float
    """How often to look for a re-seeded secret after a final error."""
    operation_timeout: float
    """Upper bound of one Vault call, for the liveness promise."""
    exchange_timeout: float
    """Upper bound of one token endpoint call; a claim must have this much left to exchange."""


LIVENESS_SLACK = 30.0
"""Seconds added to every promise a loop makes about when it will act again (liveness)."""


def effective_lifetime(expires_in: float | None, policy: SchedulePolicy) -> float:
    """The lifetime to plan with, in seconds, after the documented defaults and clamps.

    0 for a token that is already expired (``expires_in`` zero or negative). A short but
    positive ``expires_in`` is believed as it is: stretching it would publish an
    ``expires_at`` later than the server's.
    """
    if expires_in is None or math.isnan(expires_in):
        return policy.default_expires_in
    if expires_in <= 0:
        return 0.0
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


def access_window(access: SharedAccess | None, policy: SchedulePolicy) -> tuple[float, float]:
    """The refresh window of a shared access token, by its own lifetime; (0, 0) without one."""
    if access is None:
        return (0.0, 0.0)
    return refresh_window(max(access.expires_at - access.issued_at, 0.0), policy)


def refresh_delay(lifetime: float, policy: SchedulePolicy, rng: random.Random) -> float:
    """Seconds after the token was requested at which to refresh it."""
    low, high = refresh_window(lifetime, policy)
    return rng.uniform(low, high)


READY_SHARE = 0.5
"""Share of what is left of a token at its latest scheduled refresh that readiness may ask for."""


def ready_margin_cap(lifetime: float, policy: SchedulePolicy) -> float:
    """The most readiness may ask of a token with this lifetime, in seconds of validity left.

    Half of what is left of the token at the latest point of its refresh window: strictly
    less, so a sidecar refreshing on schedule is ready right up to its refresh and after it,
    with the other half as room for the exchange and a late wake-up. For a 5-minute token
    (refreshed by 215 s at the latest) that is 42 s, more than the default margin of 5 s; for a
    2-second token it is 0.5 s.
    """
    if lifetime <= 0 or not math.isfinite(lifetime):
        return 0.0
    _, latest = refresh_window(lifetime, policy)
    return max(lifetime - latest, 0.0) * READY_SHARE


class Answer(Enum):
    """What a token endpoint's 2xx answer is worth to the app (R4)."""

    FRESH = "fresh"
    """Publish it."""
    EXPIRED = "expired"
    """Already expired (``expires_in`` zero or negative, or spent before it arrived): never
    published; a rotated refresh token it carries is still kept (R2)."""
    SHORTER = "shorter"
    """Valid, but it expires before the token already published: that one stays (the app
    never sees its expiry go backwards), and the schedule follows the new one."""


def judge_answer(
    lifetime: float, *, started: float, now: float, published_until: float | None
) -> Answer:
    """Judge an answer of ``lifetime`` seconds to a request sent at wall-clock ``started``,
    received at ``now``, while the published token (if any) expires at ``published_until``."""
    if lifetime <= 0 or started + lifetime <= now:
        return Answer.EXPIRED
    if (
        published_until is not None
        and now < published_until
        and started + lifetime < published_until
    ):
        return Answer.SHORTER
    return Answer.FRESH

"""How long to wait after a failure: capped exponential backoff with jitter, honouring Retry-After.

:func:`plan_retry` turns a failure's severity (:func:`sidecar.errors.classify_failure`) into
what both credential loops do next (R6): the phase to report, the wait, and how loudly to log.

"Equal jitter": half of the exponential step is kept and the other half is random, so waits grow
for a persistent fault yet replicas that failed together spread out, and no wait is ever zero.
A server's ``Retry-After`` is a floor (capped by ``max_retry_after``), never shortened by jitter.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from sidecar.errors import Severity
from sidecar.status import Phase

__all__ = ["BackoffPolicy", "Retry", "backoff_delay", "plan_retry"]


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """``refresh.backoff_initial_seconds``, ``backoff_max_seconds``, ``max_retry_after_seconds``.

    No defaults here: the wiring builds the policy from the settings, where each default is.
    """

    initial: float
    maximum: float
    max_retry_after: float


def backoff_delay(
    attempt: int,
    policy: BackoffPolicy,
    rng: random.Random,
    retry_after: float | None = None,
) -> float:
    """Seconds to wait before attempt ``attempt + 1``, where ``attempt`` >= 1 failures happened."""
    exponent = min(max(attempt, 1) - 1, 62)
    ceiling = min(policy.maximum, policy.initial * 2.0**exponent)
    delay = ceiling / 2 + rng.uniform(0, ceiling / 2)
    if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
        delay = max(delay, min(retry_after, policy.max_retry_after))
    return delay


@dataclass(frozen=True, slots=True)
class Retry:
    """What one more failure means for a credential."""

    phase: Phase
    delay: float
    """Seconds until the next attempt."""
    loud: bool
    """Log at error level: the failure needs a person (it will not pass by itself)."""


def plan_retry(
    severity: Severity,
    failures: int,
    *,
    has_token: bool,
    policy: BackoffPolicy,
    secret_poll: float,
    rng: random.Random,
    retry_after: float | None = None,
) -> Retry:
    """The next attempt after ``failures`` consecutive ones, the last of ``severity``.

    Rejected: look for a re-seeded secret every ``secret_poll`` seconds. Final: the same pace,
    or slower while the backoff has grown past it. Retryable: back off, honouring Retry-After.
    """
    if severity is Severity.REJECTED:
        return Retry(Phase.REJECTED, secret_poll, loud=True)
    if severity is Severity.FINAL:
        return Retry(
            Phase.FAILED, max(secret_poll, backoff_delay(failures, policy, rng)), loud=True
        )
    phase = Phase.RETRYING if has_token else Phase.STARTING
    return Retry(phase, backoff_delay(failures, policy, rng, retry_after), loud=False)

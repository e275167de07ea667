"""How long to wait after a failure: capped exponential backoff with jitter, honouring Retry-After.

"Equal jitter": half of the exponential step is kept and the other half is random, so waits grow
for a persistent fault yet replicas that failed together spread out, and no wait is ever zero.
A server's ``Retry-After`` is a floor (capped by ``max_retry_after``), never shortened by jitter.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = ["BackoffPolicy", "backoff_delay"]


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

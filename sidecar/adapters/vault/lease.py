"""When the Vault token is renewed or replaced (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "RENEW_FRACTION",
    "TokenLease",
    "TokenPlan",
    "plan_token",
    "renewal_is_useful",
]

TokenPlan = Literal["use", "renew", "login"]

RENEW_FRACTION = 2 / 3
"""Renew (or log in again) once this fraction of the token's TTL has passed."""


@dataclass(frozen=True, slots=True)
class TokenLease:
    """What Vault said about our token; times are monotonic seconds."""

    obtained_at: float
    ttl: float
    """Seconds granted at ``obtained_at``; 0 means the token never expires."""
    renewable: bool
    login_ttl: float
    """TTL granted by the last login: the yardstick a renewal is measured against."""

    @property
    def expires_at(self) -> float:
        return self.obtained_at + self.ttl if self.ttl > 0 else math.inf


def plan_token(lease: TokenLease | None, now: float, fraction: float = RENEW_FRACTION) -> TokenPlan:
    """Use the token as it is, renew it, or log in again."""
    if lease is None:
        return "login"
    if lease.ttl <= 0 or now < lease.obtained_at + lease.ttl * fraction:
        return "use"
    if lease.renewable and now < lease.expires_at:
        return "renew"
    return "login"


def renewal_is_useful(new_ttl: float, login_ttl: float, fraction: float = RENEW_FRACTION) -> bool:
    """Whether a renewal granted enough time to be worth keeping the token.

    Near the token's max TTL Vault grants less and less; once a renewal grants less than the
    margin kept before expiry (``1 - fraction`` of the login TTL), a fresh login is better
    than renewing ever more often.
    """
    margin = login_ttl * (1 - fraction) - 1e-6  # 600 * (1 - 2/3) is 200.00000000000003
    return new_ttl > 0 and new_ttl >= margin

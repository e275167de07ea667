"""What each credential's loop reports about itself, and the health decisions drawn from it.

The refresher owns one :class:`CredentialStatus` per credential and updates it as things happen;
health endpoints and metric gauges read it when asked (scrape time), never the other way round.
Times are wall-clock seconds (``time.time()``) except ``alive_until``, which is monotonic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

__all__ = ["CredentialStatus", "Phase", "StatusBoard", "rfc3339"]


class Phase(StrEnum):
    STARTING = "starting"
    """No token published yet."""
    VALID = "valid"
    """A token is published and the next refresh is scheduled."""
    RETRYING = "retrying"
    """The last attempt failed with a transient error; backing off."""
    REJECTED = "rejected"
    """The refresh token was refused (invalid_grant); waiting for a new one in Vault."""
    FAILED = "failed"
    """A final error other than invalid_grant (client or Vault configuration); waiting."""
    STOPPED = "stopped"


def rfc3339(epoch: float) -> str:
    """``2026-11-22T13:41:00Z``: UTC, second precision, as in ``token.json``."""
    return datetime.fromtimestamp(int(epoch), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class CredentialStatus:
    name: str
    required: bool = True
    grant: str = "refresh_token"
    """The configured grant: ``refresh_token`` or ``client_credentials``."""
    client_auth: str = "client_secret_basic"
    phase: Phase = Phase.STARTING
    expires_at: float | None = None
    """Expiry of the published access token."""
    issued_at: float | None = None
    last_success_at: float | None = None
    last_attempt_at: float | None = None
    last_error: str | None = None
    """The error ``kind`` of the last failure, cleared by a success."""
    consecutive_failures: int = 0
    writeback_pending: bool = False
    """A rotated refresh token is held in memory and not yet in Vault."""
    refresh_token_obtained_at: float | None = None
    refresh_token_expires_at: float | None = None
    secret_version: int | None = None
    alive_until: float = float("inf")
    """Monotonic deadline by which the loop promises to act again; past it, it is stuck."""
    ready_margin_cap: float = float("inf")
    """The most readiness may ask of the published token (seconds of validity left), set with
    it: half of what is left of it at its latest scheduled refresh (schedule.ready_margin_cap)."""

    def margin(self, configured: float) -> float:
        """The readiness margin for the published token: the configured one, scaled down for
        short tokens the way the refresh margin is."""
        return min(configured, self.ready_margin_cap)

    def on_schedule(self, monotonic_now: float | None) -> bool:
        """The loop has not overrun the time by which it promised to act again."""
        return monotonic_now is None or monotonic_now <= self.alive_until

    def ready(self, now: float, margin: float, monotonic_now: float | None = None) -> bool:
        """A token valid now, for at least :meth:`margin` more, and a loop on schedule."""
        if self.expires_at is None or self.expires_at <= now:
            return False
        return self.expires_at - now >= self.margin(margin) and self.on_schedule(monotonic_now)

    def snapshot(self, now: float) -> dict[str, Any]:
        """JSON-safe facts for ``/healthz``; no secret is ever part of the status."""

        def stamp(value: float | None) -> str | None:
            return rfc3339(value) if value is not None else None

        return {
            "state": self.phase.value,
            "grant": self.grant,
            "required": self.required,
            "expires_at": stamp(self.expires_at),
            "expires_in_seconds": (
                round(self.expires_at - now, 3) if self.expires_at is not None else None
            ),
            "last_success_at": stamp(self.last_success_at),
            "last_error": self.last_error,
            "consecutive_failures": self.consecutive_failures,
            "writeback_pending": self.writeback_pending,
            "secret_version": self.secret_version,
        }


@dataclass(slots=True)
class StatusBoard:
    credentials: dict[str, CredentialStatus] = field(default_factory=dict)

    def add(
        self,
        name: str,
        *,
        required: bool = True,
        grant: str = "refresh_token",
        client_auth: str = "client_secret_basic",
    ) -> CredentialStatus:
        status = CredentialStatus(
            name=name, required=required, grant=grant, client_auth=client_auth
        )
        self.credentials[name] = status
        return status

    def ready(self, now: float, margin: float, monotonic_now: float | None = None) -> bool:
        """Every required credential has a token valid now and for its margin more (the
        configured ``margin``, scaled down for short tokens), and its loop is on schedule."""
        return all(
            s.ready(now, margin, monotonic_now) for s in self.credentials.values() if s.required
        )

    def live(self, monotonic_now: float) -> bool:
        """No loop has overrun the deadline it promised to act by."""
        return all(monotonic_now <= s.alive_until for s in self.credentials.values())

    def snapshot(
        self, now: float, margin: float, monotonic_now: float | None = None
    ) -> dict[str, Any]:
        return {
            "ready": self.ready(now, margin, monotonic_now),
            "credentials": {
                name: status.snapshot(now) for name, status in self.credentials.items()
            },
        }

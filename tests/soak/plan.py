"""How hard and how long a soak shakes the replicas, and the sidecar configuration it runs.

Times are compressed: access tokens last 4 s, so a replica set rotates every few seconds and
ten minutes hold a few hundred rotations. The coordination and timeout settings are scaled to
match, and every chaos duration is derived from them, so the relations the issue asks for
hold by construction: a freeze outlasts ``claim_seconds`` (and the skew allowance on top), a
killed replica is back well before its claim would expire, and a seal ends early enough for an
interrupted write-back to land before the claim runs out, the operating envelope the README
states for Vault outages ("keep claim_seconds longer than your longest expected Vault
hiccup").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Plan"]


@dataclass(frozen=True, slots=True)
class Plan:
    seconds: float = 600.0
    """How long the chaos lasts (recovery and checks come after)."""
    replicas: int = 5
    seed: int = 0
    min_kills: int = 200
    """The soak fails with fewer kills than this (the machine was too slow to shake it)."""

    http_timeout: float = 3.0
    """``http.timeout_seconds``: a request to the token endpoint gives up after this."""
    claim_seconds: float = 8.0
    clock_skew_seconds: float = 2.0

    kill_every: tuple[float, float] = (1.2, 3.2)
    """Seconds between SIGKILLs (uniform): about 270 in ten minutes."""
    restart_after: tuple[float, float] = (0.1, 1.0)
    """A killed replica's container restarts after this long, with the same journal."""
    freeze_every: tuple[float, float] = (8.0, 16.0)
    fault_every: tuple[float, float] = (3.0, 7.0)
    seal_every: tuple[float, float] = (20.0, 40.0)
    seal_for: tuple[float, float] = (1.0, 3.5)
    """Shorter than ``claim_seconds`` by more than one write-back retry interval (at most 5 s):
    a rotation whose write-back a seal interrupted lands before its claim runs out."""
    slow_answer: tuple[float, float] = (0.3, 1.2)
    """A hung request that is answered in the end: well inside the client's timeout."""

    @property
    def freeze_for(self) -> tuple[float, float]:
        """SIGSTOP lasts longer than a claim and the skew allowed on it."""
        past = self.claim_seconds + self.clock_skew_seconds
        return (past + 1.0, past + 4.0)

    @property
    def hang_past_timeout(self) -> float:
        """A hung request the client gives up on long before the server would go on."""
        return 2 * self.http_timeout + 2.0

    @property
    def retry_within(self) -> float:
        """How soon the sidecar's one immediate retry follows a dropped answer, at most."""
        return 2 * self.http_timeout + 5.0

    def config_sections(self) -> dict[str, dict[str, Any]]:
        """The sidecar's settings for the soak, besides the test deployment's defaults."""
        return {
            "http": {"timeout_seconds": self.http_timeout},
            "coordination": {
                "claim_seconds": self.claim_seconds,
                "clock_skew_seconds": self.clock_skew_seconds,
                "poll_seconds": 0.5,
            },
        }

    def refresh_settings(self) -> dict[str, Any]:
        return {
            "secret_poll_seconds": 1,  # a re-seed is picked up at once
            "backoff_max_seconds": 5,  # outages last seconds here, not minutes
        }

    def describe(self) -> dict[str, Any]:
        """The plan as the report shows it."""
        return {
            "seconds": self.seconds,
            "replicas": self.replicas,
            "seed": self.seed,
            "min_kills": self.min_kills,
            "access_token_seconds": 4,
            "http_timeout_seconds": self.http_timeout,
            "claim_seconds": self.claim_seconds,
            "clock_skew_seconds": self.clock_skew_seconds,
            "kill_every_seconds": list(self.kill_every),
            "restart_after_seconds": list(self.restart_after),
            "freeze_every_seconds": list(self.freeze_every),
            "freeze_for_seconds": list(self.freeze_for),
            "fault_every_seconds": list(self.fault_every),
            "seal_every_seconds": list(self.seal_every),
            "seal_for_seconds": list(self.seal_for),
        }

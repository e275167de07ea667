"""Protocols between the core and its adapters.

The refresher depends only on these; the wiring in :mod:`sidecar.app` supplies real adapters,
unit tests supply fakes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

from sidecar.model import (
    ClientCredentials,
    JournalEntry,
    Notification,
    PublishedToken,
    StoredSecret,
    TokenGrant,
)

__all__ = [
    "Clock",
    "Journal",
    "NotifyObserver",
    "NotifySender",
    "RefreshObserver",
    "SecretStore",
    "TokenExchanger",
    "TokenSink",
]


class Clock(Protocol):
    """Time as the core sees it: a monotonic clock for deadlines, wall time for expiry stamps."""

    def monotonic(self) -> float: ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch."""
        ...

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait until ``event`` is set or ``timeout`` seconds pass; return whether it was set."""
        ...


class SecretStore(Protocol):
    """One credential's KV v2 secret."""

    @property
    def location(self) -> str:
        """``mount/path`` of the secret, for messages."""
        ...

    async def read(self) -> StoredSecret:
        """Read the current version. Raises SecretNotFound, SecretInvalid, Vault* errors."""
        ...

    async def write(self, secret: StoredSecret, data: Mapping[str, Any]) -> StoredSecret:
        """Replace the secret's fields with ``data``, check-and-set on ``secret.version``.

        Returns the secret as now stored (new version). Raises CasConflict when another writer
        got there first; the caller builds ``data`` from what it read, keeping the user's fields.
        """
        ...


class TokenExchanger(Protocol):
    """One credential's token endpoint."""

    async def refresh(self, refresh_token: str, client: ClientCredentials) -> TokenGrant:
        """Exchange ``refresh_token`` (``grant_type=refresh_token``) once; no retries inside."""
        ...

    async def probe(self) -> None:
        """Reach the endpoint (or its discovery document) without exchanging anything."""
        ...


class TokenSink(Protocol):
    """Where the app reads its token: one directory per credential."""

    def prepare(self) -> None:
        """Check the directory is usable and remove leftover temporary files."""
        ...

    def publish(self, token: PublishedToken) -> None:
        """Replace the token files atomically. Raises SinkError."""
        ...


class RefreshObserver(Protocol):
    """Receives what happened, for counters, histograms and Kubernetes Events.

    Gauges read the status at scrape time instead.
    """

    def refresh_finished(self, credential: str, outcome: str, seconds: float) -> None:
        """One exchange at the token endpoint ended; ``outcome`` is success or an error kind."""
        ...

    def phase_changed(self, credential: str, old: str, new: str, reason: str | None) -> None:
        """The credential moved between phases (status.Phase values); ``reason`` is an error
        kind when a failure caused it. Final failures and recoveries are what Events report."""
        ...


class Journal(Protocol):
    """A private, restart-surviving place for a rotated refresh token not yet in Vault (R2).

    Every method raises :class:`~sidecar.errors.JournalError` (a ``SinkError``) on failure.
    """

    def open(self, holder: str) -> frozenset[str]:
        """Take this process's exclusive use and record ``holder``; return the claim
        identities of the earlier processes that used it, every one provably ended.
        Raises JournalBusy when another live process uses it."""
        ...

    def close(self) -> None: ...

    def load(self) -> JournalEntry | None: ...

    def save(self, entry: JournalEntry) -> None:
        """Store durably before returning."""
        ...

    def clear(self) -> None: ...


class NotifySender(Protocol):
    """One way of telling the app its token changed (HTTP, a signal, a command)."""

    async def send(self, notification: Notification) -> None:
        """Tell the app once; return when it acknowledged. Raises NotifyFailed."""
        ...


class NotifyObserver(Protocol):
    """Receives the outcome of every notification attempt, for metrics."""

    def notify_finished(
        self, credential: str, method: str, outcome: str, acknowledged: int, failures: int
    ) -> None:
        """``outcome`` is ``success`` or a NotifyFailed kind; ``acknowledged`` the newest
        generation the receiver acknowledged; ``failures`` those since the last success."""
        ...

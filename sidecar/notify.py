"""Telling the app that its token changed: when to notify, as pure functions of time.

The token sink numbers each new access token with a ``generation`` (in ``token.json``) and
reports it once both files are published (R4: the app reads a whole new file when told). Per
credential and per method (``http``, ``signal``, ``exec``) a :class:`Channel` then decides:

* **coalesce**: a change is announced ``min_interval`` after the last change, so a burst of
  rotations closer together than that becomes one notification of the newest generation;
* **never wait too long**: nor later than ``max_delay`` after the first change of the burst;
* **retry**: a failed notification is retried with capped exponential backoff (1 s doubling
  to ``retry_max_seconds``, with jitter) until it succeeds or a newer generation supersedes
  it; the newer one is then announced on its own schedule and the retries stop;
* **nothing twice**: an acknowledged generation, or an older one, is never announced again.

The first token of a fresh volume is not announced: the app reads it when it starts, and no
app is yet there to tell (the pid file does not exist, the port is closed), so announcing it
would only log failures at every pod start.

:func:`rotated`, :func:`due`, :func:`succeeded` and :func:`failed` take the state and the
monotonic time and return a new state. :class:`NotifyLoop` is the only part that waits: it
asks the clock to sleep until :func:`due` and hands the notification to a
:class:`~sidecar.ports.NotifySender` (the adapters in :mod:`sidecar.adapters.notify`).
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, replace

import structlog

from sidecar.backoff import BackoffPolicy, backoff_delay
from sidecar.errors import NotifyFailed
from sidecar.model import Notification
from sidecar.ports import Clock, NotifyObserver, NotifySender

__all__ = [
    "Channel",
    "NotifyLoop",
    "NotifyPolicy",
    "due",
    "failed",
    "rotated",
    "succeeded",
]

log = structlog.get_logger("sidecar.notify")


@dataclass(frozen=True, slots=True)
class NotifyPolicy:
    """A credential's ``notify`` settings; no defaults here, the wiring builds it from them."""

    min_interval: float
    """Seconds without a further change before a change is announced."""
    max_delay: float
    """Seconds after the first change of a burst by which it is announced at the latest."""
    backoff: BackoffPolicy
    """Between failed attempts of one notification."""


@dataclass(frozen=True, slots=True)
class Channel:
    """One credential's notifications by one method."""

    pending: Notification | None = None
    """The newest change not yet acknowledged."""
    first_at: float = -math.inf
    """Monotonic time of the first change of the burst ``pending`` belongs to."""
    last_at: float = -math.inf
    """Monotonic time of the newest change."""
    retry_at: float | None = None
    """After a failed attempt of ``pending``: not before this monotonic time."""
    failures: int = 0
    """Failed attempts since the last success, across generations."""
    acknowledged: int = 0
    """The newest generation the receiver acknowledged."""


def rotated(channel: Channel, change: Notification, now: float) -> Channel:
    """A new generation was published at ``now``."""
    newest = channel.pending.generation if channel.pending else channel.acknowledged
    if change.generation <= newest:
        return channel  # announced already, or older than what waits
    if channel.pending is None or channel.retry_at is not None:
        # Nothing waits, or what waits was tried already: a new burst starts, retries stop.
        return replace(channel, pending=change, first_at=now, last_at=now, retry_at=None)
    return replace(channel, pending=change, last_at=now)  # coalesced into the waiting burst


def due(channel: Channel, policy: NotifyPolicy) -> float | None:
    """Monotonic time of the next attempt, or None when nothing waits."""
    if channel.pending is None:
        return None
    if channel.retry_at is not None:
        return channel.retry_at
    return min(channel.last_at + policy.min_interval, channel.first_at + policy.max_delay)


def succeeded(channel: Channel, generation: int) -> Channel:
    """The receiver acknowledged ``generation``."""
    acknowledged = max(channel.acknowledged, generation)
    if channel.pending is not None and channel.pending.generation > generation:
        # A newer change arrived during the attempt; it keeps its own schedule.
        return replace(channel, acknowledged=acknowledged, failures=0)
    return Channel(acknowledged=acknowledged)


def failed(
    channel: Channel, generation: int, now: float, policy: NotifyPolicy, rng: random.Random
) -> Channel:
    """The attempt to announce ``generation`` failed at ``now``."""
    failures = channel.failures + 1
    if channel.pending is None or channel.pending.generation != generation:
        return replace(channel, failures=failures)  # superseded during the attempt
    wait = backoff_delay(failures, policy.backoff, rng)
    return replace(channel, failures=failures, retry_at=now + wait)


class NotifyLoop:
    """Sends one credential's notifications by one method, one attempt at a time.

    :meth:`rotated` is called from the refresher's task (through the sink's callback) and
    only records the change; :meth:`run` does the waiting and sending until :meth:`close`.
    """

    def __init__(
        self,
        *,
        credential: str,
        method: str,
        sender: NotifySender,
        policy: NotifyPolicy,
        clock: Clock,
        observer: NotifyObserver | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.credential = credential
        self.method = method
        self.channel = Channel()
        self._sender = sender
        self._policy = policy
        self._clock = clock
        self._observer = observer
        self._rng = rng or random.Random()  # noqa: S311  # jitter, not cryptography
        self._wake = asyncio.Event()
        self._closed = False
        self._log = log.bind(credential=credential, method=method)

    def rotated(self, change: Notification, *, first: bool) -> None:
        """A new generation is published; ``first``: the volume held no token before."""
        if first:
            # Nothing to announce to an app that has not read a token yet (see module doc).
            self.channel = replace(self.channel, acknowledged=change.generation)
            return
        self.channel = rotated(self.channel, change, self._clock.monotonic())
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        while not self._closed:
            when = due(self.channel, self._policy)
            now = self._clock.monotonic()
            if when is None or when > now:
                self._wake.clear()
                timeout = math.inf if when is None else when - now
                await self._clock.wait(self._wake, min(timeout, 86_400.0))
                continue
            await self._attempt()

    async def _attempt(self) -> None:
        change = self.channel.pending
        assert change is not None  # noqa: S101  # due() returned a time
        try:
            try:
                await self._sender.send(change)
            except NotifyFailed:
                raise
            except Exception as exc:  # a notifier's bug must not stop refreshes
                raise NotifyFailed("error", f"unexpected {type(exc).__name__}") from exc
        except NotifyFailed as exc:
            self.channel = failed(
                self.channel, change.generation, self._clock.monotonic(), self._policy, self._rng
            )
            retry_at = self.channel.retry_at
            retry_in = None if retry_at is None else round(retry_at - self._clock.monotonic(), 3)
            # The first two failures are routine (an app restarting); then it is a problem.
            level = "info" if self.channel.failures < 3 else "warning"
            getattr(self._log, level)(
                "notify.failed",
                generation=change.generation,
                error=exc.kind,
                message=exc.message,
                attempt=self.channel.failures,
                retry_in=retry_in,
            )
            self._report(exc.kind)
            return
        self.channel = succeeded(self.channel, change.generation)
        self._log.info("notify.sent", generation=change.generation)
        self._report("success")

    def _report(self, outcome: str) -> None:
        if self._observer is not None:
            self._observer.notify_finished(
                self.credential,
                self.method,
                outcome,
                self.channel.acknowledged,
                self.channel.failures,
            )

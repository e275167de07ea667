"""A rotated refresh token on its way to Vault: journal first, then Vault, then the app (R2).

:class:`WriteBack` is the part of a credential's state that outlives one exchange:

* ``secret``: the KV secret as last read or written; its version fences the next write
  (:meth:`WriteBack.record` is the one place that notes a version);
* ``pending``: the secret as it must become after a successful exchange (rotated refresh
  token, shared access token, claim cleared) while Vault does not hold it yet;
* ``held``: the access token that waits for its refresh token to be persisted before it is
  published (:meth:`WriteBack.take_held` once Vault or the journal holds it);
* ``next_write``: the monotonic deadline of the next write-back attempt.

The journal (this process's own file, locked while it runs) holds the rotated token before
Vault does; after a crash, :meth:`WriteBack.recover` reconciles it with what Vault holds. A
write that loses a check-and-set never overwrites another writer's value: if Vault already
holds our token it is adopted, otherwise our rotation lost and is dropped
(:attr:`WriteResult.LOST`). The caller publishes, fails and schedules; this module only keeps
the token and reports.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from enum import Enum
from typing import Any

import structlog

from sidecar.backoff import BackoffPolicy, backoff_delay
from sidecar.coordination import SharedAccess, SharedState, with_claim, with_release
from sidecar.errors import CasConflict, JournalBusy, SecretRetired, SidecarError, SinkError
from sidecar.model import JournalEntry, StoredSecret
from sidecar.ports import Clock, Journal, SecretStore
from sidecar.redact import Redactor
from sidecar.status import CredentialStatus

__all__ = ["WRITEBACK_MAX_BACKOFF", "WriteBack", "WriteResult"]

#: a write-back is retried at least this often, so a returning Vault gets the token at once.
WRITEBACK_MAX_BACKOFF = 5.0


class WriteResult(Enum):
    STORED = "stored"
    """Vault holds the rotated token (written now, or found there): publish what is held."""
    RETRY = "retry"
    """Vault could not be written; tried again at ``next_write``."""
    LOST = "lost"
    """Another writer's value won the check-and-set: our rotation was dropped."""


class WriteBack:
    """One credential's secret as last seen, and the rotated token not yet in Vault."""

    def __init__(
        self,
        *,
        store: SecretStore,
        journal: Journal | None,
        status: CredentialStatus,
        clock: Clock,
        backoff: BackoffPolicy,
        rng: random.Random,
        redactor: Redactor,
        log: structlog.typing.FilteringBoundLogger,
        promise_io: Callable[[], None],
    ) -> None:
        self._store = store
        self._journal = journal
        self._status = status
        self._clock = clock
        self._backoff = backoff
        self._rng = rng
        self._redactor = redactor
        self._log = log
        self._promise_io = promise_io
        self.secret: StoredSecret | None = None
        self.pending: dict[str, Any] | None = None
        self.held: SharedAccess | None = None
        self.next_write = -math.inf
        self.predecessors: frozenset[str] = frozenset()
        """Earlier processes of this journal: gone, so their claims may be taken over."""
        self._written_version: int | None = None
        self._failures = 0
        self._journal_loaded = False

    # -- the secret as last seen ------------------------------------------------------------

    def record(self, secret: StoredSecret, *, written: bool) -> None:
        """Note ``secret`` as last read (``written=False``) or as this replica's own write."""
        self.secret = secret
        if written:
            self._written_version = secret.version
        self._status.secret_version = secret.version

    async def read(self) -> tuple[StoredSecret, StoredSecret | None]:
        """Read the secret and note it as last seen; also return the one seen before."""
        self._promise_io()
        secret = await self._store.read()
        self._redactor.add(secret.refresh_token, secret.client_secret)
        previous = self.secret
        self.record(secret, written=False)
        if previous is None or secret.version != previous.version:
            self._log.debug("secret.read", location=secret.location, version=secret.version)
        return secret, previous

    async def claim(
        self, secret: StoredSecret, state: SharedState, *, holder: str, seconds: float, skew: float
    ) -> tuple[StoredSecret, float]:
        """Claim ``secret`` (whose shared state is ``state``) for ``holder`` for ``seconds``, with
        check-and-set on its version; return it claimed, and the claim's monotonic deadline.

        Raises CasConflict when another replica wrote first."""
        now = self._clock.time()
        if state.claim_holder in self.predecessors and now < (state.claim_until or 0) + skew:
            # Its process is gone (the journal's lock is ours): no need to wait its claim out.
            self._log.info("claim.taken_over", predecessor=state.claim_holder)
        started = self._clock.monotonic()
        self._promise_io()
        claimed = await self._store.write(
            secret, with_claim(secret.data, holder=holder, until=now + seconds)
        )
        self.record(claimed, written=True)
        return claimed, started + seconds

    async def release(self, base: StoredSecret, data: dict[str, Any]) -> None:
        """Give up the claim and share a failure; best effort (the claim expires anyway)."""
        self._promise_io()
        try:
            self.record(await self._store.write(base, data), written=True)
        except SidecarError as exc:
            self._log.warning("claim.release_failed", error=exc.kind)

    def last_writer(self) -> bool:
        """Whether the secret as this replica last saw it is its own write."""
        return self.secret is not None and self.secret.version == self._written_version

    # -- the journal ------------------------------------------------------------------------

    def open_journal(self, holder: str) -> None:
        """Take the journal for this process, and learn the claimants whose claims it may take
        over (``predecessors``)."""
        if self._journal is None:
            return
        try:
            self.predecessors = self._journal.open(holder)
        except JournalBusy as exc:
            # Another live process (a `once` beside `run`) has it: share nothing with it.
            # Without a journal, publishing waits until Vault holds a rotated token (R2).
            self._log.warning("journal.busy", message=exc.message)
            self._journal = None
        except SinkError as exc:
            self._log.error("journal.unusable", error=exc.kind, message=exc.message)
            self._journal = None

    def close_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()

    def recover(self, secret: StoredSecret) -> None:
        """Reconcile a journalled token with what Vault holds (after a crash or restart).

        Once per process: the journal is this process's alone from then on (its lock), so
        whatever it holds later, this process knows already. Raises JournalError.
        """
        if self._journal is None or self.pending is not None or self._journal_loaded:
            return
        entry = self._journal.load()
        self._journal_loaded = True
        if entry is None:
            return
        self._redactor.add(entry.refresh_token)
        if entry.location != secret.location or secret.refresh_token == entry.refresh_token:
            self._clear_journal()
        elif secret.version == entry.base_version:
            # Vault still holds the token this one was rotated from: that one is spent.
            self._log.warning("journal.recovered", base_version=entry.base_version)
            self.pending = with_release({**secret.data, "refresh_token": entry.refresh_token})
            self._status.writeback_pending = True
            self.next_write = -math.inf
        else:
            self._log.warning(
                "journal.superseded", base_version=entry.base_version, version=secret.version
            )
            self._clear_journal()

    def _clear_journal(self) -> None:
        """Best effort: a stale entry is recognised as such at the next start (superseded)."""
        if self._journal is None:
            return
        try:
            self._journal.clear()
        except SinkError as exc:
            self._log.warning("journal.clear_failed", error=exc.kind, message=exc.message)

    # -- the rotated token ------------------------------------------------------------------

    def hold(self, base: StoredSecret, result: dict[str, Any], token: str, when: float) -> bool:
        """Keep ``result`` as pending; return whether the journal holds ``token`` durably."""
        self.pending = result
        self.next_write = -math.inf
        self._failures = 0
        self._status.writeback_pending = True
        if self._journal is None:
            return False
        try:
            self._journal.save(JournalEntry(base.location, base.version, token, when))
        except SinkError as exc:
            self._log.error("journal.write_failed", error=exc.kind, message=exc.message)
            return False
        return True

    def take_held(self) -> SharedAccess | None:
        held, self.held = self.held, None
        return held

    def drop(self) -> None:
        """Give up the rotation (rejected, retired, or another writer's won)."""
        self.pending = None
        self.held = None
        self._status.writeback_pending = False
        self._clear_journal()

    async def write(self) -> WriteResult:
        """Write ``pending`` with check-and-set on the version last seen.

        Raises SecretRetired (the rotation dropped) when an operator retired the credential.
        """
        assert self.secret is not None and self.pending is not None  # noqa: S101
        self._promise_io()
        try:
            stored = await self._store.write(self.secret, self.pending)
        except CasConflict:
            return await self._resolve_conflict()
        except SidecarError as exc:
            delay = self._retry_later(exc.retry_after)
            self._log.error(
                "writeback.failed",
                error=exc.kind,
                message=exc.message,
                attempt=self._failures,
                retry_in=round(delay, 3),
            )
            return WriteResult.RETRY
        self._log.info("writeback.succeeded", version=stored.version)
        self._adopt(stored)
        return WriteResult.STORED

    def _retry_later(self, retry_after: float | None = None) -> float:
        self._failures += 1
        delay = min(backoff_delay(self._failures, self._backoff, self._rng), WRITEBACK_MAX_BACKOFF)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._backoff.max_retry_after))
        self.next_write = self._clock.monotonic() + delay
        return delay

    async def _resolve_conflict(self) -> WriteResult:
        """Someone else wrote the secret since we read it: adopt theirs, never overwrite it."""
        assert self.pending is not None  # noqa: S101
        try:
            fresh = await self._store.read()
        except SecretRetired:
            # An operator retired the credential: the token is being revoked, keep nothing.
            self.drop()
            raise
        except SidecarError as exc:
            self._retry_later()
            self._log.warning("writeback.conflict_unresolved", error=exc.kind)
            return WriteResult.RETRY
        if fresh.refresh_token == self.pending.get("refresh_token"):
            self._adopt(fresh)
            return WriteResult.STORED
        self._log.warning("secret.changed_externally", version=fresh.version)
        self.record(fresh, written=False)
        self.drop()
        return WriteResult.LOST

    def _adopt(self, stored: StoredSecret) -> None:
        if self.secret is not None and self.secret.refresh_token != stored.refresh_token:
            self._redactor.discard(self.secret.refresh_token)
        self.record(stored, written=True)
        self.pending = None
        self._failures = 0
        self._status.writeback_pending = False
        self._clear_journal()

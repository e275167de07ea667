"""One credential's refresh loop: read, decide, claim, exchange, persist, publish, sleep.

Every cycle starts by reading the secret, because replicas sharing it take turns through it
(see :mod:`sidecar.coordination`): a fresh shared access token is reused, a live claim of
another replica is waited out, and only the replica that wins the check-and-set claim
exchanges the refresh token.

State kept between cycles:

* ``secret``: the KV secret as last read or written; its version fences the next write;
* ``pending``: the secret as it must become after a successful exchange (rotated refresh
  token, shared access token, claim cleared) while Vault does not hold it yet;
* ``held``: an access token waiting for its refresh token to be persisted before publishing;
* ``next_refresh`` and ``next_write``: monotonic deadlines for the next cycle and the next
  write-back attempt.

The order of a rotation follows R2 in DESIGN.md: the rotated token goes to the journal (if one
is configured), then to Vault with check-and-set on the claim's version, and only then is the
access token published; without a journal, publishing waits for Vault. While Vault is out of
reach, a replica holding a pending token keeps refreshing with it from memory (no other
replica knows that token, so R1 holds) and keeps retrying the write-back. After stop is
requested no exchange starts, but a pending write-back keeps being retried until it lands or
the caller's grace period runs out.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from sidecar.backoff import BackoffPolicy, backoff_delay
from sidecar.client_auth import ClientTemplate, client_credentials
from sidecar.coordination import (
    Action,
    CoordinationPolicy,
    Decision,
    RefreshFacts,
    SharedAccess,
    SharedState,
    decide,
    fingerprint,
    jwt_expiry,
    with_claim,
    with_release,
    with_result,
)
from sidecar.errors import (
    CasConflict,
    ClaimExpired,
    ExpiredAnswer,
    FinalError,
    InvalidGrant,
    JournalBusy,
    MalformedResponse,
    ResponseLost,
    ResponseLostTwice,
    RetryableError,
    SecretInvalid,
    SecretRetired,
    SidecarError,
    SinkError,
    VaultUnavailable,
)
from sidecar.model import (
    ClientCredentials,
    JournalEntry,
    PublishedToken,
    StoredSecret,
    TokenGrant,
)
from sidecar.ports import (
    Clock,
    Journal,
    RefreshObserver,
    SecretStore,
    TokenExchanger,
    TokenSink,
)
from sidecar.redact import REDACTOR, Redactor
from sidecar.schedule import (
    SchedulePolicy,
    effective_lifetime,
    ready_margin_cap,
    refresh_window,
)
from sidecar.status import CredentialStatus, Phase

__all__ = ["ClientTemplate", "RefreshPolicy", "Refresher", "client_credentials"]

log = structlog.get_logger(__name__)

#: slack added to every promise the loop makes about when it will act again (liveness).
LIVENESS_SLACK = 30.0
#: a write-back is retried at least this often, so a returning Vault gets the token at once.
WRITEBACK_MAX_BACKOFF = 5.0


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """Everything the loop decides with, in seconds; built by the wiring from the settings."""

    schedule: SchedulePolicy
    backoff: BackoffPolicy
    coordination: CoordinationPolicy
    secret_poll: float
    """How often to look for a re-seeded secret after a final error."""
    operation_timeout: float
    """Upper bound of one Vault call, for the liveness promise."""
    exchange_timeout: float
    """Upper bound of one token endpoint call; a claim must have this much left to exchange."""


class Refresher:
    def __init__(
        self,
        *,
        store: SecretStore,
        exchanger: TokenExchanger,
        sink: TokenSink,
        client: ClientTemplate,
        status: CredentialStatus,
        clock: Clock,
        stop: asyncio.Event,
        holder: str = "sidecar",
        policy: RefreshPolicy,
        observer: RefreshObserver | None = None,
        journal: Journal | None = None,
        rng: random.Random | None = None,
        redactor: Redactor = REDACTOR,
    ) -> None:
        self._store = store
        self._exchanger = exchanger
        self._sink = sink
        self._client = client
        self.status = status
        self._clock = clock
        self._stop = stop
        self._holder = holder
        self._policy = policy
        self._observer = observer
        self._journal = journal
        self._rng = rng or random.Random()  # noqa: S311  # jitter, not cryptography
        self._redactor = redactor
        self._log = log.bind(credential=status.name)
        self._never = asyncio.Event()

        self._secret: StoredSecret | None = None
        self._pending: dict[str, Any] | None = None
        self._held: SharedAccess | None = None
        self._published: str | None = None
        self._rejected: set[str] = set()
        self._written_version: int | None = None
        self._noted_refresh_token: str | None = None
        self._predecessors: frozenset[str] = frozenset()
        self._journal_loaded = False
        self._deferred: SidecarError | None = None
        self._failures = 0
        self._write_failures = 0
        self._next_refresh = -math.inf
        self._next_write = -math.inf
        self._claim_deadline = -math.inf
        self._oneshot = False
        self._done = False

    @property
    def name(self) -> str:
        return self.status.name

    # -- entry points ---------------------------------------------------------------------

    async def run(self) -> None:
        """Refresh until stop is set, then finish any pending write-back and return."""
        self._sink.prepare()
        self._open_journal()
        try:
            while await self._step():
                pass
        finally:
            self._set_phase(Phase.STOPPED)
            self.status.alive_until = math.inf
            if self._journal is not None:
                self._journal.close()
        if self._deferred is not None:
            raise self._deferred

    def _open_journal(self) -> None:
        """Take the journal for this process; learn whose claims it may take over."""
        if self._journal is None:
            return
        try:
            self._predecessors = self._journal.open(self._holder)
        except JournalBusy as exc:
            # Another live process (a `once` beside `run`) has it: share nothing with it.
            # Without a journal, publishing waits until Vault holds a rotated token (R2).
            self._log.warning("journal.busy", message=exc.message)
            self._journal = None
        except SinkError as exc:
            self._log.error("journal.unusable", error=exc.kind, message=exc.message)
            self._journal = None

    async def once(self) -> None:
        """Make sure a fresh token is published (reusing a replica's fresh one), then return.

        Raises the first failure.
        """
        self._oneshot = True
        await self.run()

    # -- the loop -------------------------------------------------------------------------

    async def _step(self) -> bool:
        """Do what is due, or sleep until something is; return False when finished."""
        now = self._clock.monotonic()
        if self._pending is not None and now >= self._next_write:
            await self._write_back()
            return True
        if self._stop.is_set() or self._done:
            if self._pending is None:
                return False
            await self._sleep(self._next_write - now, interruptible=False)
            return True
        if now >= self._next_refresh:
            await self._cycle()
            return True
        wake = self._next_refresh
        if self._pending is not None:
            wake = min(wake, self._next_write)
        await self._sleep(wake - now, interruptible=True)
        return True

    async def _sleep(self, seconds: float, *, interruptible: bool) -> None:
        seconds = max(seconds, 0.0)
        self.status.alive_until = self._clock.monotonic() + seconds + LIVENESS_SLACK
        await self._clock.wait(self._stop if interruptible else self._never, seconds)

    def _promise_io(self, timeout: float | None = None) -> None:
        budget = timeout if timeout is not None else self._policy.operation_timeout
        self.status.alive_until = self._clock.monotonic() + 2 * budget + LIVENESS_SLACK

    def _after(self, seconds: float) -> float:
        return self._clock.monotonic() + max(seconds, 0.0)

    async def _cycle(self) -> None:
        if self._pending is not None:
            # Vault does not hold our rotated token yet and no other replica knows it; the
            # write-back keeps being retried. See _refresh_from_memory for when it is safe to
            # go on refreshing from it.
            await self._refresh_from_memory()
            return
        try:
            secret = await self._read()
        except VaultUnavailable as exc:
            if self._policy.coordination.exclusive and self._last_writer():
                # R6 for a sidecar alone with its secret: Vault being down never stops
                # refreshes from the token in memory. With replicas, having written the version
                # last seen proves nothing: another replica may have claimed and rotated since,
                # and the token in memory would be spent (R1 wins).
                self._log.warning("secret.read_failed", error=exc.kind, message=exc.message)
                await self._refresh_from_memory()
                return
            self._fail(exc, "secret.read_failed")
            return
        except SidecarError as exc:
            self._fail(exc, "secret.read_failed")
            return
        try:
            self._recover_journal(secret)
        except SinkError as exc:
            # It may hold the only live copy of the refresh token: presenting Vault's could
            # present a spent one (R1). Try again after a backoff.
            self._fail(exc, "journal.read_failed")
            return
        if self._pending is not None:
            return  # our result goes to Vault before anything else happens
        state = SharedState.parse(secret.data)
        now = self._clock.time()
        fresh_until = self._adopt_shared(state.access)
        decision = decide(
            secret.refresh_token,
            state,
            now=now,
            me=self._holder,
            fresh_until=fresh_until,
            policy=self._policy.coordination,
            predecessors=self._predecessors,
        )
        if decision.action is Action.CLAIM and fingerprint(secret.refresh_token) in self._rejected:
            decision = Decision(Action.REJECTED)
        if decision.action is Action.REJECTED:
            self._report_rejected(state)
        elif decision.action is Action.REUSE:
            assert decision.until is not None  # noqa: S101
            low, high = self._window(state.access)
            self._next_refresh = self._after(
                decision.until - now + self._rng.uniform(0, high - low)
            )
            self._done = self._oneshot
        elif decision.action is Action.WAIT:
            assert decision.until is not None  # noqa: S101
            wait = decision.until - now
            foreign = state.claim_holder not in (None, self._holder, *self._predecessors)
            if state.access is not None and foreign:
                # Look again soon enough to pick up the claimant's result well before expiry.
                lifetime = state.access.expires_at - state.access.issued_at
                wait = min(wait, max(lifetime * 0.05, 0.05))
            self._log.debug("claim.wait", seconds=round(wait, 3))
            self._next_refresh = self._after(wait * self._rng.uniform(1.0, 1.2))
        else:
            await self._claim_and_exchange(secret, state)

    def _window(self, access: SharedAccess | None) -> tuple[float, float]:
        if access is None:
            return (0.0, 0.0)
        lifetime = max(access.expires_at - access.issued_at, 0.0)
        return refresh_window(lifetime, self._policy.schedule)

    def _adopt_shared(self, access: SharedAccess | None) -> float | None:
        """Publish a shared access token newer than ours; return when it becomes due."""
        if access is None:
            return None
        self._redactor.add(access.access_token)
        due = access.issued_at + self._window(access)[0]
        newer = self.status.issued_at is None or access.issued_at >= self.status.issued_at
        if newer and self._published != access.access_token:
            self._publish(access, reused=True)
        return due

    def _report_rejected(self, state: SharedState) -> None:
        self._set_phase(Phase.REJECTED, "invalid_grant")
        self.status.last_error = self.status.last_error or "invalid_grant"
        self._next_refresh = self._after(self._policy.secret_poll)
        if self._oneshot:
            raise InvalidGrant(
                "the refresh token in Vault was rejected by the authorization server; "
                "re-seed it in Vault"
            )

    async def _claim_and_exchange(self, secret: StoredSecret, state: SharedState) -> None:
        try:
            client = client_credentials(self._client, secret)
        except SecretInvalid as exc:
            self._fail(exc, "secret.invalid")
            return
        self._redactor.add(client.client_secret, client.private_key)
        now = self._clock.time()
        skew = self._policy.coordination.clock_skew_seconds
        if state.claim_holder in self._predecessors and now < (state.claim_until or 0) + skew:
            # Its process is gone (the journal's lock is ours): no need to wait its claim out.
            self._log.info("claim.taken_over", predecessor=state.claim_holder)
        claim_until = now + self._policy.coordination.claim_seconds
        self._promise_io()
        claimed_at = self._clock.monotonic()
        try:
            claimed = await self._store.write(
                secret, with_claim(secret.data, holder=self._holder, until=claim_until)
            )
        except CasConflict:
            self._log.debug("claim.lost_race")
            self._next_refresh = self._after(self._rng.uniform(0.05, 0.25))
            return
        except SidecarError as exc:
            self._fail(exc, "claim.failed")
            return
        self._secret = claimed
        self._written_version = claimed.version
        self.status.secret_version = claimed.version
        deadline = claimed_at + self._policy.coordination.claim_seconds
        self._claim_deadline = deadline
        await self._exchange_and_persist(claimed, client, state, claim_deadline=deadline)

    def _note_refresh_token(self, refresh_token: str, facts: RefreshFacts | None) -> None:
        """Keep the refresh token's age and expiry in the status (for metrics and alerts)."""
        if facts is not None and facts.describes(refresh_token):
            self.status.refresh_token_obtained_at = facts.obtained_at
            self.status.refresh_token_expires_at = facts.expires_at
        elif refresh_token != self._noted_refresh_token:
            # a token from elsewhere (an operator's re-seed): known from now on, expiry unknown
            self.status.refresh_token_obtained_at = self._clock.time()
            self.status.refresh_token_expires_at = jwt_expiry(refresh_token)
        self._noted_refresh_token = refresh_token

    def _last_writer(self) -> bool:
        """Whether the secret as this replica last saw it is its own write."""
        return self._secret is not None and self._secret.version == self._written_version

    async def _refresh_from_memory(self) -> None:
        """Refresh with the token Vault does not hold yet, while that is safe.

        Vault still holds the token ours was rotated from, and the other replicas leave it
        alone only while our claim on it lasts: once the claim runs out, one of them may
        claim it and present it, spent. So a rotation from memory needs the claim to outlast
        the request, like any other exchange, unless this process is alone with the secret
        (``coordination.exclusive``). Otherwise the write-back is retried until Vault is back.
        """
        assert self._secret is not None  # noqa: S101
        if self._oneshot and self._pending is not None:
            self._next_refresh = self._next_write
            return
        claim_deadline = None if self._policy.coordination.exclusive else self._claim_deadline
        try:
            self._check_claim(claim_deadline)
        except ClaimExpired as exc:
            self._fail(exc, "token.refresh_failed")
            return
        try:
            client = client_credentials(self._client, self._secret)
        except SecretInvalid as exc:
            self._fail(exc, "secret.invalid")
            return
        self._log.warning("token.refresh_from_memory")
        await self._exchange_and_persist(
            self._secret, client, SharedState(), claim_deadline=claim_deadline
        )

    async def _exchange_and_persist(
        self,
        base: StoredSecret,
        client: ClientCredentials,
        state: SharedState,
        *,
        claim_deadline: float | None,
    ) -> None:
        token = str(self._pending["refresh_token"]) if self._pending else base.refresh_token
        started_mono = self._clock.monotonic()
        started_wall = self._clock.time()
        self.status.last_attempt_at = started_wall
        try:
            grant = await self._exchange(token, client, claim_deadline)
        except SidecarError as exc:
            self._record(exc.kind, started_mono)
            await self._after_failure(base, token, state, exc, started_wall)
            return
        self._redactor.add(grant.access_token, grant.refresh_token)
        lifetime = effective_lifetime(grant.expires_in, self._policy.schedule)
        if lifetime <= 0 or started_wall + lifetime <= self._clock.time():
            expired = ExpiredAnswer(
                "the token endpoint answered with an access token that is already expired "
                f"(expires_in {grant.expires_in}); the published token stays"
            )
            self._record(expired.kind, started_mono)
            await self._after_failure(
                base, token, state, expired, started_wall, rotated=grant.refresh_token
            )
            return
        published = self.status.expires_at
        if published is not None and self._clock.time() < published > started_wall + lifetime:
            # Valid, but it would replace a valid token that lasts longer: keep that one (the
            # app never sees its expiry go backwards), persist the rotation, and go on with
            # the new token's schedule, which is due before the published token expires.
            self._record(ExpiredAnswer.kind, started_mono)
            self._log.info(
                "token.expired_answer",
                reason="expires_before_published",
                expires_in=grant.expires_in,
            )
            self.status.last_error = None  # an exchange that worked: not a failure
            self.status.consecutive_failures = 0
        else:
            self._record("success", started_mono)
        self._failures = 0
        new_token = grant.refresh_token or token
        result = with_result(
            self._pending or base.data,
            refresh_token=new_token,
            grant=grant,
            issued_at=started_wall,
            expires_at=started_wall + lifetime,
            holder=self._holder,
        )
        access = SharedAccess.parse(result["token_sidecar"]["access"])
        assert access is not None  # noqa: S101  # with_result wrote it
        self._note_refresh_token(new_token, SharedState.parse(result).refresh)
        journalled = self._hold(base, result, new_token, started_wall)
        self._held = access
        # A lost check-and-set (-inf: decide again now) or a failed publish (backoff) below
        # sets an earlier time than the normal schedule; keep the earlier one.
        self._next_refresh = math.inf
        await self._write_back()
        if self._pending is not None and journalled:
            self._publish_held()
        low, high = refresh_window(lifetime, self._policy.schedule)
        self._next_refresh = min(self._next_refresh, started_mono + self._rng.uniform(low, high))
        self._done = self._oneshot

    async def _after_failure(
        self,
        base: StoredSecret,
        token: str,
        state: SharedState,
        exc: SidecarError,
        started_wall: float,
        *,
        rotated: str | None = None,
    ) -> None:
        event = "token.expired_answer" if isinstance(exc, ExpiredAnswer) else "token.refresh_failed"
        salvaged = rotated or (
            exc.salvaged_refresh_token if isinstance(exc, MalformedResponse) else None
        )
        if salvaged is not None and salvaged != token:
            # The server rotated but its answer is unusable: keep the new token (R2), and
            # share the backoff so that other replicas do not retry at once.
            self._redactor.add(salvaged)
            data = {**(self._pending or base.data), "refresh_token": salvaged}
            failures = state.failures + 1
            wait = backoff_delay(failures, self._policy.backoff, self._rng, exc.retry_after)
            release = with_release(
                data, next_attempt_at=self._clock.time() + wait, failures=failures
            )
            self._hold(base, release, salvaged, started_wall)
            await self._write_back()
            self._fail(exc, event)
            return
        if isinstance(exc, InvalidGrant | ResponseLostTwice):
            # Whatever Vault holds is spent too when the refused token was our pending one.
            self._rejected.update({fingerprint(token), fingerprint(base.refresh_token)})
            if self._pending is not None:
                self._drop_pending()
            release = with_release(base.data, rejected=fingerprint(base.refresh_token))
        elif isinstance(exc, RetryableError):
            failures = state.failures + 1
            wait = backoff_delay(failures, self._policy.backoff, self._rng, exc.retry_after)
            release = with_release(
                base.data, next_attempt_at=self._clock.time() + wait, failures=failures
            )
        else:
            wait = max(self._policy.secret_poll, self._policy.backoff.initial)
            release = with_release(base.data, next_attempt_at=self._clock.time() + wait)
        if self._pending is None:
            await self._release(base, release)
        self._fail(exc, "token.rejected" if isinstance(exc, InvalidGrant) else event)

    async def _release(self, base: StoredSecret, data: dict[str, Any]) -> None:
        """Give up the claim and share the failure; best effort (the claim expires anyway)."""
        self._promise_io()
        try:
            self._secret = await self._store.write(base, data)
            self._written_version = self._secret.version
            self.status.secret_version = self._secret.version
        except SidecarError as exc:
            self._log.warning("claim.release_failed", error=exc.kind)

    async def _read(self) -> StoredSecret:
        self._promise_io()
        secret = await self._store.read()
        self._redactor.add(secret.refresh_token, secret.client_secret)
        changed = self._secret is None or secret.version != self._secret.version
        previous = self._secret
        self._secret = secret
        self.status.secret_version = secret.version
        self._note_refresh_token(secret.refresh_token, SharedState.parse(secret.data).refresh)
        if changed:
            self._log.debug("secret.read", location=secret.location, version=secret.version)
        if (
            previous is not None
            and previous.refresh_token != secret.refresh_token
            and fingerprint(previous.refresh_token) in self._rejected
        ):
            self._log.info("secret.reseeded", version=secret.version)
        return secret

    def _recover_journal(self, secret: StoredSecret) -> None:
        """Reconcile a journalled token with what Vault holds (after a crash or restart).

        Once per process: the journal is this process's alone from then on (its lock), so
        whatever it holds later, this process knows already. Raises JournalError.
        """
        if self._journal is None or self._pending is not None or self._journal_loaded:
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
            self._pending = with_release(
                {**secret.data, "refresh_token": entry.refresh_token},
            )
            self.status.writeback_pending = True
            self._next_write = -math.inf
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

    async def _exchange(
        self, token: str, client: ClientCredentials, claim_deadline: float | None
    ) -> TokenGrant:
        self._check_claim(claim_deadline)
        self._promise_io(self._policy.exchange_timeout)
        try:
            return await self._exchanger.refresh(token, client)
        except ResponseLost:
            # R1's one exception: the very same request, once, immediately.
            self._log.warning("token.response_lost", action="retry_once")
            self._check_claim(claim_deadline)
            self._promise_io(self._policy.exchange_timeout)
            try:
                return await self._exchanger.refresh(token, client)
            except ResponseLost as exc:
                raise ResponseLostTwice(
                    "the token endpoint's answer was lost twice; the refresh token may be spent "
                    "and will not be presented again until Vault holds a new one"
                ) from exc

    def _check_claim(self, claim_deadline: float | None) -> None:
        """Present a token only while the claim outlasts the request (a stalled replica stops)."""
        if claim_deadline is None:
            return
        left = claim_deadline - self._clock.monotonic()
        if left < self._policy.exchange_timeout:
            raise ClaimExpired(
                f"the claim on the secret has {max(left, 0):.1f}s left, less than one request "
                "timeout; not presenting the refresh token"
            )

    def _hold(self, base: StoredSecret, result: dict[str, Any], token: str, when: float) -> bool:
        """Keep the result as pending; return whether the journal holds the token durably."""
        self._pending = result
        self._next_write = -math.inf
        self._write_failures = 0
        self.status.writeback_pending = True
        if self._journal is None:
            return False
        try:
            self._journal.save(JournalEntry(base.location, base.version, token, when))
        except SinkError as exc:
            self._log.error("journal.write_failed", error=exc.kind, message=exc.message)
            return False
        return True

    async def _write_back(self) -> None:
        assert self._secret is not None and self._pending is not None  # noqa: S101
        self._promise_io()
        try:
            stored = await self._store.write(self._secret, self._pending)
        except CasConflict:
            await self._resolve_conflict()
            return
        except SidecarError as exc:
            self._write_failures += 1
            delay = min(
                backoff_delay(self._write_failures, self._policy.backoff, self._rng),
                WRITEBACK_MAX_BACKOFF,
            )
            if exc.retry_after is not None:
                delay = max(delay, min(exc.retry_after, self._policy.backoff.max_retry_after))
            self._next_write = self._after(delay)
            self._log.error(
                "writeback.failed",
                error=exc.kind,
                message=exc.message,
                attempt=self._write_failures,
                retry_in=round(delay, 3),
            )
            return
        self._log.info("writeback.succeeded", version=stored.version)
        self._adopt(stored)

    async def _resolve_conflict(self) -> None:
        """Someone else wrote the secret since we read it: adopt theirs, never overwrite it."""
        assert self._pending is not None  # noqa: S101
        try:
            fresh = await self._store.read()
        except SecretRetired as exc:
            # An operator retired the credential: the token is being revoked, keep nothing.
            self._drop_pending()
            self._fail(exc, "secret.read_failed")
            return
        except SidecarError as exc:
            self._write_failures += 1
            self._next_write = self._after(
                min(
                    backoff_delay(self._write_failures, self._policy.backoff, self._rng),
                    WRITEBACK_MAX_BACKOFF,
                )
            )
            self._log.warning("writeback.conflict_unresolved", error=exc.kind)
            return
        if fresh.refresh_token == self._pending.get("refresh_token"):
            self._adopt(fresh)
            return
        self._log.warning("secret.changed_externally", version=fresh.version)
        self._secret = fresh
        self.status.secret_version = fresh.version
        self._drop_pending()
        self._next_refresh = -math.inf  # our rotation lost; decide again from what Vault holds

    def _adopt(self, stored: StoredSecret) -> None:
        if self._secret is not None and self._secret.refresh_token != stored.refresh_token:
            self._redactor.discard(self._secret.refresh_token)
        self._secret = stored
        self._written_version = stored.version
        self.status.secret_version = stored.version
        self._pending = None
        self._write_failures = 0
        self.status.writeback_pending = False
        self._clear_journal()
        self._publish_held()

    def _drop_pending(self) -> None:
        self._pending = None
        self._held = None
        self.status.writeback_pending = False
        self._clear_journal()

    def _publish_held(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._publish(held, reused=False)

    def _publish(self, access: SharedAccess, *, reused: bool) -> None:
        now = self._clock.time()
        if access.expires_at <= now:
            return
        current = self.status.expires_at
        if (
            current is not None
            and now < current
            and access.expires_at < current
            and self._published != access.access_token
        ):
            return  # never replace a valid token with one that expires earlier
        token = PublishedToken(
            access_token=access.access_token,
            token_type=access.token_type,
            issued_at=datetime.fromtimestamp(access.issued_at, tz=UTC),
            expires_at=datetime.fromtimestamp(access.expires_at, tz=UTC),
            scope=access.scope,
        )
        try:
            self._sink.publish(token)
        except SinkError as exc:
            self._fail(exc, "token.publish_failed")
            return
        if self._published not in (None, access.access_token):
            # The superseded token is in no file and no request of ours any more.
            self._redactor.discard(self._published)
        self._published = access.access_token
        status = self.status
        self._set_phase(Phase.VALID)
        status.issued_at = access.issued_at
        status.expires_at = access.expires_at
        status.ready_margin_cap = ready_margin_cap(
            access.expires_at - access.issued_at, self._policy.schedule
        )
        status.last_success_at = self._clock.time()
        status.last_error = None
        status.consecutive_failures = 0
        self._log.info(
            "token.reused" if reused else "token.refreshed",
            expires_in=round(access.expires_at - self._clock.time(), 3),
            scope=access.scope,
        )

    def _fail(self, exc: SidecarError, event: str) -> None:
        """Record a failure and schedule the next attempt by its class (R6)."""
        if self._oneshot:
            if self._pending is None:
                raise exc
            # R2: a rotated token still on its way to Vault is written before `once` fails.
            self._deferred = self._deferred or exc
            self._done = True
            return
        self._failures += 1
        status = self.status
        status.last_error = exc.kind
        status.consecutive_failures = self._failures
        if isinstance(exc, InvalidGrant | ResponseLostTwice):
            self._set_phase(Phase.REJECTED, exc.kind)
            delay = self._policy.secret_poll
        elif isinstance(exc, FinalError):
            self._set_phase(Phase.FAILED, exc.kind)
            delay = max(
                self._policy.secret_poll,
                backoff_delay(self._failures, self._policy.backoff, self._rng),
            )
        else:
            phase = Phase.RETRYING if status.issued_at is not None else Phase.STARTING
            self._set_phase(phase, exc.kind)
            delay = backoff_delay(self._failures, self._policy.backoff, self._rng, exc.retry_after)
        self._next_refresh = self._after(delay)
        level = "error" if isinstance(exc, FinalError) else "warning"
        getattr(self._log, level)(
            event, error=exc.kind, message=exc.message, retry_in=round(delay, 3)
        )

    def _set_phase(self, phase: Phase, reason: str | None = None) -> None:
        old = self.status.phase
        self.status.phase = phase
        if old is not phase and self._observer is not None:
            self._observer.phase_changed(self.name, old.value, phase.value, reason)

    def _record(self, outcome: str, started: float) -> None:
        if self._observer is not None:
            self._observer.refresh_finished(self.name, outcome, self._clock.monotonic() - started)

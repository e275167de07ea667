"""One credential's refresh loop: read, decide, claim, exchange, persist, publish, sleep.

Every cycle starts by reading the secret, because replicas sharing it take turns through it
(see :mod:`sidecar.coordination`): a fresh shared access token is reused, a live claim of
another replica is waited out, and only the replica that wins the check-and-set claim
exchanges the refresh token.

State kept between cycles: the secret as last seen and the rotated token on its way to Vault
(:class:`sidecar.writeback.WriteBack`), the locally rejected tokens, and ``next_refresh``, the
monotonic deadline of the next cycle.

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
from typing import Any

import structlog

from sidecar.backoff import BackoffPolicy, backoff_delay
from sidecar.client_auth import ClientTemplate, client_credentials
from sidecar.coordination import (
    Action,
    CoordinationPolicy,
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
    InvalidGrant,
    MalformedResponse,
    ResponseLost,
    ResponseLostTwice,
    SecretInvalid,
    SecretRetired,
    Severity,
    SidecarError,
    SinkError,
    VaultUnavailable,
    classify_failure,
    expired_answer,
)
from sidecar.model import ClientCredentials, StoredSecret, TokenGrant
from sidecar.ports import (
    Clock,
    Journal,
    RefreshObserver,
    SecretStore,
    TokenExchanger,
    TokenSink,
)
from sidecar.publisher import Publisher
from sidecar.redact import REDACTOR, Redactor
from sidecar.schedule import (
    Answer,
    SchedulePolicy,
    effective_lifetime,
    judge_answer,
    refresh_window,
)
from sidecar.status import CredentialStatus, Phase
from sidecar.writeback import WriteBack, WriteResult

__all__ = ["RefreshPolicy", "Refresher"]

log = structlog.get_logger(__name__)

#: slack added to every promise the loop makes about when it will act again (liveness).
LIVENESS_SLACK = 30.0


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
        self._rng = rng or random.Random()  # noqa: S311  # jitter, not cryptography
        self._redactor = redactor
        self._log = log.bind(credential=status.name)
        self._never = asyncio.Event()
        self._wb = WriteBack(
            store=store,
            journal=journal,
            status=status,
            clock=clock,
            backoff=policy.backoff,
            rng=self._rng,
            redactor=redactor,
            log=self._log,
            promise_io=self._promise_io,
        )

        self._out = Publisher(
            sink=sink,
            status=status,
            clock=clock,
            schedule=policy.schedule,
            redactor=redactor,
            log=self._log,
            observer=observer,
        )
        self._rejected: set[str] = set()
        self._noted_refresh_token: str | None = None
        self._predecessors: frozenset[str] = frozenset()
        self._deferred: SidecarError | None = None
        self._failures = 0
        self._next_refresh = -math.inf
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
        self._predecessors = self._wb.open_journal(self._holder)
        try:
            while await self._step():
                pass
        finally:
            self._out.set_phase(Phase.STOPPED)
            self.status.alive_until = math.inf
            self._wb.close_journal()
        if self._deferred is not None:
            raise self._deferred

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
        pending = self._wb.pending is not None
        if pending and now >= self._wb.next_write:
            await self._write_back()
            return True
        if self._stop.is_set() or self._done:
            if not pending:
                return False
            await self._sleep(self._wb.next_write - now, interruptible=False)
            return True
        if now >= self._next_refresh:
            await self._cycle()
            return True
        wake = self._next_refresh
        if pending:
            wake = min(wake, self._wb.next_write)
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
        if self._wb.pending is not None:
            # Vault does not hold our rotated token yet and no other replica knows it; the
            # write-back keeps being retried. See _refresh_from_memory for when it is safe to
            # go on refreshing from it.
            await self._refresh_from_memory()
            return
        try:
            secret = await self._read()
        except VaultUnavailable as exc:
            if self._policy.coordination.exclusive and self._wb.last_writer():
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
            self._wb.recover(secret)
        except SinkError as exc:
            # It may hold the only live copy of the refresh token: presenting Vault's could
            # present a spent one (R1). Try again after a backoff.
            self._fail(exc, "journal.read_failed")
            return
        if self._wb.pending is not None:
            return  # our result goes to Vault before anything else happens
        state = SharedState.parse(secret.data)
        now = self._clock.time()
        fresh_until = self._adopt_shared(state.access)
        low, high = self._window(state.access)
        decision = decide(
            secret.refresh_token,
            state,
            now=now,
            me=self._holder,
            fresh_until=fresh_until,
            policy=self._policy.coordination,
            predecessors=self._predecessors,
            rejected=self._rejected,
            reuse_spread=high - low,
            draw=self._rng.random(),
        )
        if decision.action is Action.REJECTED:
            self._report_rejected(state)
        elif decision.action is Action.CLAIM:
            await self._claim_and_exchange(secret, state)
        else:
            assert decision.until is not None  # noqa: S101  # REUSE and WAIT say until when
            if decision.action is Action.WAIT:
                self._log.debug("claim.wait", seconds=round(decision.until - now, 3))
            else:
                self._done = self._oneshot
            self._next_refresh = self._after(decision.until - now)

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
        if newer and self._out.published != access.access_token:
            self._publish(access, reused=True)
        return due

    def _report_rejected(self, state: SharedState) -> None:
        self._out.set_phase(Phase.REJECTED, "invalid_grant")
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
        self._wb.record(claimed, written=True)
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

    async def _refresh_from_memory(self) -> None:
        """Refresh with the token Vault does not hold yet, while that is safe.

        Vault still holds the token ours was rotated from, and the other replicas leave it
        alone only while our claim on it lasts: once the claim runs out, one of them may
        claim it and present it, spent. So a rotation from memory needs the claim to outlast
        the request, like any other exchange, unless this process is alone with the secret
        (``coordination.exclusive``). Otherwise the write-back is retried until Vault is back.
        """
        secret = self._wb.secret
        assert secret is not None  # noqa: S101
        if self._oneshot and self._wb.pending is not None:
            self._next_refresh = self._wb.next_write
            return
        claim_deadline = None if self._policy.coordination.exclusive else self._claim_deadline
        try:
            self._check_claim(claim_deadline)
        except ClaimExpired as exc:
            self._fail(exc, "token.refresh_failed")
            return
        try:
            client = client_credentials(self._client, secret)
        except SecretInvalid as exc:
            self._fail(exc, "secret.invalid")
            return
        self._log.warning("token.refresh_from_memory")
        await self._exchange_and_persist(
            secret, client, SharedState(), claim_deadline=claim_deadline
        )

    async def _exchange_and_persist(
        self,
        base: StoredSecret,
        client: ClientCredentials,
        state: SharedState,
        *,
        claim_deadline: float | None,
    ) -> None:
        token = str(self._wb.pending["refresh_token"]) if self._wb.pending else base.refresh_token
        started_mono = self._clock.monotonic()
        started_wall = self._clock.time()
        self.status.last_attempt_at = started_wall
        try:
            grant = await self._exchange(token, client, claim_deadline)
        except SidecarError as exc:
            self._out.record(exc.kind, started_mono)
            await self._after_failure(base, token, state, exc, started_wall)
            return
        self._redactor.add(grant.access_token, grant.refresh_token)
        lifetime = effective_lifetime(grant.expires_in, self._policy.schedule)
        verdict = judge_answer(
            lifetime,
            started=started_wall,
            now=self._clock.time(),
            published_until=self.status.expires_at,
        )
        if verdict is Answer.EXPIRED:
            expired = expired_answer(grant.expires_in)
            self._out.record(expired.kind, started_mono)
            await self._after_failure(
                base, token, state, expired, started_wall, rotated=grant.refresh_token
            )
            return
        if verdict is Answer.SHORTER:
            # Persist the rotation and go on with the new token's schedule, which is due
            # before the published token expires.
            self._out.record(ExpiredAnswer.kind, started_mono)
            self._log.info(
                "token.expired_answer",
                reason="expires_before_published",
                expires_in=grant.expires_in,
            )
            self.status.last_error = None  # an exchange that worked: not a failure
            self.status.consecutive_failures = 0
        else:
            self._out.record("success", started_mono)
        self._failures = 0
        new_token = grant.refresh_token or token
        result = with_result(
            self._wb.pending or base.data,
            refresh_token=new_token,
            grant=grant,
            issued_at=started_wall,
            expires_at=started_wall + lifetime,
            holder=self._holder,
        )
        access = SharedAccess.parse(result["token_sidecar"]["access"])
        assert access is not None  # noqa: S101  # with_result wrote it
        self._note_refresh_token(new_token, SharedState.parse(result).refresh)
        journalled = self._wb.hold(base, result, new_token, started_wall)
        self._wb.held = access
        # A lost check-and-set (-inf: decide again now) or a failed publish (backoff) below
        # sets an earlier time than the normal schedule; keep the earlier one.
        self._next_refresh = math.inf
        await self._write_back()
        if self._wb.pending is not None and journalled:
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
            data = {**(self._wb.pending or base.data), "refresh_token": salvaged}
            failures = state.failures + 1
            wait = backoff_delay(failures, self._policy.backoff, self._rng, exc.retry_after)
            release = with_release(
                data, next_attempt_at=self._clock.time() + wait, failures=failures
            )
            self._wb.hold(base, release, salvaged, started_wall)
            await self._write_back()
            self._fail(exc, event)
            return
        severity = classify_failure(exc)
        if severity is Severity.REJECTED:
            # Whatever Vault holds is spent too when the refused token was our pending one.
            self._rejected.update({fingerprint(token), fingerprint(base.refresh_token)})
            if self._wb.pending is not None:
                self._wb.drop()
            release = with_release(base.data, rejected=fingerprint(base.refresh_token))
        elif severity is Severity.RETRYABLE:
            failures = state.failures + 1
            wait = backoff_delay(failures, self._policy.backoff, self._rng, exc.retry_after)
            release = with_release(
                base.data, next_attempt_at=self._clock.time() + wait, failures=failures
            )
        else:
            wait = max(self._policy.secret_poll, self._policy.backoff.initial)
            release = with_release(base.data, next_attempt_at=self._clock.time() + wait)
        if self._wb.pending is None:
            await self._release(base, release)
        self._fail(exc, "token.rejected" if isinstance(exc, InvalidGrant) else event)

    async def _release(self, base: StoredSecret, data: dict[str, Any]) -> None:
        """Give up the claim and share the failure; best effort (the claim expires anyway)."""
        self._promise_io()
        try:
            self._wb.record(await self._store.write(base, data), written=True)
        except SidecarError as exc:
            self._log.warning("claim.release_failed", error=exc.kind)

    async def _read(self) -> StoredSecret:
        self._promise_io()
        secret = await self._store.read()
        self._redactor.add(secret.refresh_token, secret.client_secret)
        previous = self._wb.secret
        changed = previous is None or secret.version != previous.version
        self._wb.record(secret, written=False)
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

    async def _write_back(self) -> None:
        try:
            result = await self._wb.write()
        except SecretRetired as exc:
            self._fail(exc, "secret.read_failed")
            return
        if result is WriteResult.STORED:
            self._publish_held()
        elif result is WriteResult.LOST:
            self._next_refresh = -math.inf  # our rotation lost; decide again from Vault's value

    def _publish_held(self) -> None:
        held = self._wb.take_held()
        if held is not None:
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
            and self._out.published != access.access_token
        ):
            return  # never replace a valid token with one that expires earlier
        try:
            self._out.publish(access, reused=reused)
        except SinkError as exc:
            self._fail(exc, "token.publish_failed")

    def _fail(self, exc: SidecarError, event: str) -> None:
        """Record a failure and schedule the next attempt by its class (R6)."""
        if self._oneshot:
            if self._wb.pending is None:
                raise exc
            # R2: a rotated token still on its way to Vault is written before `once` fails.
            self._deferred = self._deferred or exc
            self._done = True
            return
        self._failures += 1
        status = self.status
        status.last_error = exc.kind
        status.consecutive_failures = self._failures
        severity = classify_failure(exc)
        if severity is Severity.REJECTED:
            self._out.set_phase(Phase.REJECTED, exc.kind)
            delay = self._policy.secret_poll
        elif severity is Severity.FINAL:
            self._out.set_phase(Phase.FAILED, exc.kind)
            delay = max(
                self._policy.secret_poll,
                backoff_delay(self._failures, self._policy.backoff, self._rng),
            )
        else:
            phase = Phase.RETRYING if status.issued_at is not None else Phase.STARTING
            self._out.set_phase(phase, exc.kind)
            delay = backoff_delay(self._failures, self._policy.backoff, self._rng, exc.retry_after)
        self._next_refresh = self._after(delay)
        level = "warning" if severity is Severity.RETRYABLE else "error"
        getattr(self._log, level)(
            event, error=exc.kind, message=exc.message, retry_in=round(delay, 3)
        )

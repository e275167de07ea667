"""One credential's refresh loop: read, decide, claim, rotate, sleep.

Every cycle starts by reading the secret, because replicas sharing it take turns through it
(see :mod:`sidecar.coordination`): a fresh shared access token is reused, a live claim of
another replica is waited out, and only the replica that wins the check-and-set claim
exchanges the refresh token, in a :class:`sidecar.rotation.Rotation` (present once, judge the
answer, persist, publish).

State kept between cycles: the secret as last seen and the rotated token on its way to Vault
(:class:`sidecar.writeback.WriteBack`), the locally rejected tokens (the rotation's), and
``next_refresh``, the monotonic deadline of the next cycle.

While Vault is out of reach, a replica holding a pending token keeps refreshing with it from
memory (no other replica knows that token, so R1 in docs/design.md holds) and keeps retrying
the write-back. After stop is requested no exchange starts, but a pending write-back keeps
being retried until it lands or the caller's grace period runs out.

Every step of a cycle returns the monotonic time of the next one, and :meth:`Refresher._step`
is the one place that keeps it. Every failure goes through :meth:`Refresher._fail`, which
records it and returns when to try again, by the error tree (R6).
"""

from __future__ import annotations

import asyncio
import math
import random

import structlog

from sidecar.client_auth import ClientTemplate, client_credentials
from sidecar.coordination import Action, SharedAccess, SharedState, decide, fingerprint
from sidecar.errors import (
    CasConflict,
    ClaimExpired,
    InvalidGrant,
    SecretInvalid,
    SidecarError,
    SinkError,
    VaultUnavailable,
    classify_failure,
)
from sidecar.model import ClientCredentials, StoredSecret
from sidecar.ports import Clock, Journal, RefreshObserver, SecretStore, TokenExchanger, TokenSink
from sidecar.publisher import Publisher
from sidecar.redact import REDACTOR, Redactor
from sidecar.rotation import Rotation
from sidecar.schedule import LIVENESS_SLACK, RefreshPolicy, access_window
from sidecar.status import CredentialStatus, Phase
from sidecar.writeback import WriteBack

__all__ = ["Refresher"]

log = structlog.get_logger(__name__)


class Refresher:
    """Keeps one refresh-token credential's token file fresh: ``run`` until stopped, or
    ``once``."""

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
            policy=policy,
            rng=self._rng,
            redactor=redactor,
            log=self._log,
            observer=observer,
        )
        self._rotation = Rotation(
            exchanger=exchanger,
            writeback=self._wb,
            publisher=self._out,
            clock=clock,
            policy=policy,
            holder=holder,
            rng=self._rng,
            redactor=redactor,
            log=self._log,
            promise_io=self._promise_io,
            fail=self._fail,
        )
        self._deferred: SidecarError | None = None
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
        self._wb.open_journal(self._holder)
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
            soonest = await self._rotation.write_back()
            if soonest < math.inf:  # another writer's value won, or a failure's retry
                self._next_refresh = soonest
            return True
        if self._stop.is_set() or self._done:
            if not pending:
                return False
            await self._sleep(self._wb.next_write - now, interruptible=False)
            return True
        if now >= self._next_refresh:
            self._next_refresh = await self._cycle()
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

    async def _cycle(self) -> float:
        """One cycle; returns the monotonic time of the next."""
        if self._wb.pending is not None:
            # Vault does not hold our rotated token yet and no other replica knows it; the
            # write-back keeps being retried. See _refresh_from_memory for when it is safe to
            # go on refreshing from it.
            return await self._refresh_from_memory()
        try:
            secret = await self._read()
        except SidecarError as exc:
            alone = self._policy.coordination.exclusive and self._wb.last_writer()
            if isinstance(exc, VaultUnavailable) and alone:
                # R6 for a sidecar alone with its secret: Vault being down never stops
                # refreshes from the token in memory. With replicas, having written the version
                # last seen proves nothing: another replica may have claimed and rotated since,
                # and the token in memory would be spent (R1 wins).
                self._log.warning("secret.read_failed", error=exc.kind, message=exc.message)
                return await self._refresh_from_memory()
            return self._fail(exc, "secret.read_failed")
        try:
            self._wb.recover(secret)
        except SinkError as exc:
            # It may hold the only live copy of the refresh token: presenting Vault's could
            # present a spent one (R1). Try again after a backoff.
            return self._fail(exc, "journal.read_failed")
        if self._wb.pending is not None:
            return -math.inf  # our result goes to Vault before anything else happens
        return await self._decide(secret)

    async def _decide(self, secret: StoredSecret) -> float:
        """Reuse a replica's fresh token, wait, report a rejected token, or claim and rotate."""
        state = SharedState.parse(secret.data)
        now = self._clock.time()
        fresh_until = self._adopt_shared(state.access)
        low, high = access_window(state.access, self._policy.schedule)
        decision = decide(
            secret.refresh_token,
            state,
            now=now,
            me=self._holder,
            fresh_until=fresh_until,
            policy=self._policy.coordination,
            predecessors=self._wb.predecessors,
            rejected=self._rotation.rejected,
            reuse_spread=high - low,
            draw=self._rng.random(),
        )
        if decision.action is Action.REJECTED:
            return self._report_rejected()
        if decision.action is Action.CLAIM:
            return await self._claim_and_rotate(secret, state)
        assert decision.until is not None  # noqa: S101  # REUSE and WAIT say until when
        if decision.action is Action.WAIT:
            self._log.debug("claim.wait", seconds=round(decision.until - now, 3))
        else:
            self._done = self._oneshot
        return self._after(decision.until - now)

    def _adopt_shared(self, access: SharedAccess | None) -> float | None:
        """Publish a shared access token newer than ours; return when it becomes due."""
        if access is None:
            return None
        self._redactor.add(access.access_token)
        due = access.issued_at + access_window(access, self._policy.schedule)[0]
        newer = self.status.issued_at is None or access.issued_at >= self.status.issued_at
        if newer and self._out.published != access.access_token:
            self._rotation.publish(access, reused=True)
        return due

    def _report_rejected(self) -> float:
        self._out.set_phase(Phase.REJECTED, "invalid_grant")
        self.status.last_error = self.status.last_error or "invalid_grant"
        if self._oneshot:
            raise InvalidGrant(
                "the refresh token in Vault was rejected by the authorization server; "
                "re-seed it in Vault"
            )
        return self._after(self._policy.secret_poll)

    async def _claim_and_rotate(self, secret: StoredSecret, state: SharedState) -> float:
        try:
            client = self._client_for(secret)
        except SecretInvalid as exc:
            return self._fail(exc, "secret.invalid")
        policy = self._policy.coordination
        try:
            claimed, self._claim_deadline = await self._wb.claim(
                secret,
                state,
                holder=self._holder,
                seconds=policy.claim_seconds,
                skew=policy.clock_skew_seconds,
            )
        except CasConflict:
            self._log.debug("claim.lost_race")
            return self._after(self._rng.uniform(0.05, 0.25))
        except SidecarError as exc:
            return self._fail(exc, "claim.failed")
        return await self._rotate(claimed, client, state, self._claim_deadline)

    async def _refresh_from_memory(self) -> float:
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
            return self._wb.next_write
        claim_deadline = None if self._policy.coordination.exclusive else self._claim_deadline
        try:
            self._rotation.check_claim(claim_deadline)
        except ClaimExpired as exc:
            return self._fail(exc, "token.refresh_failed")
        try:
            client = self._client_for(secret)
        except SecretInvalid as exc:
            return self._fail(exc, "secret.invalid")
        self._log.warning("token.refresh_from_memory")
        return await self._rotate(secret, client, SharedState(), claim_deadline)

    def _client_for(self, secret: StoredSecret) -> ClientCredentials:
        """The client's credentials from configuration and secret. Raises SecretInvalid."""
        client = client_credentials(self._client, secret)
        self._redactor.add(client.client_secret, client.private_key)
        return client

    async def _rotate(
        self,
        base: StoredSecret,
        client: ClientCredentials,
        state: SharedState,
        claim_deadline: float | None,
    ) -> float:
        soonest = await self._rotation.rotate(base, client, state, claim_deadline=claim_deadline)
        self._done = self._oneshot  # `once` ends here, done or failed with the token kept
        return soonest

    async def _read(self) -> StoredSecret:
        secret, previous = await self._wb.read()
        self._out.note_refresh_token(secret.refresh_token, SharedState.parse(secret.data).refresh)
        if (
            previous is not None
            and previous.refresh_token != secret.refresh_token
            and fingerprint(previous.refresh_token) in self._rotation.rejected
        ):
            self._log.info("secret.reseeded", version=secret.version)
        return secret

    def _fail(self, exc: SidecarError, event: str) -> float:
        """Record a failure; return when to try again, by its class (R6)."""
        if self._oneshot:
            if self._wb.pending is None:
                raise exc
            # R2: a rotated token still on its way to Vault is written before `once` fails.
            self._deferred = self._deferred or exc
            self._done = True
            return math.inf
        return self._after(self._out.failed(exc, event, classify_failure(exc)))

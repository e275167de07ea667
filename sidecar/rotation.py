"""One rotation of a refresh token (R1, R2 and R4 in docs/design.md): present the token once,
judge the answer, keep the rotated token until Vault holds it, and only then publish.

The refresher (:mod:`sidecar.refresher`) reads the secret, decides and claims; it hands the
claimed secret to :meth:`Rotation.rotate` and gets back when the next refresh is due. What
went wrong is reported through the loop's ``fail`` (which schedules the retry by the error
tree), so one failure is handled in one place whichever step it came from.

* **Present once** (R1): a token is presented only while the claim outlasts the request, and
  an answer lost in transit is asked for again once, at once, with the very same token.
* **Judge** (R4): an answer already expired is never published; one that expires before the
  published token is not published either, but its rotated refresh token is kept.
* **Persist first** (R2): the rotated token goes to the journal, then to Vault with
  check-and-set on the claim's version (:class:`sidecar.writeback.WriteBack`), and the access
  token is published once either holds it. A token salvaged from an unusable answer is
  persisted the same way.
* **Share a failure** (R6): the claim is released with the failure's consequence
  (:func:`sidecar.coordination.failure_release`), and a refused token is never presented again.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from sidecar.coordination import (
    SharedAccess,
    SharedState,
    failure_release,
    fingerprint,
    with_result,
)
from sidecar.errors import (
    ClaimExpired,
    ExpiredAnswer,
    InvalidGrant,
    MalformedResponse,
    ResponseLost,
    ResponseLostTwice,
    SecretRetired,
    Severity,
    SidecarError,
    SinkError,
    classify_failure,
    expired_answer,
)
from sidecar.model import ClientCredentials, StoredSecret, TokenGrant
from sidecar.ports import Clock, TokenExchanger
from sidecar.publisher import Publisher
from sidecar.redact import Redactor
from sidecar.schedule import (
    Answer,
    RefreshPolicy,
    effective_lifetime,
    judge_answer,
    refresh_window,
)
from sidecar.writeback import WriteBack, WriteResult

__all__ = ["Rotation"]

#: ``fail(error, event)``: the loop records a failure; returns the monotonic time of the next
#: attempt (R6).
Fail = Callable[[SidecarError, str], float]


class Rotation:
    """One credential's exchanges of its refresh token, and the rotated token's way to Vault."""

    def __init__(
        self,
        *,
        exchanger: TokenExchanger,
        writeback: WriteBack,
        publisher: Publisher,
        clock: Clock,
        policy: RefreshPolicy,
        holder: str,
        rng: random.Random,
        redactor: Redactor,
        log: structlog.typing.FilteringBoundLogger,
        promise_io: Callable[[float | None], None],
        fail: Fail,
    ) -> None:
        self._exchanger = exchanger
        self._wb = writeback
        self._out = publisher
        self._clock = clock
        self._policy = policy
        self._holder = holder
        self._rng = rng
        self._redactor = redactor
        self._log = log
        self._promise_io = promise_io
        self._fail = fail
        self.rejected: set[str] = set()
        """Fingerprints of the refresh tokens refused here; never presented again."""

    async def rotate(
        self,
        base: StoredSecret,
        client: ClientCredentials,
        state: SharedState,
        *,
        claim_deadline: float | None,
    ) -> float:
        """Exchange the pending token, or else ``base``'s; persist and publish the result.

        Returns the monotonic time the next cycle is due: the new token's refresh, or sooner
        after a failure (reported to ``fail``), or ``-inf`` when another writer's value won
        (decide again from Vault's).
        """
        pending = self._wb.pending
        token = str(pending["refresh_token"]) if pending else base.refresh_token
        started_mono = self._clock.monotonic()
        started_wall = self._clock.time()
        self._out.status.last_attempt_at = started_wall
        try:
            grant = await self._present(token, client, claim_deadline)
        except SidecarError as exc:
            self._out.record(exc.kind, started_mono)
            return await self._after_failure(base, token, state, exc, started_wall)
        self._redactor.add(grant.access_token, grant.refresh_token)
        lifetime = effective_lifetime(grant.expires_in, self._policy.schedule)
        verdict = judge_answer(
            lifetime,
            started=started_wall,
            now=self._clock.time(),
            published_until=self._out.status.expires_at,
        )
        if verdict is Answer.EXPIRED:
            expired = expired_answer(grant.expires_in)
            self._out.record(expired.kind, started_mono)
            return await self._after_failure(
                base, token, state, expired, started_wall, rotated=grant.refresh_token
            )
        if verdict is Answer.SHORTER:
            # Persist the rotation and go on with the new token's schedule, which is due
            # before the published token expires.
            self._out.record(ExpiredAnswer.kind, started_mono)
            self._log.info(
                "token.expired_answer",
                reason="expires_before_published",
                expires_in=grant.expires_in,
            )
        else:
            self._out.record("success", started_mono)
        self._out.exchanged()
        new_token = grant.refresh_token or token
        result = with_result(
            pending or base.data,
            refresh_token=new_token,
            grant=grant,
            issued_at=started_wall,
            expires_at=started_wall + lifetime,
            holder=self._holder,
        )
        self._out.note_refresh_token(new_token, SharedState.parse(result).refresh)
        journalled = self._wb.hold(base, result, new_token, started_wall)
        self._wb.held = SharedAccess.parse(result["token_sidecar"]["access"])
        soonest = await self.write_back()
        if self._wb.pending is not None and journalled:
            soonest = min(soonest, self._publish_held())
        low, high = refresh_window(lifetime, self._policy.schedule)
        return min(soonest, started_mono + self._rng.uniform(low, high))

    async def write_back(self) -> float:
        """Try to write the pending token to Vault; publish what waited for it once stored.

        Returns when the next cycle must come at the latest: ``inf`` (no sooner than planned),
        ``-inf`` when another writer's value won, or the retry after a failure."""
        try:
            result = await self._wb.write()
        except SecretRetired as exc:
            return self._fail(exc, "secret.read_failed")
        if result is WriteResult.LOST:
            return -math.inf
        return self._publish_held() if result is WriteResult.STORED else math.inf

    def publish(self, access: SharedAccess, *, reused: bool) -> float:
        """Offer ``access`` to the app; a failed write is a failure like any other.

        Returns ``inf``, or the retry after a failure."""
        try:
            self._out.offer(access, reused=reused)
        except SinkError as exc:
            return self._fail(exc, "token.publish_failed")
        return math.inf

    def _publish_held(self) -> float:
        held = self._wb.take_held()
        return math.inf if held is None else self.publish(held, reused=False)

    async def _present(
        self, token: str, client: ClientCredentials, claim_deadline: float | None
    ) -> TokenGrant:
        self.check_claim(claim_deadline)
        self._promise_io(self._policy.exchange_timeout)
        try:
            return await self._exchanger.refresh(token, client)
        except ResponseLost:
            # R1's one exception: the very same request, once, immediately.
            self._log.warning("token.response_lost", action="retry_once")
            self.check_claim(claim_deadline)
            self._promise_io(self._policy.exchange_timeout)
            try:
                return await self._exchanger.refresh(token, client)
            except ResponseLost as exc:
                raise ResponseLostTwice(
                    "the token endpoint's answer was lost twice; the refresh token may be spent "
                    "and will not be presented again until Vault holds a new one"
                ) from exc

    def check_claim(self, claim_deadline: float | None) -> None:
        """Present a token only while the claim outlasts the request (a stalled replica stops).

        ``claim_deadline`` is monotonic; None when this process is alone with the secret.
        Raises ClaimExpired."""
        if claim_deadline is None:
            return
        left = claim_deadline - self._clock.monotonic()
        if left < self._policy.exchange_timeout:
            raise ClaimExpired(
                f"the claim on the secret has {max(left, 0):.1f}s left, less than one request "
                "timeout; not presenting the refresh token"
            )

    async def _after_failure(
        self,
        base: StoredSecret,
        token: str,
        state: SharedState,
        exc: SidecarError,
        started_wall: float,
        *,
        rotated: str | None = None,
    ) -> float:
        event = "token.expired_answer" if isinstance(exc, ExpiredAnswer) else "token.refresh_failed"
        salvaged = rotated or (
            exc.salvaged_refresh_token if isinstance(exc, MalformedResponse) else None
        )
        if salvaged is not None and salvaged != token:
            # The server rotated but its answer is unusable: keep the new token (R2), and
            # share the backoff so that other replicas do not retry at once.
            self._redactor.add(salvaged)
            data = {**(self._wb.pending or base.data), "refresh_token": salvaged}
            release = self._released(data, Severity.RETRYABLE, salvaged, exc, state)
            self._wb.hold(base, release, salvaged, started_wall)
            await self.write_back()
            return self._fail(exc, event)
        severity = classify_failure(exc)
        if severity is Severity.REJECTED:
            # Whatever Vault holds is spent too when the refused token was our pending one.
            self.rejected.update({fingerprint(token), fingerprint(base.refresh_token)})
            if self._wb.pending is not None:
                self._wb.drop()
        if self._wb.pending is None:
            release = self._released(base.data, severity, base.refresh_token, exc, state)
            await self._wb.release(base, release)
        return self._fail(exc, "token.rejected" if isinstance(exc, InvalidGrant) else event)

    def _released(
        self,
        data: Mapping[str, Any],
        severity: Severity,
        token: str,
        exc: SidecarError,
        state: SharedState,
    ) -> dict[str, Any]:
        return failure_release(
            data,
            severity,
            token=token,
            shared_failures=state.failures,
            now=self._clock.time(),
            backoff=self._policy.backoff,
            secret_poll=self._policy.secret_poll,
            rng=self._rng,
            retry_after=exc.retry_after,
        )

"""What a credential shows the world: the app's token files, its status, the observer's counts.

Both loops (:mod:`sidecar.refresher` for refresh tokens, :mod:`sidecar.client_grant` for
``client_credentials``) publish through one :class:`Publisher`, so a token reaches the files,
the status (phase, expiry, readiness margin, last success) and the log the same way whichever
grant produced it, and a failure is counted, reported and logged the same way too
(:meth:`Publisher.failed`). A superseded access token is dropped from the redactor once it is
in no file and no request any more.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import structlog

from sidecar.backoff import plan_retry
from sidecar.coordination import RefreshFacts, SharedAccess, jwt_expiry
from sidecar.errors import Severity, SidecarError
from sidecar.model import PublishedToken
from sidecar.ports import Clock, RefreshObserver, TokenSink
from sidecar.redact import Redactor
from sidecar.schedule import RefreshPolicy, ready_margin_cap
from sidecar.status import CredentialStatus, Phase

__all__ = ["Publisher"]


class Publisher:
    """One credential's files, status and observer."""

    def __init__(
        self,
        *,
        sink: TokenSink,
        status: CredentialStatus,
        clock: Clock,
        policy: RefreshPolicy,
        rng: random.Random,
        redactor: Redactor,
        log: structlog.typing.FilteringBoundLogger,
        observer: RefreshObserver | None = None,
    ) -> None:
        self._sink = sink
        self._status = status
        self._clock = clock
        self._policy = policy
        self._rng = rng
        self._redactor = redactor
        self._log = log
        self._observer = observer
        self.published: str | None = None
        """The access token in the files now, if this process wrote one."""
        self._noted_refresh_token: str | None = None

    @property
    def status(self) -> CredentialStatus:
        return self._status

    def offer(self, access: SharedAccess, *, reused: bool) -> None:
        """Publish ``access`` unless it is expired or a valid published token outlives it.

        The app never sees its token's expiry go backwards. Raises SinkError.
        """
        now = self._clock.time()
        if access.expires_at <= now:
            return
        current = self._status.expires_at
        if (
            current is not None
            and now < current
            and access.expires_at < current
            and self.published != access.access_token
        ):
            return
        self.publish(access, reused=reused)

    def publish(self, access: SharedAccess, *, reused: bool) -> None:
        """Write ``access`` to the files and mark the credential valid. Raises SinkError."""
        token = PublishedToken(
            access_token=access.access_token,
            token_type=access.token_type,
            issued_at=datetime.fromtimestamp(access.issued_at, tz=UTC),
            expires_at=datetime.fromtimestamp(access.expires_at, tz=UTC),
            scope=access.scope,
        )
        self._sink.publish(token)
        if self.published not in (None, access.access_token):
            # The superseded token is in no file and no request of ours any more.
            self._redactor.discard(self.published)
        self.published = access.access_token
        status = self._status
        self.set_phase(Phase.VALID)
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

    def set_phase(self, phase: Phase, reason: str | None = None) -> None:
        old = self._status.phase
        self._status.phase = phase
        if old is not phase and self._observer is not None:
            self._observer.phase_changed(self._status.name, old.value, phase.value, reason)

    def record(self, outcome: str, started: float) -> None:
        """Count one attempt that began at monotonic ``started`` with ``outcome``."""
        if self._observer is not None:
            self._observer.refresh_finished(
                self._status.name, outcome, self._clock.monotonic() - started
            )

    def exchanged(self) -> None:
        """An exchange worked: whatever failed before is over, published or not yet."""
        self._status.last_error = None
        self._status.consecutive_failures = 0

    def failed(self, exc: SidecarError, event: str, severity: Severity) -> float:
        """Count, report and log one more failure; return the seconds until the next attempt."""
        status = self._status
        status.consecutive_failures += 1
        status.last_error = exc.kind
        retry = plan_retry(
            severity,
            status.consecutive_failures,
            has_token=status.issued_at is not None,
            policy=self._policy.backoff,
            secret_poll=self._policy.secret_poll,
            rng=self._rng,
            retry_after=exc.retry_after,
        )
        self.set_phase(retry.phase, exc.kind)
        log = self._log.error if retry.loud else self._log.warning
        log(event, error=exc.kind, message=exc.message, retry_in=round(retry.delay, 3))
        return retry.delay

    def note_refresh_token(self, refresh_token: str, facts: RefreshFacts | None) -> None:
        """Keep the refresh token's age and expiry in the status (for metrics and alerts)."""
        status = self._status
        if facts is not None and facts.describes(refresh_token):
            status.refresh_token_obtained_at = facts.obtained_at
            status.refresh_token_expires_at = facts.expires_at
        elif refresh_token != self._noted_refresh_token:
            # a token from elsewhere (an operator's re-seed): known from now on, expiry unknown
            status.refresh_token_obtained_at = self._clock.time()
            status.refresh_token_expires_at = jwt_expiry(refresh_token)
        self._noted_refresh_token = refresh_token

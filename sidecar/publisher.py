"""What a credential shows the world: the app's token files, its status, the observer's counts.

Both loops (:mod:`sidecar.refresher` for refresh tokens, :mod:`sidecar.client_grant` for
``client_credentials``) publish through one :class:`Publisher`, so a token reaches the files,
the status (phase, expiry, readiness margin, last success) and the log the same way whichever
grant produced it. A superseded access token is dropped from the redactor once it is in no file
and no request any more.
"""

from __future__ import annotations

from datetime import UTC, datetime

import structlog

from sidecar.coordination import SharedAccess
from sidecar.model import PublishedToken
from sidecar.ports import Clock, RefreshObserver, TokenSink
from sidecar.redact import Redactor
from sidecar.schedule import SchedulePolicy, ready_margin_cap
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
        schedule: SchedulePolicy,
        redactor: Redactor,
        log: structlog.typing.FilteringBoundLogger,
        observer: RefreshObserver | None = None,
    ) -> None:
        self._sink = sink
        self._status = status
        self._clock = clock
        self._schedule = schedule
        self._redactor = redactor
        self._log = log
        self._observer = observer
        self.published: str | None = None
        """The access token in the files now, if this process wrote one."""

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
            access.expires_at - access.issued_at, self._schedule
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

"""One credential's refresh loop: read from Vault, exchange, persist, publish, sleep.

The loop owns three pieces of state and two deadlines:

* ``secret``: the KV secret as last read or written (its version fences the next write);
* ``pending``: a rotated refresh token the server issued that Vault does not hold yet;
* ``rejected``: a refresh token the server refused (``invalid_grant``), never presented again;
* ``next_refresh`` and ``next_write``: monotonic deadlines for the next exchange and the next
  write-back attempt.

Each wake-up does whatever is due. The order of a rotation follows R2 in DESIGN.md: the rotated
token goes to the journal (if one is configured), then to Vault with check-and-set, and only
then is the access token published; without a journal, publishing waits for Vault. After stop
is requested no exchange starts, but a pending write-back keeps being retried until it lands or
the caller's grace period runs out.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from sidecar.backoff import BackoffPolicy, backoff_delay
from sidecar.errors import (
    CasConflict,
    FinalError,
    InvalidGrant,
    ResponseLost,
    ResponseLostTwice,
    SecretInvalid,
    SidecarError,
    SinkError,
)
from sidecar.model import (
    ClientAuthMethod,
    ClientCredentials,
    JournalEntry,
    PublishedToken,
    StoredSecret,
    TokenGrant,
)
from sidecar.oauth import refresh_token_from_error
from sidecar.ports import (
    Clock,
    Journal,
    RefreshObserver,
    SecretStore,
    TokenExchanger,
    TokenSink,
)
from sidecar.redact import REDACTOR, Redactor
from sidecar.schedule import SchedulePolicy, effective_lifetime, refresh_delay
from sidecar.status import CredentialStatus, Phase

__all__ = ["ClientTemplate", "RefreshPolicy", "Refresher", "client_credentials"]

log = structlog.get_logger("sidecar.refresher")

#: slack added to every promise the loop makes about when it will act again (liveness).
LIVENESS_SLACK = 30.0


@dataclass(frozen=True, slots=True)
class ClientTemplate:
    """The client settings from configuration; the secret fills in what is missing."""

    method: ClientAuthMethod = "client_secret_basic"
    client_id: str | None = None
    private_key: str | None = field(default=None, repr=False)
    signing_alg: str = "RS256"
    key_id: str | None = None


def client_credentials(template: ClientTemplate, secret: StoredSecret) -> ClientCredentials:
    """Combine configuration and secret; raise SecretInvalid naming what is missing."""
    client_id = template.client_id or secret.client_id
    if not client_id:
        raise SecretInvalid(
            f"{secret.location}: no client_id in the credential's configuration or the secret"
        )
    needs_secret = template.method in ("client_secret_basic", "client_secret_post")
    if needs_secret and not secret.client_secret:
        raise SecretInvalid(
            f"{secret.location}: field client_secret is required for {template.method}"
        )
    private_key = template.private_key or secret.private_key
    if template.method == "private_key_jwt" and not private_key:
        raise SecretInvalid(
            f"{secret.location}: private_key_jwt needs private_key_file or a private_key field"
        )
    return ClientCredentials(
        client_id=client_id,
        method=template.method,
        client_secret=secret.client_secret if needs_secret else None,
        private_key=private_key if template.method == "private_key_jwt" else None,
        signing_alg=template.signing_alg,
        key_id=template.key_id,
    )


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    schedule: SchedulePolicy = field(default_factory=SchedulePolicy)
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    secret_poll: float = 30.0
    """How often to look for a re-seeded secret after a final error."""
    operation_timeout: float = 10.0
    """Upper bound of one Vault or token endpoint call, for the liveness promise."""


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
        policy: RefreshPolicy | None = None,
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
        self._policy = policy or RefreshPolicy()
        self._observer = observer
        self._journal = journal
        self._rng = rng or random.Random()  # noqa: S311  # jitter, not cryptography
        self._redactor = redactor
        self._log = log.bind(credential=status.name)
        self._never = asyncio.Event()

        self._secret: StoredSecret | None = None
        self._needs_read = True
        self._pending: str | None = None
        self._held: tuple[TokenGrant, float] | None = None
        self._rejected: str | None = None
        self._failures = 0
        self._write_failures = 0
        self._next_refresh = -math.inf
        self._next_write = -math.inf
        self._oneshot = False
        self._exchanged = False

    @property
    def name(self) -> str:
        return self.status.name

    # -- entry points ---------------------------------------------------------------------

    async def run(self) -> None:
        """Refresh until stop is set, then finish any pending write-back and return."""
        self._sink.prepare()
        try:
            while await self._step():
                pass
        finally:
            self._set_phase(Phase.STOPPED)
            self.status.alive_until = math.inf

    async def once(self) -> None:
        """One refresh: read, exchange, persist, publish. Raises the first failure."""
        self._oneshot = True
        await self.run()

    # -- the loop -------------------------------------------------------------------------

    async def _step(self) -> bool:
        """Do what is due, or sleep until something is; return False when finished."""
        now = self._clock.monotonic()
        if self._pending is not None and now >= self._next_write:
            await self._write_back()
            return True
        if self._stop.is_set() or (self._oneshot and self._exchanged):
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

    def _promise_io(self) -> None:
        self.status.alive_until = (
            self._clock.monotonic() + 2 * self._policy.operation_timeout + LIVENESS_SLACK
        )

    async def _cycle(self) -> None:
        if self._needs_read and not await self._read():
            return
        if self._pending is not None and self._clock.monotonic() >= self._next_write:
            return  # a recovered journal entry goes to Vault before any exchange
        assert self._secret is not None  # noqa: S101  # _read succeeded
        token = self._pending or self._secret.refresh_token
        if token == self._rejected:
            self._needs_read = True
            self._set_phase(Phase.REJECTED, "invalid_grant")
            self._next_refresh = self._clock.monotonic() + self._policy.secret_poll
            return
        try:
            client = client_credentials(self._client, self._secret)
        except SecretInvalid as exc:
            self._fail(exc, "secret.invalid")
            return
        self._redactor.add(client.client_secret or "", client.private_key or "")
        started_mono = self._clock.monotonic()
        started_wall = self._clock.time()
        self.status.last_attempt_at = started_wall
        try:
            grant = await self._exchange(token, client)
        except InvalidGrant as exc:
            self._rejected = token
            if token == self._pending:
                self._drop_pending()
            self._record(exc.kind, started_mono)
            self._fail(exc, "token.rejected")
            return
        except SidecarError as exc:
            self._record(exc.kind, started_mono)
            salvaged = refresh_token_from_error(exc)
            if salvaged is not None and salvaged != token:
                # The server rotated but its answer is unusable: keep the new token (R2).
                self._redactor.add(salvaged)
                self._rotate(token, salvaged, started_wall)
                await self._write_back()
            self._fail(exc, "token.refresh_failed")
            return
        self._redactor.add(grant.access_token, grant.refresh_token or "")
        self._record("success", started_mono)
        self._failures = 0
        self._exchanged = True
        if grant.refresh_token and grant.refresh_token != token:
            journalled = self._rotate(token, grant.refresh_token, started_wall)
            self._held = (grant, started_wall)
            await self._write_back()
            if self._pending is not None and journalled:
                self._publish_held()
        else:
            self._held = (grant, started_wall)
            self._publish_held()
        lifetime = effective_lifetime(grant.expires_in, self._policy.schedule)
        self._next_refresh = started_mono + refresh_delay(
            lifetime, self._policy.schedule, self._rng
        )

    async def _read(self) -> bool:
        self._promise_io()
        try:
            secret = await self._store.read()
        except SidecarError as exc:
            self._fail(exc, "secret.read_failed")
            return False
        self._redactor.add(secret.refresh_token, secret.client_secret or "")
        changed = self._secret is None or secret.version != self._secret.version
        self._secret = secret
        self._needs_read = False
        self.status.secret_version = secret.version
        if changed:
            self._log.info("secret.read", location=secret.location, version=secret.version)
        self._recover_journal(secret)
        if self._rejected is not None and secret.refresh_token != self._rejected:
            self._log.info("secret.reseeded", version=secret.version)
            self._rejected = None
        return True

    def _recover_journal(self, secret: StoredSecret) -> None:
        """Reconcile a journalled token with what Vault holds (after a crash or restart)."""
        if self._journal is None or self._pending is not None:
            return
        entry = self._journal.load()
        if entry is None:
            return
        self._redactor.add(entry.refresh_token)
        if entry.location != secret.location or secret.refresh_token == entry.refresh_token:
            self._journal.clear()
        elif secret.version == entry.base_version:
            # Vault still holds the token this one was rotated from: that one is spent.
            self._log.warning("journal.recovered", base_version=entry.base_version)
            self._pending = entry.refresh_token
            self.status.writeback_pending = True
            self._next_write = -math.inf
        else:
            self._log.warning(
                "journal.superseded", base_version=entry.base_version, version=secret.version
            )
            self._journal.clear()

    async def _exchange(self, token: str, client: ClientCredentials) -> TokenGrant:
        self._promise_io()
        try:
            return await self._exchanger.refresh(token, client)
        except ResponseLost:
            # R1's one exception: the very same request, once, immediately.
            self._log.warning("token.response_lost", action="retry_once")
            self._promise_io()
            try:
                return await self._exchanger.refresh(token, client)
            except ResponseLost as exc:
                # Twice without an answer: the server may have rotated; never present it again.
                self._rejected = token
                raise ResponseLostTwice(
                    "the token endpoint's answer was lost twice; the refresh token may be spent "
                    "and will not be presented again until Vault holds a new one"
                ) from exc

    def _rotate(self, old: str, new: str, when: float) -> bool:
        """Hold the rotated token as pending; return whether the journal holds it durably."""
        assert self._secret is not None  # noqa: S101
        self._pending = new
        journalled = False
        self._next_write = -math.inf
        self._write_failures = 0
        self.status.writeback_pending = True
        self.status.refresh_token_obtained_at = when
        if self._journal is not None:
            base = self._secret.version
            try:
                self._journal.save(JournalEntry(self._secret.location, base, new, when))
                journalled = True
            except SinkError as exc:
                self._log.error("journal.write_failed", error=exc.kind, message=exc.message)
        if old != self._secret.refresh_token:
            self._redactor.discard(old)
        return journalled

    async def _write_back(self) -> None:
        assert self._secret is not None and self._pending is not None  # noqa: S101
        self._promise_io()
        try:
            stored = await self._store.write_refresh_token(self._secret, self._pending)
        except CasConflict:
            await self._resolve_conflict()
            return
        except SidecarError as exc:
            self._write_failures += 1
            delay = backoff_delay(
                self._write_failures, self._policy.backoff, self._rng, exc.retry_after
            )
            self._next_write = self._clock.monotonic() + delay
            self._log.error(
                "writeback.failed",
                error=exc.kind,
                message=exc.message,
                attempt=self._write_failures,
                retry_in=round(delay, 3),
            )
            if self._oneshot and isinstance(exc, FinalError) and self._stop.is_set():
                raise
            return
        self._log.info("writeback.succeeded", version=stored.version)
        self._adopt(stored)

    async def _resolve_conflict(self) -> None:
        """Someone else wrote the secret since we read it: adopt theirs, never overwrite it."""
        assert self._pending is not None  # noqa: S101
        try:
            fresh = await self._store.read()
        except SidecarError as exc:
            self._write_failures += 1
            self._next_write = self._clock.monotonic() + backoff_delay(
                self._write_failures, self._policy.backoff, self._rng, exc.retry_after
            )
            return
        if fresh.refresh_token == self._pending:
            self._adopt(fresh)
            return
        self._log.warning("secret.changed_externally", version=fresh.version)
        self._secret = fresh
        self.status.secret_version = fresh.version
        self._drop_pending()
        self._next_refresh = -math.inf  # our rotation lost; refresh from the adopted token

    def _adopt(self, stored: StoredSecret) -> None:
        if self._secret is not None:
            self._redactor.discard(self._secret.refresh_token)
        self._secret = stored
        self.status.secret_version = stored.version
        self._pending = None
        self._write_failures = 0
        self.status.writeback_pending = False
        if self._journal is not None:
            self._journal.clear()
        self._publish_held()

    def _drop_pending(self) -> None:
        self._pending = None
        self._held = None
        self.status.writeback_pending = False
        if self._journal is not None:
            self._journal.clear()

    def _publish_held(self) -> None:
        if self._held is None:
            return
        grant, issued = self._held
        self._held = None
        lifetime = effective_lifetime(grant.expires_in, self._policy.schedule)
        expires = issued + lifetime
        if expires <= self._clock.time():
            return
        token = PublishedToken(
            access_token=grant.access_token,
            token_type=grant.token_type,
            issued_at=datetime.fromtimestamp(issued, tz=UTC),
            expires_at=datetime.fromtimestamp(expires, tz=UTC),
            scope=grant.scope,
        )
        try:
            self._sink.publish(token)
        except SinkError as exc:
            self._fail(exc, "token.publish_failed")
            return
        status = self.status
        if grant.refresh_expires_in is not None and math.isfinite(grant.refresh_expires_in):
            status.refresh_token_expires_at = issued + grant.refresh_expires_in
        self._set_phase(Phase.VALID)
        status.issued_at = issued
        status.expires_at = expires
        status.last_success_at = self._clock.time()
        status.last_error = None
        status.consecutive_failures = 0
        self._log.info("token.refreshed", expires_in=round(lifetime, 3), scope=grant.scope)

    def _fail(self, exc: SidecarError, event: str) -> None:
        """Record a failure and schedule the next attempt by its class (R6)."""
        if self._oneshot:
            raise exc
        self._failures += 1
        status = self.status
        status.last_error = exc.kind
        status.consecutive_failures = self._failures
        if isinstance(exc, InvalidGrant) or (
            isinstance(exc, FinalError) and self._rejected is not None
        ):
            self._set_phase(Phase.REJECTED, exc.kind)
            delay = self._policy.secret_poll
            self._needs_read = True
        elif isinstance(exc, FinalError):
            self._set_phase(Phase.FAILED, exc.kind)
            delay = max(
                self._policy.secret_poll,
                backoff_delay(self._failures, self._policy.backoff, self._rng),
            )
            self._needs_read = True
        else:
            phase = Phase.RETRYING if status.issued_at is not None else Phase.STARTING
            self._set_phase(phase, exc.kind)
            delay = backoff_delay(self._failures, self._policy.backoff, self._rng, exc.retry_after)
        self._next_refresh = self._clock.monotonic() + delay
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

"""One ``client_credentials`` credential's loop: read, exchange, publish, sleep.

The client authenticates as itself (RFC 6749 §4.4) and gets an access token; there is no
refresh token, so nothing is single-use and nothing needs protecting across replicas or
restarts. Hence a loop of its own, beside :mod:`sidecar.refresher` rather than inside it:
none of the refresher's machinery (claims, the journal, write-backs, salvaged tokens) applies,
and this loop never writes to Vault, so its Vault policy can be read-only. It shares the
refresher's policy, the token sink, the status board, the observer (metrics, Events) and the
schedule.

Each replica obtains its own tokens. Sharing one access token through Vault, as the
refresher does, would save the authorization server N-1 exchanges per refresh period for N
replicas, at the cost of Vault write access to the client's credentials, two writes and a
claim protocol per period, and tokens that fail together; certificate-bound tokens (RFC 8705)
cannot be shared at all by replicas holding different certificates. README "Replicas with
client_credentials" has the measurement behind that choice.

A cycle:

1. read the secret, when one is configured (its client secret, key or certificate may have
   been rotated); while Vault is unreachable, the secret read before keeps being used (R6);
2. combine configuration and secret into the client's credentials
   (:func:`sidecar.client_auth.client_credentials`);
3. one exchange; an answer lost in transit is simply retried with backoff, since the same
   request can be sent again without harm;
4. publish the token and sleep until the refresh window (about 2/3 of its lifetime).

Failures follow the error tree: retryable ones back off (honouring ``Retry-After``); final
ones (``invalid_client``, an expired client certificate, a secret without the fields the
method needs) wait ``secret_poll`` seconds, then read the secret and the files again. The
current token stays published until it expires.
"""

from __future__ import annotations

import asyncio
import math
import random
from typing import Protocol

import structlog

from sidecar.client_auth import ClientTemplate, client_credentials
from sidecar.coordination import SharedAccess
from sidecar.errors import (
    ExpiredAnswer,
    Severity,
    SidecarError,
    VaultUnavailable,
    classify_failure,
    expired_answer,
)
from sidecar.model import ClientCredentials, StoredSecret, TokenGrant
from sidecar.ports import Clock, RefreshObserver, SecretStore, TokenSink
from sidecar.publisher import Publisher
from sidecar.redact import REDACTOR, Redactor
from sidecar.schedule import (
    LIVENESS_SLACK,
    Answer,
    RefreshPolicy,
    effective_lifetime,
    judge_answer,
    refresh_window,
)
from sidecar.status import CredentialStatus, Phase

__all__ = ["ClientCredentialsExchanger", "ClientCredentialsLoop"]

log = structlog.get_logger("sidecar.client_grant")


class ClientCredentialsExchanger(Protocol):
    """One credential's token endpoint, for the ``client_credentials`` grant."""

    async def client_credentials(self, client: ClientCredentials) -> TokenGrant:
        """Ask for an access token once (``grant_type=client_credentials``); no retries."""
        ...


class ClientCredentialsLoop:
    """Keeps one ``client_credentials`` credential's token file fresh; ``run``/``once`` as the
    refresher's."""

    def __init__(
        self,
        *,
        store: SecretStore | None,
        exchanger: ClientCredentialsExchanger,
        sink: TokenSink,
        client: ClientTemplate,
        status: CredentialStatus,
        clock: Clock,
        stop: asyncio.Event,
        policy: RefreshPolicy,
        observer: RefreshObserver | None = None,
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
        self._policy = policy
        self._rng = rng or random.Random()  # noqa: S311  # jitter, not cryptography
        self._redactor = redactor
        self._log = log.bind(credential=status.name, grant="client_credentials")
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
        self._secret: StoredSecret | None = None
        self._next = -math.inf
        self._oneshot = False
        self._done = False

    @property
    def name(self) -> str:
        return self.status.name

    async def run(self) -> None:
        """Keep a fresh token published until stop is set."""
        self._sink.prepare()
        try:
            while not (self._stop.is_set() or self._done):
                now = self._clock.monotonic()
                if now >= self._next:
                    await self._cycle()
                    continue
                self.status.alive_until = now + (self._next - now) + LIVENESS_SLACK
                await self._clock.wait(self._stop, self._next - now)
        finally:
            self._out.set_phase(Phase.STOPPED)
            self.status.alive_until = math.inf

    async def once(self) -> None:
        """Obtain and publish one token, then return; raises the first failure."""
        self._oneshot = True
        await self.run()

    async def _cycle(self) -> None:
        try:
            secret = await self._read()
        except SidecarError as exc:
            self._fail(exc, "secret.read_failed")
            return
        try:
            client = client_credentials(self._client, secret)
        except SidecarError as exc:
            self._fail(exc, "secret.invalid")
            return
        self._redactor.add(client.client_secret, client.private_key)
        started = self._clock.monotonic()
        issued_at = self._clock.time()
        self.status.last_attempt_at = issued_at
        self._promise(self._policy.exchange_timeout)
        try:
            grant = await self._exchanger.client_credentials(client)
        except SidecarError as exc:
            self._out.record(exc.kind, started)
            self._fail(exc, "token.refresh_failed")
            return
        self._redactor.add(grant.access_token)
        lifetime = effective_lifetime(grant.expires_in, self._policy.schedule)
        verdict = judge_answer(
            lifetime,
            started=issued_at,
            now=self._clock.time(),
            published_until=self.status.expires_at,
        )
        if verdict is Answer.EXPIRED:
            expired = expired_answer(grant.expires_in)
            self._out.record(expired.kind, started)
            self._fail(expired, "token.expired_answer")
            return
        if verdict is Answer.SHORTER:
            # The next exchange follows the new token's schedule, due before the published
            # one expires.
            self._out.record(ExpiredAnswer.kind, started)
            self._log.info(
                "token.expired_answer",
                reason="expires_before_published",
                expires_in=grant.expires_in,
            )
            self._out.exchanged()
        else:
            self._out.record("success", started)
            if not self._publish(grant, issued_at, lifetime):
                return
        low, high = refresh_window(lifetime, self._policy.schedule)
        self._next = started + self._rng.uniform(low, high)
        self._done = self._oneshot

    async def _read(self) -> StoredSecret | None:
        """The secret now; the one read before while Vault is unreachable; None without one."""
        if self._store is None:
            return None
        self._promise(self._policy.operation_timeout)
        try:
            secret = await self._store.read()
        except VaultUnavailable as exc:
            if self._secret is None or self._oneshot:
                raise
            self._log.warning(
                "secret.read_failed", error=exc.kind, message=exc.message, action="reuse"
            )
            return self._secret
        self._redactor.add(secret.client_secret, secret.private_key, secret.client_key)
        if self._secret is None or secret.version != self._secret.version:
            self._log.debug("secret.read", location=secret.location, version=secret.version)
        self._secret = secret
        self.status.secret_version = secret.version
        return secret

    def _publish(self, grant: TokenGrant, issued_at: float, lifetime: float) -> bool:
        access = SharedAccess(
            access_token=grant.access_token,
            token_type=grant.token_type,
            issued_at=issued_at,
            expires_at=issued_at + lifetime,
            scope=grant.scope,
        )
        try:
            self._out.publish(access, reused=False)
        except SidecarError as exc:
            self._fail(exc, "token.publish_failed")
            return False
        return True

    def _fail(self, exc: SidecarError, event: str) -> None:
        """Record a failure and schedule the next attempt by its class (R6)."""
        if self._oneshot:
            raise exc
        severity = classify_failure(exc)
        if severity is Severity.REJECTED:
            severity = Severity.FINAL  # no refresh token here to give up and wait for
        self._next = self._clock.monotonic() + self._out.failed(exc, event, severity)

    def _promise(self, budget: float) -> None:
        self.status.alive_until = self._clock.monotonic() + 2 * budget + LIVENESS_SLACK

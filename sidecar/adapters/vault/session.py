"""The process's Vault login, shared by every credential.

:class:`VaultSession` holds the Vault token. It logs in with the pod's identity
(``kubernetes``, ``jwt``, ``approle`` or a given ``token``), re-reading the credential files at
every login, and keeps the token usable lazily, inside :meth:`VaultSession.request`: at about
2/3 of its TTL it renews a renewable token, or logs in again when renewal is impossible or no
longer buys useful time; a 403 triggers one fresh login and one retry of the request. There is
no background task, and no thread: every request is a coroutine on the event loop, and an
``asyncio.Lock`` makes concurrent credentials log in once.

Every request reports its outcome to ``on_request``; failures become :mod:`sidecar.errors`
through :func:`sidecar.adapters.vault.failures.translate`. Time comes from the ``Clock`` port:
its monotonic reading for the token's renewal schedule, its wall time for the lease expiry
reported to ``on_lease`` and for an HTTP-date ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx
import structlog

from sidecar.adapters.vault.api import VaultApi
from sidecar.adapters.vault.auth import (
    given_token,
    lease_facts,
    login_facts,
    login_payload,
    lookup_facts,
)
from sidecar.adapters.vault.failures import TRANSLATED, translate
from sidecar.adapters.vault.lease import (
    RENEW_FRACTION,
    TokenLease,
    plan_token,
    renewal_is_useful,
)
from sidecar.config import VaultConfig
from sidecar.errors import SidecarError, VaultPermissionDenied
from sidecar.ports import Clock
from sidecar.tls import client_context

__all__ = ["RequestObserver", "VaultSession"]

log = structlog.get_logger(__name__)

T = TypeVar("T")
RequestObserver = Callable[[str, str], None]


def tls_context(config: VaultConfig) -> ssl.SSLContext:
    """Verification for ``https://`` Vault: ``vault.ca_cert``, else the system trust store.
    Plain ``http://`` loads none (see :func:`sidecar.tls.client_context`)."""
    https = config.address.lower().startswith("https:")
    return client_context(config.ca_cert, needed=https, setting="vault.ca_cert")


class VaultSession:
    """The process's Vault login, shared by every credential."""

    def __init__(
        self,
        config: VaultConfig,
        *,
        on_request: RequestObserver | None = None,
        on_lease: Callable[[float | None], None] | None = None,
        environ: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock,
        renew_fraction: float = RENEW_FRACTION,
    ) -> None:
        """``on_request(operation, outcome)`` is called once per Vault request: operation in
        login/lookup/renew/read/write, outcome ``success`` or an error kind. ``on_lease``
        hears the wall time the token in use expires (``None``: no expiry, or no token).
        ``transport`` replaces the network (tests).
        """
        self._config = config
        self._auth = config.auth
        self._on_request = on_request
        self._on_lease = on_lease
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._clock = clock
        self._fraction = renew_fraction
        self._api = VaultApi(
            config.address,
            timeout=config.timeout_seconds,
            verify=tls_context(config),
            namespace=config.namespace,
            transport=transport,
        )
        self._token = ""
        self._lock = asyncio.Lock()
        self._lease: TokenLease | None = None
        self._generation = 0

    @property
    def auth_location(self) -> str:
        return "auth/token" if self._auth.method == "token" else f"auth/{self._auth.mount_path}"

    async def login(self) -> None:
        """Log in now (``check`` uses it): raises VaultAuthFailed, VaultUnavailable."""
        async with self._lock:
            await self._login()

    async def request(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        location: str = "",
        parse: Callable[[Mapping[str, Any]], T],
    ) -> T:
        """One Vault request with a usable token; ``parse`` turns the answer into the result.

        On a 403 the session logs in again once and sends the request once more; a second 403
        raises VaultPermissionDenied. Errors of the SidecarError tree raised by ``parse`` pass
        through; anything else becomes one (see :func:`~sidecar.adapters.vault.failures.translate`).
        """

        async def send() -> T:
            return parse(await self._api.request(method, path, token=self._token, body=body))

        generation = await self._ensure_token()
        try:
            return await self._request(operation, location, send)
        except VaultPermissionDenied:
            async with self._lock:
                if self._generation == generation:
                    log.info("vault.relogin", reason="permission_denied", operation=operation)
                    self._lease = None
                    await self._login()
        return await self._request(operation, location, send, retried=True)

    async def aclose(self) -> None:
        self._lease = None
        self._token = ""
        self._report_lease(None)
        await self._api.aclose()

    # -- the token -------------------------------------------------------------------------

    def _report_lease(self, ttl: float | None) -> None:
        if self._on_lease is not None:
            self._on_lease(self._clock.time() + ttl if ttl is not None and ttl > 0 else None)

    async def _ensure_token(self) -> int:
        """Renew or replace the token when it is due; returns the login generation in use."""
        async with self._lock:
            now = self._clock.monotonic()
            lease = self._lease
            plan = plan_token(lease, now, self._fraction)
            if plan == "use":
                return self._generation
            try:
                reason: str | None = "expiring"
                if plan == "renew":
                    reason = await self._renew(now)
                    if reason is None:
                        return self._generation
                if lease is not None:
                    log.info("vault.relogin", reason=reason)
                await self._login()
            except SidecarError as exc:
                # A token with time left keeps working while Vault or the login has trouble;
                # the next call tries again.
                now = self._clock.monotonic()
                if lease is None or now >= lease.expires_at:
                    raise
                log.warning(
                    "vault.token_refresh_failed",
                    error=exc.kind,
                    expires_in=round(lease.expires_at - now, 1),
                )
            return self._generation

    async def _renew(self, now: float) -> str | None:
        """Renew the token; else the reason a fresh login is needed instead. Lock held."""
        lease = self._lease
        assert lease is not None  # noqa: S101  # plan_token only renews a known lease

        async def send() -> tuple[float, bool]:
            answer = await self._api.request("POST", "auth/token/renew-self", token=self._token)
            return lease_facts(answer)

        try:
            ttl, renewable = await self._request("renew", "auth/token/renew-self", send)
        except VaultPermissionDenied:
            return "renewal_refused"
        if not renewal_is_useful(ttl, lease.login_ttl, self._fraction):
            return "renewal_exhausted"
        self._lease = TokenLease(now, ttl, renewable, lease.login_ttl)
        self._report_lease(ttl)
        log.info("vault.renewed", ttl=ttl, renewable=renewable)
        return None

    async def _login(self) -> None:
        """Log in (for the token method: adopt the given token and look it up). Lock held."""
        started = self._clock.monotonic()
        if self._auth.method == "token":
            given = given_token(self._auth, self._environ)

            async def lookup() -> tuple[str, float, bool, float]:
                answer = await self._api.request("GET", "auth/token/lookup-self", token=given)
                return lookup_facts(given, answer)

            facts = await self._request("lookup", self.auth_location, lookup, login=True)
        else:
            payload = login_payload(self._auth)

            async def login() -> tuple[str, float, bool, float]:
                path = f"{self.auth_location}/login"
                answer = await self._api.request("POST", path, body=payload)
                return login_facts(answer)

            facts = await self._request("login", self.auth_location, login, login=True)
        token, ttl, renewable, login_ttl = facts
        self._token = token
        self._lease = TokenLease(started, ttl, renewable, login_ttl)
        self._report_lease(ttl)
        self._generation += 1
        log.info(
            "vault.login",
            method=self._auth.method,
            mount=self.auth_location,
            ttl=ttl,
            renewable=renewable,
        )

    # -- one request -------------------------------------------------------------------------

    async def _request(
        self,
        operation: str,
        where: str,
        send: Callable[[], Awaitable[T]],
        *,
        login: bool = False,
        retried: bool = False,
    ) -> T:
        """One Vault request: translate its errors and report its outcome."""
        try:
            result = await send()
        except SidecarError as exc:
            self._report(operation, exc.kind)
            raise
        except TRANSLATED as exc:
            error = translate(
                exc,
                self._config,
                operation=operation,
                where=where,
                now=self._clock.time(),
                login=login,
                retried=retried,
            )
            self._report(operation, error.kind)
            raise error from exc
        self._report(operation, "success")
        return result

    def _report(self, operation: str, outcome: str) -> None:
        if self._on_request is not None:
            self._on_request(operation, outcome)

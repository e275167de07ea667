"""The process's Vault login, shared by every credential.

:class:`VaultSession` holds the Vault token. It logs in with the pod's identity
(``kubernetes``, ``jwt``, ``approle`` or a given ``token``), re-reading the credential files at
every login, and keeps the token usable lazily, inside :meth:`VaultSession.request`: at about
2/3 of its TTL it renews a renewable token, or logs in again when renewal is impossible or no
longer buys useful time; a 403 triggers one fresh login and one retry of the request. There is
no background task, and no thread: every request is a coroutine on the event loop, and an
``asyncio.Lock`` makes concurrent credentials log in once.

Failures are translated here into :mod:`sidecar.errors`; messages name the operation and the
location, never a token, a JWT, a secret or a response body.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
import structlog

from sidecar.adapters.vault.api import UnexpectedResponse, VaultApi, VaultHttpError
from sidecar.adapters.vault.lease import (
    RENEW_FRACTION,
    TokenLease,
    parse_retry_after,
    plan_token,
    renewal_is_useful,
)
from sidecar.config import VaultConfig
from sidecar.errors import (
    CasConflict,
    FinalError,
    SecretNotFound,
    SidecarError,
    VaultAuthFailed,
    VaultPermissionDenied,
    VaultUnavailable,
)
from sidecar.tls import client_context

__all__ = ["RequestObserver", "VaultSession"]

log = structlog.get_logger("sidecar.adapters.vault")

T = TypeVar("T")
RequestObserver = Callable[[str, str], None]

_CAS_MISMATCH = "check-and-set parameter did not match"
_TRANSLATED = (VaultHttpError, httpx.HTTPError, UnexpectedResponse)
"""What a Vault request may raise that this module turns into a SidecarError."""


def _seconds(value: Any, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise UnexpectedResponse(f"no {name}")
    return float(value)


def _lease_facts(response: Mapping[str, Any]) -> tuple[float, bool]:
    """TTL and renewability from a login or renew-self response."""
    auth = response.get("auth")
    if not isinstance(auth, Mapping):
        raise UnexpectedResponse("no auth in the answer")
    return _seconds(auth.get("lease_duration"), "lease_duration"), bool(auth.get("renewable"))


def _login_facts(response: Mapping[str, Any]) -> tuple[str, float, bool, float]:
    """Token, TTL, renewability and login TTL from a login response."""
    ttl, renewable = _lease_facts(response)
    token = response["auth"].get("client_token")
    if not isinstance(token, str) or not token:
        raise UnexpectedResponse("no client_token in the login answer")
    return token, ttl, renewable, ttl


def _lookup_facts(token: str, response: Mapping[str, Any]) -> tuple[str, float, bool, float]:
    data = response.get("data")
    if not isinstance(data, Mapping):
        raise UnexpectedResponse("no data in the token lookup")
    ttl = _seconds(data.get("ttl"), "ttl")
    creation_ttl = data.get("creation_ttl")
    login_ttl = _seconds(creation_ttl, "creation_ttl") if creation_ttl is not None else ttl
    return token, ttl, bool(data.get("renewable")), login_ttl or ttl


def _read_credential_file(path: Path, what: str) -> str:
    # ``from None``: the original exception could carry the file's bytes (UnicodeDecodeError).
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise VaultAuthFailed(f"cannot read the {what} file {path}: {reason}") from None
    except UnicodeDecodeError:
        raise VaultAuthFailed(f"the {what} file {path} is not UTF-8 text") from None
    value = text.strip()
    if not value:
        raise VaultAuthFailed(f"the {what} file {path} is empty")
    return value


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
        monotonic: Callable[[], float] = time.monotonic,
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
        self._monotonic = monotonic
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
        through; anything else becomes one (see :meth:`_translate`).
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
            self._on_lease(time.time() + ttl if ttl is not None and ttl > 0 else None)

    async def _ensure_token(self) -> int:
        """Renew or replace the token when it is due; returns the login generation in use."""
        async with self._lock:
            now = self._monotonic()
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
                now = self._monotonic()
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
            return _lease_facts(answer)

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
        started = self._monotonic()
        if self._auth.method == "token":
            given = self._given_token()

            async def lookup() -> tuple[str, float, bool, float]:
                answer = await self._api.request("GET", "auth/token/lookup-self", token=given)
                return _lookup_facts(given, answer)

            facts = await self._request("lookup", self.auth_location, lookup, login=True)
        else:
            payload = self._login_payload()

            async def login() -> tuple[str, float, bool, float]:
                path = f"{self.auth_location}/login"
                answer = await self._api.request("POST", path, body=payload)
                return _login_facts(answer)

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

    def _login_payload(self) -> dict[str, str]:
        """Read the credential files (every login: they rotate) into the login request."""
        auth = self._auth
        if auth.method == "approle":
            assert auth.role_id_file is not None  # noqa: S101  # enforced by VaultAuthConfig
            assert auth.secret_id_file is not None  # noqa: S101
            return {
                "role_id": _read_credential_file(auth.role_id_file, "AppRole role_id"),
                "secret_id": _read_credential_file(auth.secret_id_file, "AppRole secret_id"),
            }
        return {"role": auth.role or "", "jwt": _read_credential_file(auth.jwt_file, "JWT")}

    def _given_token(self) -> str:
        if self._auth.token_file is not None:
            return _read_credential_file(self._auth.token_file, "Vault token")
        token = self._environ.get("VAULT_TOKEN", "").strip()
        if not token:
            raise VaultAuthFailed(
                "no Vault token: set vault.auth.token_file or the VAULT_TOKEN environment variable"
            )
        return token

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
        except _TRANSLATED as exc:
            error = self._translate(exc, operation, where, login=login, retried=retried)
            self._report(operation, error.kind)
            raise error from exc
        self._report(operation, "success")
        return result

    def _report(self, operation: str, outcome: str) -> None:
        if self._on_request is not None:
            self._on_request(operation, outcome)

    def _translate(
        self, exc: Exception, operation: str, where: str, *, login: bool, retried: bool
    ) -> SidecarError:
        what = f"vault {operation} {where}".rstrip()
        status = exc.status if isinstance(exc, VaultHttpError) else None
        problem = self._unavailable_problem(exc, status)
        if problem is not None:
            retry_after = None
            if isinstance(exc, VaultHttpError):
                retry_after = parse_retry_after(exc.retry_after, time.time())
            return VaultUnavailable(f"{what}: {problem}", retry_after=retry_after)
        http = f" (HTTP {status})" if status is not None else ""
        if login:
            role = f" as role {self._auth.role!r}" if self._auth.role else ""
            return VaultAuthFailed(f"{what}: login{role} refused{http}")
        if status in (401, 403):
            after = " after a fresh login" if retried else ""
            return VaultPermissionDenied(f"{what}: permission denied{http}{after}")
        if status == 404:
            return SecretNotFound(f"{what}: no secret at {where}")
        if isinstance(exc, VaultHttpError) and _is_cas_mismatch(exc):
            return CasConflict(f"{what}: check-and-set lost, the secret changed since it was read")
        return FinalError(f"{what}: refused{http}")

    def _unavailable_problem(self, exc: Exception, status: int | None) -> str | None:
        """What went wrong when Vault is unreachable or in temporary trouble; else None."""
        if isinstance(exc, UnexpectedResponse):
            return f"unexpected response ({exc})"
        if isinstance(exc, httpx.HTTPError):
            return self._transport_problem(exc)
        return _retryable_status(status)

    def _transport_problem(self, exc: httpx.HTTPError) -> str:
        address = self._config.address
        if isinstance(exc, httpx.TimeoutException):
            return f"no answer from {address} in {self._config.timeout_seconds} s"
        if isinstance(exc, httpx.ConnectError) and _is_tls(exc):
            return f"TLS handshake with {address} failed (check vault.ca_cert)"
        if isinstance(exc, httpx.ConnectError):
            return f"cannot connect to {address}"
        return f"request failed ({type(exc).__name__})"


def _retryable_status(status: int | None) -> str | None:
    """What an error status says when it is Vault's temporary trouble; None otherwise."""
    if status == 429:
        return "rate limited (HTTP 429)"
    if status == 503:
        return "Vault is sealed or unavailable (HTTP 503)"
    if status is not None and status >= 500:
        return f"server error (HTTP {status})"
    if status == 412:  # Vault Enterprise: this node has not caught up with a recent write yet
        return "not yet consistent (HTTP 412)"
    if status is not None and 300 <= status < 400:  # a standby during a leader change, say
        return (
            f"redirected (HTTP {status}), which is never followed: set vault.address to the "
            "active node or a load balancer in front of the cluster"
        )
    return None


def _is_cas_mismatch(exc: VaultHttpError) -> bool:
    return exc.status == 400 and any(_CAS_MISMATCH in message for message in exc.errors)


def _is_tls(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return True
        current = current.__cause__ or current.__context__
    return False

"""Vault (or OpenBao) through hvac: one logged-in session, and KV v2 secrets read and CAS-written.

:class:`VaultSession` holds the process's Vault token. It logs in with the pod's identity
(``kubernetes``, ``jwt``, ``approle`` or a given ``token``), re-reading the credential files at
every login, and keeps the token usable lazily, inside :meth:`VaultSession.call`: at about 2/3
of its TTL it renews a renewable token, or logs in again when renewal is impossible or no longer
buys useful time; a 403 triggers one fresh login and one retry of the request. There is no
background task.

:class:`VaultSecretStore` implements :class:`sidecar.ports.SecretStore` for one credential on
top of a shared session.

hvac is synchronous: every Vault request runs in a worker thread (``asyncio.to_thread``); logins
and renewals are serialised by a lock so that concurrent credentials log in once. hvac and
requests exceptions are translated at this boundary into :mod:`sidecar.errors`; messages name
the operation and the location, never a token, a JWT, a secret or a response body.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, Literal, TypeVar

import hvac
import hvac.exceptions
import requests
import structlog

from sidecar.config import VaultConfig
from sidecar.errors import (
    CasConflict,
    FinalError,
    SecretInvalid,
    SecretNotFound,
    SidecarError,
    VaultAuthFailed,
    VaultPermissionDenied,
    VaultUnavailable,
)
from sidecar.model import StoredSecret

__all__ = [
    "RENEW_FRACTION",
    "TokenLease",
    "TokenPlan",
    "VaultSecretStore",
    "VaultSession",
    "parse_retry_after",
    "plan_token",
    "renewal_is_useful",
    "secret_from_kv",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")
TokenPlan = Literal["use", "renew", "login"]
RequestObserver = Callable[[str, str], None]

RENEW_FRACTION = 2 / 3
"""Renew (or log in again) once this fraction of the token's TTL has passed."""

_CAS_MISMATCH = "check-and-set parameter did not match"
_OPTIONAL_FIELDS = ("client_id", "client_secret", "private_key")


# -- decisions (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenLease:
    """What Vault said about our token; times are monotonic seconds."""

    obtained_at: float
    ttl: float
    """Seconds granted at ``obtained_at``; 0 means the token never expires."""
    renewable: bool
    login_ttl: float
    """TTL granted by the last login: the yardstick a renewal is measured against."""

    @property
    def expires_at(self) -> float:
        return self.obtained_at + self.ttl if self.ttl > 0 else math.inf


def plan_token(lease: TokenLease | None, now: float, fraction: float = RENEW_FRACTION) -> TokenPlan:
    """Use the token as it is, renew it, or log in again."""
    if lease is None:
        return "login"
    if lease.ttl <= 0 or now < lease.obtained_at + lease.ttl * fraction:
        return "use"
    if lease.renewable and now < lease.expires_at:
        return "renew"
    return "login"


def renewal_is_useful(new_ttl: float, login_ttl: float, fraction: float = RENEW_FRACTION) -> bool:
    """Whether a renewal granted enough time to be worth keeping the token.

    Near the token's max TTL Vault grants less and less; once a renewal grants less than the
    margin kept before expiry (``1 - fraction`` of the login TTL), a fresh login is better
    than renewing ever more often.
    """
    margin = login_ttl * (1 - fraction) - 1e-6  # 600 * (1 - 2/3) is 200.00000000000003
    return new_ttl > 0 and new_ttl >= margin


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now`` (wall clock): delta-seconds or an HTTP date."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class _UnexpectedResponseError(Exception):
    """Vault answered 2xx with something that is not the documented shape."""


_TRANSLATED = (hvac.exceptions.VaultError, requests.RequestException, _UnexpectedResponseError)
"""What a Vault request may raise that this module turns into a SidecarError."""


def _optional_text(data: Mapping[str, Any], name: str, where: str) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SecretInvalid(f"{where}: field {name!r} is not a string")
    return value


def secret_from_kv(response: Any, location: str) -> StoredSecret:
    """Validate a KV v2 ``GET <mount>/data/<path>`` response into a :class:`StoredSecret`."""
    body = response.get("data") if isinstance(response, Mapping) else None
    if not isinstance(body, Mapping):
        raise _UnexpectedResponseError("no data in the KV v2 response")
    metadata = body.get("metadata")
    if not isinstance(metadata, Mapping):
        raise _UnexpectedResponseError("no metadata in the KV v2 response")
    if metadata.get("deletion_time") or metadata.get("destroyed"):
        raise SecretNotFound(f"{location}: the latest version of the secret is deleted")
    data = body.get("data")
    if data is None:
        raise SecretNotFound(f"{location}: the secret has no data")
    if not isinstance(data, Mapping):
        raise SecretInvalid(f"{location}: the secret's data is not a mapping")
    version = metadata.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _UnexpectedResponseError("no version in the KV v2 metadata")
    refresh_token = data.get("refresh_token")
    if refresh_token is None:
        raise SecretInvalid(f"{location}: field 'refresh_token' is missing")
    if not isinstance(refresh_token, str):
        raise SecretInvalid(f"{location}: field 'refresh_token' is not a string")
    if not refresh_token.strip():
        raise SecretInvalid(f"{location}: field 'refresh_token' is empty")
    client_id, client_secret, private_key = (
        _optional_text(data, name, location) for name in _OPTIONAL_FIELDS
    )
    return StoredSecret(
        location=location,
        version=version,
        refresh_token=refresh_token,
        client_id=client_id,
        client_secret=client_secret,
        private_key=private_key,
        data=dict(data),
    )


def _written_version(response: Any) -> int:
    body = response.get("data") if isinstance(response, Mapping) else None
    version = body.get("version") if isinstance(body, Mapping) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _UnexpectedResponseError("no version in the KV v2 write response")
    return version


def _seconds(value: Any, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise _UnexpectedResponseError(f"no {name}")
    return float(value)


def _lease_facts(response: Any) -> tuple[float, bool]:
    """TTL and renewability from a login or renew-self response."""
    auth = response.get("auth") if isinstance(response, Mapping) else None
    if not isinstance(auth, Mapping):
        raise _UnexpectedResponseError("no auth in the answer")
    return _seconds(auth.get("lease_duration"), "lease_duration"), bool(auth.get("renewable"))


def _login_facts(response: Any) -> tuple[str, float, bool, float]:
    """Token, TTL, renewability and login TTL from a login response."""
    ttl, renewable = _lease_facts(response)
    token = response["auth"].get("client_token")
    if not isinstance(token, str) or not token:
        raise _UnexpectedResponseError("no client_token in the login answer")
    return token, ttl, renewable, ttl


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


# -- session -------------------------------------------------------------------------------------


class VaultSession:
    """The process's Vault login, shared by every credential; thread-safe."""

    def __init__(
        self,
        config: VaultConfig,
        *,
        on_request: RequestObserver | None = None,
        on_lease: Callable[[float | None], None] | None = None,
        environ: Mapping[str, str] | None = None,
        session: requests.Session | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        renew_fraction: float = RENEW_FRACTION,
    ) -> None:
        """``on_request(operation, outcome)`` is called once per Vault request, from a worker
        thread: operation in login/lookup/renew/read/write, outcome ``success`` or an error kind.
        ``session`` is used for every request (tests inject a transport); it is closed by
        :meth:`close` only when this object created it. ``on_lease(expires_at)`` hears the wall
        time the token in use expires (``None``: no expiry, or no token).
        """
        self._config = config
        self._on_lease = on_lease
        self._auth = config.auth
        self._on_request = on_request
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._monotonic = monotonic
        self._fraction = renew_fraction
        self._owns_http = session is None
        self._http = requests.Session() if session is None else session
        verify: str | bool = str(config.ca_cert) if config.ca_cert else True
        if config.ca_cert:
            # hvac prefers a session's own truthy ``verify`` (True by default) over its argument.
            self._http.verify = verify
        self._http.hooks["response"].append(self._remember_response)
        options: dict[str, Any] = {
            "url": config.address,
            "verify": verify,
            "timeout": config.timeout_seconds,
            "namespace": config.namespace or None,
            "session": self._http,
        }
        # token="" rather than None: hvac would otherwise pick up VAULT_TOKEN or ~/.vault-token.
        self._client = hvac.Client(token="", **options)
        self._login_client = hvac.Client(token="", **options)
        self._lock = threading.Lock()
        self._lease: TokenLease | None = None
        self._generation = 0
        self._local = threading.local()

    @property
    def auth_location(self) -> str:
        return "auth/token" if self._auth.method == "token" else f"auth/{self._auth.mount_path}"

    async def login(self) -> None:
        """Log in now (``check`` uses it): raises VaultAuthFailed, VaultUnavailable."""
        await asyncio.to_thread(self._login_now)

    async def call(self, operation: str, fn: Callable[[Any], T], *, location: str = "") -> T:
        """Run ``fn(client)`` in a worker thread with a usable token and translated errors.

        ``fn`` should make one Vault request through the hvac client it is given. On a 403 the
        session logs in again once and calls ``fn`` once more; a second 403 raises
        VaultPermissionDenied. Errors of the SidecarError tree raised by ``fn`` pass through.
        """
        return await asyncio.to_thread(self._call_sync, operation, fn, location)

    def _report_lease(self, ttl: float | None) -> None:
        if self._on_lease is not None:
            self._on_lease(time.time() + ttl if ttl is not None and ttl > 0 else None)

    def close(self) -> None:
        with self._lock:
            self._lease = None
            self._client.token = ""
        self._report_lease(None)
        if self._owns_http:
            self._http.close()
        elif self._remember_response in self._http.hooks["response"]:
            self._http.hooks["response"].remove(self._remember_response)

    # -- worker-thread side ------------------------------------------------------------------

    def _call_sync(self, operation: str, fn: Callable[[Any], T], location: str) -> T:
        generation = self._ensure_token()
        try:
            return self._request(operation, location, lambda: fn(self._client))
        except VaultPermissionDenied:
            with self._lock:
                if self._generation == generation:
                    log.info("vault.relogin", reason="permission_denied", operation=operation)
                    self._lease = None
                    self._login()
        return self._request(operation, location, lambda: fn(self._client), retried=True)

    def _login_now(self) -> None:
        with self._lock:
            self._login()

    def _ensure_token(self) -> int:
        """Renew or replace the token when it is due; returns the login generation in use."""
        with self._lock:
            now = self._monotonic()
            lease = self._lease
            plan = plan_token(lease, now, self._fraction)
            if plan == "use":
                return self._generation
            try:
                reason: str | None = "expiring"
                if plan == "renew":
                    reason = self._renew(now)
                    if reason is None:
                        return self._generation
                if lease is not None:
                    log.info("vault.relogin", reason=reason)
                self._login()
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

    def _renew(self, now: float) -> str | None:
        """Renew the token; else the reason a fresh login is needed instead. Lock held."""
        lease = self._lease
        assert lease is not None  # noqa: S101  # plan_token only renews a known lease
        try:
            ttl, renewable = self._request(
                "renew",
                "auth/token/renew-self",
                lambda: _lease_facts(self._client.auth.token.renew_self()),
            )
        except VaultPermissionDenied:
            return "renewal_refused"
        if not renewal_is_useful(ttl, lease.login_ttl, self._fraction):
            return "renewal_exhausted"
        self._lease = TokenLease(now, ttl, renewable, lease.login_ttl)
        self._report_lease(ttl)
        log.info("vault.renewed", ttl=ttl, renewable=renewable)
        return None

    def _login(self) -> None:
        """Log in (for the token method: adopt the given token and look it up). Lock held."""
        started = self._monotonic()
        if self._auth.method == "token":
            given = self._given_token()
            token, ttl, renewable, login_ttl = self._request(
                "lookup", self.auth_location, lambda: self._lookup(given), login=True
            )
        else:
            send = self._login_request()
            token, ttl, renewable, login_ttl = self._request(
                "login", self.auth_location, lambda: _login_facts(send()), login=True
            )
        self._client.token = token
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

    def _login_request(self) -> Callable[[], Any]:
        """Read the credential files (every login: they rotate) and prepare the login call."""
        auth = self._auth
        mount = auth.mount_path
        client = self._login_client
        if auth.method == "approle":
            assert auth.role_id_file is not None  # noqa: S101  # enforced by VaultAuthConfig
            assert auth.secret_id_file is not None  # noqa: S101
            role_id = _read_credential_file(auth.role_id_file, "AppRole role_id")
            secret_id = _read_credential_file(auth.secret_id_file, "AppRole secret_id")
            return lambda: client.auth.approle.login(
                role_id=role_id, secret_id=secret_id, use_token=False, mount_point=mount
            )
        jwt = _read_credential_file(auth.jwt_file, "JWT")
        if auth.method == "kubernetes":
            return lambda: client.auth.kubernetes.login(
                role=auth.role, jwt=jwt, use_token=False, mount_point=mount
            )
        return lambda: client.auth.jwt.jwt_login(
            role=auth.role, jwt=jwt, use_token=False, path=mount
        )

    def _given_token(self) -> str:
        if self._auth.token_file is not None:
            return _read_credential_file(self._auth.token_file, "Vault token")
        token = self._environ.get("VAULT_TOKEN", "").strip()
        if not token:
            raise VaultAuthFailed(
                "no Vault token: set vault.auth.token_file or the VAULT_TOKEN environment variable"
            )
        return token

    def _lookup(self, token: str) -> tuple[str, float, bool, float]:
        self._login_client.token = token
        try:
            response = self._login_client.auth.token.lookup_self()
        finally:
            self._login_client.token = ""
        data = response.get("data") if isinstance(response, Mapping) else None
        if not isinstance(data, Mapping):
            raise _UnexpectedResponseError("no data in the token lookup")
        ttl = _seconds(data.get("ttl"), "ttl")
        creation_ttl = data.get("creation_ttl")
        login_ttl = _seconds(creation_ttl, "creation_ttl") if creation_ttl is not None else ttl
        return token, ttl, bool(data.get("renewable")), login_ttl or ttl

    def _remember_response(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._local.status = response.status_code
        self._local.retry_after = response.headers.get("Retry-After")

    def _request(
        self,
        operation: str,
        where: str,
        send: Callable[[], T],
        *,
        login: bool = False,
        retried: bool = False,
    ) -> T:
        """One Vault request: translate its errors and report its outcome."""
        self._local.status = None
        self._local.retry_after = None
        try:
            result = send()
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
        status: int | None = getattr(self._local, "status", None)
        problem = self._unavailable_problem(exc, status)
        if problem is not None:
            retry_after = parse_retry_after(getattr(self._local, "retry_after", None), time.time())
            return VaultUnavailable(f"{what}: {problem}", retry_after=retry_after)
        http = f" (HTTP {status})" if status is not None else ""
        if login:
            role = f" as role {self._auth.role!r}" if self._auth.role else ""
            return VaultAuthFailed(f"{what}: login{role} refused{http}")
        if isinstance(exc, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized):
            after = " after a fresh login" if retried else ""
            return VaultPermissionDenied(f"{what}: permission denied{http}{after}")
        if isinstance(exc, hvac.exceptions.InvalidPath):
            return SecretNotFound(f"{what}: no secret at {where}")
        if isinstance(exc, hvac.exceptions.InvalidRequest) and _is_cas_mismatch(exc):
            return CasConflict(f"{what}: check-and-set lost, the secret changed since it was read")
        return FinalError(f"{what}: refused{http}")

    def _unavailable_problem(self, exc: Exception, status: int | None) -> str | None:
        """What went wrong when Vault is unreachable or in temporary trouble; else None."""
        if isinstance(exc, _UnexpectedResponseError):
            return f"unexpected response ({exc})"
        if isinstance(exc, requests.RequestException):
            return self._transport_problem(exc)
        return _retryable_problem(exc, status)

    def _transport_problem(self, exc: requests.RequestException) -> str:
        address = self._config.address
        if isinstance(exc, requests.Timeout):
            return f"no answer from {address} in {self._config.timeout_seconds} s"
        if isinstance(exc, requests.exceptions.SSLError):
            return f"TLS handshake with {address} failed (check vault.ca_cert)"
        if isinstance(exc, requests.ConnectionError):
            return f"cannot connect to {address}"
        return f"request failed ({type(exc).__name__})"


def _retryable_problem(exc: Exception, status: int | None) -> str | None:
    """What went wrong when it is Vault's temporary trouble; None otherwise."""
    errors = hvac.exceptions
    if isinstance(exc, errors.RateLimitExceeded):
        return "rate limited (HTTP 429)"
    if isinstance(exc, errors.VaultDown):
        return "Vault is sealed or unavailable (HTTP 503)"
    server_errors = (errors.InternalServerError, errors.BadGateway, errors.VaultNotInitialized)
    if isinstance(exc, server_errors) or (status is not None and status >= 500):
        return f"server error (HTTP {status})"
    if status == 412:  # Vault Enterprise: this node has not caught up with a recent write yet
        return "not yet consistent (HTTP 412)"
    return None


def _is_cas_mismatch(exc: Any) -> bool:
    messages = exc.errors if isinstance(exc.errors, list) else [exc.errors]
    return any(_CAS_MISMATCH in str(message) for message in messages)


# -- store ---------------------------------------------------------------------------------------


class VaultSecretStore:
    """One credential's KV v2 secret at ``mount/path``; implements ``SecretStore``."""

    def __init__(self, session: VaultSession, mount: str, path: str) -> None:
        self._session = session
        self._mount = mount.strip("/")
        self._path = path.strip("/")
        self._location = f"{self._mount}/{self._path}"

    @property
    def location(self) -> str:
        return self._location

    async def read(self) -> StoredSecret:
        return await self._session.call("read", self._read, location=self._location)

    def _read(self, client: Any) -> StoredSecret:
        response = client.secrets.kv.v2.read_secret_version(
            path=self._path, mount_point=self._mount, raise_on_deleted_version=True
        )
        return secret_from_kv(response, self._location)

    async def write(self, secret: StoredSecret, data: Mapping[str, Any]) -> StoredSecret:
        """Write ``data`` as the next version, check-and-set on ``secret.version``."""
        payload = dict(data)

        def write(client: Any) -> int:
            response = client.secrets.kv.v2.create_or_update_secret(
                path=self._path, secret=payload, cas=secret.version, mount_point=self._mount
            )
            return _written_version(response)

        version = await self._session.call("write", write, location=self._location)
        log.debug("vault.secret_written", location=self._location, version=version)
        return secret_from_kv(
            {"data": {"data": payload, "metadata": {"version": version}}}, self._location
        )

    async def write_refresh_token(self, secret: StoredSecret, refresh_token: str) -> StoredSecret:
        """Replace only ``refresh_token``, keeping every other field (CAS on the version read)."""
        if not isinstance(refresh_token, str) or not refresh_token:
            raise ValueError("refresh_token must be a non-empty string")
        return await self.write(secret, {**secret.data, "refresh_token": refresh_token})

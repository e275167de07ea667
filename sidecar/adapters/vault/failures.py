"""What a failed Vault request becomes: one of :mod:`sidecar.errors`, with a message that names
the operation and the location, never a token, a secret or Vault's own words."""

from __future__ import annotations

import httpx

from sidecar.adapters.httpkit import tls_problem
from sidecar.adapters.vault.api import UnexpectedResponse, VaultHttpError
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
from sidecar.retry_after import parse_retry_after

__all__ = ["TRANSLATED", "translate"]

TRANSLATED = (VaultHttpError, httpx.HTTPError, UnexpectedResponse)
"""What a Vault request may raise that :func:`translate` turns into a SidecarError."""

_CAS_MISMATCH = "check-and-set parameter did not match"


def translate(
    exc: Exception,
    config: VaultConfig,
    *,
    operation: str,
    where: str,
    now: float,
    login: bool = False,
    retried: bool = False,
) -> SidecarError:
    """``exc`` (one of :data:`TRANSLATED`) from ``operation`` on ``where`` as a project error.

    ``now`` is the wall clock's reading (``Clock.time``), against which an HTTP-date
    ``Retry-After`` counts.

    Temporary trouble (transport, 5xx, 429, 412, a redirect, an odd answer) is
    VaultUnavailable; a refused login VaultAuthFailed; 401/403 VaultPermissionDenied; 404
    SecretNotFound; a lost check-and-set CasConflict; anything else FinalError.
    """
    what = f"vault {operation} {where}".rstrip()
    status = exc.status if isinstance(exc, VaultHttpError) else None
    problem = _unavailable_problem(exc, status, config)
    if problem is not None:
        retry_after = None
        if isinstance(exc, VaultHttpError):
            retry_after = parse_retry_after(exc.retry_after, now)
        return VaultUnavailable(f"{what}: {problem}", retry_after=retry_after)
    http = f" (HTTP {status})" if status is not None else ""
    if login:
        role = f" as role {config.auth.role!r}" if config.auth.role else ""
        return VaultAuthFailed(f"{what}: login{role} refused{http}")
    if status in (401, 403):
        after = " after a fresh login" if retried else ""
        return VaultPermissionDenied(f"{what}: permission denied{http}{after}")
    if status == 404:
        return SecretNotFound(f"{what}: no secret at {where}")
    if isinstance(exc, VaultHttpError) and _is_cas_mismatch(exc):
        return CasConflict(f"{what}: check-and-set lost, the secret changed since it was read")
    return FinalError(f"{what}: refused{http}")


def _unavailable_problem(exc: Exception, status: int | None, config: VaultConfig) -> str | None:
    """What went wrong when Vault is unreachable or in temporary trouble; else None."""
    if isinstance(exc, UnexpectedResponse):
        return f"unexpected response ({exc})"
    if isinstance(exc, httpx.HTTPError):
        return _transport_problem(exc, config)
    return _retryable_status(status)


def _transport_problem(exc: httpx.HTTPError, config: VaultConfig) -> str:
    address = config.address
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer from {address} in {config.timeout_seconds} s"
    if isinstance(exc, httpx.ConnectError) and tls_problem(exc) is not None:
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

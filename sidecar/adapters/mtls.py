"""Mutual TLS (RFC 8705) for the two adapters that talk to an authorization server.

The token endpoint (:mod:`sidecar.adapters.exchange`) and the operator commands'
authorization server (:mod:`sidecar.adapters.authorization`) present a client certificate the
same way, from here:

- :class:`CertificateClient`: the HTTP client whose TLS context holds one credential's
  certificate. The certificate and key are read again on every use (files replaced by a
  mounted Secret or cert-manager, or new fields in Vault); a change builds a new client and
  closes the old one (``tls.client_certificate_loaded``, info). An expired, unreadable or
  mismatched certificate raises :class:`ClientCertificateInvalid` naming the file or field,
  before anything is sent. Every private key read is registered with the redactor, and a
  replaced key is dropped from it.
- :func:`refused_handshake`: a server that refuses the certificate in the handshake (a TLS
  alert such as ``certificate_required`` or ``unknown_ca``, which TLS 1.3 delivers only when
  the client reads) processed nothing: :class:`ClientRejected` (``invalid_client``, final),
  never a lost answer.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import structlog

from sidecar.adapters.httpkit import make_http_client
from sidecar.errors import ClientRejected, SidecarError, TokenEndpointUnavailable
from sidecar.model import ClientCertificate
from sidecar.redact import Redactor
from sidecar.status import rfc3339
from sidecar.tls import (
    LoadedCertificate,
    load_client_certificate,
    pem_secrets,
    read_client_certificate,
)

__all__ = ["CertificateClient", "refused_handshake"]


class CertificateClient:
    """The HTTP client presenting one credential's client certificate; :meth:`aclose` it."""

    def __init__(
        self,
        *,
        ca_cert: Path | None,
        timeout: float,
        redactor: Redactor,
        time: Callable[[], float],
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._ca_cert = ca_cert
        self._timeout = timeout
        self._redactor = redactor
        self._time = time
        self._log = log
        self._current: tuple[LoadedCertificate, httpx.AsyncClient] | None = None
        self._key_secrets: list[str] = []

    async def get(self, certificate: ClientCertificate) -> httpx.AsyncClient:
        """The client for ``certificate`` as it is now (re-read), built anew if it changed."""
        text = read_client_certificate(certificate)
        key_secrets = pem_secrets(text.key.decode("utf-8", "replace"))
        self._redactor.add(*key_secrets)
        now = self._time()
        if self._current is not None and self._current[0].digest == text.digest:
            self._current[0].check_valid(now)
            return self._current[1]
        loaded = load_client_certificate(text, self._ca_cert, now=now)
        http = make_http_client(self._ca_cert, self._timeout, context=loaded.context)
        previous, self._current = self._current, (loaded, http)
        for value in self._key_secrets:
            if value not in key_secrets:
                self._redactor.discard(value)
        self._key_secrets = key_secrets
        self._log.info(
            "tls.client_certificate_loaded",
            source=loaded.source,
            not_after=rfc3339(loaded.not_after),
            rotated=previous is not None,
        )
        if previous is not None:
            await previous[1].aclose()
        return http

    async def aclose(self) -> None:
        if self._current is not None:
            await self._current[1].aclose()
            self._current = None


_SSL_REASON = re.compile(r"\[SSL: ([A-Z0-9_]+)\]")
#: TLS alerts by which a server refuses the client's certificate (RFC 8446 §6.2).
_CERTIFICATE_ALERTS = (
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNSUPPORTED_CERTIFICATE",
    "CERTIFICATE_REVOKED",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_UNKNOWN",
    "UNKNOWN_CA",
    "ACCESS_DENIED",
)


def _peer_alert(exc: BaseException) -> str | None:
    """The TLS alert the server sent (``TLSV13_ALERT_CERTIFICATE_REQUIRED``, ...), if any.

    A server that refuses a client certificate sends its alert during the handshake; with
    TLS 1.3 the client learns it only when reading the answer, so httpx reports a read error.
    The server has processed nothing then: this is not a lost answer.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            match = _SSL_REASON.search(str(current))
            reason = getattr(current, "reason", None) or (match.group(1) if match else None)
            if reason and "_ALERT_" in reason:
                return reason
        current = current.__cause__ or current.__context__
    return None


def refused_handshake(exc: BaseException, where: str) -> SidecarError | None:
    """The error for a handshake the server ended with an alert, else ``None``.

    A refused client certificate is final (``invalid_client``: the same certificate will be
    refused again); any other alert is retryable. Neither is a lost answer.
    """
    alert = _peer_alert(exc)
    if alert is None:
        return None
    if alert.endswith(_CERTIFICATE_ALERTS):
        return ClientRejected(
            f"{where}: the server refused the client certificate in the TLS handshake ({alert}); "
            "nothing was processed",
            oauth_error="invalid_client",
        )
    return TokenEndpointUnavailable(f"{where}: TLS handshake failed: {alert}")

"""Values the core passes between adapters: secrets read from Vault, token grants, published tokens.

Every field that holds a secret is excluded from ``repr`` so that a value printed by accident, in
a log line or a traceback, shows its shape and never its content.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "TLS_AUTH_METHODS",
    "ClientAuthMethod",
    "ClientCertificate",
    "ClientCredentials",
    "GrantType",
    "JournalEntry",
    "Notification",
    "PublishedToken",
    "StoredSecret",
    "TokenGrant",
]

ClientAuthMethod = Literal[
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
    "tls_client_auth",
    "self_signed_tls_client_auth",
    "none",
]
#: RFC 8705 §2: the client authenticates with the certificate of the TLS connection.
TLS_AUTH_METHODS: frozenset[str] = frozenset({"tls_client_auth", "self_signed_tls_client_auth"})
GrantType = Literal["refresh_token", "client_credentials"]


@dataclass(frozen=True, slots=True)
class StoredSecret:
    """A KV v2 secret as read from Vault, with the version that fences the next write."""

    location: str
    """``mount/path``, for messages; not a secret."""
    version: int
    refresh_token: str = field(repr=False)
    """Empty for a ``client_credentials`` credential, whose secret holds no refresh token."""
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)
    """PEM private key for ``private_key_jwt``, when the secret carries one."""
    client_cert: str | None = None
    """PEM client certificate (chain) for mutual TLS, when the secret carries one."""
    client_key: str | None = field(default=None, repr=False)
    """PEM private key of ``client_cert``."""
    data: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """Every field of the secret; a write-back keeps the ones it does not change."""


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """The TLS client certificate and its key: two PEM files, or two fields of the secret.

    Files are read again before every exchange (a mounted Secret or cert-manager replaces
    them); ``source`` names where the PEM text came from, for messages.
    """

    cert_file: Path | None = None
    key_file: Path | None = None
    cert_pem: str | None = None
    key_pem: str | None = field(default=None, repr=False)
    source: str = ""
    """``client_cert_file``/``client_key_file`` or ``secret <location> fields ...``."""


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """How the sidecar authenticates itself as the OAuth client at the token endpoint."""

    client_id: str
    method: ClientAuthMethod
    client_secret: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)
    signing_alg: str = "RS256"
    key_id: str | None = None
    certificate: ClientCertificate | None = None
    """Presented in the TLS handshake (RFC 8705): required by the ``tls_*`` methods, and with
    any method it binds the access tokens to the certificate (``cnf.x5t#S256``)."""


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """A successful token endpoint response (RFC 6749 §5.1), validated but not yet clamped."""

    access_token: str = field(repr=False)
    token_type: str
    expires_in: float | None
    """Seconds as the server said; ``None`` when absent. The schedule applies the clamps."""
    refresh_token: str | None = field(default=None, repr=False)
    """A rotated refresh token, or ``None`` when the server keeps the current one."""
    scope: str | None = None
    refresh_expires_in: float | None = None


@dataclass(frozen=True, slots=True)
class PublishedToken:
    """What the app reads: the access token and the facts about it in ``token.json``."""

    access_token: str = field(repr=False)
    token_type: str
    issued_at: datetime
    expires_at: datetime
    scope: str | None = None


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """A rotated refresh token that the authorization server issued and Vault may not hold yet."""

    location: str
    base_version: int
    """The KV version the token was rotated from; the write-back is check-and-set on it."""
    refresh_token: str = field(repr=False)
    saved_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Notification:
    """What the app is told when its token changed: never the token itself."""

    credential: str
    generation: int
    """The ``generation`` in ``token.json``: one more for every new access token."""
    expires_at: datetime

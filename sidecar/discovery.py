"""Authorization server metadata (RFC 8414, OpenID Connect Discovery): where, and what to trust.

Pure functions: the adapter fetches the documents; this module says where to look and
validates what came back against the configured issuer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from sidecar.config import check_url
from sidecar.errors import ClientRejected, MalformedResponse
from sidecar.oauth import json_object

__all__ = ["DiscoveryInfo", "discovery_urls", "parse_discovery"]


@dataclass(frozen=True, slots=True)
class DiscoveryInfo:
    """What the sidecar uses from authorization server metadata (RFC 8414 §2)."""

    token_endpoint: str
    token_endpoint_auth_methods_supported: tuple[str, ...] | None = field(default=None)
    """``None`` when the document does not say (RFC 8414 then implies client_secret_basic)."""
    authorization_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    revocation_endpoint: str | None = None
    scopes_supported: tuple[str, ...] | None = None
    """The operator commands (``seed``, ``retire``) use these four; the endpoints are as the
    document gives them and checked with :func:`sidecar.config.check_url` where used."""
    mtls_token_endpoint: str | None = None
    """``mtls_endpoint_aliases.token_endpoint`` (RFC 8705 §5): where a client that presents a
    certificate must go instead; ``None`` when the server names no alias."""
    mtls_device_authorization_endpoint: str | None = None
    """``mtls_endpoint_aliases.device_authorization_endpoint``, for ``seed``."""
    mtls_revocation_endpoint: str | None = None
    """``mtls_endpoint_aliases.revocation_endpoint``, for ``retire``."""


def discovery_urls(issuer: str) -> tuple[str, str]:
    """Where to look for metadata, in order.

    RFC 8414 §3.1 inserts ``/.well-known/oauth-authorization-server`` between host and path
    (``https://as/t1`` → ``https://as/.well-known/oauth-authorization-server/t1``); OpenID
    Connect Discovery appends ``/.well-known/openid-configuration`` to the issuer. A trailing
    ``/`` of the issuer is removed first in both cases.
    """
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    rfc8414 = urlunsplit(
        (parts.scheme, parts.netloc, "/.well-known/oauth-authorization-server" + path, "", "")
    )
    oidc = urlunsplit(
        (parts.scheme, parts.netloc, path + "/.well-known/openid-configuration", "", "")
    )
    return rfc8414, oidc


def parse_discovery(
    body: bytes, expected_issuer: str, *, allow_http: bool = False
) -> DiscoveryInfo:
    """Validate a metadata document against the configured issuer.

    The ``issuer`` must equal ``expected_issuer`` exactly (RFC 8414 §3.3: this is what stops
    a mix-up between servers); a difference of only a trailing slash is also refused, with a
    hint, since the configured value must be the server's own identifier.

    Raises MalformedResponse (not a JSON object, missing fields: possibly a proxy's page,
    worth retrying) or ClientRejected (``issuer`` mismatch, an insecure ``token_endpoint`` or
    ``mtls_endpoint_aliases`` entry: configuration, final), both with messages naming the key.
    """
    data = json_object(body)
    if data is None:
        raise MalformedResponse("issuer: the discovery document is not a JSON object")
    issuer = data.get("issuer")
    if not isinstance(issuer, str):
        raise MalformedResponse("issuer: the discovery document has no issuer string")
    if issuer != expected_issuer:
        hint = (
            " (they differ only by a trailing '/'; write issuer exactly as the server does)"
            if issuer.rstrip("/") == expected_issuer.rstrip("/")
            else ""
        )
        raise ClientRejected(
            f"issuer: the discovery document names a different issuer{hint}",
            oauth_error="issuer_mismatch",
        )
    endpoint = data.get("token_endpoint")
    if not isinstance(endpoint, str):
        raise MalformedResponse("issuer: the discovery document has no token_endpoint string")
    try:
        check_url(endpoint, allow_http=allow_http, what="token_endpoint")
    except ValueError as exc:
        raise ClientRejected(
            f"issuer: the discovery document's {exc}", oauth_error="insecure_token_endpoint"
        ) from exc
    supported = _strings(data.get("token_endpoint_auth_methods_supported"))
    return DiscoveryInfo(
        token_endpoint=endpoint,
        token_endpoint_auth_methods_supported=supported,
        mtls_token_endpoint=_mtls_alias(data, "token_endpoint"),
        mtls_device_authorization_endpoint=_mtls_alias(data, "device_authorization_endpoint"),
        mtls_revocation_endpoint=_mtls_alias(data, "revocation_endpoint"),
        authorization_endpoint=_optional_text(data, "authorization_endpoint"),
        device_authorization_endpoint=_optional_text(data, "device_authorization_endpoint"),
        revocation_endpoint=_optional_text(data, "revocation_endpoint"),
        scopes_supported=_strings(data.get("scopes_supported")),
    )


def _optional_text(data: dict[str, object], name: str) -> str | None:
    value = data.get(name)
    return value if isinstance(value, str) and value else None


def _strings(value: object) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return None


def _mtls_alias(data: dict[str, object], name: str) -> str | None:
    """``mtls_endpoint_aliases.<name>``, checked: https only (RFC 8705 §5)."""
    aliases = data.get("mtls_endpoint_aliases")
    alias = aliases.get(name) if isinstance(aliases, dict) else None
    key = f"mtls_endpoint_aliases.{name}"
    if alias is None:
        return None
    if not isinstance(alias, str):
        raise MalformedResponse(f"issuer: the discovery document's {key} is not a string")
    if not alias.startswith("https://"):  # a certificate is only ever sent over TLS
        raise ClientRejected(
            f"issuer: the discovery document's {key}: must be an absolute https:// URL",
            oauth_error="insecure_token_endpoint",
        )
    try:
        check_url(alias, allow_http=False, what=key)
    except ValueError as exc:
        raise ClientRejected(
            f"issuer: the discovery document's {exc}", oauth_error="insecure_token_endpoint"
        ) from exc
    return alias

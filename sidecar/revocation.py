"""Token revocation (RFC 7009) without I/O: the request and what its answer means.

- :func:`build_revocation_request`: ``token`` and ``token_type_hint=refresh_token`` with the
  client's authentication, as at the token endpoint (RFC 7009 §2.1);
- :func:`parse_revocation_response`: 200 means revoked, also for a token the server no
  longer knows (§2.2: an invalid token is not an error); 503 (§2.2.1) and other transient
  answers raise :class:`TokenEndpointUnavailable` with the ``Retry-After`` delay; anything
  else raises :class:`ClientRejected` naming the error code when it is a known one
  (``unsupported_token_type``, ``invalid_client``, ...). Bodies are never echoed.
"""

from __future__ import annotations

from collections.abc import Mapping

from sidecar.errors import ClientRejected, TokenEndpointUnavailable
from sidecar.model import ClientCredentials
from sidecar.oauth import (
    RETRYABLE_ERRORS,
    TokenRequest,
    authenticated_request,
    json_object,
    parse_error_body,
)
from sidecar.retry_after import parse_retry_after

__all__ = ["build_revocation_request", "parse_revocation_response"]

_KNOWN = frozenset({"unsupported_token_type"})


def build_revocation_request(
    token: str,
    client: ClientCredentials,
    *,
    token_type_hint: str = "refresh_token",  # noqa: S107  # a token type, not a password
    client_assertion: str | None = None,
) -> TokenRequest:
    form = [("token", token), ("token_type_hint", token_type_hint)]
    return authenticated_request(form, client, client_assertion=client_assertion)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def parse_revocation_response(
    status: int, headers: Mapping[str, str], body: bytes, *, now: float | None = None
) -> None:
    """Return when the token is revoked; raise what stands in the way."""
    if 200 <= status < 300:
        return
    error = parse_error_body(body).error
    if error is None and (json_object(body) or {}).get("error") in _KNOWN:
        error = "unsupported_token_type"  # RFC 7009 §2.2.1's own code
    code = f"{error}, HTTP {status}" if error else f"HTTP {status}"
    if status in (408, 429) or status >= 500 or error in RETRYABLE_ERRORS:
        raise TokenEndpointUnavailable(
            f"revocation endpoint unavailable ({code})",
            retry_after=parse_retry_after(_header(headers, "Retry-After"), now),
        )
    if 300 <= status < 400:
        raise ClientRejected(
            f"revocation endpoint answered HTTP {status}, a redirect; redirects are not "
            "followed, so give the final revocation endpoint URL",
            oauth_error=f"http_{status}",
        )
    raise ClientRejected(
        f"revocation endpoint rejected the request ({code})",
        oauth_error=error or f"http_{status}",
    )

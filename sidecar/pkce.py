"""Authorization code with PKCE for a native app (RFC 6749 §4.1, RFC 7636, RFC 8252) without I/O.

Pure functions tested with literal payloads; randomness comes in as arguments. The loopback
listener (:mod:`sidecar.adapters.loopback`) and the token endpoint call live in adapters.

- :func:`code_challenge`: ``S256``, ``BASE64URL(SHA256(ASCII(code_verifier)))`` unpadded
  (RFC 7636 §4.2), for a verifier of 43 to 128 unreserved characters (§4.1);
- :func:`loopback_redirect_uri`: ``http://127.0.0.1:<port>/callback`` (RFC 8252 §7.3: the IP
  literal, not ``localhost``);
- :func:`authorization_url`: the authorization request with ``response_type=code``,
  ``state``, the challenge and ``prompt=consent`` (a server such as node oidc-provider drops
  ``offline_access``, and so the refresh token, without it);
- :func:`parse_callback`: the redirect's query: the ``code`` when ``state`` matches, else
  the error it stands for (``access_denied`` has its own class);
- :func:`build_code_request`: the token request that redeems the code with the verifier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from sidecar.errors import AuthorizationDenied, ClientRejected
from sidecar.model import ClientCredentials
from sidecar.oauth import CLIENT_ERRORS, TokenRequest, authenticated_request

__all__ = [
    "CALLBACK_PATH",
    "authorization_url",
    "build_code_request",
    "code_challenge",
    "loopback_redirect_uri",
    "parse_callback",
]

CALLBACK_PATH = "/callback"
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


def code_challenge(verifier: str) -> str:
    """The ``S256`` challenge of ``verifier``; ValueError for a verifier RFC 7636 forbids."""
    if not _VERIFIER.fullmatch(verifier):
        raise ValueError("a PKCE code_verifier is 43 to 128 unreserved characters")
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def loopback_redirect_uri(port: int) -> str:
    return f"http://127.0.0.1:{port}{CALLBACK_PATH}"


def authorization_url(
    endpoint: str,
    *,
    client_id: str,
    redirect_uri: str,
    state: str,
    verifier: str,
    scope: str | None = None,
    resource: list[str] | tuple[str, ...] = (),
    audience: str | None = None,
) -> str:
    """The URL to open in the browser; the endpoint's own query parameters are kept."""
    parts = urlsplit(endpoint)
    query: list[tuple[str, str]] = [
        (key, value)
        for key, values in parse_qs(parts.query, keep_blank_values=True).items()
        for value in values
    ]
    query += [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("state", state),
        ("code_challenge", code_challenge(verifier)),
        ("code_challenge_method", "S256"),
        ("prompt", "consent"),
    ]
    if scope:
        query.append(("scope", scope))
    query.extend(("resource", uri) for uri in resource)
    if audience:
        query.append(("audience", audience))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def parse_callback(query: str, expected_state: str) -> str:
    """The authorization code in the redirect's ``query``.

    Raises AuthorizationDenied for ``access_denied``, ClientRejected for a missing or wrong
    ``state`` (a request this program did not make, RFC 6749 §10.12) or another error, and
    for a callback without a code. Messages name the error code only when it is a known one.
    """
    params = parse_qs(query, keep_blank_values=True)

    def one(name: str) -> str | None:
        values = params.get(name)
        return values[0] if values and len(values) == 1 else None

    state = one("state")
    if state is None or not hmac.compare_digest(state.encode(), expected_state.encode()):
        raise ClientRejected(
            "the browser's callback does not carry this login's state; ignoring it",
            oauth_error="state_mismatch",
        )
    error = one("error")
    if error == "access_denied":
        raise AuthorizationDenied("the user denied the authorization (access_denied)")
    if error is not None:
        known = error if error in CLIENT_ERRORS or error == "server_error" else None
        raise ClientRejected(
            f"the authorization server refused the request ({known or 'an unrecognised error'})",
            oauth_error=known or "authorization_error",
        )
    code = one("code")
    if not code:
        raise ClientRejected(
            "the browser's callback carries no authorization code", oauth_error="no_code"
        )
    return code


def build_code_request(
    code: str,
    verifier: str,
    redirect_uri: str,
    client: ClientCredentials,
    *,
    client_assertion: str | None = None,
) -> TokenRequest:
    """RFC 6749 §4.1.3 with RFC 7636 §4.5: redeem ``code`` with the verifier."""
    form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", verifier),
    ]
    return authenticated_request(form, client, client_assertion=client_assertion)

"""The token endpoint protocol without I/O: build the refresh request, classify the answer.

Everything here is a pure function of its arguments, tested with literal payloads; the httpx
adapter (:mod:`sidecar.adapters.exchange`) only moves bytes.

Requests: ``grant_type=refresh_token`` (RFC 6749 §6) or ``grant_type=client_credentials``
(RFC 6749 §4.4), with optional ``scope``, repeated ``resource`` (RFC 8707) and ``audience``,
plus client authentication:

- ``client_secret_basic``: ``Authorization: Basic`` over the form-urlencoded client_id and
  secret (RFC 6749 §2.3.1);
- ``client_secret_post``: ``client_id`` and ``client_secret`` in the body;
- ``private_key_jwt``: ``client_id``, ``client_assertion_type`` and ``client_assertion``
  (RFC 7523 §2.2);
- ``tls_client_auth``, ``self_signed_tls_client_auth`` (RFC 8705 §2): ``client_id`` in the
  body; the proof is the certificate of the TLS connection, which the adapter presents;
- ``none``: ``client_id`` in the body (never for ``client_credentials``: RFC 6749 §4.4 is for
  confidential clients only).

A secret method without a ``client_secret`` (or ``private_key_jwt`` without an assertion)
raises :class:`ClientRejected` with ``oauth_error="invalid_client"``: the client credentials
come from Vault at run time, so an operator fixes them there, as with a secret the server
refused.

Answers:

- 2xx: an RFC 6749 §5.1 JSON object, else :class:`MalformedResponse` naming the field. If that
  malformed body still carries a valid new ``refresh_token``, the server has probably rotated;
  the raised error keeps it as ``salvaged_refresh_token`` so the caller can persist it (R2).
  :func:`salvage_refresh_token` finds it in a raw body, also in one that was cut off or is
  not valid JSON, provided it holds one complete ``"refresh_token": "..."`` member (the
  closing quote proves the value whole).
  Field rules: ``access_token`` and ``refresh_token`` are 1*VSCHAR (RFC 6749 Appendix A);
  ``token_type`` is any non-empty string, with ``bearer``/``dpop`` normalised in case;
  ``expires_in`` is a JSON number or numeric string, zero and negatives kept as given (the
  schedule clamps), booleans, NaN and infinities refused; ``null`` means absent; ``scope``
  is a string (a JSON array of strings is joined); an unusable ``refresh_expires_in`` is
  ignored; unknown fields are ignored; the Content-Type is not checked.
- 3xx: :class:`ClientRejected` (``http_3xx``); redirects are never followed, configure the
  final URL.
- 408, 429, 5xx: :class:`TokenEndpointUnavailable` with ``Retry-After``, whatever the body
  says (a 5xx is never taken as a verdict on the refresh token).
- other 4xx: by the RFC 6749 §5.2 ``error`` code: ``invalid_grant`` → :class:`InvalidGrant`;
  ``temporarily_unavailable``, ``server_error``, ``slow_down`` → :class:`TokenEndpointUnavailable`;
  ``invalid_request``, ``invalid_client`` and the other known codes → :class:`ClientRejected`
  (final: the same request will be refused again); no recognisable code →
  :class:`ClientRejected` with ``oauth_error="http_<status>"``.

Messages carry the HTTP status and the ``error`` code only when it is one of the known codes
below. ``error_description`` is never included: servers put arbitrary text there, sometimes
the token they refused. :func:`parse_error_body` reports only its length, for debug logs.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode

from sidecar.errors import (
    ClientRejected,
    InvalidGrant,
    MalformedResponse,
    TokenEndpointUnavailable,
)
from sidecar.model import TLS_AUTH_METHODS, ClientCredentials, GrantType, TokenGrant
from sidecar.retry_after import parse_retry_after

__all__ = [
    "ASSERTION_TYPE",
    "OAuthErrorBody",
    "TokenRequest",
    "authenticated_request",
    "build_client_credentials_request",
    "build_refresh_request",
    "json_object",
    "parse_error_body",
    "parse_token_response",
    "salvage_refresh_token",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

#: RFC 6749 §5.2, RFC 8707 §2, RFC 9449 §5 and RFC 8628 §3.5 codes. Only these are echoed in
#: messages and ``oauth_error``; anything else a server sends might be free text.
RETRYABLE_ERRORS = frozenset({"temporarily_unavailable", "server_error", "slow_down"})
CLIENT_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_target",
        "access_denied",
        "invalid_dpop_proof",
        "use_dpop_nonce",
        "invalid_authorization_details",
    }
)
KNOWN_ERRORS = RETRYABLE_ERRORS | CLIENT_ERRORS | {"invalid_grant"}

# RFC 6749 Appendix A: access-token and refresh-token are 1*VSCHAR. Rejecting anything else
# also keeps control characters out of the token file and the app's Authorization header.
_VSCHAR = re.compile(r"[\x20-\x7e]+")
_NUMBER = re.compile(r"\s*-?[0-9]+(?:\.[0-9]+)?\s*")
_TOKEN_TYPES = {"bearer": "Bearer", "dpop": "DPoP"}
# One complete JSON string member named refresh_token, in text that may not parse as a whole.
# A quote that is part of an escape (\") never ends the match, so the value is whole.
_REFRESH_MEMBER = re.compile(rb'"refresh_token"\s*:\s*"((?:[^"\\\x00-\x1f]|\\.)*)"')


@dataclass(frozen=True, slots=True, repr=False)
class TokenRequest:
    """A token endpoint POST: headers and ordered form fields (``resource`` may repeat).

    ``repr`` lists header and field names only; the values include the refresh token and
    possibly the client secret or assertion.
    """

    headers: Mapping[str, str]
    form: tuple[tuple[str, str], ...]

    def body(self) -> bytes:
        """The ``application/x-www-form-urlencoded`` body."""
        return urlencode(self.form).encode("ascii")

    def __repr__(self) -> str:
        names = [name for name, _ in self.form]
        return f"TokenRequest(headers={sorted(self.headers)!r}, form={names!r})"


def _basic_credentials(client_id: str, secret: str) -> str:
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def build_refresh_request(
    refresh_token: str,
    client: ClientCredentials,
    *,
    scope: str | None = None,
    resource: list[str] | tuple[str, ...] = (),
    audience: str | None = None,
    client_assertion: str | None = None,
) -> TokenRequest:
    """The RFC 6749 §6 refresh request for ``client``'s authentication method.

    Raises ClientRejected (``invalid_client``) when the method needs a secret or an assertion
    that is missing; ValueError when an assertion is given to a method that does not use one.
    """
    form: list[tuple[str, str]] = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
    ]
    if scope:
        form.append(("scope", scope))
    form.extend(("resource", uri) for uri in resource)
    if audience:
        form.append(("audience", audience))
    return authenticated_request(form, client, client_assertion=client_assertion)


def build_client_credentials_request(
    client: ClientCredentials,
    *,
    scope: str | None = None,
    resource: list[str] | tuple[str, ...] = (),
    audience: str | None = None,
    client_assertion: str | None = None,
) -> TokenRequest:
    """The RFC 6749 §4.4.2 client credentials request for ``client``'s authentication method.

    Raises ClientRejected (``invalid_client``) as :func:`build_refresh_request` does, and also
    for ``none``: a public client cannot use this grant.
    """
    if client.method == "none":
        raise ClientRejected(
            "grant client_credentials needs client authentication; client_auth none cannot work",
            oauth_error="invalid_client",
        )
    form: list[tuple[str, str]] = [("grant_type", "client_credentials")]
    if scope:
        form.append(("scope", scope))
    form.extend(("resource", uri) for uri in resource)
    if audience:
        form.append(("audience", audience))
    return authenticated_request(form, client, client_assertion=client_assertion)


def authenticated_request(
    fields: list[tuple[str, str]] | tuple[tuple[str, str], ...],
    client: ClientCredentials,
    *,
    client_assertion: str | None = None,
) -> TokenRequest:
    """A POST to the token endpoint (or an endpoint that authenticates clients the same way:
    device authorization, revocation) with ``fields`` and ``client``'s authentication.

    Raises ClientRejected (``invalid_client``) when the method needs a secret or an assertion
    that is missing; ValueError when an assertion is given to a method that does not use one.
    """
    if not client.client_id:
        raise ClientRejected("client_id is empty", oauth_error="invalid_client")
    if client_assertion is not None and client.method != "private_key_jwt":
        raise ValueError(
            f"a client assertion is only used with private_key_jwt, not {client.method}"
        )
    headers = {
        "Accept": "application/json",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    form = list(fields)
    if client.method in ("client_secret_basic", "client_secret_post"):
        secret = client.client_secret
        if not secret:
            raise ClientRejected(
                f"client_auth {client.method} needs a client_secret: set client_secret in the "
                "Vault secret (or switch client_auth)",
                oauth_error="invalid_client",
            )
        if client.method == "client_secret_basic":
            headers["Authorization"] = _basic_credentials(client.client_id, secret)
        else:
            form += [("client_id", client.client_id), ("client_secret", secret)]
    elif client.method == "private_key_jwt":
        if not client_assertion:
            raise ClientRejected(
                "client_auth private_key_jwt needs a client assertion (no private key?)",
                oauth_error="invalid_client",
            )
        form += [
            ("client_id", client.client_id),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", client_assertion),
        ]
    else:
        if client.method in TLS_AUTH_METHODS and client.certificate is None:
            raise ClientRejected(
                f"client_auth {client.method} needs a client certificate: set client_cert_file "
                "and client_key_file, or the secret's client_cert and client_key fields",
                oauth_error="invalid_client",
            )
        # none and the RFC 8705 methods: the client_id alone (the certificate is in TLS).
        form.append(("client_id", client.client_id))
    return TokenRequest(headers=headers, form=tuple(form))


def json_object(body: bytes) -> dict[str, Any] | None:
    """The JSON object an answer's body holds, or None (not JSON, not an object, too deep)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # also bad UTF-8 and absurdly deep nesting
        return None
    return data if isinstance(data, dict) else None


def _number(value: Any, name: str) -> float | None:
    """A JSON number or numeric string as float; ``None`` for absent or null."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise MalformedResponse(f"token endpoint response: {name} is not a number")
    if isinstance(value, str):
        if not _NUMBER.fullmatch(value):
            raise MalformedResponse(f"token endpoint response: {name} is not a number")
        value = float(value)
    if not isinstance(value, int | float):
        raise MalformedResponse(f"token endpoint response: {name} is not a number")
    try:
        result = float(value)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise MalformedResponse(f"token endpoint response: {name} is not a finite number")
    return result


def _token(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedResponse(
            f"token endpoint response: {name} is missing or not a non-empty string"
        )
    if not _VSCHAR.fullmatch(value):
        raise MalformedResponse(
            f"token endpoint response: {name} has characters outside RFC 6749 VSCHAR"
        )
    return value


def _parse_grant(status: int, body: bytes) -> TokenGrant:
    data = json_object(body)
    if data is None:
        raise MalformedResponse(f"token endpoint response (HTTP {status}) is not a JSON object")
    access_token = _token(data.get("access_token"), "access_token")
    token_type = data.get("token_type")
    if not isinstance(token_type, str) or not token_type.strip():
        raise MalformedResponse("token endpoint response: token_type is missing or not a string")
    token_type = _TOKEN_TYPES.get(token_type.strip().lower(), token_type.strip())
    refresh_token = data.get("refresh_token")
    if refresh_token is not None:
        refresh_token = _token(refresh_token, "refresh_token")
    scope = data.get("scope")
    if isinstance(scope, list) and all(isinstance(item, str) for item in scope):
        scope = " ".join(scope)  # some servers send a JSON array; RFC 6749 says a string
    if scope is not None and not isinstance(scope, str):
        raise MalformedResponse("token endpoint response: scope is not a string")
    try:
        refresh_expires_in = _number(data.get("refresh_expires_in"), "refresh_expires_in")
    except MalformedResponse:
        # Informational only (Keycloak, Okta): not worth refusing an otherwise valid grant.
        refresh_expires_in = None
    return TokenGrant(
        access_token=access_token,
        token_type=token_type,
        expires_in=_number(data.get("expires_in"), "expires_in"),
        refresh_token=refresh_token,
        scope=scope or None,
        refresh_expires_in=refresh_expires_in,
    )


def salvage_refresh_token(body: bytes) -> str | None:
    """The valid ``refresh_token`` in a (possibly otherwise malformed) JSON body, else ``None``.

    Never raises. Use it on a 2xx answer that failed :func:`parse_token_response`, or on the
    part of one that arrived before the connection failed: the server has probably rotated,
    and the new token must be persisted before the old one is dropped. When the body does not
    parse, exactly one complete ``"refresh_token": "..."`` member must be in it; two different
    ones, an unfinished one or one outside RFC 6749's VSCHAR give ``None``.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return _salvage_from_text(body)
    value = data.get("refresh_token") if isinstance(data, dict) else None
    return value if isinstance(value, str) and _VSCHAR.fullmatch(value) else None


def _salvage_from_text(body: bytes) -> str | None:
    """The one complete ``"refresh_token": "..."`` member in a body that does not parse."""
    found: set[str] = set()
    for match in _REFRESH_MEMBER.finditer(body):
        try:
            value = json.loads(b'"' + match.group(1) + b'"')
        except ValueError:
            return None
        found.add(value)
    if len(found) != 1:
        return None
    (value,) = found
    return value if isinstance(value, str) and _VSCHAR.fullmatch(value) else None


@dataclass(frozen=True, slots=True)
class OAuthErrorBody:
    """What may be said about an RFC 6749 §5.2 error body without echoing it."""

    error: str | None
    """The ``error`` code if it is a known one; ``None`` when absent or unrecognised."""
    has_error: bool
    """The body had an ``error`` string at all (known or not)."""
    description_length: int | None
    """Length of ``error_description``; its text is never kept."""


def parse_error_body(body: bytes) -> OAuthErrorBody:
    data = json_object(body) or {}
    error = data.get("error")
    description = data.get("error_description")
    return OAuthErrorBody(
        error=error if isinstance(error, str) and error in KNOWN_ERRORS else None,
        has_error=isinstance(error, str),
        description_length=len(description) if isinstance(description, str) else None,
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def parse_token_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    grant: GrantType = "refresh_token",
) -> TokenGrant:
    """Classify a token endpoint answer: a :class:`TokenGrant` or one of the project errors.

    ``now`` (wall-clock seconds) lets an HTTP-date ``Retry-After`` count; without it only
    delta-seconds do. See the module docstring for the mapping. For ``client_credentials``
    there is no refresh token to refuse, so ``invalid_grant`` is a :class:`ClientRejected`.
    """
    if 200 <= status < 300:
        try:
            return _parse_grant(status, body)
        except MalformedResponse as exc:
            raise MalformedResponse(
                exc.message, salvaged_refresh_token=salvage_refresh_token(body)
            ) from None
    where = f"HTTP {status}"
    if 300 <= status < 400:
        raise ClientRejected(
            f"token endpoint answered {where}, a redirect; redirects are not followed, "
            "so configure the final token endpoint URL",
            oauth_error=f"http_{status}",
        )
    retry_after = parse_retry_after(_header(headers, "Retry-After"), now)
    oauth = parse_error_body(body)
    code = f"{oauth.error}, {where}" if oauth.error else where
    if status in (408, 429) or 500 <= status < 600:
        raise TokenEndpointUnavailable(
            f"token endpoint unavailable ({code})", retry_after=retry_after
        )
    if not 400 <= status < 500:
        raise MalformedResponse(f"token endpoint answered an unexpected {where}")
    if oauth.error == "invalid_grant" and grant == "client_credentials":
        raise ClientRejected(
            f"token endpoint refused the client credentials grant ({code})",
            oauth_error="invalid_grant",
        )
    if oauth.error == "invalid_grant":
        raise InvalidGrant(f"token endpoint refused the refresh token ({code})")
    if oauth.error in RETRYABLE_ERRORS:
        raise TokenEndpointUnavailable(
            f"token endpoint unavailable ({code})", retry_after=retry_after
        )
    if oauth.error is not None:
        raise ClientRejected(
            f"token endpoint rejected the request ({code})", oauth_error=oauth.error
        )
    detail = "an unrecognised error code" if oauth.has_error else "no OAuth error code"
    raise ClientRejected(
        f"token endpoint rejected the request ({where}, {detail})", oauth_error=f"http_{status}"
    )

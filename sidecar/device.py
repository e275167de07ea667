"""The OAuth 2.0 Device Authorization Grant (RFC 8628) without I/O: requests, answers, polling.

Pure functions tested with literal payloads; :mod:`sidecar.adapters.authorization` moves the
bytes and :mod:`sidecar.operator.seed` drives the loop.

1. :func:`build_device_authorization_request`: ``POST`` to the device authorization endpoint
   with the client's authentication and the scope (RFC 8628 §3.1);
2. :func:`parse_device_authorization`: the answer (§3.2): ``device_code``, ``user_code``,
   ``verification_uri`` (Google's older ``verification_url`` too), optional
   ``verification_uri_complete``, ``expires_in``, optional ``interval`` (5 s when absent);
3. :func:`build_device_token_request`: the poll (§3.4), ``grant_type`` =
   ``urn:ietf:params:oauth:grant-type:device_code``;
4. :func:`poll_outcome`: what one poll's answer means (§3.5). The ``error`` field is read
   whatever the HTTP status, since some servers answer 403 or 429 while the user has not
   decided yet: ``authorization_pending`` waits, ``slow_down`` adds 5 s to the interval for
   this and every later poll, ``access_denied`` and ``expired_token`` end the flow; a 5xx,
   408 or 429 without a known code is transient and waits (``Retry-After`` honoured); a 2xx
   is the token response (:func:`sidecar.oauth.parse_token_response`); anything else is the
   error the token endpoint would raise;
5. :func:`next_poll_at`: when to poll next; at ``expires_in`` the caller stops.

The device code is a credential while the flow runs: it never appears in a ``repr``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from sidecar.errors import ClientRejected, MalformedResponse, TokenEndpointUnavailable
from sidecar.model import ClientCredentials, TokenGrant
from sidecar.oauth import (
    RETRYABLE_ERRORS,
    TokenRequest,
    authenticated_request,
    json_object,
    parse_error_body,
    parse_token_response,
)
from sidecar.retry_after import parse_retry_after

__all__ = [
    "DEFAULT_INTERVAL",
    "DEVICE_CODE_GRANT",
    "SLOW_DOWN_STEP",
    "DeviceAuthorization",
    "PollOutcome",
    "build_device_authorization_request",
    "build_device_token_request",
    "next_poll_at",
    "parse_device_authorization",
    "poll_outcome",
]

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_INTERVAL = 5.0
"""RFC 8628 §3.2: the interval when the server sends none (node oidc-provider sends none)."""
SLOW_DOWN_STEP = 5.0
"""RFC 8628 §3.5: ``slow_down`` adds this much to the interval, for good."""
MAX_INTERVAL = 300.0
"""A larger interval from a server is clamped: the operator is waiting at a terminal."""


@dataclass(frozen=True, slots=True)
class DeviceAuthorization:
    """A device authorization answer (RFC 8628 §3.2)."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float


def build_device_authorization_request(
    client: ClientCredentials,
    *,
    scope: str | None = None,
    resource: list[str] | tuple[str, ...] = (),
    audience: str | None = None,
    client_assertion: str | None = None,
) -> TokenRequest:
    """RFC 8628 §3.1, authenticated as at the token endpoint (``client_id`` in the body for
    every method but ``client_secret_basic``)."""
    form: list[tuple[str, str]] = []
    if scope:
        form.append(("scope", scope))
    form.extend(("resource", uri) for uri in resource)
    if audience:
        form.append(("audience", audience))
    return authenticated_request(form, client, client_assertion=client_assertion)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def _text(data: Mapping[str, object], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise MalformedResponse(
            f"device authorization response: {name} is missing or not a non-empty string"
        )
    return value


def _seconds(value: object, name: str, default: float | None) -> float:
    if value is None and default is not None:
        return default
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MalformedResponse(f"device authorization response: {name} is not a number")
    if value <= 0:
        raise MalformedResponse(f"device authorization response: {name} is not positive")
    return float(value)


def parse_device_authorization(
    status: int, headers: Mapping[str, str], body: bytes, *, now: float | None = None
) -> DeviceAuthorization:
    """The answer of the device authorization endpoint, or the error it stands for.

    A non-2xx answer is classified like a token endpoint error (``invalid_client``,
    ``invalid_scope``, ``unauthorized_client`` final; 5xx, 429 transient).
    """
    if not 200 <= status < 300:
        oauth = parse_error_body(body)
        code = f"{oauth.error}, HTTP {status}" if oauth.error else f"HTTP {status}"
        if status in (408, 429) or status >= 500 or oauth.error in RETRYABLE_ERRORS:
            raise TokenEndpointUnavailable(
                f"device authorization endpoint unavailable ({code})",
                retry_after=parse_retry_after(_header(headers, "Retry-After"), now),
            )
        raise ClientRejected(
            f"device authorization endpoint rejected the request ({code})",
            oauth_error=oauth.error or f"http_{status}",
        )
    data = json_object(body)
    if data is None:
        raise MalformedResponse("device authorization response is not a JSON object")
    uri_name = "verification_uri" if "verification_uri" in data else "verification_url"
    complete = data.get("verification_uri_complete")
    interval = _seconds(data.get("interval"), "interval", DEFAULT_INTERVAL)
    return DeviceAuthorization(
        device_code=_text(data, "device_code"),
        user_code=_text(data, "user_code"),
        verification_uri=_text(data, uri_name),
        verification_uri_complete=complete if isinstance(complete, str) and complete else None,
        expires_in=_seconds(data.get("expires_in"), "expires_in", None),
        interval=min(interval, MAX_INTERVAL),
    )


def build_device_token_request(
    device_code: str, client: ClientCredentials, *, client_assertion: str | None = None
) -> TokenRequest:
    """RFC 8628 §3.4: one poll of the token endpoint."""
    form = [("grant_type", DEVICE_CODE_GRANT), ("device_code", device_code)]
    return authenticated_request(form, client, client_assertion=client_assertion)


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """What one poll's answer means.

    ``pending``: ask again after ``interval`` (``slow_down`` raised it); ``granted``: the
    token response is ``grant``; ``denied`` and ``expired``: the flow is over.
    """

    kind: Literal["pending", "granted", "denied", "expired"]
    interval: float
    grant: TokenGrant | None = None
    wait: float | None = None
    """Extra seconds a transient answer asked for (``Retry-After``), if any."""
    slowed: bool = False


def poll_outcome(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    interval: float,
    now: float | None = None,
) -> PollOutcome:
    """Classify one poll's answer; ``interval`` is the one in force before it.

    Raises what :func:`sidecar.oauth.parse_token_response` raises for other errors
    (``invalid_client``, ``invalid_grant``: final) and for a malformed 2xx.
    """
    if 200 <= status < 300:
        grant = parse_token_response(status, headers, body, now=now)
        return PollOutcome("granted", interval, grant=grant)
    data = json_object(body) or {}
    error = data.get("error")
    if error == "authorization_pending":
        return PollOutcome("pending", interval)
    if error == "slow_down":
        return PollOutcome("pending", min(interval + SLOW_DOWN_STEP, MAX_INTERVAL), slowed=True)
    if error == "access_denied":
        return PollOutcome("denied", interval)
    if error == "expired_token":
        return PollOutcome("expired", interval)
    try:
        parse_token_response(status, headers, body, now=now)
    except TokenEndpointUnavailable as exc:
        # 5xx, 408, 429 or temporarily_unavailable: the user may still be deciding.
        return PollOutcome("pending", interval, wait=exc.retry_after)
    raise MalformedResponse(f"token endpoint answered an unexpected HTTP {status}")


def next_poll_at(now: float, interval: float, expires_at: float, wait: float | None) -> float:
    """When to poll next (monotonic seconds): after ``interval`` or a longer ``wait``, but no
    later than the moment the device code expires, when the caller stops waiting."""
    delay = max(interval, wait or 0.0)
    return min(now + delay, max(expires_at, now))

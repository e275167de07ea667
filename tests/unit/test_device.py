"""The device authorization grant (RFC 8628) as pure functions, with literal payloads."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest

from sidecar.device import (
    DEVICE_CODE_GRANT,
    build_device_authorization_request,
    build_device_token_request,
    next_poll_at,
    parse_device_authorization,
    poll_outcome,
)
from sidecar.errors import ClientRejected, InvalidGrant, MalformedResponse, TokenEndpointUnavailable
from sidecar.model import ClientCredentials

PUBLIC = ClientCredentials(client_id="cli", method="none")
BASIC = ClientCredentials(
    client_id="cli", method="client_secret_basic", client_secret="s3cret-value"
)


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def form(request: object) -> dict[str, list[str]]:
    return parse_qs(request.body().decode())  # type: ignore[attr-defined]


def test_authorization_request_for_a_public_client_names_it_in_the_body() -> None:
    request = build_device_authorization_request(PUBLIC, scope="openid offline_access")
    assert form(request) == {"client_id": ["cli"], "scope": ["openid offline_access"]}
    assert "Authorization" not in request.headers


def test_authorization_request_for_a_confidential_client_authenticates_as_usual() -> None:
    request = build_device_authorization_request(BASIC, scope=None, resource=["https://api"])
    assert form(request) == {"resource": ["https://api"]}
    assert request.headers["Authorization"].startswith("Basic ")


def test_authorization_answer_with_every_field() -> None:
    answer = parse_device_authorization(
        200,
        {},
        body(
            device_code="dc-123456789",
            user_code="WDJB-MJHT",
            verification_uri="https://as/device",
            verification_uri_complete="https://as/device?user_code=WDJB-MJHT",
            expires_in=1800,
            interval=7,
        ),
    )
    assert answer.user_code == "WDJB-MJHT"
    assert answer.verification_uri_complete == "https://as/device?user_code=WDJB-MJHT"
    assert answer.expires_in == 1800
    assert answer.interval == 7
    assert "dc-123456789" not in repr(answer)


def test_authorization_answer_without_interval_means_five_seconds() -> None:
    """node oidc-provider sends no interval (RFC 8628 §3.2: default 5)."""
    answer = parse_device_authorization(
        200,
        {},
        body(
            device_code="dc", user_code="ABCD", verification_uri="https://as/device", expires_in=600
        ),
    )
    assert answer.interval == 5
    assert answer.verification_uri_complete is None


def test_authorization_answer_with_googles_verification_url() -> None:
    answer = parse_device_authorization(
        200,
        {},
        body(
            device_code="dc",
            user_code="ABCD",
            verification_url="https://g/device",
            expires_in="600",
        ),
    )
    assert answer.verification_uri == "https://g/device"
    assert answer.expires_in == 600


@pytest.mark.parametrize(
    ("payload", "names"),
    [
        ({"user_code": "A", "verification_uri": "u", "expires_in": 5}, "device_code"),
        ({"device_code": "d", "verification_uri": "u", "expires_in": 5}, "user_code"),
        ({"device_code": "d", "user_code": "A", "expires_in": 5}, "verification_url"),
        ({"device_code": "d", "user_code": "A", "verification_uri": "u"}, "expires_in"),
        (
            {"device_code": "d", "user_code": "A", "verification_uri": "u", "expires_in": 0},
            "expires_in",
        ),
        (
            {
                "device_code": "d",
                "user_code": "A",
                "verification_uri": "u",
                "expires_in": 9,
                "interval": True,
            },
            "interval",
        ),
    ],
)
def test_authorization_answer_missing_or_bad_fields_are_named(
    payload: dict[str, object], names: str
) -> None:
    with pytest.raises(MalformedResponse, match=names):
        parse_device_authorization(200, {}, json.dumps(payload).encode())


def test_authorization_errors_are_classified() -> None:
    with pytest.raises(ClientRejected, match="invalid_client") as rejected:
        parse_device_authorization(401, {}, body(error="invalid_client", error_description="x"))
    assert rejected.value.oauth_error == "invalid_client"
    with pytest.raises(TokenEndpointUnavailable) as unavailable:
        parse_device_authorization(503, {"retry-after": "3"}, b"")
    assert unavailable.value.retry_after == 3
    with pytest.raises(ClientRejected) as odd:
        parse_device_authorization(400, {}, body(error="a free text the server made up"))
    assert "made up" not in odd.value.message


def test_token_request_is_the_device_code_grant() -> None:
    request = build_device_token_request("dc-secret-code", PUBLIC)
    assert form(request) == {
        "grant_type": [DEVICE_CODE_GRANT],
        "device_code": ["dc-secret-code"],
        "client_id": ["cli"],
    }
    assert "dc-secret-code" not in repr(request)


@pytest.mark.parametrize("status", [400, 401, 403, 429])
def test_pending_is_read_whatever_the_status(status: int) -> None:
    outcome = poll_outcome(status, {}, body(error="authorization_pending"), interval=5)
    assert (outcome.kind, outcome.interval, outcome.slowed) == ("pending", 5, False)


def test_slow_down_adds_five_seconds_each_time() -> None:
    first = poll_outcome(400, {}, body(error="slow_down"), interval=5)
    second = poll_outcome(400, {}, body(error="slow_down"), interval=first.interval)
    assert (first.kind, first.interval, first.slowed) == ("pending", 10, True)
    assert second.interval == 15


def test_denied_and_expired_end_the_flow() -> None:
    assert poll_outcome(400, {}, body(error="access_denied"), interval=5).kind == "denied"
    assert poll_outcome(400, {}, body(error="expired_token"), interval=5).kind == "expired"


def test_a_grant_ends_the_flow() -> None:
    outcome = poll_outcome(
        200,
        {},
        body(access_token="at-1234567890", token_type="Bearer", refresh_token="rt-1234567890"),
        interval=5,
    )
    assert outcome.kind == "granted"
    assert outcome.grant is not None
    assert outcome.grant.refresh_token == "rt-1234567890"


def test_transient_answers_keep_polling_and_honour_retry_after() -> None:
    outcome = poll_outcome(503, {"Retry-After": "12"}, b"<html>busy</html>", interval=5)
    assert (outcome.kind, outcome.interval, outcome.wait) == ("pending", 5, 12)
    assert poll_outcome(429, {}, b"", interval=5).kind == "pending"


def test_other_errors_are_final() -> None:
    with pytest.raises(InvalidGrant):
        poll_outcome(400, {}, body(error="invalid_grant"), interval=5)
    with pytest.raises(ClientRejected):
        poll_outcome(401, {}, body(error="invalid_client"), interval=5)


def test_next_poll_waits_the_interval_or_longer_but_not_past_expiry() -> None:
    assert next_poll_at(100.0, 5.0, 200.0, None) == 105.0
    assert next_poll_at(100.0, 5.0, 200.0, 30.0) == 130.0
    assert next_poll_at(100.0, 5.0, 102.0, None) == 102.0
    assert next_poll_at(300.0, 5.0, 200.0, None) == 300.0

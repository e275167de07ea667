"""Token revocation (RFC 7009) as pure functions, with literal payloads."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest

from sidecar.errors import ClientRejected, TokenEndpointUnavailable
from sidecar.model import ClientCredentials
from sidecar.revocation import build_revocation_request, parse_revocation_response


def test_request_names_the_token_and_its_type() -> None:
    client = ClientCredentials(
        client_id="cli", method="client_secret_post", client_secret="sec-12345"
    )
    request = build_revocation_request("rt-abcdefgh", client)
    assert parse_qs(request.body().decode()) == {
        "token": ["rt-abcdefgh"],
        "token_type_hint": ["refresh_token"],
        "client_id": ["cli"],
        "client_secret": ["sec-12345"],
    }
    assert "rt-abcdefgh" not in repr(request)


@pytest.mark.parametrize("status", [200, 204])
def test_success_whatever_the_body(status: int) -> None:
    parse_revocation_response(status, {}, b"")


def test_503_is_retried_after_retry_after() -> None:
    with pytest.raises(TokenEndpointUnavailable) as busy:
        parse_revocation_response(503, {"Retry-After": "4"}, b"")
    assert busy.value.retry_after == 4


def test_unsupported_token_type_is_final_and_named() -> None:
    with pytest.raises(ClientRejected, match="unsupported_token_type") as refused:
        parse_revocation_response(400, {}, json.dumps({"error": "unsupported_token_type"}).encode())
    assert refused.value.oauth_error == "unsupported_token_type"


def test_client_errors_are_final_and_bodies_not_echoed() -> None:
    with pytest.raises(ClientRejected, match="invalid_client"):
        parse_revocation_response(401, {}, json.dumps({"error": "invalid_client"}).encode())
    with pytest.raises(ClientRejected) as odd:
        parse_revocation_response(400, {}, b'{"error": "echo rt-abcdefgh"}')
    assert "rt-abcdefgh" not in odd.value.message


def test_redirects_are_not_followed() -> None:
    with pytest.raises(ClientRejected, match="redirect"):
        parse_revocation_response(302, {"Location": "https://elsewhere"}, b"")

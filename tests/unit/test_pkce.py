"""Authorization code with PKCE and a loopback redirect, as pure functions."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from sidecar.errors import AuthorizationDenied, ClientRejected
from sidecar.model import ClientCredentials
from sidecar.pkce import (
    authorization_url,
    build_code_request,
    code_challenge,
    loopback_redirect_uri,
    parse_callback,
)

# RFC 7636 Appendix B.
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_s256_challenge_of_the_rfc_example() -> None:
    assert code_challenge(VERIFIER) == CHALLENGE


@pytest.mark.parametrize("verifier", ["short", "x" * 129, "a" * 42 + " ", "ä" * 50])
def test_verifiers_the_rfc_forbids_are_refused(verifier: str) -> None:
    with pytest.raises(ValueError, match="43 to 128"):
        code_challenge(verifier)


def test_loopback_redirect_is_the_ip_literal() -> None:
    assert loopback_redirect_uri(49152) == "http://127.0.0.1:49152/callback"


def test_authorization_url_carries_the_challenge_state_and_consent() -> None:
    url = authorization_url(
        "https://as.example/authorize?tenant=a",
        client_id="cli",
        redirect_uri="http://127.0.0.1:5000/callback",
        state="st-1",
        verifier=VERIFIER,
        scope="openid offline_access",
    )
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "as.example", "/authorize")
    assert parse_qs(parts.query) == {
        "tenant": ["a"],
        "response_type": ["code"],
        "client_id": ["cli"],
        "redirect_uri": ["http://127.0.0.1:5000/callback"],
        "state": ["st-1"],
        "code_challenge": [CHALLENGE],
        "code_challenge_method": ["S256"],
        "prompt": ["consent"],
        "scope": ["openid offline_access"],
    }
    assert VERIFIER not in url


def test_callback_gives_the_code_when_the_state_matches() -> None:
    assert parse_callback("code=abc123&state=st-1&iss=https%3A%2F%2Fas", "st-1") == "abc123"


@pytest.mark.parametrize(
    "query", ["code=abc&state=other", "code=abc", "code=abc&state=st-1&state=st-1"]
)
def test_callback_with_another_state_is_refused(query: str) -> None:
    with pytest.raises(ClientRejected, match="state") as refused:
        parse_callback(query, "st-1")
    assert refused.value.oauth_error == "state_mismatch"


def test_callback_denied_has_its_own_class() -> None:
    with pytest.raises(AuthorizationDenied):
        parse_callback("error=access_denied&state=st-1", "st-1")


def test_callback_errors_name_only_known_codes() -> None:
    with pytest.raises(ClientRejected, match="invalid_scope"):
        parse_callback("error=invalid_scope&state=st-1", "st-1")
    with pytest.raises(ClientRejected) as odd:
        parse_callback("error=my-secret-text&state=st-1", "st-1")
    assert "my-secret-text" not in odd.value.message
    with pytest.raises(ClientRejected, match="no authorization code"):
        parse_callback("state=st-1", "st-1")


def test_code_request_redeems_the_code_with_the_verifier() -> None:
    client = ClientCredentials(client_id="cli", method="none")
    request = build_code_request("abc123", VERIFIER, "http://127.0.0.1:5000/callback", client)
    assert parse_qs(request.body().decode()) == {
        "grant_type": ["authorization_code"],
        "code": ["abc123"],
        "redirect_uri": ["http://127.0.0.1:5000/callback"],
        "code_verifier": [VERIFIER],
        "client_id": ["cli"],
    }

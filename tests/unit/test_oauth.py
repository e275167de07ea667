"""The token endpoint protocol as pure functions, checked against literal payloads."""

from __future__ import annotations

import base64
from urllib.parse import parse_qsl

import pytest

from sidecar.discovery import DiscoveryInfo, discovery_urls, parse_discovery
from sidecar.errors import (
    ClientRejected,
    InvalidGrant,
    MalformedResponse,
    ResponseLost,
    TokenEndpointUnavailable,
)
from sidecar.model import ClientAuthMethod, ClientCertificate, ClientCredentials
from sidecar.oauth import (
    ASSERTION_TYPE,
    build_client_credentials_request,
    build_refresh_request,
    parse_error_body,
    parse_token_response,
    salvage_refresh_token,
)

REFRESH = "rt-canary-7f3a9c2e"
SECRET = "cs-canary-b81d44e0"
ASSERTION = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhcHAifQ.c2lnbmF0dXJl"

# 2015-10-21T07:28:00Z, the date in RFC 9110's Retry-After example.
RFC9110_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
RFC9110_EPOCH = 1445412480.0


def form_of(request_body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(request_body.decode("ascii"), keep_blank_values=True, strict_parsing=True)


# -- build_refresh_request -------------------------------------------------------------------


def test_client_secret_basic_puts_form_urlencoded_credentials_in_the_header() -> None:
    client = ClientCredentials("my app:1", "client_secret_basic", client_secret="p@ss w:rd/+")
    request = build_refresh_request(REFRESH, client)
    # RFC 6749 §2.3.1: each part form-urlencoded (space -> '+'), then Basic.
    expected = base64.b64encode(b"my+app%3A1:p%40ss+w%3Ard%2F%2B").decode()
    assert request.headers == {
        "Accept": "application/json",
        "Content-Type": "application/x-www-form-urlencoded",
        "Authorization": f"Basic {expected}",
    }
    assert request.body() == b"grant_type=refresh_token&refresh_token=rt-canary-7f3a9c2e"


def test_client_secret_post_puts_id_and_secret_in_the_body() -> None:
    client = ClientCredentials("app", "client_secret_post", client_secret=SECRET)
    request = build_refresh_request(REFRESH, client, scope="read write")
    assert "Authorization" not in request.headers
    assert request.body() == (
        b"grant_type=refresh_token&refresh_token=rt-canary-7f3a9c2e&scope=read+write"
        b"&client_id=app&client_secret=cs-canary-b81d44e0"
    )


def test_private_key_jwt_sends_the_assertion_and_its_type() -> None:
    client = ClientCredentials("app", "private_key_jwt")
    request = build_refresh_request(REFRESH, client, client_assertion=ASSERTION)
    assert "Authorization" not in request.headers
    assert form_of(request.body()) == [
        ("grant_type", "refresh_token"),
        ("refresh_token", REFRESH),
        ("client_id", "app"),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", ASSERTION),
    ]
    assert ASSERTION_TYPE == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def test_public_client_sends_only_its_id() -> None:
    request = build_refresh_request(REFRESH, ClientCredentials("spa", "none"))
    assert (
        request.body() == b"grant_type=refresh_token&refresh_token=rt-canary-7f3a9c2e&client_id=spa"
    )
    assert "Authorization" not in request.headers


def test_resource_repeats_and_audience_and_scope_are_sent() -> None:
    request = build_refresh_request(
        REFRESH,
        ClientCredentials("spa", "none"),
        scope="openid offline_access",
        resource=["https://api.example/", "https://other.example/x?y=1"],
        audience="https://api.example",
    )
    assert form_of(request.body()) == [
        ("grant_type", "refresh_token"),
        ("refresh_token", REFRESH),
        ("scope", "openid offline_access"),
        ("resource", "https://api.example/"),
        ("resource", "https://other.example/x?y=1"),
        ("audience", "https://api.example"),
        ("client_id", "spa"),
    ]


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_a_secret_method_without_a_secret_is_a_client_error(method: str) -> None:
    client = ClientCredentials("app", method, client_secret=None)  # type: ignore[arg-type]
    with pytest.raises(ClientRejected, match="needs a client_secret") as caught:
        build_refresh_request(REFRESH, client)
    assert caught.value.oauth_error == "invalid_client"


def test_private_key_jwt_without_an_assertion_is_a_client_error() -> None:
    with pytest.raises(ClientRejected, match="needs a client assertion"):
        build_refresh_request(REFRESH, ClientCredentials("app", "private_key_jwt"))


def test_an_assertion_for_another_method_is_a_programming_error() -> None:
    client = ClientCredentials("app", "client_secret_post", client_secret=SECRET)
    with pytest.raises(ValueError, match="private_key_jwt"):
        build_refresh_request(REFRESH, client, client_assertion=ASSERTION)


def test_empty_client_id_is_rejected() -> None:
    with pytest.raises(ClientRejected, match="client_id"):
        build_refresh_request(REFRESH, ClientCredentials("", "none"))


def test_request_repr_shows_names_never_values() -> None:
    client = ClientCredentials("app", "client_secret_basic", client_secret=SECRET)
    text = repr(build_refresh_request(REFRESH, client)) + str(
        build_refresh_request(
            REFRESH, ClientCredentials("app", "private_key_jwt"), client_assertion=ASSERTION
        )
    )
    assert "refresh_token" in text
    assert "Authorization" in text
    for secret in (
        REFRESH,
        SECRET,
        ASSERTION,
        base64.b64encode(b"app:" + SECRET.encode()).decode(),
    ):
        assert secret not in text


# -- parse_token_response: success -----------------------------------------------------------


def test_a_full_rfc6749_response() -> None:
    body = (
        b'{"access_token":"2YotnFZFEjr1zCsicMWpAA","token_type":"example","expires_in":3600,'
        b'"refresh_token":"tGzv3JOkF0XG5Qx2TlKWIA","scope":"read","example_parameter":"x"}'
    )
    grant = parse_token_response(200, {"Content-Type": "application/json"}, body)
    assert grant.access_token == "2YotnFZFEjr1zCsicMWpAA"
    assert grant.token_type == "example"
    assert grant.expires_in == 3600.0
    assert grant.refresh_token == "tGzv3JOkF0XG5Qx2TlKWIA"
    assert grant.scope == "read"
    assert grant.refresh_expires_in is None


def test_minimal_response_keeps_the_current_refresh_token() -> None:
    grant = parse_token_response(200, {}, b'{"access_token":"at","token_type":"bearer"}')
    assert grant.token_type == "Bearer"
    assert grant.expires_in is None
    assert grant.refresh_token is None
    assert grant.scope is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("BEARER", "Bearer"), ("Bearer", "Bearer"), ("dpop", "DPoP"), ("N_A", "N_A"), ("mac", "mac")],
)
def test_token_type_is_normalised_only_for_known_types(raw: str, expected: str) -> None:
    body = f'{{"access_token":"at","token_type":"{raw}"}}'.encode()
    assert parse_token_response(200, {}, body).token_type == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("300", 300.0),
        ('"300"', 300.0),
        ('" 299.5 "', 299.5),
        ("0", 0.0),
        ("-10", -10.0),
        ("null", None),
        ("1e3", 1000.0),
    ],
)
def test_expires_in_number_or_numeric_string(value: str, expected: float | None) -> None:
    body = f'{{"access_token":"at","token_type":"Bearer","expires_in":{value}}}'.encode()
    assert parse_token_response(200, {}, body).expires_in == expected


@pytest.mark.parametrize(
    "value", ["true", '"soon"', '""', "[300]", "NaN", "Infinity", '"1e3"', "1e400", '"nan"']
)
def test_expires_in_that_is_not_a_finite_number_is_malformed(value: str) -> None:
    body = f'{{"access_token":"at","token_type":"Bearer","expires_in":{value}}}'.encode()
    with pytest.raises(MalformedResponse, match="expires_in"):
        parse_token_response(200, {}, body)


def test_refresh_expires_in_is_informational() -> None:
    ok = b'{"access_token":"at","token_type":"Bearer","refresh_expires_in":"1800"}'
    odd = b'{"access_token":"at","token_type":"Bearer","refresh_expires_in":"never"}'
    assert parse_token_response(200, {}, ok).refresh_expires_in == 1800.0
    assert parse_token_response(200, {}, odd).refresh_expires_in is None


def test_scope_as_a_list_is_joined_and_empty_scope_is_none() -> None:
    listed = b'{"access_token":"at","token_type":"Bearer","scope":["a","b"]}'
    empty = b'{"access_token":"at","token_type":"Bearer","scope":""}'
    assert parse_token_response(200, {}, listed).scope == "a b"
    assert parse_token_response(200, {}, empty).scope is None


def test_null_refresh_token_means_absent() -> None:
    body = b'{"access_token":"at","token_type":"Bearer","refresh_token":null}'
    assert parse_token_response(200, {}, body).refresh_token is None


def test_any_2xx_is_a_grant_and_content_type_is_not_required() -> None:
    body = b'\xef\xbb\xbf{"access_token":"at","token_type":"Bearer"}'  # with a UTF-8 BOM
    assert parse_token_response(201, {"Content-Type": "text/plain"}, body).access_token == "at"


def test_grant_repr_has_no_tokens() -> None:
    body = (
        b'{"access_token":"at-canary-1234567","token_type":"Bearer",'
        b'"refresh_token":"rt-canary-7654321"}'
    )
    text = repr(parse_token_response(200, {}, body))
    assert "canary" not in text


# -- parse_token_response: malformed 2xx -----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"<html>maintenance</html>", "not a JSON object"),
        (b'["access_token"]', "not a JSON object"),
        (b"", "not a JSON object"),
        (b"\xff\xfe\x00", "not a JSON object"),
        (b"[" * 100_000, "not a JSON object"),
        (b'{"token_type":"Bearer"}', "access_token"),
        (b'{"access_token":"","token_type":"Bearer"}', "access_token"),
        (b'{"access_token":42,"token_type":"Bearer"}', "access_token"),
        (b'{"access_token":"a\\nb","token_type":"Bearer"}', "access_token"),
        (b'{"access_token":"at"}', "token_type"),
        (b'{"access_token":"at","token_type":" "}', "token_type"),
        (b'{"access_token":"at","token_type":"Bearer","refresh_token":""}', "refresh_token"),
        (b'{"access_token":"at","token_type":"Bearer","refresh_token":7}', "refresh_token"),
        (b'{"access_token":"at","token_type":"Bearer","scope":{"a":1}}', "scope"),
    ],
)
def test_malformed_success_names_the_field_never_the_value(body: bytes, field: str) -> None:
    with pytest.raises(MalformedResponse, match=field) as caught:
        parse_token_response(200, {}, body)
    assert "Bearer" not in caught.value.message


def test_a_rotated_refresh_token_in_a_malformed_answer_is_kept_for_the_caller() -> None:
    body = b'{"access_token":"","token_type":"Bearer","refresh_token":"rt-new-canary-0001"}'
    with pytest.raises(MalformedResponse) as caught:
        parse_token_response(200, {}, body)
    assert caught.value.salvaged_refresh_token == "rt-new-canary-0001"
    assert "rt-new" not in str(caught.value)
    assert "rt-new" not in repr(caught.value)
    assert salvage_refresh_token(body) == "rt-new-canary-0001"


def test_nothing_to_salvage() -> None:
    with pytest.raises(MalformedResponse) as caught:
        parse_token_response(200, {}, b"<html/>")
    assert caught.value.salvaged_refresh_token is None
    assert salvage_refresh_token(b'{"refresh_token":""}') is None
    assert salvage_refresh_token(b'{"refresh_token":"a\\u0000b"}') is None
    assert salvage_refresh_token(b"[1]") is None


# -- parse_token_response: errors ------------------------------------------------------------


def test_invalid_grant_is_final_for_the_token() -> None:
    body = b'{"error":"invalid_grant","error_description":"grant request is invalid"}'
    with pytest.raises(InvalidGrant) as caught:
        parse_token_response(400, {}, body)
    assert (
        caught.value.message == "token endpoint refused the refresh token (invalid_grant, HTTP 400)"
    )


@pytest.mark.parametrize(
    "code",
    [
        "invalid_client",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_request",
        "invalid_target",
    ],
)
@pytest.mark.parametrize("status", [400, 401, 403])
def test_client_errors_are_final_and_carry_the_code(code: str, status: int) -> None:
    body = f'{{"error":"{code}"}}'.encode()
    with pytest.raises(ClientRejected) as caught:
        parse_token_response(status, {}, body)
    assert caught.value.oauth_error == code
    assert f"({code}, HTTP {status})" in caught.value.message


@pytest.mark.parametrize("code", ["temporarily_unavailable", "server_error", "slow_down"])
def test_transient_error_codes_on_400_are_retryable(code: str) -> None:
    body = f'{{"error":"{code}"}}'.encode()
    with pytest.raises(TokenEndpointUnavailable) as caught:
        parse_token_response(400, {"retry-after": "7"}, body)
    assert caught.value.retry_after == 7.0
    assert not isinstance(caught.value, ResponseLost)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_overload_and_server_errors_are_retryable_whatever_the_body(status: int) -> None:
    body = b'{"error":"invalid_grant"}'  # a 5xx is never a verdict on the token
    with pytest.raises(TokenEndpointUnavailable) as caught:
        parse_token_response(status, {"Retry-After": "120"}, body)
    assert caught.value.retry_after == 120.0
    assert f"HTTP {status}" in caught.value.message


def test_retry_after_as_an_http_date_needs_now() -> None:
    headers = {"Retry-After": RFC9110_DATE}
    with pytest.raises(TokenEndpointUnavailable) as caught:
        parse_token_response(503, headers, b"", now=RFC9110_EPOCH - 30)
    assert caught.value.retry_after == 30.0
    with pytest.raises(TokenEndpointUnavailable) as caught:
        parse_token_response(503, headers, b"")
    assert caught.value.retry_after is None


@pytest.mark.parametrize(
    ("status", "body", "detail"),
    [
        (401, b"", "no OAuth error code"),
        (404, b"<html>Not Found</html>", "no OAuth error code"),
        (400, b'{"error":"Refresh token rt-canary-7f3a9c2e not found"}', "unrecognised error code"),
        (400, b'{"error":["invalid_grant"]}', "no OAuth error code"),
    ],
)
def test_unrecognisable_4xx_is_classified_by_status(status: int, body: bytes, detail: str) -> None:
    with pytest.raises(ClientRejected) as caught:
        parse_token_response(status, {}, body)
    assert caught.value.oauth_error == f"http_{status}"
    assert detail in caught.value.message
    assert REFRESH not in caught.value.message


def test_error_description_never_reaches_the_message() -> None:
    body = (
        b'{"error":"invalid_grant","error_description":"refresh token rt-canary-7f3a9c2e '
        b'was already used"}'
    )
    with pytest.raises(InvalidGrant) as caught:
        parse_token_response(400, {}, body)
    assert "canary" not in str(caught.value)
    assert "already used" not in str(caught.value)
    assert parse_error_body(body).description_length == 49


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_final(status: int) -> None:
    with pytest.raises(ClientRejected, match="redirects are not followed") as caught:
        parse_token_response(status, {"Location": "https://elsewhere/token"}, b"")
    assert caught.value.oauth_error == f"http_{status}"


@pytest.mark.parametrize("status", [100, 199, 600, 999])
def test_impossible_statuses_are_malformed(status: int) -> None:
    with pytest.raises(MalformedResponse, match=f"HTTP {status}"):
        parse_token_response(status, {}, b"")


def test_parse_error_body_knows_only_the_vocabulary() -> None:
    assert parse_error_body(b'{"error":"invalid_client"}').error == "invalid_client"
    unknown = parse_error_body(b'{"error":"something_else","error_description":7}')
    assert unknown.error is None
    assert unknown.has_error
    assert unknown.description_length is None
    assert parse_error_body(b"garbage") == parse_error_body(b"{}")


# -- discovery -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issuer", "rfc8414", "oidc"),
    [
        (
            "https://as.example",
            "https://as.example/.well-known/oauth-authorization-server",
            "https://as.example/.well-known/openid-configuration",
        ),
        (
            "https://as.example/",
            "https://as.example/.well-known/oauth-authorization-server",
            "https://as.example/.well-known/openid-configuration",
        ),
        (
            "https://kc.example:8443/realms/prod",
            "https://kc.example:8443/.well-known/oauth-authorization-server/realms/prod",
            "https://kc.example:8443/realms/prod/.well-known/openid-configuration",
        ),
        (
            "https://as.example/tenant1/",
            "https://as.example/.well-known/oauth-authorization-server/tenant1",
            "https://as.example/tenant1/.well-known/openid-configuration",
        ),
    ],
)
def test_discovery_urls(issuer: str, rfc8414: str, oidc: str) -> None:
    assert discovery_urls(issuer) == (rfc8414, oidc)


def test_parse_discovery() -> None:
    body = (
        b'{"issuer":"https://as.example/t1","token_endpoint":"https://as.example/t1/token",'
        b'"token_endpoint_auth_methods_supported":["client_secret_basic","private_key_jwt"],'
        b'"jwks_uri":"https://as.example/t1/jwks"}'
    )
    assert parse_discovery(body, "https://as.example/t1") == DiscoveryInfo(
        token_endpoint="https://as.example/t1/token",
        token_endpoint_auth_methods_supported=("client_secret_basic", "private_key_jwt"),
    )


def test_parse_discovery_without_auth_methods() -> None:
    body = (
        b'{"issuer":"https://as","token_endpoint":"https://as/token",'
        b'"token_endpoint_auth_methods_supported":"x"}'
    )
    info = parse_discovery(body, "https://as")
    assert info.token_endpoint_auth_methods_supported is None


def test_issuer_must_match_exactly() -> None:
    body = b'{"issuer":"https://evil.example","token_endpoint":"https://evil.example/token"}'
    with pytest.raises(ClientRejected, match=r"^issuer: .*different issuer$") as caught:
        parse_discovery(body, "https://as.example")
    assert caught.value.oauth_error == "issuer_mismatch"


def test_trailing_slash_difference_is_refused_with_a_hint() -> None:
    body = b'{"issuer":"https://as.example/","token_endpoint":"https://as.example/token"}'
    with pytest.raises(ClientRejected, match="trailing '/'"):
        parse_discovery(body, "https://as.example")


@pytest.mark.parametrize(
    "endpoint", ["http://as.example/token", "ftp://as.example/token", "https://u:p@as.example/t"]
)
def test_discovered_token_endpoint_must_be_https(endpoint: str) -> None:
    body = f'{{"issuer":"https://as.example","token_endpoint":"{endpoint}"}}'.encode()
    with pytest.raises(ClientRejected, match=r"^issuer: the discovery document's token_endpoint"):
        parse_discovery(body, "https://as.example")


def test_loopback_http_and_explicit_opt_in_are_allowed() -> None:
    loopback = b'{"issuer":"http://127.0.0.1:9","token_endpoint":"http://127.0.0.1:9/token"}'
    assert parse_discovery(loopback, "http://127.0.0.1:9").token_endpoint.endswith("/token")
    plain = b'{"issuer":"http://as.internal","token_endpoint":"http://as.internal/token"}'
    assert parse_discovery(plain, "http://as.internal", allow_http=True).token_endpoint


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"<html/>", "not a JSON object"),
        (b'{"token_endpoint":"https://as/token"}', "no issuer"),
        (b'{"issuer":"https://as"}', "no token_endpoint"),
        (b'{"issuer":"https://as","token_endpoint":["https://as/token"]}', "no token_endpoint"),
    ],
)
def test_unusable_discovery_documents_are_malformed(body: bytes, match: str) -> None:
    with pytest.raises(MalformedResponse, match=match):
        parse_discovery(body, "https://as")


# -- build_client_credentials_request ---------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("client_secret_post", [("client_id", "svc"), ("client_secret", SECRET)]),
        ("tls_client_auth", [("client_id", "svc")]),
        ("self_signed_tls_client_auth", [("client_id", "svc")]),
    ],
)
def test_client_credentials_request_for_each_method(
    method: ClientAuthMethod, extra: list[tuple[str, str]]
) -> None:
    client = ClientCredentials(
        "svc",
        method,
        client_secret=SECRET if method == "client_secret_post" else None,
        certificate=ClientCertificate(cert_pem="c", key_pem="k", source="test"),
    )
    request = build_client_credentials_request(
        client, scope="api:read", resource=["https://api.example/"], audience="api"
    )
    assert form_of(request.body()) == [
        ("grant_type", "client_credentials"),
        ("scope", "api:read"),
        ("resource", "https://api.example/"),
        ("audience", "api"),
        *extra,
    ]
    assert "Authorization" not in request.headers


def test_client_credentials_request_with_basic_and_assertion() -> None:
    basic = ClientCredentials("svc", "client_secret_basic", client_secret=SECRET)
    request = build_client_credentials_request(basic)
    assert request.body() == b"grant_type=client_credentials"
    assert request.headers["Authorization"].startswith("Basic ")
    jwt_client = ClientCredentials("svc", "private_key_jwt", private_key="pem")
    request = build_client_credentials_request(jwt_client, client_assertion=ASSERTION)
    assert form_of(request.body()) == [
        ("grant_type", "client_credentials"),
        ("client_id", "svc"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", ASSERTION),
    ]


def test_client_credentials_refuses_a_public_client() -> None:
    with pytest.raises(ClientRejected, match="client_auth none cannot work"):
        build_client_credentials_request(ClientCredentials("svc", "none"))


def test_tls_methods_need_a_certificate() -> None:
    with pytest.raises(ClientRejected, match="needs a client certificate") as info:
        build_refresh_request(REFRESH, ClientCredentials("svc", "tls_client_auth"))
    assert info.value.oauth_error == "invalid_client"


def test_tls_client_auth_refresh_request_sends_the_client_id_only() -> None:
    client = ClientCredentials(
        "svc",
        "self_signed_tls_client_auth",
        certificate=ClientCertificate(cert_pem="c", key_pem="k", source="test"),
    )
    assert form_of(build_refresh_request(REFRESH, client).body()) == [
        ("grant_type", "refresh_token"),
        ("refresh_token", REFRESH),
        ("client_id", "svc"),
    ]


def test_invalid_grant_for_client_credentials_is_a_client_rejection() -> None:
    body = b'{"error": "invalid_grant"}'
    with pytest.raises(ClientRejected) as info:
        parse_token_response(400, {}, body, grant="client_credentials")
    assert info.value.oauth_error == "invalid_grant"
    assert "client credentials grant" in info.value.message
    with pytest.raises(InvalidGrant):
        parse_token_response(400, {}, body)


# -- mtls_endpoint_aliases ---------------------------------------------------------------------


def discovery_body(**extra: object) -> bytes:
    import json  # noqa: PLC0415

    return json.dumps(
        {"issuer": "https://as.example", "token_endpoint": "https://as.example/token", **extra}
    ).encode()


def test_discovery_reads_the_mtls_token_endpoint_alias() -> None:
    aliases = {"token_endpoint": "https://mtls.as.example/token", "other": 1}
    info = parse_discovery(discovery_body(mtls_endpoint_aliases=aliases), "https://as.example")
    assert info.mtls_token_endpoint == "https://mtls.as.example/token"
    assert info.mtls_device_authorization_endpoint is None
    assert parse_discovery(discovery_body(), "https://as.example").mtls_token_endpoint is None
    odd = discovery_body(mtls_endpoint_aliases=["x"])
    assert parse_discovery(odd, "https://as.example").mtls_token_endpoint is None


def test_discovery_reads_the_aliases_the_operator_commands_use() -> None:
    aliases = {
        "device_authorization_endpoint": "https://mtls.as.example/device",
        "revocation_endpoint": "https://mtls.as.example/revoke",
    }
    info = parse_discovery(discovery_body(mtls_endpoint_aliases=aliases), "https://as.example")
    assert info.mtls_device_authorization_endpoint == "https://mtls.as.example/device"
    assert info.mtls_revocation_endpoint == "https://mtls.as.example/revoke"
    assert info.mtls_token_endpoint is None


@pytest.mark.parametrize(
    ("alias", "error"),
    [
        ("http://127.0.0.1:1/token", ClientRejected),
        ("ftp://mtls.as.example/token", ClientRejected),
        (42, MalformedResponse),
    ],
)
@pytest.mark.parametrize("name", ["token_endpoint", "revocation_endpoint"])
def test_discovery_refuses_an_unusable_mtls_alias(
    alias: object, error: type[Exception], name: str
) -> None:
    body = discovery_body(mtls_endpoint_aliases={name: alias})
    with pytest.raises(error, match=rf"mtls_endpoint_aliases\.{name}"):
        parse_discovery(body, "https://as.example", allow_http=True)

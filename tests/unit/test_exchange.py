"""The httpx token endpoint adapter: request shapes, limits, failure mapping, discovery.

Most tests drive :class:`TokenEndpoint` through ``httpx.MockTransport``; the TLS tests use a
real TLS listener on 127.0.0.1, since only a real handshake shows how httpx reports a
certificate it does not trust.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from structlog.testing import capture_logs

from sidecar import __version__
from sidecar.adapters.exchange import USER_AGENT, TokenEndpoint, make_http_client
from sidecar.config import CredentialConfig
from sidecar.errors import (
    ClientRejected,
    ConfigError,
    InvalidGrant,
    MalformedResponse,
    ResponseLost,
    TokenEndpointUnavailable,
)
from sidecar.model import ClientCredentials
from tests.support.clock import VirtualClock
from tests.support.rawserver import TlsMaterial

TOKEN_URL = "https://as.example/oauth/token"
ISSUER = "https://as.example/tenant"
RFC8414_URL = "https://as.example/.well-known/oauth-authorization-server/tenant"
OIDC_URL = "https://as.example/tenant/.well-known/openid-configuration"
REFRESH = "rt-canary-5d1e0b7a"
SECRET = "cs-canary-c93f12aa"
NOW = 1_767_225_600.0

GRANT = {"access_token": "at-canary-0a1b2c3d", "token_type": "Bearer", "expires_in": 300}
Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)


def credential(**overrides: Any) -> CredentialConfig:
    fields: dict[str, Any] = {
        "name": "orders",
        "kv_path": "apps/orders",
        "output_dir": Path("/run/tokens/orders"),
        "token_endpoint": TOKEN_URL,
    }
    fields.update(overrides)
    if "issuer" in overrides:
        fields.pop("token_endpoint")
    return CredentialConfig(**fields)


def endpoint(
    handler: Handler, *, timeout: float = 5.0, max_bytes: int = 4096, **config: Any
) -> TokenEndpoint:
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(handler),
        timeout=timeout,
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
    )
    return TokenEndpoint(
        credential(**config), http, clock=VirtualClock(start=NOW), max_response_bytes=max_bytes
    )


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        return await scenario()

    return asyncio.run(main())


def refresh(ep: TokenEndpoint, client: ClientCredentials | None = None) -> Any:
    return run(lambda: ep.refresh(REFRESH, client or basic_client()))


def basic_client() -> ClientCredentials:
    return ClientCredentials("orders-svc", "client_secret_basic", client_secret=SECRET)


class Recorder:
    """A MockTransport handler that records requests and answers from a script."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def form(self, index: int = -1) -> dict[str, list[str]]:
        return parse_qs(self.requests[index].content.decode("ascii"))


def ok(body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.Response(200, json=body or GRANT)


# -- the HTTP client -------------------------------------------------------------------------


def test_http_client_defaults() -> None:
    async def scenario() -> httpx.AsyncClient:
        async with make_http_client(None, 7.5) as client:
            return client

    client = run(scenario)
    assert client.follow_redirects is False
    assert client.headers["User-Agent"] == f"token-sidecar/{__version__}"
    assert client.timeout == httpx.Timeout(7.5)


def test_http_client_ca_cert_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^http\.ca_cert: cannot load a CA bundle"):
        make_http_client(tmp_path / "missing.pem", 5.0)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=r"^http\.ca_cert:"):
        make_http_client(garbage, 5.0)


# -- request shapes --------------------------------------------------------------------------


def test_client_secret_basic_request() -> None:
    recorder = Recorder(ok({**GRANT, "refresh_token": "rt-next"}))
    ep = endpoint(recorder, scope="orders:read", resource=["https://api.example/"])
    grant = refresh(ep)
    assert grant.access_token == "at-canary-0a1b2c3d"
    assert grant.refresh_token == "rt-next"
    (request,) = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == TOKEN_URL
    assert request.headers["Accept"] == "application/json"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["User-Agent"] == USER_AGENT
    expected = base64.b64encode(f"orders-svc:{SECRET}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert recorder.form() == {
        "grant_type": ["refresh_token"],
        "refresh_token": [REFRESH],
        "scope": ["orders:read"],
        "resource": ["https://api.example/"],
    }


def test_client_secret_post_request() -> None:
    recorder = Recorder(ok())
    refresh(
        endpoint(recorder, audience="https://api.example"),
        ClientCredentials("orders-svc", "client_secret_post", client_secret=SECRET),
    )
    assert "Authorization" not in recorder.requests[0].headers
    assert recorder.form() == {
        "grant_type": ["refresh_token"],
        "refresh_token": [REFRESH],
        "audience": ["https://api.example"],
        "client_id": ["orders-svc"],
        "client_secret": [SECRET],
    }


def test_public_client_request() -> None:
    recorder = Recorder(ok())
    refresh(endpoint(recorder), ClientCredentials("orders-spa", "none"))
    assert "Authorization" not in recorder.requests[0].headers
    assert recorder.form()["client_id"] == ["orders-spa"]
    assert "client_secret" not in recorder.form()


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_private_key_jwt_signs_a_fresh_assertion_per_request(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    key_pem = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    client = ClientCredentials(
        "orders-svc", "private_key_jwt", private_key=key_pem, signing_alg="ES256", key_id="k7"
    )
    recorder = Recorder(ok())
    ep = endpoint(recorder)
    refresh(ep, client)
    refresh(ep, client)
    jtis = []
    for index in range(2):
        form = recorder.form(index)
        assert form["client_id"] == ["orders-svc"]
        assert form["client_assertion_type"] == [
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        ]
        (assertion,) = form["client_assertion"]
        assert jwt.get_unverified_header(assertion)["kid"] == "k7"
        claims = jwt.decode(
            assertion,
            ec_key.public_key(),
            algorithms=["ES256"],
            audience=TOKEN_URL,
            issuer="orders-svc",
            options={"verify_exp": False, "verify_iat": False},
        )
        assert claims["sub"] == "orders-svc"
        assert claims["iat"] == int(NOW)
        jtis.append(claims["jti"])
        assert "Authorization" not in recorder.requests[index].headers
    assert jtis[0] != jtis[1]
    assert len(jtis[0]) >= 22


def test_private_key_jwt_without_a_key_is_a_client_error() -> None:
    recorder = Recorder(ok())
    with pytest.raises(ClientRejected, match="needs a private key"):
        refresh(endpoint(recorder), ClientCredentials("orders-svc", "private_key_jwt"))
    assert recorder.requests == []


# -- answers ---------------------------------------------------------------------------------


def test_invalid_grant_and_retry_after_come_through() -> None:
    with pytest.raises(InvalidGrant):
        refresh(endpoint(Recorder(httpx.Response(400, json={"error": "invalid_grant"}))))
    answer = httpx.Response(503, headers={"Retry-After": "Thu, 01 Jan 2026 00:01:00 GMT"})
    with pytest.raises(TokenEndpointUnavailable) as caught:
        refresh(endpoint(Recorder(answer)))
    assert caught.value.retry_after == 60.0  # the wall clock is NOW, 00:00:00


def test_redirects_are_not_followed() -> None:
    recorder = Recorder(httpx.Response(307, headers={"Location": "https://elsewhere.example/t"}))
    with pytest.raises(ClientRejected, match="redirects are not followed"):
        refresh(endpoint(recorder))
    assert [str(r.url) for r in recorder.requests] == [TOKEN_URL]


def test_a_body_at_the_limit_is_read() -> None:
    padded = {**GRANT, "pad": ""}
    size = len(httpx.Response(200, json=padded).content)
    padded["pad"] = "x" * (1024 - size)
    assert refresh(endpoint(Recorder(ok(padded)), max_bytes=1024)).access_token


def test_declared_oversized_body_is_refused_unread() -> None:
    class Untouchable(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            raise AssertionError("the body was read")
            yield b""  # pragma: no cover

    answer = httpx.Response(200, headers={"Content-Length": "5000"}, stream=Untouchable())
    with pytest.raises(MalformedResponse, match="larger than 1024 bytes"):
        refresh(endpoint(Recorder(answer), max_bytes=1024))


def test_streamed_oversized_body_is_cut_off() -> None:
    chunks_read = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal chunks_read
        while True:
            chunks_read += 1
            yield b"x" * 512

    with pytest.raises(MalformedResponse, match="larger than 1024 bytes"):
        refresh(endpoint(Recorder(httpx.Response(200, content=endless())), max_bytes=1024))
    assert chunks_read == 3


def test_compressed_body_counts_decoded_bytes() -> None:
    import gzip  # noqa: PLC0415

    bomb = gzip.compress(b" " * 100_000)
    answer = httpx.Response(
        200,
        headers={"Content-Encoding": "gzip", "Content-Length": str(len(bomb))},
        stream=httpx.ByteStream(bomb),
    )
    assert len(bomb) < 1024
    with pytest.raises(MalformedResponse, match="larger than"):
        refresh(endpoint(Recorder(answer), max_bytes=1024))


def test_undecodable_body_is_malformed() -> None:
    answer = httpx.Response(
        200, headers={"Content-Encoding": "gzip"}, stream=httpx.ByteStream(b"not gzip")
    )
    with pytest.raises(MalformedResponse, match="could not be decoded"):
        refresh(endpoint(Recorder(answer)))


def test_malformed_answer_keeps_the_rotated_refresh_token() -> None:
    answer = httpx.Response(200, json={"token_type": "Bearer", "refresh_token": "rt-rotated-01"})
    with pytest.raises(MalformedResponse) as caught:
        refresh(endpoint(Recorder(answer)))
    assert caught.value.salvaged_refresh_token == "rt-rotated-01"


# -- transport failures ----------------------------------------------------------------------


def raising(exc_type: type[httpx.TransportError], cause: BaseException | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type("simulated", request=request) from cause

    return handler


@pytest.mark.parametrize(
    "exc_type", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError]
)
def test_failures_before_sending_are_unavailable(exc_type: type[httpx.TransportError]) -> None:
    with pytest.raises(TokenEndpointUnavailable) as caught:
        refresh(endpoint(raising(exc_type)))
    assert not isinstance(caught.value, ResponseLost)
    assert "as.example" in caught.value.message
    assert isinstance(caught.value.__cause__, exc_type)


@pytest.mark.parametrize(
    "exc_type",
    [
        httpx.ReadTimeout,
        httpx.ReadError,
        httpx.RemoteProtocolError,
        httpx.WriteError,
        httpx.WriteTimeout,
        httpx.CloseError,
    ],
)
def test_failures_after_sending_are_response_lost(exc_type: type[httpx.TransportError]) -> None:
    with pytest.raises(ResponseLost, match="may have rotated"):
        refresh(endpoint(raising(exc_type)))


@pytest.mark.parametrize("exc_type", [httpx.ReadTimeout, httpx.ReadError, httpx.WriteError])
def test_for_client_credentials_a_lost_answer_is_only_unavailable(
    exc_type: type[httpx.TransportError],
) -> None:
    """Nothing single-use was spent: asking again is harmless, so no refresh-token wording."""
    ep = endpoint(raising(exc_type))
    with pytest.raises(TokenEndpointUnavailable) as caught:
        run(lambda: ep.client_credentials(basic_client()))
    assert not isinstance(caught.value, ResponseLost)
    assert "refresh token" not in caught.value.message


def test_a_connection_dropped_mid_body_is_response_lost() -> None:
    class Dropping(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b'{"access_token":'
            raise httpx.ReadError("connection reset")

    with pytest.raises(ResponseLost):
        refresh(endpoint(Recorder(httpx.Response(200, stream=Dropping()))))


def test_the_overall_deadline_counts_as_response_lost() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return ok()  # pragma: no cover

    with pytest.raises(ResponseLost, match="TimeoutError"):
        refresh(endpoint(slow, timeout=0.05))


def test_local_configuration_failures_are_client_errors() -> None:
    with pytest.raises(ClientRejected, match="UnsupportedProtocol"):
        refresh(endpoint(raising(httpx.UnsupportedProtocol)))


def test_tls_failure_is_retryable_and_says_so() -> None:
    cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cause.verify_message = "self-signed certificate"
    with pytest.raises(TokenEndpointUnavailable) as caught:
        refresh(endpoint(raising(httpx.ConnectError, cause)))
    message = caught.value.message
    assert "TLS verification failed: self-signed certificate" in message
    assert "retrying with backoff" in message


@pytest.mark.parametrize("exc_type", [httpx.ConnectError, httpx.ReadError])
@pytest.mark.parametrize(
    "reason",
    [
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    ],
)
def test_a_client_certificate_refused_in_the_handshake_is_final(
    exc_type: type[httpx.TransportError], reason: str
) -> None:
    """The server sent an alert: it processed nothing, so this is never a lost answer."""
    cause = ssl.SSLError(1, f"[SSL: {reason}] alert (_ssl.c:1006)")
    with pytest.raises(ClientRejected) as caught:
        refresh(endpoint(raising(exc_type, cause)))
    assert caught.value.oauth_error == "invalid_client"
    assert f"refused the client certificate in the TLS handshake ({reason})" in (
        caught.value.message
    )


def test_another_alert_is_retryable_and_not_a_lost_answer() -> None:
    cause = ssl.SSLError(1, "[SSL: SSLV3_ALERT_HANDSHAKE_FAILURE] alert (_ssl.c:1006)")
    with pytest.raises(TokenEndpointUnavailable) as caught:
        refresh(endpoint(raising(httpx.ReadError, cause)))
    assert not isinstance(caught.value, ResponseLost)
    assert "TLS handshake failed: SSLV3_ALERT_HANDSHAKE_FAILURE" in caught.value.message


def test_logs_carry_no_secrets() -> None:
    answers = [
        ok({**GRANT, "refresh_token": "rt-canary-next-1"}),
        httpx.Response(
            401, json={"error": "invalid_client", "error_description": f"bad secret {SECRET}"}
        ),
    ]
    recorder = Recorder(*answers)
    ep = endpoint(recorder)
    with capture_logs() as logs:
        refresh(ep)
        with pytest.raises(ClientRejected):
            refresh(ep)
    events = [entry for entry in logs if entry["event"] == "token.exchange"]
    assert [e["status"] for e in events] == [200, 401]
    assert all(e["credential"] == "orders" and e["log_level"] == "debug" for e in events)
    assert events[1]["oauth_error"] == "invalid_client"
    assert events[1]["error_description_length"] == len(f"bad secret {SECRET}")
    text = repr(logs)
    for secret in (REFRESH, SECRET, "at-canary", "rt-canary-next"):
        assert secret not in text


# -- discovery -------------------------------------------------------------------------------


def metadata(**overrides: Any) -> dict[str, Any]:
    return {
        "issuer": ISSUER,
        "token_endpoint": "https://as.example/tenant/token",
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
        **overrides,
    }


class Routes:
    """Answers by URL; records every request."""

    def __init__(self, routes: dict[str, list[httpx.Response]]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        self.requests.append((request.method, url))
        answers = self.routes.get(url)
        if not answers:
            return httpx.Response(404)
        return answers.pop(0) if len(answers) > 1 else answers[0]


def test_discovery_falls_back_to_openid_configuration_and_is_cached() -> None:
    routes = Routes(
        {
            OIDC_URL: [httpx.Response(200, json=metadata())],
            "https://as.example/tenant/token": [ok()],
        }
    )
    ep = endpoint(routes, issuer=ISSUER)
    refresh(ep)
    refresh(ep)
    assert routes.requests == [
        ("GET", RFC8414_URL),
        ("GET", OIDC_URL),
        ("POST", "https://as.example/tenant/token"),
        ("POST", "https://as.example/tenant/token"),
    ]


def test_rfc8414_document_is_preferred() -> None:
    routes = Routes(
        {
            RFC8414_URL: [httpx.Response(200, json=metadata(token_endpoint="https://t.example/t"))],
            "https://t.example/t": [ok()],
        }
    )
    refresh(endpoint(routes, issuer=ISSUER))
    assert routes.requests == [("GET", RFC8414_URL), ("POST", "https://t.example/t")]


def test_html_catch_all_page_is_skipped() -> None:
    routes = Routes(
        {
            RFC8414_URL: [httpx.Response(200, html="<html>app</html>")],
            OIDC_URL: [httpx.Response(200, json=metadata())],
            "https://as.example/tenant/token": [ok()],
        }
    )
    assert refresh(endpoint(routes, issuer=ISSUER)).access_token


def test_issuer_mismatch_is_final_and_names_the_key() -> None:
    routes = Routes({OIDC_URL: [httpx.Response(200, json=metadata(issuer="https://evil.example"))]})
    with pytest.raises(ClientRejected, match=r"^issuer: ") as caught:
        refresh(endpoint(routes, issuer=ISSUER))
    assert caught.value.oauth_error == "issuer_mismatch"
    assert all(method == "GET" for method, _ in routes.requests)


def test_no_discovery_document_anywhere() -> None:
    with pytest.raises(ClientRejected, match=r"^issuer: no usable discovery document") as caught:
        refresh(endpoint(Routes({}), issuer=ISSUER))
    message = caught.value.message
    assert "/.well-known/oauth-authorization-server/tenant (HTTP 404)" in message
    assert "/tenant/.well-known/openid-configuration (HTTP 404)" in message


def test_discovery_server_errors_are_retryable() -> None:
    routes = Routes({RFC8414_URL: [httpx.Response(503, headers={"Retry-After": "9"})]})
    with pytest.raises(TokenEndpointUnavailable) as caught:
        refresh(endpoint(routes, issuer=ISSUER))
    assert caught.value.retry_after == 9.0
    assert not isinstance(caught.value, ResponseLost)


def test_discovery_read_failures_are_not_response_lost() -> None:
    with pytest.raises(TokenEndpointUnavailable) as caught:
        refresh(endpoint(raising(httpx.ReadTimeout), issuer=ISSUER))
    assert not isinstance(caught.value, ResponseLost)
    assert "discovery document" in caught.value.message


def test_discovered_plain_http_endpoint_is_refused() -> None:
    doc = metadata(token_endpoint="http://as.example/token")
    routes = Routes({RFC8414_URL: [httpx.Response(200, json=doc)]})
    with pytest.raises(ClientRejected, match="token_endpoint: plain http"):
        refresh(endpoint(routes, issuer=ISSUER))


def test_a_moved_token_endpoint_is_discovered_again() -> None:
    first = metadata(token_endpoint="https://as.example/old")
    second = metadata(token_endpoint="https://as.example/new")
    routes = Routes(
        {
            RFC8414_URL: [httpx.Response(200, json=first), httpx.Response(200, json=second)],
            "https://as.example/new": [ok()],
        }
    )
    ep = endpoint(routes, issuer=ISSUER)
    with pytest.raises(ClientRejected):
        refresh(ep)  # the old URL now answers 404
    assert refresh(ep).access_token
    assert [url for _, url in routes.requests] == [
        RFC8414_URL,
        "https://as.example/old",
        RFC8414_URL,
        "https://as.example/new",
    ]


def test_unadvertised_auth_method_is_a_warning() -> None:
    doc = metadata(token_endpoint_auth_methods_supported=["private_key_jwt"])
    routes = Routes({RFC8414_URL: [httpx.Response(200, json=doc)], doc["token_endpoint"]: [ok()]})
    with capture_logs() as logs:
        refresh(endpoint(routes, issuer=ISSUER))
    warnings = [e for e in logs if e["event"] == "token.auth_method_not_advertised"]
    assert warnings == [
        {
            "event": "token.auth_method_not_advertised",
            "credential": "orders",
            "client_auth": "client_secret_basic",
            "log_level": "warning",
        }
    ]


# -- probe -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 400, 404, 405, 500])
def test_probe_accepts_any_http_answer(status: int) -> None:
    recorder = Recorder(httpx.Response(status, content=b"x" * 10_000))
    run(endpoint(recorder).probe)
    (request,) = recorder.requests
    assert request.method == "GET"
    assert str(request.url) == TOKEN_URL
    assert request.content == b""


def test_probe_with_issuer_validates_discovery_and_reaches_the_endpoint() -> None:
    routes = Routes(
        {
            RFC8414_URL: [httpx.Response(200, json=metadata())],
            "https://as.example/tenant/token": [httpx.Response(405)],
        }
    )
    run(endpoint(routes, issuer=ISSUER).probe)
    assert routes.requests == [("GET", RFC8414_URL), ("GET", "https://as.example/tenant/token")]


def test_probe_reports_unreachable_endpoints() -> None:
    with pytest.raises(TokenEndpointUnavailable, match="cannot connect"):
        run(endpoint(raising(httpx.ConnectError)).probe)
    with pytest.raises(TokenEndpointUnavailable) as caught:
        run(endpoint(raising(httpx.ReadTimeout)).probe)
    assert not isinstance(caught.value, ResponseLost)
    mismatch = Routes({RFC8414_URL: [httpx.Response(200, json=metadata(issuer="https://x"))]})
    with pytest.raises(ClientRejected, match="issuer"):
        run(endpoint(mismatch, issuer=ISSUER).probe)


# -- real TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    """A test CA and a certificate it signed for 127.0.0.1."""
    return TlsMaterial(tmp_path_factory.mktemp("tls"))


async def _serve_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        await reader.readexactly(length)
        body = b'{"access_token":"at-over-tls","token_type":"Bearer","expires_in":60}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        pass  # the client gave up during the handshake, as the untrusted case should
    finally:
        writer.close()


def tls_refresh(tls: TlsMaterial, ca_cert: Path | None) -> Any:
    cert_path, key_path = tls.good
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)

    async def scenario() -> Any:
        server = await asyncio.start_server(_serve_once, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        try:
            async with make_http_client(ca_cert, 5.0) as http:
                ep = TokenEndpoint(
                    credential(token_endpoint=f"https://127.0.0.1:{port}/token"),
                    http,
                    clock=VirtualClock(),
                    max_response_bytes=1 << 20,
                )
                return await ep.refresh(REFRESH, basic_client())
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(scenario())


def test_real_tls_with_the_configured_ca(tls: TlsMaterial) -> None:
    assert tls_refresh(tls, ca_cert=tls.ca).access_token == "at-over-tls"


def test_real_tls_with_an_untrusted_certificate(tls: TlsMaterial) -> None:
    with pytest.raises(TokenEndpointUnavailable, match="TLS verification failed") as caught:
        tls_refresh(tls, ca_cert=None)
    assert not isinstance(caught.value, ResponseLost)
    assert "127.0.0.1" in caught.value.message


@pytest.fixture(autouse=True)
def _no_real_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Proxy variables from the developer's shell must not reroute the loopback TLS tests.
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    yield

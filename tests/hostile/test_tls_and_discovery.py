"""TLS failures and discovery documents that must not be trusted, against the whole program.

The raw server serves certificates made for these tests (:class:`TlsMaterial`): the sidecar
trusts the test CA through ``http.ca_cert``. A certificate that is self-signed, for another
host or expired fails the handshake, so the request (and the refresh token in it) never
leaves the process; the error is retryable (a renewed certificate fixes it) and says why.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hostile.harness import Sidecar, log_events
from tests.support.rawserver import RawServer, Reply, Route, TlsMaterial, TokenIssuer

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Tls:
    ca: Path
    """The test CA, which the sidecar trusts through ``http.ca_cert``."""
    servers: dict[str, RawServer]
    """One TLS server per certificate: good, self_signed, wrong_host, expired."""

    def aim(
        self, sidecar: Sidecar, name: str, *replies: Reply | TokenIssuer
    ) -> tuple[RawServer, Route]:
        """Point the sidecar's token endpoint at server ``name``, answering ``replies``."""
        server = self.servers[name]
        route = server.route()
        route.on("/token", *replies)
        sidecar.configure(
            token_endpoint=route.url("/token"), sections={"http": {"ca_cert": str(self.ca)}}
        )
        return server, route


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    material = TlsMaterial(tmp_path_factory.mktemp("tls"))
    servers = {
        name: RawServer(cert=cert, key=key).start()
        for name, (cert, key) in {
            "good": material.good,
            "self_signed": material.self_signed,
            "wrong_host": material.wrong_host,
            "expired": material.expired,
        }.items()
    }
    try:
        yield Tls(material.ca, servers)
    finally:
        for server in servers.values():
            server.close()


def test_a_certificate_from_the_configured_ca_works(sidecar: Sidecar, tls: Tls) -> None:
    issuer = sidecar.issuer()
    tls.aim(sidecar, "good", issuer)
    result = sidecar.once()
    assert result.returncode == 0, result.stderr
    assert sidecar.token_json()["access_token"] == issuer.issued_access[0]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("self_signed", "self-signed certificate"),
        ("wrong_host", "IP address mismatch, certificate is not valid for '127.0.0.1'."),
        ("expired", "certificate has expired"),
    ],
)
def test_a_bad_certificate_stops_the_request_before_the_token_is_sent(
    sidecar: Sidecar, tls: Tls, name: str, reason: str
) -> None:
    issuer = sidecar.issuer()
    server, route = tls.aim(sidecar, name, issuer)
    failures_before = server.handshake_failures
    result = sidecar.once()
    assert result.returncode == 1
    message = (
        f"token endpoint 127.0.0.1:{server.port}: TLS verification failed: {reason}; retrying "
        "with backoff, since a renewed server certificate or a corrected http.ca_cert fixes "
        "this without a restart"
    )
    failed = [e for e in log_events(result.stderr) if e.get("event") == "once.failed"]
    assert failed == [{**failed[0], "error": "endpoint_unavailable", "message": message}], (
        result.stderr
    )
    assert route.requests() == []  # nothing reached the server, so nothing was spent
    assert server.handshake_failures > failures_before
    assert issuer.issued_refresh == []
    data, _ = sidecar.vault()
    assert data["refresh_token"] == sidecar.refresh_token
    assert not (sidecar.dep.output_dir / "access_token").exists()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"issuer": "https://evil.example", "token_endpoint": "TOKEN"},
            "issuer: the discovery document names a different issuer",
        ),
        (
            {"issuer": "ISSUER/", "token_endpoint": "TOKEN"},
            "issuer: the discovery document names a different issuer (they differ only by a "
            "trailing '/'; write issuer exactly as the server does)",
        ),
        (
            {"issuer": "ISSUER", "token_endpoint": "http://token.example/token"},
            "issuer: the discovery document's token_endpoint: plain http to a non-loopback "
            "host (use https, or set allow_insecure_http: true)",
        ),
    ],
    ids=["other-issuer", "trailing-slash", "insecure-endpoint"],
)
def test_an_untrustworthy_discovery_document_is_refused(
    sidecar: Sidecar, document: dict[str, str], message: str
) -> None:
    issuer_url = sidecar.route.url("")
    token = sidecar.issuer()
    body = {
        key: value.replace("ISSUER", issuer_url).replace("TOKEN", sidecar.token_url)
        for key, value in document.items()
    }
    sidecar.route.on("/.well-known/openid-configuration", Reply(200, body))
    sidecar.configure(token, issuer=issuer_url)
    result = sidecar.once()
    assert result.returncode == 1
    failed = [e for e in log_events(result.stderr) if e.get("event") == "once.failed"]
    assert [(e["error"], e["message"]) for e in failed] == [("client_rejected", message)]
    assert sidecar.route.requests("/token") == []
    assert [r.path for r in sidecar.route.requests()] == [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ]
    data, _ = sidecar.vault()
    assert data["refresh_token"] == sidecar.refresh_token

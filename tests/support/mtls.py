"""Mutual TLS (RFC 8705) and client_credentials at the test authorization server.

Client registrations: ``tls_client_auth`` clients are matched by the subject of a certificate
the server's CA issued; ``self_signed_tls_client_auth`` clients by the SHA-256 thumbprint of a
certificate listed (as ``x5c``) in their JWKS. Both may ask for certificate-bound access
tokens.

Fixtures (re-exported by ``tests/conftest.py``): ``certificates`` (one CA, also the server's,
and the client certificates the tests present), ``mtls_idp`` (an oidc-provider with the
mutual-TLS listener and the clients ``client-tls`` and ``client-self``, reset per test, 4 s
tokens) and ``cc`` (a deployment whose Vault role may only read the secret).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.support.deployment import KV_PATH, ROLE, Deployment
from tests.support.idp import IdpServer
from tests.support.openbao import OpenBaoServer
from tests.support.rawserver import TlsMaterial

Pair = tuple[Path, Path]

__all__ = [
    "Certificates",
    "cc",
    "certificates",
    "configure",
    "events",
    "install",
    "mtls_idp",
    "mtls_idp_server",
    "pem",
    "put",
    "self_signed_client",
    "state",
    "thumbprint",
    "tls_client",
    "token",
]

GRANTS = ["client_credentials", "refresh_token", "authorization_code"]


def _certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def thumbprint(path: Path) -> str:
    """x5t#S256 of a PEM certificate: base64url SHA-256 of its DER, unpadded."""
    der = _certificate(path).public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def tls_client(client_id: str, subject_cn: str, *, bound: bool = False) -> dict[str, Any]:
    """A ``tls_client_auth`` client whose certificate must have subject ``CN=subject_cn``."""
    return {
        "client_id": client_id,
        "token_endpoint_auth_method": "tls_client_auth",
        "tls_client_auth_subject_dn": f"CN={subject_cn}",
        "tls_client_certificate_bound_access_tokens": bound,
        "grant_types": GRANTS,
    }


def self_signed_client(
    client_id: str, certificates: Sequence[Path], *, bound: bool = False
) -> dict[str, Any]:
    """A ``self_signed_tls_client_auth`` client accepting any of ``certificates`` (EC P-256)."""
    keys = []
    for path in certificates:
        cert = _certificate(path)
        public_key = cert.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey), "TlsMaterial makes EC keys"
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
        der = cert.public_bytes(serialization.Encoding.DER)
        keys.append({**jwk, "x5c": [base64.b64encode(der).decode()], "use": "sig"})
    return {
        "client_id": client_id,
        "token_endpoint_auth_method": "self_signed_tls_client_auth",
        "jwks": {"keys": keys},
        "tls_client_certificate_bound_access_tokens": bound,
        "grant_types": GRANTS,
    }


class Certificates:
    """The test CA (also the server's) and the client certificates the tests present."""

    def __init__(self, directory: Path) -> None:
        self.material = TlsMaterial(directory)
        self.svc = self.material.client("svc")  # CA-issued, what client-tls registered
        self.svc_expired = self.material.client("svc", expired=True)
        self.intruder = self.material.client("intruder")  # CA-issued, another subject
        self.self_a = self.material.client("self-a", self_signed=True)
        self.self_b = self.material.client("self-b", self_signed=True)
        self.stranger = self.material.client("stranger", self_signed=True)  # registered nowhere


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("mtls"))


@pytest.fixture(scope="session")
def mtls_idp_server(certificates: Certificates) -> Iterator[IdpServer]:
    clients = [
        tls_client("client-tls", "svc"),
        self_signed_client(
            "client-self", [certificates.self_a[0], certificates.self_b[0]], bound=True
        ),
    ]
    with IdpServer(mtls=certificates.material, extra_clients=clients) as server:
        yield server


@pytest.fixture
def mtls_idp(mtls_idp_server: IdpServer) -> Iterator[IdpServer]:
    mtls_idp_server.reset()
    mtls_idp_server.set_ttl(access_token=4)
    yield mtls_idp_server
    mtls_idp_server.reset()


@pytest.fixture
def cc(
    openbao: OpenBaoServer, mtls_idp: IdpServer, certificates: Certificates, tmp_path: Path
) -> Iterator[Deployment]:
    """A deployment whose Vault role may only read the secret: client_credentials never writes."""
    policy = openbao.write_kv_policy("cc-read-only", KV_PATH, write=False)
    openbao.create_role(ROLE, [policy])
    (tmp_path / "sa-token").write_text(openbao.mint_sa_jwt())
    dep = Deployment(openbao=openbao, idp=mtls_idp, root=tmp_path, seeded="")
    yield dep
    for each in [dep, *dep.replicas]:
        if each.process is not None and each.process.poll() is None:
            each.process.kill()
            each.process.wait(timeout=10)


def configure(
    dep: Deployment,
    certificates: Certificates,
    *,
    sections: dict[str, dict[str, Any]] | None = None,
    **credential: Any,
) -> None:
    """Write the deployment's configuration for one client_credentials credential, trusting
    the test CA for the authorization server and polling for a fixed secret every second."""
    dep.write_config(
        grant="client_credentials",
        refresh={"secret_poll_seconds": 1},
        sections={"http": {"ca_cert": str(certificates.material.ca)}, **(sections or {})},
        **credential,
    )


def put(dep: Deployment, **fields: str) -> int:
    return dep.openbao.put_secret(KV_PATH, fields)


def pem(path: Path) -> str:
    return path.read_text()


def install(pair: Pair, directory: Path) -> Pair:
    """Copy a certificate and key where a mounted Secret would put them."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "tls.crt", directory / "tls.key"
    shutil.copyfile(pair[0], cert)
    shutil.copyfile(pair[1], key)
    return cert, key


def events(text: str, name: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == name:
            found.append(event)
    return found


def state(dep: Deployment) -> dict[str, Any]:
    """The credential's ``/healthz`` entry; empty while the server is not up yet."""
    try:
        doc = dep.get("/healthz").json()
    except httpx.HTTPError:
        return {}
    entry: dict[str, Any] = doc["credentials"]["billing"]
    return entry


def token(dep: Deployment) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((dep.output_dir / "token.json").read_text())
    return doc

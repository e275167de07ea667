"""Client registrations for mutual TLS (RFC 8705) at the test authorization server.

``tls_client_auth`` clients are matched by the subject of a certificate the server's CA
issued; ``self_signed_tls_client_auth`` clients by the SHA-256 thumbprint of a certificate
listed (as ``x5c``) in their JWKS. Both may ask for certificate-bound access tokens.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

__all__ = ["self_signed_client", "thumbprint", "tls_client"]

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

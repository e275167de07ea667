"""RFC 7523 client assertions for ``private_key_jwt`` client authentication.

:func:`make_client_assertion` is pure given ``now`` and ``jti``: the adapter supplies the wall
clock and a fresh random ``jti`` per request, because servers reject a reused ``jti``
(oidc-provider: "client assertion tokens must only be used once").

Claims (RFC 7523 §3, OpenID Connect Core §9): ``iss`` and ``sub`` are the client_id, ``aud``
is the token endpoint URL (the value RFC 7523 names, and the one every server accepts; Okta,
for one, accepts nothing else), ``iat``, ``exp`` and ``jti``. The header carries ``alg`` and,
when configured, ``kid``.

A key that cannot be used raises :class:`ClientRejected` (``invalid_client``) with a message
that names the problem (not PEM, encrypted, wrong key type for ``signing_alg``) and never any
key material. The original exception is not chained, since its text is about the key bytes.
"""

from __future__ import annotations

from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from sidecar.errors import ClientRejected

__all__ = ["SIGNING_ALGORITHMS", "load_signing_key", "make_client_assertion"]

_Key = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)

_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)
_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}

#: What each accepted ``signing_alg`` needs, for messages.
SIGNING_ALGORITHMS: dict[str, str] = {
    "RS256": "an RSA key",
    "RS384": "an RSA key",
    "RS512": "an RSA key",
    "PS256": "an RSA key",
    "PS384": "an RSA key",
    "PS512": "an RSA key",
    "ES256": "an EC P-256 key",
    "ES384": "an EC P-384 key",
    "ES512": "an EC P-521 key",
    "EdDSA": "an Ed25519 or Ed448 key",
}


def _fits(key: _Key, alg: str) -> bool:
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPrivateKey)
    if alg in _CURVES:
        return isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == _CURVES[alg]
    return isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)


def load_signing_key(private_key_pem: str, alg: str) -> _Key:
    """Load an unencrypted PEM private key and check it suits ``alg``; raise ClientRejected."""
    if alg not in SIGNING_ALGORITHMS:
        raise ClientRejected(
            f"signing_alg {alg} is not supported for private_key_jwt", oauth_error="invalid_client"
        )
    problem: str | None = None
    key: Any = None
    try:
        key = serialization.load_pem_private_key(private_key_pem.encode("utf-8"), password=None)
    except TypeError:  # cryptography says "password was not given" this way
        problem = "is encrypted; provide it without a passphrase"
    except (ValueError, UnicodeError, UnsupportedAlgorithm):
        problem = "is not a PEM private key"
    if problem is not None:
        # Not chained: the cause describes the key bytes.
        raise ClientRejected(
            f"private_key_jwt: the private key {problem}", oauth_error="invalid_client"
        )
    if not isinstance(key, _KEY_TYPES) or not _fits(key, alg):
        raise ClientRejected(
            f"private_key_jwt: signing_alg {alg} needs {SIGNING_ALGORITHMS[alg]}, "
            "and the private key is not one",
            oauth_error="invalid_client",
        )
    return key


def make_client_assertion(
    client_id: str,
    audience: str,
    private_key_pem: str,
    *,
    alg: str = "RS256",
    key_id: str | None = None,
    now: float,
    jti: str,
    lifetime: float = 60,
) -> str:
    """A signed JWT asserting ``client_id`` to ``audience`` (the token endpoint URL).

    ``now`` is wall-clock seconds; ``exp`` is ``now + lifetime``. Raises ClientRejected when
    the key is unusable.
    """
    key = load_signing_key(private_key_pem, alg)
    issued = int(now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": issued,
        "exp": issued + int(lifetime),
        "jti": jti,
    }
    headers = {"kid": key_id} if key_id else None
    try:
        return jwt.encode(claims, key, algorithm=alg, headers=headers)
    except (jwt.PyJWTError, TypeError, ValueError, NotImplementedError):
        raise ClientRejected(
            f"private_key_jwt: could not sign the client assertion with {alg}",
            oauth_error="invalid_client",
        ) from None

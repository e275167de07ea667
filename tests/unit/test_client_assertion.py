"""RFC 7523 client assertions: signed with the configured key, verified with its public half."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from sidecar.client_assertion import load_signing_key, make_client_assertion
from sidecar.errors import ClientRejected

TOKEN_ENDPOINT = "https://as.example/oauth2/token"
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def pem(key: Any, password: bytes | None = None) -> str:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    data: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    return data.decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


Keys = dict[str, Any]


@pytest.fixture(scope="module")
def keys(
    rsa_key: rsa.RSAPrivateKey,
    p256_key: ec.EllipticCurvePrivateKey,
    ed_key: ed25519.Ed25519PrivateKey,
) -> Keys:
    return {
        "rsa": rsa_key,
        "p256": p256_key,
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "ed": ed_key,
    }


def verify(assertion: str, public_key: Any, alg: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        assertion,
        public_key,
        algorithms=[alg],
        audience=TOKEN_ENDPOINT,
        issuer="my-client",
        options={"verify_exp": False, "verify_iat": False, "require": ["exp", "iat", "jti"]},
    )
    return claims


def test_rs256_assertion_has_the_rfc7523_claims(rsa_key: rsa.RSAPrivateKey) -> None:
    assertion = make_client_assertion(
        "my-client", TOKEN_ENDPOINT, pem(rsa_key), key_id="k1", now=NOW + 0.9, jti="jti-1"
    )
    assert verify(assertion, rsa_key.public_key(), "RS256") == {
        "iss": "my-client",
        "sub": "my-client",
        "aud": TOKEN_ENDPOINT,
        "iat": 1_767_225_600,
        "exp": 1_767_225_660,
        "jti": "jti-1",
    }
    assert jwt.get_unverified_header(assertion) == {"alg": "RS256", "kid": "k1", "typ": "JWT"}


def test_same_inputs_give_the_same_assertion(rsa_key: rsa.RSAPrivateKey) -> None:
    # Pure given now and jti: RS256 (PKCS#1 v1.5) signatures are deterministic.
    first = make_client_assertion("c", TOKEN_ENDPOINT, pem(rsa_key), now=NOW, jti="j")
    second = make_client_assertion("c", TOKEN_ENDPOINT, pem(rsa_key), now=NOW, jti="j")
    assert first == second
    other = make_client_assertion("c", TOKEN_ENDPOINT, pem(rsa_key), now=NOW, jti="k")
    assert other != first


def test_lifetime_and_no_kid(rsa_key: rsa.RSAPrivateKey) -> None:
    assertion = make_client_assertion(
        "my-client", TOKEN_ENDPOINT, pem(rsa_key), alg="PS256", now=NOW, jti="j", lifetime=300
    )
    claims = verify(assertion, rsa_key.public_key(), "PS256")
    assert claims["exp"] - claims["iat"] == 300
    assert "kid" not in jwt.get_unverified_header(assertion)


def test_a_current_assertion_passes_full_validation(rsa_key: rsa.RSAPrivateKey) -> None:
    import time  # noqa: PLC0415  # only this test looks at the real clock

    assertion = make_client_assertion(
        "my-client", TOKEN_ENDPOINT, pem(rsa_key), now=time.time(), jti="j"
    )
    jwt.decode(
        assertion,
        rsa_key.public_key(),
        algorithms=["RS256"],
        audience=TOKEN_ENDPOINT,
        issuer="my-client",
    )


def test_es256_and_eddsa(
    p256_key: ec.EllipticCurvePrivateKey, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    es = make_client_assertion(
        "my-client", TOKEN_ENDPOINT, pem(p256_key), alg="ES256", now=NOW, jti="a"
    )
    assert verify(es, p256_key.public_key(), "ES256")["sub"] == "my-client"
    ed = make_client_assertion(
        "my-client", TOKEN_ENDPOINT, pem(ed_key), alg="EdDSA", now=NOW, jti="b"
    )
    assert verify(ed, ed_key.public_key(), "EdDSA")["jti"] == "b"


def test_traditional_rsa_pem_is_accepted(rsa_key: rsa.RSAPrivateKey) -> None:
    traditional = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    assertion = make_client_assertion("my-client", TOKEN_ENDPOINT, traditional, now=NOW, jti="j")
    assert verify(assertion, rsa_key.public_key(), "RS256")["jti"] == "j"


@pytest.mark.parametrize(
    ("key_text", "match"),
    [
        ("not a key at all", "is not a PEM private key"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a PEM private key"),
        ("", "is not a PEM private key"),
        ("\udcff", "is not a PEM private key"),
    ],
)
def test_garbage_keys_are_rejected_without_echo(key_text: str, match: str) -> None:
    with pytest.raises(ClientRejected, match=match) as caught:
        make_client_assertion("c", TOKEN_ENDPOINT, key_text, now=NOW, jti="j")
    assert caught.value.oauth_error == "invalid_client"
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


def test_encrypted_key_is_rejected(rsa_key: rsa.RSAPrivateKey) -> None:
    encrypted = pem(rsa_key, password=b"pw")
    with pytest.raises(ClientRejected, match="encrypted") as caught:
        make_client_assertion("c", TOKEN_ENDPOINT, encrypted, now=NOW, jti="j")
    body = encrypted.splitlines()[1]
    assert body not in str(caught.value)


@pytest.mark.parametrize(
    ("key_name", "alg", "needs"),
    [
        ("p256", "RS256", "an RSA key"),
        ("rsa", "ES256", "an EC P-256 key"),
        ("p384", "ES256", "an EC P-256 key"),
        ("rsa", "EdDSA", "an Ed25519 or Ed448 key"),
        ("ed", "PS256", "an RSA key"),
    ],
)
def test_key_must_suit_the_algorithm(key_name: str, alg: str, needs: str, keys: Keys) -> None:
    with pytest.raises(ClientRejected, match=f"signing_alg {alg} needs {needs}"):
        make_client_assertion("c", TOKEN_ENDPOINT, pem(keys[key_name]), alg=alg, now=NOW, jti="j")


@pytest.mark.parametrize("alg", ["HS256", "none", "RS1"])
def test_unsupported_algorithms(alg: str, rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ClientRejected, match=f"signing_alg {alg} is not supported"):
        load_signing_key(pem(rsa_key), alg)

"""Configuration and secret combined into the client's credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.client_auth import ClientTemplate, client_credentials
from sidecar.errors import SecretInvalid
from sidecar.model import StoredSecret


def secret(**fields: str) -> StoredSecret:
    return StoredSecret(
        location="secret/apps/svc",
        version=3,
        refresh_token="",
        client_id=fields.get("client_id"),
        client_secret=fields.get("client_secret"),
        private_key=fields.get("private_key"),
        client_cert=fields.get("client_cert"),
        client_key=fields.get("client_key"),
    )


def test_configuration_wins_over_the_secret() -> None:
    template = ClientTemplate(client_id="from-config", client_secret="file-secret-1")
    client = client_credentials(template, secret(client_id="svc", client_secret="vault-secret"))
    assert (client.client_id, client.client_secret) == ("from-config", "file-secret-1")
    assert client.certificate is None


def test_certificate_files_win_over_the_secret_fields() -> None:
    template = ClientTemplate(
        method="tls_client_auth", cert_file=Path("/c/tls.crt"), key_file=Path("/c/tls.key")
    )
    client = client_credentials(template, secret(client_id="svc", client_cert="C", client_key="K"))
    assert client.certificate is not None
    assert client.certificate.cert_file == Path("/c/tls.crt")
    assert client.certificate.cert_pem is None
    assert client.certificate.source == "client_cert_file /c/tls.crt"


def test_certificate_from_the_secret_fields() -> None:
    template = ClientTemplate(method="self_signed_tls_client_auth")
    client = client_credentials(template, secret(client_id="svc", client_cert="C", client_key="K"))
    assert client.certificate is not None
    assert (client.certificate.cert_pem, client.certificate.key_pem) == ("C", "K")
    assert client.certificate.source == "secret secret/apps/svc field client_cert"


def test_a_certificate_binds_tokens_with_any_method() -> None:
    template = ClientTemplate(method="client_secret_post")
    found = secret(client_id="svc", client_secret="s", client_cert="C", client_key="K")
    assert client_credentials(template, found).certificate is not None


@pytest.mark.parametrize(
    ("template", "fields", "message"),
    [
        (
            ClientTemplate(method="tls_client_auth"),
            {"client_id": "svc"},
            "secret/apps/svc: tls_client_auth needs client_cert_file and client_key_file, or "
            "the secret's client_cert and client_key fields",
        ),
        (
            ClientTemplate(method="tls_client_auth"),
            {"client_id": "svc", "client_cert": "C"},
            "secret/apps/svc: field client_key is required with client_cert/client_key",
        ),
        (
            ClientTemplate(),
            {"client_id": "svc"},
            "secret/apps/svc: field client_secret is required for client_secret_basic",
        ),
    ],
)
def test_what_is_missing_is_named(
    template: ClientTemplate, fields: dict[str, str], message: str
) -> None:
    with pytest.raises(SecretInvalid) as caught:
        client_credentials(template, secret(**fields))
    assert caught.value.message == message


def test_without_a_secret_the_configuration_must_have_everything() -> None:
    with pytest.raises(SecretInvalid, match="credential configuration: no client_id"):
        client_credentials(ClientTemplate(), None)
    client = client_credentials(ClientTemplate(client_id="svc", client_secret="file-s-1"), None)
    assert client.client_secret == "file-s-1"

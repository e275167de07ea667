"""Vault for the operator commands: a retired secret (``token-sidecar retire``) is a final
error for every replica, with or without its refresh token still in it; the ``token`` method
reads the Vault CLI's token file."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.adapters.vault import secret_from_kv
from sidecar.adapters.vault.auth import given_token
from sidecar.config import Settings, VaultAuthConfig
from sidecar.errors import FinalError, SecretInvalid, SecretRetired, VaultAuthFailed
from sidecar.lifecycle import retired_data, revoked_data
from sidecar.operator.context import Operator
from sidecar.redact import REDACTOR


def kv(data: dict[str, object], version: int = 3) -> dict[str, object]:
    return {"data": {"data": data, "metadata": {"version": version}}}


def test_marked_but_not_yet_revoked() -> None:
    data = retired_data({"refresh_token": "rt-1234567890", "client_id": "c"}, at=0.0, by="bob")
    with pytest.raises(SecretRetired, match="retired at 1970-01-01T00:00:00Z by bob") as caught:
        secret_from_kv(kv(data), "secret/app")
    assert isinstance(caught.value, FinalError)
    assert caught.value.kind == "retired"
    assert "rt-1234567890" not in caught.value.message
    assert "seed" in caught.value.message


def test_revoked_and_removed() -> None:
    data = revoked_data(retired_data({"refresh_token": "rt-1234567890"}, at=0.0, by="bob"))
    with pytest.raises(SecretRetired):
        secret_from_kv(kv(data), "secret/app")


def test_token_method_reads_the_vault_cli_token_file(tmp_path: Path) -> None:
    """Operators on a laptop: ``vault login`` leaves the token in ~/.vault-token."""
    auth = VaultAuthConfig(method="token")
    (tmp_path / ".vault-token").write_text("hvs.from-the-file\n")
    assert given_token(auth, {"HOME": str(tmp_path)}) == "hvs.from-the-file"
    assert given_token(auth, {"HOME": str(tmp_path), "VAULT_TOKEN": "hvs.env"}) == "hvs.env"
    with pytest.raises(VaultAuthFailed, match="vault-token"):
        given_token(auth, {"HOME": str(tmp_path / "nobody")})
    with pytest.raises(VaultAuthFailed):
        given_token(auth, {})


def test_a_tls_client_takes_its_certificate_from_the_secret(tmp_path: Path) -> None:
    """seed and retire present the secret's client_cert and client_key, like run; without
    them the error names the fields before anyone logs in."""
    settings = Settings.model_validate(
        {
            "credentials": [
                {
                    "name": "billing",
                    "kv_path": "apps/billing",
                    "token_endpoint": "https://127.0.0.1:9/token",
                    "client_auth": "tls_client_auth",
                    "output_dir": str(tmp_path),
                }
            ]
        }
    )
    operator = Operator(settings=settings, vault=None, http=None)  # type: ignore[arg-type]
    credential = settings.credentials[0]
    with pytest.raises(SecretInvalid, match="client_cert"):
        operator.client(credential, {"client_id": "c"}, "secret/apps/billing")
    key = "-----BEGIN PRIVATE KEY-----\nb3BlcmF0b3Ita2V5\n-----END PRIVATE KEY-----\n"
    fields = {"client_id": "c", "client_cert": "CERT", "client_key": key}
    client = operator.client(credential, fields, "secret/apps/billing")
    assert client.certificate is not None
    assert client.certificate.key_pem == key
    assert key not in REDACTOR.scrub(f"key: {key}")

"""Vault for the operator commands: a retired secret (``token-sidecar retire``) is a final
error for every replica, with or without its refresh token still in it; the ``token`` method
reads the Vault CLI's token file."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.adapters.vault import secret_from_kv
from sidecar.adapters.vault.auth import given_token
from sidecar.config import Settings, VaultAuthConfig
from sidecar.errors import ConfigError, FinalError, SecretRetired, VaultAuthFailed
from sidecar.lifecycle import retired_data, revoked_data
from sidecar.operator.context import Operator


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


def test_a_tls_client_is_refused_before_anyone_logs_in(tmp_path: Path) -> None:
    """seed and retire present no client certificate: say so before the user's login."""
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
    with pytest.raises(ConfigError, match="client certificate"):
        operator.client(settings.credentials[0], {"client_id": "c"}, "secret/apps/billing")

"""The operator commands (seed, retire, status) are about refresh tokens: a client_credentials
credential has none, and is refused by name rather than met with a confusing Vault error."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import CredentialConfig, Settings
from sidecar.errors import ConfigError
from sidecar.operator.context import find_credential


def settings() -> Settings:
    return Settings.model_construct(
        credentials=[
            CredentialConfig(
                name="billing",
                kv_path="apps/billing",
                token_endpoint="https://idp.example/token",
                output_dir=Path("/t/billing"),
            ),
            CredentialConfig(
                name="reports",
                grant="client_credentials",
                client_id="reports",
                client_auth="tls_client_auth",
                client_cert_file=Path("/c/tls.crt"),
                client_key_file=Path("/c/tls.key"),
                token_endpoint="https://idp.example/token",
                output_dir=Path("/t/reports"),
            ),
        ]
    )


def test_a_refresh_token_credential_is_found() -> None:
    assert find_credential(settings(), "billing").name == "billing"


def test_a_client_credentials_credential_is_refused_by_name() -> None:
    with pytest.raises(ConfigError) as caught:
        find_credential(settings(), "reports")
    assert caught.value.problems == [
        "--credential reports: grant client_credentials has no refresh token to seed, retire "
        "or report on"
    ]

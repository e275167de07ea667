"""What every operator command needs: the credential, Vault, the authorization server, the client.

Built from the same configuration as ``run``. The Vault session logs in with the configured
method; operators on a laptop or in CI usually set ``TOKEN_SIDECAR_VAULT__AUTH__METHOD=token``
and ``VAULT_TOKEN`` (or have ``~/.vault-token`` from ``vault login``).
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from sidecar.adapters.authorization import AuthorizationServer
from sidecar.adapters.httpkit import make_http_client
from sidecar.adapters.vault import VaultSecretStore, VaultSession
from sidecar.client_auth import client_credentials
from sidecar.config import CredentialConfig, Settings
from sidecar.errors import ConfigError
from sidecar.model import ClientCredentials, StoredSecret
from sidecar.policies import client_template
from sidecar.ports import Clock
from sidecar.redact import REDACTOR

__all__ = ["Operator", "find_credential", "operator_name"]


def operator_name() -> str:
    """Who runs the command, for the record in Vault: the OS user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user database entry, no LOGNAME: a bare container
        return "unknown"


def find_credential(settings: Settings, name: str) -> CredentialConfig:
    """The credential named ``name``; it must hold a refresh token (grant ``refresh_token``):
    the operator commands seed, inspect and retire refresh tokens, which ``client_credentials``
    credentials do not have."""
    for credential in settings.credentials:
        if credential.name == name:
            if credential.grant != "refresh_token":
                raise ConfigError(
                    [
                        f"--credential {name}: grant {credential.grant} has no refresh token to "
                        "seed, retire or report on"
                    ]
                )
            return credential
    known = ", ".join(c.name for c in settings.credentials)
    raise ConfigError([f"--credential {name}: no such credential in the configuration ({known})"])


@dataclass
class Operator:
    """The resources of one command run; :meth:`aclose` when done."""

    settings: Settings
    vault: VaultSession
    http: httpx.AsyncClient
    servers: list[AuthorizationServer] = field(default_factory=list)

    @classmethod
    def open(cls, settings: Settings, clock: Clock) -> Operator:
        return cls(
            settings=settings,
            vault=VaultSession(settings.vault, clock=clock),
            http=make_http_client(settings.http.ca_cert, settings.http.timeout_seconds),
        )

    def store(self, credential: CredentialConfig) -> VaultSecretStore:
        if credential.kv_path is None:  # only client_credentials, which find_credential refuses
            raise ConfigError([f"credentials {credential.name}: no kv_path"])
        return VaultSecretStore(self.vault, credential.kv_mount, credential.kv_path)

    def server(
        self,
        credential: CredentialConfig,
        client: ClientCredentials,
        overrides: Mapping[str, str | None] | None = None,
    ) -> AuthorizationServer:
        """The authorization server as ``client`` meets it (with its certificate, if any)."""
        server = AuthorizationServer(
            credential,
            self.http,
            overrides=overrides,
            max_response_bytes=self.settings.http.max_response_bytes,
            timeout=self.settings.http.timeout_seconds,
            certificate=client.certificate,
            ca_cert=self.settings.http.ca_cert,
        )
        self.servers.append(server)
        return server

    def client(
        self, credential: CredentialConfig, data: Mapping[str, Any] | None, location: str
    ) -> ClientCredentials:
        """The configuration's client settings completed by the secret's fields.

        Raises SecretInvalid naming what is missing (a ``client_secret`` for a confidential
        client is put in the secret first: ``vault kv put <path> client_id=... client_secret=...``;
        ``seed`` keeps it).
        """
        fields = data or {}

        def text(name: str) -> str | None:
            value = fields.get(name)
            return value if isinstance(value, str) and value else None

        secret = StoredSecret(
            location=location,
            version=0,
            refresh_token="",  # not needed to build the client
            client_id=text("client_id"),
            client_secret=text("client_secret"),
            private_key=text("private_key"),
            client_cert=text("client_cert"),
            client_key=text("client_key"),
        )
        REDACTOR.add(secret.client_secret, secret.private_key, secret.client_key)
        return client_credentials(client_template(credential), secret)

    async def aclose(self) -> None:
        for server in self.servers:
            await server.aclose()
        await self.http.aclose()
        await self.vault.aclose()

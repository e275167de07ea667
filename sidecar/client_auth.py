"""How the sidecar authenticates as the OAuth client: configuration and secret combined.

Pure: the configuration gives a :class:`ClientTemplate` (``client_id``, the method, files read
at start), the Vault secret fills in what the template leaves open, and
:func:`client_credentials` returns the :class:`~sidecar.model.ClientCredentials` of one
exchange, or raises :class:`~sidecar.errors.SecretInvalid` naming what is missing.

Where each piece comes from, first match wins:

- ``client_id``: the configuration, else the secret's ``client_id``;
- ``client_secret`` (``client_secret_basic``/``_post``): ``client_secret_file``, else the
  secret's ``client_secret``;
- private key (``private_key_jwt``): ``private_key_file``, else the secret's ``private_key``;
- TLS client certificate (RFC 8705; required by ``tls_client_auth`` and
  ``self_signed_tls_client_auth``, and with any other method binds tokens to it):
  ``client_cert_file`` and ``client_key_file`` (read again before each exchange by the
  adapter), else the secret's ``client_cert`` and ``client_key`` fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sidecar.errors import SecretInvalid
from sidecar.model import (
    TLS_AUTH_METHODS,
    ClientAuthMethod,
    ClientCertificate,
    ClientCredentials,
    StoredSecret,
)

__all__ = ["ClientTemplate", "client_credentials"]

_SECRET_METHODS = ("client_secret_basic", "client_secret_post")


@dataclass(frozen=True, slots=True)
class ClientTemplate:
    """The client settings from configuration; the secret fills in what is missing."""

    method: ClientAuthMethod = "client_secret_basic"
    client_id: str | None = None
    private_key: str | None = field(default=None, repr=False)
    signing_alg: str = "RS256"
    key_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    """From ``client_secret_file``, read at start."""
    cert_file: Path | None = None
    key_file: Path | None = None


def _certificate(template: ClientTemplate, secret: StoredSecret | None) -> ClientCertificate | None:
    if template.cert_file is not None and template.key_file is not None:
        return ClientCertificate(
            cert_file=template.cert_file,
            key_file=template.key_file,
            source=f"client_cert_file {template.cert_file}",
        )
    if secret is None or not (secret.client_cert or secret.client_key):
        return None
    if not (secret.client_cert and secret.client_key):
        missing = "client_key" if secret.client_cert else "client_cert"
        raise SecretInvalid(
            f"{secret.location}: field {missing} is required with client_cert/client_key"
        )
    return ClientCertificate(
        cert_pem=secret.client_cert,
        key_pem=secret.client_key,
        source=f"secret {secret.location} field client_cert",
    )


def client_credentials(template: ClientTemplate, secret: StoredSecret | None) -> ClientCredentials:
    """Combine configuration and secret (``None``: no Vault secret configured).

    Raises SecretInvalid naming what is missing and where it may come from.
    """
    where = secret.location if secret is not None else "credential configuration"
    client_id = template.client_id or (secret.client_id if secret else None)
    if not client_id:
        raise SecretInvalid(
            f"{where}: no client_id in the credential's configuration or the secret"
        )
    method = template.method
    needs_secret = method in _SECRET_METHODS
    client_secret = template.client_secret or (secret.client_secret if secret else None)
    if needs_secret and not client_secret:
        raise SecretInvalid(f"{where}: field client_secret is required for {method}")
    private_key = template.private_key or (secret.private_key if secret else None)
    if method == "private_key_jwt" and not private_key:
        raise SecretInvalid(
            f"{where}: private_key_jwt needs private_key_file or a private_key field"
        )
    certificate = _certificate(template, secret)
    if method in TLS_AUTH_METHODS and certificate is None:
        raise SecretInvalid(
            f"{where}: {method} needs client_cert_file and client_key_file, or the secret's "
            "client_cert and client_key fields"
        )
    return ClientCredentials(
        client_id=client_id,
        method=method,
        client_secret=client_secret if needs_secret else None,
        private_key=private_key if method == "private_key_jwt" else None,
        signing_alg=template.signing_alg,
        key_id=template.key_id,
        certificate=certificate,
    )

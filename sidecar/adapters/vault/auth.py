"""What the sidecar logs in with, and what Vault's login answers say about the token.

Credential files are read at every login (projected service-account tokens and AppRole
secret IDs rotate); a file that cannot be read, is not UTF-8 or is empty is a VaultAuthFailed
that names the file, never its content.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sidecar.adapters.vault.api import UnexpectedResponse
from sidecar.config import VaultAuthConfig
from sidecar.errors import VaultAuthFailed

__all__ = [
    "given_token",
    "lease_facts",
    "login_facts",
    "login_payload",
    "lookup_facts",
    "read_credential_file",
]


def _seconds(value: Any, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise UnexpectedResponse(f"no {name}")
    return float(value)


def lease_facts(response: Mapping[str, Any]) -> tuple[float, bool]:
    """TTL and renewability from a login or renew-self response."""
    auth = response.get("auth")
    if not isinstance(auth, Mapping):
        raise UnexpectedResponse("no auth in the answer")
    return _seconds(auth.get("lease_duration"), "lease_duration"), bool(auth.get("renewable"))


def login_facts(response: Mapping[str, Any]) -> tuple[str, float, bool, float]:
    """Token, TTL, renewability and login TTL from a login response."""
    ttl, renewable = lease_facts(response)
    token = response["auth"].get("client_token")
    if not isinstance(token, str) or not token:
        raise UnexpectedResponse("no client_token in the login answer")
    return token, ttl, renewable, ttl


def lookup_facts(token: str, response: Mapping[str, Any]) -> tuple[str, float, bool, float]:
    data = response.get("data")
    if not isinstance(data, Mapping):
        raise UnexpectedResponse("no data in the token lookup")
    ttl = _seconds(data.get("ttl"), "ttl")
    creation_ttl = data.get("creation_ttl")
    login_ttl = _seconds(creation_ttl, "creation_ttl") if creation_ttl is not None else ttl
    return token, ttl, bool(data.get("renewable")), login_ttl or ttl


def read_credential_file(path: Path, what: str) -> str:
    # ``from None``: the original exception could carry the file's bytes (UnicodeDecodeError).
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise VaultAuthFailed(f"cannot read the {what} file {path}: {reason}") from None
    except UnicodeDecodeError:
        raise VaultAuthFailed(f"the {what} file {path} is not UTF-8 text") from None
    value = text.strip()
    if not value:
        raise VaultAuthFailed(f"the {what} file {path} is empty")
    return value


def login_payload(auth: VaultAuthConfig) -> dict[str, str]:
    """The body of ``POST auth/<mount>/login`` for the ``approle``, ``kubernetes`` and ``jwt``
    methods, from the credential files as they are now."""
    if auth.method == "approle":
        assert auth.role_id_file is not None  # noqa: S101  # enforced by VaultAuthConfig
        assert auth.secret_id_file is not None  # noqa: S101
        return {
            "role_id": read_credential_file(auth.role_id_file, "AppRole role_id"),
            "secret_id": read_credential_file(auth.secret_id_file, "AppRole secret_id"),
        }
    return {"role": auth.role or "", "jwt": read_credential_file(auth.jwt_file, "JWT")}


def given_token(auth: VaultAuthConfig, environ: Mapping[str, str]) -> str:
    """The token of the ``token`` method: ``token_file``, else ``VAULT_TOKEN``, else
    ``$HOME/.vault-token`` (where ``vault login`` leaves it, as the Vault CLI reads it)."""
    if auth.token_file is not None:
        return read_credential_file(auth.token_file, "Vault token")
    token = environ.get("VAULT_TOKEN", "").strip()
    if token:
        return token
    home = environ.get("HOME")
    helper = Path(home) / ".vault-token" if home else None
    if helper is not None and helper.is_file():
        return read_credential_file(helper, "Vault token")
    raise VaultAuthFailed(
        "no Vault token: set vault.auth.token_file or the VAULT_TOKEN environment variable, "
        "or log in with the Vault CLI (~/.vault-token)"
    )

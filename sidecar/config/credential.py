"""The schema of one credential (``credentials[]``) and how its app is told of a new token.

Part of :mod:`sidecar.config`, which re-exports every name; the same rules apply: every field
documents its unit, default and reason.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from sidecar.config.base import NAME_PATTERN, Section, check_url, is_loopback
from sidecar.model import TLS_AUTH_METHODS, ClientAuthMethod, GrantType

__all__ = [
    "CredentialConfig",
    "NotifyConfig",
    "NotifyExecConfig",
    "NotifyHttpConfig",
    "NotifySignalConfig",
]


class NotifyHttpConfig(Section):
    """POST ``{"credential", "generation", "expires_at"}`` to the app; a 2xx acknowledges."""

    url: str
    """The app's URL, on a loopback address in the pod (``http://127.0.0.1:8080/...``). No
    default. Loopback only: the notification is for the app beside the sidecar."""
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0
    """Seconds for one POST, answer included. Default 5."""

    @field_validator("url")
    @classmethod
    def _loopback(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL")
        if not is_loopback(parts.hostname):
            raise ValueError("must be on a loopback address (127.0.0.1, ::1, localhost)")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials in the URL")
        return value


_SIGNALS = {"SIGHUP", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGTERM", "SIGQUIT", "SIGWINCH", "SIGCONT"}
"""Signals that ask a process to do something; SIGKILL and SIGSTOP cannot be handled."""


class NotifySignalConfig(Section):
    """Send a signal to the process whose pid the app writes to a file."""

    pid_file: Path
    """File holding the app's pid, re-read at every attempt. No default. Needs a process
    namespace shared with the app (``shareProcessNamespace: true``; the chart sets it)."""
    signal: str = "SIGHUP"
    """Signal name. Default ``SIGHUP``, the conventional "reload your configuration"."""

    @field_validator("signal")
    @classmethod
    def _known(cls, value: str) -> str:
        name = value.upper() if value.upper().startswith("SIG") else "SIG" + value.upper()
        if name not in _SIGNALS:
            raise ValueError(f"must be one of {', '.join(sorted(_SIGNALS))}")
        return name


class NotifyExecConfig(Section):
    """Run a command (no shell) in the sidecar's container; exit 0 acknowledges."""

    command: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    """The program and its arguments, run without a shell. No default. It gets
    ``TOKEN_SIDECAR_CREDENTIAL``, ``..._GENERATION``, ``..._EXPIRES_AT`` and
    ``..._TOKEN_FILE`` in a small environment, never the token."""
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    """Seconds the command may run; then it is killed and the attempt failed. Default 10."""


class NotifyConfig(Section):
    """Tell the app when its token changed (see README, "Notifying the app")."""

    http: NotifyHttpConfig | None = None
    """POST to the app. Default: none."""
    signal: NotifySignalConfig | None = None
    """Signal the app's process. Default: none."""
    exec: NotifyExecConfig | None = None
    """Run a command. Default: none."""
    min_interval_seconds: Annotated[float, Field(ge=0, le=3600)] = 1.0
    """Seconds without a further change before one is announced: changes closer together
    become one notification of the newest. Default 1."""
    max_delay_seconds: Annotated[float, Field(ge=0, le=3600)] = 10.0
    """Seconds after a change by which it is announced at the latest, however many follow.
    Default 10."""
    retry_max_seconds: Annotated[float, Field(ge=1, le=3600)] = 60.0
    """Longest wait between two attempts of a failing notification (they start at 1 s and
    double). Default 60: a receiver that comes back is told within a minute, and a dead one
    costs one attempt a minute."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.http is None and self.signal is None and self.exec is None:
            raise ValueError("set at least one of http, signal and exec")
        if self.max_delay_seconds < self.min_interval_seconds:
            raise ValueError("max_delay_seconds: must not be less than min_interval_seconds")
        return self

    def methods(self) -> list[str]:
        return [m for m in ("http", "signal", "exec") if getattr(self, m) is not None]


class CredentialConfig(Section):
    """One OAuth client: where its credentials live, whom to ask, where to write."""

    name: str
    """Name used in metric labels, logs and file names: 1-63 of a-z, 0-9 and '-'. No default."""
    grant: GrantType = "refresh_token"
    """``refresh_token`` (the secret holds one, RFC 6749 section 6) or ``client_credentials``
    (the client authenticates as itself, section 4.4). Default ``refresh_token``, what every
    configuration written before the choice existed means."""
    kv_mount: str = "secret"
    """KV version 2 mount. Default ``secret``, Vault's dev-mode mount."""
    kv_path: Annotated[str, Field(min_length=1)] | None = None
    """Path of the secret under the mount. Its fields: ``refresh_token`` (required for that
    grant), ``client_id``, ``client_secret``, ``private_key``, ``client_cert``,
    ``client_key``. No default: required for ``refresh_token``; optional for
    ``client_credentials``, whose client may come wholly from configuration and files."""
    token_endpoint: str | None = None
    """Token endpoint URL. No default; set exactly one of this and ``issuer``."""
    issuer: str | None = None
    """Issuer URL for discovery (RFC 8414 / OIDC); the answer's issuer must match. No default;
    set exactly one of this and ``token_endpoint``."""
    client_id: str | None = None
    """OAuth client ID. Default: the secret's ``client_id`` field."""
    client_auth: ClientAuthMethod = "client_secret_basic"
    """Client authentication. Default ``client_secret_basic``, the one RFC 6749 requires every
    server to support."""
    client_secret_file: Path | None = None
    """``client_secret_basic``/``_post``: file holding the client secret, read at start.
    Default: the secret's ``client_secret`` field."""
    private_key_file: Path | None = None
    """``private_key_jwt``: PEM key file. Default: the secret's ``private_key`` field."""
    client_cert_file: Path | None = None
    """Mutual TLS (RFC 8705): PEM client certificate (chain), read again before every exchange
    so a renewed one is used at once. Required by ``tls_client_auth`` and
    ``self_signed_tls_client_auth``; with any other method it binds tokens to the
    certificate. Default: the secret's ``client_cert`` field."""
    client_key_file: Path | None = None
    """PEM private key of ``client_cert_file`` (unencrypted), set together with it. Default:
    the secret's ``client_key`` field."""
    signing_alg: Literal["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"] = "RS256"
    """``private_key_jwt``: signature algorithm. Default RS256, the one every server accepts."""
    key_id: str | None = None
    """``private_key_jwt``: ``kid`` header. Default: none, for servers with one key per client."""
    scope: str | None = None
    """Scope to ask for. Default: none, the grant's original scope (RFC 6749 section 6)."""
    resource: list[str] = Field(default_factory=list)
    """RFC 8707 resource indicators. Default: none."""
    audience: str | None = None
    """``audience`` parameter (Auth0 style). Default: none."""
    output_dir: Path
    """Directory of the token files. No default: each credential needs its own."""
    file_mode: int = 0o440
    """Mode of the token files, octal (``"0440"``). Default 0440: the owner and the group
    read, nobody writes; never world-writable."""
    file_group: Annotated[int, Field(ge=0, le=4_294_967_294)] | None = None
    """Numeric group of the token files (and of a directory the sidecar creates). Default:
    the sidecar's own group."""
    required: bool = True
    """Counts towards ``/readyz``. Default true: a pod is ready only with every token."""
    notify: NotifyConfig | None = None
    """Tell the app when its token changed. Default: none, the app re-reads the file."""
    allow_insecure_http: bool = False
    """Allow plain http to a non-loopback endpoint. Default false: client secrets and tokens
    must not cross a network in clear text by accident."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(NAME_PATTERN, value):
            raise ValueError("must be 1-63 of a-z, 0-9 and '-', starting and ending alphanumeric")
        return value

    @field_validator("kv_mount", "kv_path")
    @classmethod
    def _trim_slashes(cls, value: str | None) -> str | None:
        if value is None:
            return None
        trimmed = value.strip("/")
        if not trimmed:
            raise ValueError("must not be empty")
        return trimmed

    @field_validator("file_mode", mode="before")
    @classmethod
    def _octal(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not re.fullmatch(r"0?o?[0-7]{3,4}", value):
                raise ValueError("must be an octal mode such as '0440'")
            return int(value.replace("o", ""), 8)
        return value

    @field_validator("file_mode")
    @classmethod
    def _mode_range(cls, value: int) -> int:
        if not 0 <= value <= 0o777:
            raise ValueError("must be between 0000 and 0777")
        if value & 0o002:
            raise ValueError("must not be world-writable")
        return value

    @model_validator(mode="after")
    def _endpoint(self) -> Self:
        problems: list[str] = []
        if (self.token_endpoint is None) == (self.issuer is None):
            problems.append("token_endpoint: set exactly one of token_endpoint and issuer")
        for what, url in (("token_endpoint", self.token_endpoint), ("issuer", self.issuer)):
            if url is not None:
                try:
                    check_url(url, allow_http=self.allow_insecure_http, what=what)
                except ValueError as exc:
                    problems.append(str(exc))
        problems += _client_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _client_problems(c: CredentialConfig) -> list[str]:
    """What cannot work between the grant, the client authentication and their sources."""
    problems: list[str] = []
    method = c.client_auth
    if c.grant == "refresh_token" and c.kv_path is None:
        problems.append("kv_path: required for grant refresh_token (Vault holds the token)")
    if c.grant == "client_credentials" and method == "none":
        problems.append(
            "client_auth: none cannot work with grant client_credentials, which needs client "
            "authentication (RFC 6749 §4.4)"
        )
    if (c.client_cert_file is None) != (c.client_key_file is None):
        problems.append("client_key_file: set client_cert_file and client_key_file together")
    elif method in TLS_AUTH_METHODS and c.client_cert_file is None and c.kv_path is None:
        problems.append(
            f"client_cert_file: client_auth {method} needs a certificate: client_cert_file and "
            "client_key_file, or kv_path with client_cert and client_key fields"
        )
    if (method in TLS_AUTH_METHODS or c.client_cert_file) and (c.token_endpoint or "").startswith(
        "http:"
    ):
        problems.append("token_endpoint: a client certificate is only sent over https://")
    if c.client_secret_file is not None and method not in (
        "client_secret_basic",
        "client_secret_post",
    ):
        problems.append(f"client_secret_file: not used by client_auth {method}")
    if c.kv_path is None and c.grant == "client_credentials":
        if not c.client_id:
            problems.append("client_id: required without kv_path")
        if method in ("client_secret_basic", "client_secret_post") and not c.client_secret_file:
            problems.append(f"client_secret_file: required for {method} without kv_path")
        if method == "private_key_jwt" and not c.private_key_file:
            problems.append("private_key_file: required for private_key_jwt without kv_path")
    return problems

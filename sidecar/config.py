"""The configuration schema: every key, its unit, its default and why.

Each default exists here and only here: the wiring (:mod:`sidecar.app`) builds the policies of
the pure core from these settings. Every field carries a docstring giving its unit, default and
reason, in the order the README's configuration example lists them.

Precedence, highest first:

1. ``TOKEN_SIDECAR_<SECTION>__<KEY>`` (``TOKEN_SIDECAR_VAULT__AUTH__ROLE=my-app``); a list such
   as ``credentials`` takes JSON (``TOKEN_SIDECAR_CREDENTIALS='[{"name": ...}]'``);
2. Vault's own ``VAULT_ADDR``, ``VAULT_CACERT``, ``VAULT_NAMESPACE`` (``VAULT_TOKEN`` is read by
   the ``token`` auth method when no ``token_file`` is set);
3. the YAML file given with ``--config``;
4. the defaults below.

Reading the file and the environment and naming every problem at once, each by its key, is
:mod:`sidecar.configload`'s job (:func:`~sidecar.configload.load_settings`). This module reads
no file; it belongs to the pure core.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sidecar.model import TLS_AUTH_METHODS, ClientAuthMethod, GrantType

__all__ = [
    "CoordinationConfig",
    "CredentialConfig",
    "EventsConfig",
    "HttpConfig",
    "InvalidSettings",
    "JournalConfig",
    "LogConfig",
    "NotifyConfig",
    "NotifyExecConfig",
    "NotifyHttpConfig",
    "NotifySignalConfig",
    "RefreshConfig",
    "ServerConfig",
    "Settings",
    "VaultAuthConfig",
    "VaultConfig",
    "check_url",
    "duplicate_credentials",
]

ENV_PREFIX = "TOKEN_SIDECAR_"
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(value: str, *, allow_http: bool, what: str) -> str:
    """Require an absolute https URL; plain http only to loopback or when explicitly allowed."""
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{what}: must be an absolute https:// URL")
    if parts.username or parts.password:
        raise ValueError(f"{what}: must not carry credentials in the URL")
    if parts.scheme == "http" and not (allow_http or _is_loopback(parts.hostname)):
        raise ValueError(
            f"{what}: plain http to a non-loopback host (use https, "
            "or set allow_insecure_http: true)"
        )
    return value


class VaultAuthConfig(_Section):
    """How the sidecar logs in to Vault."""

    method: Literal["kubernetes", "jwt", "approle", "token"] = "kubernetes"
    """Auth method. Default ``kubernetes`` inside ``vault.auth``: a pod has a service account
    token; with no ``auth`` section at all the whole section defaults to ``token``."""
    mount: str | None = None
    """Auth mount path. Default: the method's name, Vault's own default mount."""
    role: str | None = None
    """Vault role. No default; required for ``kubernetes`` and ``jwt``, which need one."""
    jwt_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    """JWT for ``kubernetes``/``jwt``, re-read at every login (projected tokens rotate).
    Default: the service account token Kubernetes mounts in every pod."""
    role_id_file: Path | None = None
    """``approle``: file holding the role ID. No default; required for ``approle``."""
    secret_id_file: Path | None = None
    """``approle``: file holding the secret ID. No default; required for ``approle``."""
    token_file: Path | None = None
    """``token``: file holding a Vault token. Default: none, then ``$VAULT_TOKEN``."""

    @property
    def mount_path(self) -> str:
        return (self.mount or self.method).strip("/")

    @model_validator(mode="after")
    def _method_needs(self) -> Self:
        if self.method in ("kubernetes", "jwt") and not self.role:
            raise ValueError(f"role: required for auth method {self.method!r}")
        if self.method == "approle" and not (self.role_id_file and self.secret_id_file):
            raise ValueError(
                "role_id_file: role_id_file and secret_id_file are required for 'approle'"
            )
        return self  # one rule fires at most: the method picks which


class VaultConfig(_Section):
    """Where the refresh tokens are kept."""

    address: str = "https://127.0.0.1:8200"
    """Vault's URL. Default ``https://127.0.0.1:8200``, Vault's own; http only to loopback
    unless ``allow_insecure_http``, since the Vault token travels with every request."""
    namespace: str = ""
    """Vault Enterprise namespace. Default empty: the root namespace."""
    ca_cert: Path | None = None
    """PEM CA bundle for Vault. Default: the system CAs; verification is never off."""
    allow_insecure_http: bool = False
    """Allow plain http to a non-loopback Vault. Default false: tokens must not cross a network
    in clear text by accident."""
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    """Seconds for one Vault request, answer included. Default 10: long enough for a busy
    Vault, short enough for the liveness promise; at most 300."""
    auth: VaultAuthConfig = VaultAuthConfig(method="token")
    """How to log in. Default: the ``token`` method (``$VAULT_TOKEN``), for local runs."""

    @model_validator(mode="after")
    def _address(self) -> Self:
        check_url(self.address, allow_http=self.allow_insecure_http, what="address")
        return self


class NotifyHttpConfig(_Section):
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
        if not _is_loopback(parts.hostname):
            raise ValueError("must be on a loopback address (127.0.0.1, ::1, localhost)")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials in the URL")
        return value


_SIGNALS = {"SIGHUP", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGTERM", "SIGQUIT", "SIGWINCH", "SIGCONT"}
"""Signals that ask a process to do something; SIGKILL and SIGSTOP cannot be handled."""


class NotifySignalConfig(_Section):
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


class NotifyExecConfig(_Section):
    """Run a command (no shell) in the sidecar's container; exit 0 acknowledges."""

    command: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    """The program and its arguments, run without a shell. No default. It gets
    ``TOKEN_SIDECAR_CREDENTIAL``, ``..._GENERATION``, ``..._EXPIRES_AT`` and
    ``..._TOKEN_FILE`` in a small environment, never the token."""
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    """Seconds the command may run; then it is killed and the attempt failed. Default 10."""


class NotifyConfig(_Section):
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


class CredentialConfig(_Section):
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


class ServerConfig(_Section):
    """The health and metrics server."""

    address: str = "0.0.0.0:8099"  # the kubelet probes the pod IP
    """HOST:PORT for ``/livez``, ``/readyz``, ``/healthz`` and ``/metrics``. Default
    ``0.0.0.0:8099``: the kubelet and Prometheus reach the pod IP."""

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        _, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT, for example 0.0.0.0:8099")
        return value

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]") or "0.0.0.0"  # noqa: S104

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])


class LogConfig(_Section):
    """Logging (see docs/logging.md)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level logged. Default ``info``: every event an operator acts on, no noise."""
    format: Literal["json", "console"] = "json"
    """``json`` (one object a line, default: what log collectors read) or ``console``."""

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class RefreshConfig(_Section):
    """When to refresh, how to back off, and the clamps applied to ``expires_in``."""

    fraction: Annotated[float, Field(gt=0.1, lt=0.95)] = 2 / 3
    """Refresh at this fraction of the token's lifetime. Default 2/3: a third of the lifetime
    is left to ride out an outage of the authorization server."""
    jitter: Annotated[float, Field(ge=0, le=0.2)] = 0.05
    """Plus or minus this fraction of the lifetime, drawn at random. Default 0.05: a fleet
    started together does not refresh together."""
    min_margin_seconds: Annotated[float, Field(ge=0)] = 60.0
    """Seconds before expiry by which a refresh happens at the latest. Default 60: a minute
    of retries before the file holds an expired token. Short tokens use half their lifetime."""
    min_interval_seconds: Annotated[float, Field(ge=0.1)] = 1.0
    """Seconds between two refreshes at the least. Default 1: an absurd ``expires_in``
    cannot make a hot loop."""
    default_expires_in: Annotated[float, Field(gt=0)] = 300.0
    """Seconds of lifetime assumed when the answer has no usable ``expires_in``. Default 300:
    short enough to be safe for any token, long enough not to hammer the server."""
    min_expires_in: Annotated[float, Field(gt=0)] = 5.0
    """Deprecated and ignored (still accepted, so that existing files load): ``expires_in``
    zero or negative is an already-expired answer, never published (README "Configuration").
    Default 5."""
    max_expires_in: Annotated[float, Field(gt=0)] = 86_400.0
    """Largest ``expires_in`` believed, in seconds. Default 86400 (one day): a refresh at
    least daily keeps the refresh token in use and visible in metrics."""
    backoff_initial_seconds: Annotated[float, Field(gt=0)] = 1.0
    """Seconds of the first backoff step after a retryable failure. Default 1."""
    backoff_max_seconds: Annotated[float, Field(gt=0)] = 90.0
    """Largest backoff step in seconds. Default 90: a fleet recovers within two minutes of an
    outage's end."""
    max_retry_after_seconds: Annotated[float, Field(gt=0)] = 3600.0
    """Longest ``Retry-After`` honoured, in seconds. Default 3600: a server cannot park the
    sidecar for longer than an hour."""
    secret_poll_seconds: Annotated[float, Field(gt=0)] = 30.0
    """Seconds between looks for a re-seeded secret after a final error (invalid_grant).
    Default 30: an operator's fix is picked up within half a minute."""
    ready_margin_seconds: Annotated[float, Field(ge=0)] = 5.0
    """``/readyz`` needs every required token valid for this many seconds more. Default 5."""
    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 20.0
    """Seconds a pending write-back of a rotated token gets after SIGTERM. Default 20: within
    Kubernetes' default termination grace of 30 s."""

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        problems: list[str] = []
        if self.min_expires_in > self.max_expires_in:
            problems.append("min_expires_in: must not exceed max_expires_in")
        elif not self.min_expires_in <= self.default_expires_in <= self.max_expires_in:
            # expires_in absent would otherwise escape the clamps it is meant to respect
            problems.append("default_expires_in: must be between min_expires_in and max_expires_in")
        if self.backoff_initial_seconds > self.backoff_max_seconds:
            problems.append("backoff_initial_seconds: must not exceed backoff_max_seconds")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class HttpConfig(_Section):
    """The HTTP client used for token endpoints and discovery documents."""

    ca_cert: Path | None = None
    """PEM CA bundle for the authorization servers. Default: the system CAs."""
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    """Seconds for one request, answer included. Default 10; at most 300. A claim must be
    longer (``coordination.claim_seconds``)."""
    max_response_bytes: Annotated[int, Field(ge=1024)] = 1_048_576
    """Largest answer read, in bytes. Default 1 MiB: a token answer is a few kilobytes, and a
    hostile server must not exhaust memory."""


class CoordinationConfig(_Section):
    """How replicas sharing one secret take turns (see sidecar.coordination)."""

    holder: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    """A fixed name for this replica's claims, shared by every process configured with it.
    Default: unset, and each process claims as ``<$POD_NAME or the host name>_<random UUID>``,
    unique even where pod or host names repeat (see sidecar.coordination)."""
    claim_seconds: Annotated[float, Field(ge=5, le=3600)] = 30.0
    """Seconds a claim lasts. Default 30: longer than one exchange plus one Vault write; must
    exceed ``http.timeout_seconds``."""
    clock_skew_seconds: Annotated[float, Field(ge=0, le=300)] = 5.0
    """Seconds of allowance for wall clocks that disagree between nodes when judging another's
    claim. Default 5: NTP keeps nodes far closer."""
    poll_seconds: Annotated[float, Field(ge=0.1, le=60)] = 1.0
    """Seconds between looks while another replica holds the claim, at most. Default 1."""
    exclusive: bool = False
    """Whether this process is the only one using its secrets (one replica, no ``once`` run
    beside it). Only then does it keep refreshing from the token in memory while Vault is
    unreachable. Default false: with replicas that would present a token another replica may
    have rotated already, and the server would revoke the grant; a replica refreshes only
    under its own live claim instead."""


class EventsConfig(_Section):
    """Kubernetes Events on the pod for final failures and recoveries.

    Needs RBAC (create on events) and the downward-API env POD_NAME, POD_NAMESPACE, POD_UID.
    """

    enabled: bool = False
    """Emit Events. Default false: it needs RBAC and the ``kubernetes`` extra."""
    dedupe_seconds: Annotated[float, Field(ge=0, le=86_400)] = 600.0
    """Seconds within which the same Event is not sent again. Default 600: a failure that
    persists does not flood the API server."""
    queue_size: Annotated[int, Field(ge=1, le=1000)] = 32
    """Events waiting to be sent at most; more are dropped and counted. Default 32."""


class JournalConfig(_Section):
    """Where a rotated refresh token waits until Vault holds it."""

    dir: Path | None = None
    """A private in-memory volume (``emptyDir: {medium: Memory}``). Default: none, no journal:
    a crash between rotation and write-back then loses the rotated token."""


class InvalidSettings(Exception):  # an internal carrier, never seen by callers
    """A failed validation of the merged input (file, ``VAULT_*`` and environment).

    :mod:`sidecar.configload` checks the cross-key rules on ``data`` again, one by one, since
    pydantic runs a model's ``after`` validators only when each of its fields is valid.
    """

    def __init__(self, error: ValidationError, data: Mapping[str, Any]) -> None:
        super().__init__("invalid configuration")
        self.error = error
        self.data = data


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    vault: VaultConfig = VaultConfig()
    """Where the refresh tokens are kept. Default: every key of the section at its default."""
    credentials: Annotated[list[CredentialConfig], Field(min_length=1)]
    """The OAuth clients, one or more, each isolated from the others. No default."""
    server: ServerConfig = ServerConfig()
    """The health and metrics server. Default: every key at its default."""
    log: LogConfig = LogConfig()
    """Logging. Default: every key at its default."""
    refresh: RefreshConfig = RefreshConfig()
    """The schedule, backoff and clamps. Default: every key at its default."""
    http: HttpConfig = HttpConfig()
    """The client for token endpoints and discovery. Default: every key at its default."""
    journal: JournalConfig = JournalConfig()
    """Where rotated tokens wait for Vault. Default: no journal."""
    coordination: CoordinationConfig = Field(default_factory=CoordinationConfig)
    """How replicas sharing a secret take turns. Default: every key at its default."""
    events: EventsConfig = EventsConfig()
    """Kubernetes Events. Default: off."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = duplicate_credentials([(c.name, c.output_dir) for c in self.credentials])
        if claim_too_short(self.coordination.claim_seconds, self.http.timeout_seconds):
            problems.append(CLAIM_TOO_SHORT)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _every_problem(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        """On failure, hand the merged input on so every cross-key rule can be checked."""
        try:
            return handler(data)
        except ValidationError as exc:
            if not isinstance(data, Mapping):
                raise
            # Not a ValueError: pydantic lets it through untouched, to configload.
            raise InvalidSettings(exc, data) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init carries the YAML file merged with VAULT_*; the prefixed environment wins over it.
        return (env_settings, init_settings)


CLAIM_TOO_SHORT = (
    "coordination.claim_seconds: must be longer than http.timeout_seconds, "
    "or no exchange could ever start"
)


def claim_too_short(claim_seconds: float, timeout_seconds: float) -> bool:
    """A claim must outlast one exchange, or no replica could ever start one."""
    return claim_seconds <= timeout_seconds


def duplicate_credentials(credentials: list[tuple[Any, Any]]) -> list[str]:
    """Duplicate names and output directories among ``(name, output_dir)`` pairs."""
    problems: list[str] = []
    seen_names: set[str] = set()
    seen_dirs: dict[str, Any] = {}
    for index, (name, output_dir) in enumerate(credentials):
        if isinstance(name, str):
            if name in seen_names:
                problems.append(f"credentials[{index}].name: duplicate name {name!r}")
            seen_names.add(name)
        if isinstance(output_dir, str | Path) and str(output_dir):
            out = os.path.normpath(output_dir)
            if out in seen_dirs:
                problems.append(
                    f"credentials[{index}].output_dir: already used by credential "
                    f"{seen_dirs[out]!r}"
                )
            seen_dirs.setdefault(out, name)
    return problems

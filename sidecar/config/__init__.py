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

One credential's keys (and how its app is notified) are in :mod:`sidecar.config.credential`,
what every section shares in :mod:`sidecar.config.base`; both are re-exported here.

Reading the file and the environment and naming every problem at once, each by its key, is
:mod:`sidecar.configload`'s job (:func:`~sidecar.configload.load_settings`). This module reads
no file; it belongs to the pure core.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sidecar.config.base import ENV_PREFIX, NAME_PATTERN, Section, check_url
from sidecar.config.credential import (
    CredentialConfig,
    NotifyConfig,
    NotifyExecConfig,
    NotifyHttpConfig,
    NotifySignalConfig,
)

__all__ = [
    "ENV_PREFIX",
    "NAME_PATTERN",
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


class VaultAuthConfig(Section):
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


class VaultConfig(Section):
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


class ServerConfig(Section):
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


class LogConfig(Section):
    """Logging (see docs/logging.md)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level logged. Default ``info``: every event an operator acts on, no noise."""
    format: Literal["json", "console"] = "json"
    """``json`` (one object a line, default: what log collectors read) or ``console``."""

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class RefreshConfig(Section):
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


class HttpConfig(Section):
    """The HTTP client used for token endpoints and discovery documents."""

    ca_cert: Path | None = None
    """PEM CA bundle for the authorization servers. Default: the system CAs."""
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    """Seconds for one request, answer included. Default 10; at most 300. A claim must be
    longer (``coordination.claim_seconds``)."""
    max_response_bytes: Annotated[int, Field(ge=1024)] = 1_048_576
    """Largest answer read, in bytes. Default 1 MiB: a token answer is a few kilobytes, and a
    hostile server must not exhaust memory."""


class CoordinationConfig(Section):
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


class EventsConfig(Section):
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


class JournalConfig(Section):
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

"""Configuration: a YAML file, overridable key by key from the environment.

Precedence, highest first:

1. ``TOKEN_SIDECAR_<SECTION>__<KEY>`` (``TOKEN_SIDECAR_VAULT__AUTH__ROLE=my-app``); a list such
   as ``credentials`` takes JSON (``TOKEN_SIDECAR_CREDENTIALS='[{"name": ...}]'``);
2. Vault's own ``VAULT_ADDR``, ``VAULT_CACERT``, ``VAULT_NAMESPACE`` (``VAULT_TOKEN`` is read by
   the ``token`` auth method when no ``token_file`` is set);
3. the YAML file given with ``--config``;
4. the defaults below.

Unknown keys and bad values stop start-up: :func:`load_settings` raises :class:`ConfigError`
with one message per problem, each naming its key (``credentials[0].token_endpoint``). Values
are never echoed, since a misplaced secret could be among them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from sidecar.errors import ConfigError
from sidecar.model import ClientAuthMethod

__all__ = [
    "CoordinationConfig",
    "CredentialConfig",
    "EventsConfig",
    "HttpConfig",
    "JournalConfig",
    "LogConfig",
    "RefreshConfig",
    "ServerConfig",
    "Settings",
    "VaultAuthConfig",
    "VaultConfig",
    "load_settings",
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
    method: Literal["kubernetes", "jwt", "approle", "token"] = "kubernetes"
    mount: str | None = Field(
        default=None, description="Auth mount path; defaults to the method name."
    )
    role: str | None = None
    jwt_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    role_id_file: Path | None = None
    secret_id_file: Path | None = None
    token_file: Path | None = None

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
        return self


class VaultConfig(_Section):
    address: str = "https://127.0.0.1:8200"
    namespace: str = ""
    ca_cert: Path | None = None
    allow_insecure_http: bool = False
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    auth: VaultAuthConfig = VaultAuthConfig(method="token")

    @model_validator(mode="after")
    def _address(self) -> Self:
        check_url(self.address, allow_http=self.allow_insecure_http, what="address")
        return self


class CredentialConfig(_Section):
    name: str
    kv_mount: str = "secret"
    kv_path: Annotated[str, Field(min_length=1)]
    token_endpoint: str | None = None
    issuer: str | None = None
    client_id: str | None = None
    client_auth: ClientAuthMethod = "client_secret_basic"
    private_key_file: Path | None = Field(
        default=None,
        description="PEM key for private_key_jwt; else the secret's private_key field.",
    )
    signing_alg: Literal["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"] = "RS256"
    key_id: str | None = None
    scope: str | None = None
    resource: list[str] = Field(default_factory=list)
    audience: str | None = None
    output_dir: Path
    file_mode: int = 0o440
    file_group: int | None = None
    required: bool = Field(default=True, description="Counts towards /readyz.")
    allow_insecure_http: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(NAME_PATTERN, value):
            raise ValueError("must be 1-63 of a-z, 0-9 and '-', starting and ending alphanumeric")
        return value

    @field_validator("kv_mount", "kv_path")
    @classmethod
    def _trim_slashes(cls, value: str) -> str:
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
        if (self.token_endpoint is None) == (self.issuer is None):
            raise ValueError("token_endpoint: set exactly one of token_endpoint and issuer")
        if self.token_endpoint is not None:
            check_url(
                self.token_endpoint, allow_http=self.allow_insecure_http, what="token_endpoint"
            )
        if self.issuer is not None:
            check_url(self.issuer, allow_http=self.allow_insecure_http, what="issuer")
        return self


class ServerConfig(_Section):
    address: str = "0.0.0.0:8099"  # the kubelet probes the pod IP

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
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class RefreshConfig(_Section):
    """When to refresh, how to back off, and the clamps applied to ``expires_in``."""

    fraction: Annotated[float, Field(gt=0.1, lt=0.95)] = 2 / 3
    jitter: Annotated[float, Field(ge=0, le=0.2)] = 0.05
    min_margin_seconds: Annotated[float, Field(ge=0)] = 60.0
    min_interval_seconds: Annotated[float, Field(ge=0.1)] = 1.0
    default_expires_in: Annotated[float, Field(gt=0)] = 300.0
    min_expires_in: Annotated[float, Field(gt=0)] = 5.0
    max_expires_in: Annotated[float, Field(gt=0)] = 86_400.0
    backoff_initial_seconds: Annotated[float, Field(gt=0)] = 1.0
    backoff_max_seconds: Annotated[float, Field(gt=0)] = 300.0
    max_retry_after_seconds: Annotated[float, Field(gt=0)] = 3600.0
    secret_poll_seconds: Annotated[float, Field(gt=0)] = 30.0
    ready_margin_seconds: Annotated[float, Field(ge=0)] = 5.0
    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 20.0

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min_expires_in > self.max_expires_in:
            raise ValueError("min_expires_in: must not exceed max_expires_in")
        if self.backoff_initial_seconds > self.backoff_max_seconds:
            raise ValueError("backoff_initial_seconds: must not exceed backoff_max_seconds")
        return self


class HttpConfig(_Section):
    """The HTTP client used for token endpoints and discovery documents."""

    ca_cert: Path | None = Field(
        default=None, description="CA bundle for the authorization servers; else system CAs."
    )
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    max_response_bytes: Annotated[int, Field(ge=1024)] = 1_048_576


def _default_holder() -> str:
    return os.environ.get("POD_NAME") or socket.gethostname()


class CoordinationConfig(_Section):
    """How replicas sharing one secret take turns (see sidecar.coordination)."""

    holder: Annotated[str, Field(min_length=1, max_length=253)] = Field(
        default_factory=_default_holder,
        description="This replica's name in claims; $POD_NAME, else the host name.",
    )
    claim_seconds: Annotated[float, Field(ge=5, le=3600)] = 30.0
    clock_skew_seconds: Annotated[float, Field(ge=0, le=300)] = 5.0
    poll_seconds: Annotated[float, Field(ge=0.1, le=60)] = 1.0


class EventsConfig(_Section):
    """Kubernetes Events on the pod for final failures and recoveries.

    Needs RBAC (create on events) and the downward-API env POD_NAME, POD_NAMESPACE, POD_UID.
    """

    enabled: bool = False
    dedupe_seconds: Annotated[float, Field(ge=0, le=86_400)] = 600.0
    queue_size: Annotated[int, Field(ge=1, le=1000)] = 32


class JournalConfig(_Section):
    """Where a rotated refresh token waits until Vault holds it (a private in-memory volume)."""

    dir: Path | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    vault: VaultConfig = VaultConfig()
    credentials: Annotated[list[CredentialConfig], Field(min_length=1)]
    server: ServerConfig = ServerConfig()
    log: LogConfig = LogConfig()
    refresh: RefreshConfig = RefreshConfig()
    http: HttpConfig = HttpConfig()
    journal: JournalConfig = JournalConfig()
    coordination: CoordinationConfig = Field(default_factory=CoordinationConfig)
    events: EventsConfig = EventsConfig()

    @model_validator(mode="after")
    def _unique(self) -> Self:
        problems: list[str] = []
        seen_names: set[str] = set()
        seen_dirs: dict[Path, str] = {}
        for index, cred in enumerate(self.credentials):
            if cred.name in seen_names:
                problems.append(f"credentials[{index}].name: duplicate name {cred.name!r}")
            seen_names.add(cred.name)
            out = Path(os.path.normpath(cred.output_dir))
            if out in seen_dirs:
                owner = seen_dirs[out]
                problems.append(
                    f"credentials[{index}].output_dir: already used by credential {owner!r}"
                )
            seen_dirs.setdefault(out, cred.name)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _claim_outlasts_a_request(self) -> Self:
        if self.coordination.claim_seconds <= self.http.timeout_seconds:
            raise ValueError(
                "coordination.claim_seconds: must be longer than http.timeout_seconds, "
                "or no exchange could ever start"
            )
        return self

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


_VAULT_ENV = {"VAULT_ADDR": "address", "VAULT_CACERT": "ca_cert", "VAULT_NAMESPACE": "namespace"}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"--config {path}: cannot read ({exc.strerror})"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"--config {path}: not valid YAML{where}"]) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"--config {path}: the top level must be a mapping"])
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-after", "function-before", "function-wrap")):
            continue
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _problems(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for error in exc.errors(include_input=False, include_url=False):
        where = _location(tuple(error["loc"]))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        for piece in message.split("; "):
            if piece.startswith("credentials["):
                problems.append(piece)
            elif re.match(r"[a-z_]+: ", piece):
                problems.append(f"{where}.{piece}" if where != "(top level)" else piece)
            else:
                problems.append(f"{where}: {piece}")
    return problems


def load_settings(path: Path | None = None) -> Settings:
    """Read the YAML file (if any) and the environment; raise ConfigError listing every problem."""
    env = os.environ
    data = _read_yaml(path) if path is not None else {}
    vault_env = {key: env[name] for name, key in _VAULT_ENV.items() if env.get(name)}
    if vault_env:
        section = data.get("vault")
        data = _merge(
            data, {"vault": _merge(section if isinstance(section, dict) else {}, vault_env)}
        )
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None

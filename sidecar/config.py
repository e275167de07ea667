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

Every problem is reported at once, contradictions between keys included. Pydantic checks a
model's cross-key rules (its ``after`` validators) only when each of its fields is valid, so
when anything failed, :func:`load_settings` checks each rule again on its own keys (see
``_RULES``) and adds what that finds.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
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
        return self  # one rule fires at most: the method picks which


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
    file_group: Annotated[int, Field(ge=0, le=4_294_967_294)] | None = Field(
        default=None, description="Numeric group of the token files (and a created directory)."
    )
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
        problems: list[str] = []
        if (self.token_endpoint is None) == (self.issuer is None):
            problems.append("token_endpoint: set exactly one of token_endpoint and issuer")
        for what, url in (("token_endpoint", self.token_endpoint), ("issuer", self.issuer)):
            if url is not None:
                try:
                    check_url(url, allow_http=self.allow_insecure_http, what=what)
                except ValueError as exc:
                    problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
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
    backoff_max_seconds: Annotated[float, Field(gt=0)] = 90.0
    max_retry_after_seconds: Annotated[float, Field(gt=0)] = 3600.0
    secret_poll_seconds: Annotated[float, Field(gt=0)] = 30.0
    ready_margin_seconds: Annotated[float, Field(ge=0)] = 5.0
    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 20.0

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
    def _consistent(self) -> Self:
        problems = _duplicates([(c.name, c.output_dir) for c in self.credentials])
        if self.coordination.claim_seconds <= self.http.timeout_seconds:
            problems.append(_CLAIM_TOO_SHORT)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _every_problem(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        """On any failure, add the cross-key problems pydantic did not get to (see _RULES)."""
        try:
            return handler(data)
        except ValidationError as exc:
            if not isinstance(data, Mapping):
                raise
            # Not a ValueError: pydantic lets it through untouched, to load_settings.
            raise _Problems(exc, _cross_key_problems(data)) from None

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
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif _is_validator_name(part):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


_KEY_PIECE = re.compile(r"[a-z_]+(?:\[\d+\])?(?:\.[a-z_]+(?:\[\d+\])?)*: ")


def _problems(
    exc: ValidationError,
    *,
    prefix: tuple[int | str, ...] = (),
    model_level_only: bool = False,
) -> list[str]:
    """One message per problem, each starting with the key it is about.

    ``prefix`` is where the validated model sits in the whole configuration;
    ``model_level_only`` keeps only the problems of a model's cross-key rules.
    """
    problems: list[str] = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = tuple(part for part in error["loc"] if not _is_validator_name(part))
        if model_level_only and loc:
            continue
        where = _location(prefix + loc)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        for piece in message.split("; "):
            if piece.startswith(("credentials[", "coordination.")):
                problems.append(piece)  # already a full key, from a top-level rule
            elif _KEY_PIECE.match(piece):
                problems.append(f"{where}.{piece}" if where != "(top level)" else piece)
            else:
                problems.append(f"{where}: {piece}")
    return problems


def _is_validator_name(part: int | str) -> bool:
    return isinstance(part, str) and part.startswith(
        ("function-after", "function-before", "function-wrap")
    )


_CLAIM_TOO_SHORT = (
    "coordination.claim_seconds: must be longer than http.timeout_seconds, "
    "or no exchange could ever start"
)


def _duplicates(credentials: list[tuple[Any, Any]]) -> list[str]:
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


class _Problems(Exception):  # an internal carrier, never seen by callers
    """A failed validation plus the cross-key problems found beside it."""

    def __init__(self, error: ValidationError, extra: list[str]) -> None:
        super().__init__("invalid configuration")
        self.error = error
        self.extra = extra


#: The keys each cross-key rule reads, per model: validated alone (other keys at their
#: defaults), a rule reports its problem even when unrelated keys of the model are invalid.
_RULES: dict[type[BaseModel], tuple[tuple[str, ...], ...]] = {
    VaultAuthConfig: (("method", "role", "role_id_file", "secret_id_file"),),
    VaultConfig: (("address", "allow_insecure_http"),),
    CredentialConfig: (("token_endpoint", "issuer", "allow_insecure_http"),),
    RefreshConfig: (
        ("min_expires_in", "max_expires_in"),
        ("min_expires_in", "max_expires_in", "default_expires_in"),
        ("backoff_initial_seconds", "backoff_max_seconds"),
    ),
}
#: Valid stand-ins for required keys a rule does not read.
_STAND_INS: dict[type[BaseModel], dict[str, Any]] = {
    CredentialConfig: {"name": "stand-in", "kv_path": "stand-in", "output_dir": "/stand-in"},
}
#: When one of these keys is itself invalid, a rule is checked with its most permissive
#: value, so that what is wrong whatever the key says (``ftp://``) is still reported.
_PERMISSIVE: dict[str, Any] = {"allow_insecure_http": True}


def _rule_problems(model: type[BaseModel], raw: Any, loc: tuple[int | str, ...]) -> list[str]:
    if not isinstance(raw, Mapping):
        return []
    problems: list[str] = []
    for keys in _RULES[model]:
        subset = {**_STAND_INS.get(model, {}), **{k: raw[k] for k in keys if k in raw}}
        for _ in range(2):
            try:
                model.model_validate(subset)
            except ValidationError as exc:
                invalid = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
                if not invalid:
                    problems += _problems(exc, prefix=loc, model_level_only=True)
                elif invalid <= _PERMISSIVE.keys():
                    subset.update({key: _PERMISSIVE[key] for key in invalid})
                    continue
                # Otherwise a key the rule reads is invalid itself: reported on its own.
            break
    return problems


def _cross_key_problems(data: Mapping[str, Any]) -> list[str]:
    vault = data.get("vault")
    problems = _rule_problems(VaultConfig, vault, ("vault",))
    if isinstance(vault, Mapping) and "auth" in vault:  # else the default, token: valid
        problems += _rule_problems(VaultAuthConfig, vault["auth"], ("vault", "auth"))
    credentials = data.get("credentials")
    if isinstance(credentials, list):
        pairs = []
        for index, credential in enumerate(credentials):
            problems += _rule_problems(CredentialConfig, credential, ("credentials", index))
            if isinstance(credential, Mapping):
                pairs.append((credential.get("name"), credential.get("output_dir")))
            else:
                pairs.append((None, None))
        problems += _duplicates(pairs)
    problems += _rule_problems(RefreshConfig, data.get("refresh"), ("refresh",))
    try:
        claim = CoordinationConfig.model_validate(
            {k: v for k, v in _section(data, "coordination").items() if k == "claim_seconds"}
        ).claim_seconds
        timeout = HttpConfig.model_validate(
            {k: v for k, v in _section(data, "http").items() if k == "timeout_seconds"}
        ).timeout_seconds
    except ValidationError:
        pass  # reported by the full validation
    else:
        if claim <= timeout:
            problems.append(_CLAIM_TOO_SHORT)
    return problems


def _section(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name)
    return value if isinstance(value, Mapping) else {}


def _unique_in_order(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


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
    odd_keys = [key for key in data if not isinstance(key, str)]
    if odd_keys:
        raise ConfigError([f"{key}: unknown key (keys are strings)" for key in odd_keys])
    try:
        return Settings(**data)
    except _Problems as exc:
        raise ConfigError(_unique_in_order(_problems(exc.error) + exc.extra)) from None
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None
    except SettingsError as exc:
        # A TOKEN_SIDECAR_* variable that must hold JSON (a list or a section) does not.
        field = re.search(r'field "([^"]+)"', str(exc))
        name = f"{ENV_PREFIX}{field.group(1).upper()}" if field else f"{ENV_PREFIX}*"
        raise ConfigError(
            [f"{name}: not valid JSON for this key (the value is not shown)"]
        ) from None

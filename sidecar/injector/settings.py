"""The injector's configuration: the defaults it stamps into pods, and how it serves.

The file is the sidecar's own YAML schema for what the two share, plus an ``injector:``
section for the rest::

    vault:                      # the sidecar's vault section: defaults for injected pods
      address: https://vault.vault.svc:8200
      auth: {method: kubernetes, mount: kubernetes, role: ""}   # role: else per pod
    log: {level: info, format: json}   # the injector's own logs
    injector:
      listen: 0.0.0.0:8443
      tls_cert_file: /etc/token-sidecar-injector/tls/tls.crt
      tls_key_file: /etc/token-sidecar-injector/tls/tls.key
      health_address: 0.0.0.0:8099
      sidecar: {image: ..., mode: native, resources: {...}, ...}

Unknown keys and bad values stop start-up with a message naming the key, as for the sidecar.
The injector supports the ``kubernetes`` and ``jwt`` auth methods only: the others need files
from Secrets that a pod annotation cannot provide.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sidecar import __version__
from sidecar.config import LogConfig, ServerConfig, VaultConfig
from sidecar.errors import ConfigError

__all__ = [
    "QUANTITY_PATTERN",
    "InjectorConfig",
    "InjectorSettings",
    "Resources",
    "SidecarTemplate",
    "VaultDefaults",
    "parse_settings",
]

#: A Kubernetes resource quantity (``10m``, ``64Mi``, ``0.5``, ``1e3``).
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?([eE][0-9]+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
SUPPORTED_METHODS = ("kubernetes", "jwt")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN)]


class ResourceList(_Section):
    cpu: Quantity | None = None
    memory: Quantity | None = None


class Resources(_Section):
    """The injected sidecar's resources; pod annotations override each value."""

    requests: ResourceList = ResourceList(cpu="10m", memory="64Mi")
    limits: ResourceList = ResourceList(cpu="500m", memory="128Mi")


class SidecarTemplate(_Section):
    """What every injected sidecar gets, unless a pod annotation says otherwise."""

    name: str = "token-sidecar"
    image: Annotated[str, Field(min_length=1)] = f"token-sidecar:{__version__}"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    mode: Literal["native", "classic"] = Field(
        default="native",
        description="native: an init container with restartPolicy Always (Kubernetes >= 1.29); "
        "classic: a regular container, for older clusters.",
    )
    port: Annotated[int, Field(ge=1024, le=65535)] = Field(
        default=8099, description="/livez /readyz /healthz /metrics; shares the pod's network."
    )
    tokens_mount_path: str = "/var/run/tokens"
    tokens_size_limit: Quantity = "1Mi"
    journal: bool = True
    journal_mount_path: str = "/var/run/token-sidecar/journal"
    journal_size_limit: Quantity = "1Mi"
    audience: Annotated[str, Field(min_length=1)] = Field(
        default="vault", description="Audience of the projected service-account token."
    )
    token_expiration_seconds: Annotated[int, Field(ge=600, le=86_400)] = 3600
    jwt_mount_path: str = "/var/run/secrets/vault"
    run_as_user: Annotated[int, Field(ge=1)] = 65532
    run_as_group: Annotated[int, Field(ge=1)] = 65532
    startup_failure_threshold: Annotated[int, Field(ge=1, le=3600)] = Field(
        default=300, description="Seconds (probed every second) to publish the first token."
    )
    resources: Resources = Resources()
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("tokens_mount_path", "journal_mount_path", "jwt_mount_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or value.rstrip("/") == "":
            raise ValueError("must be an absolute path below /")
        return value.rstrip("/")

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", value):
            raise ValueError("must be a DNS label (a-z, 0-9, '-')")
        return value


class InjectorSettings(_Section):
    """How the injector serves (flags win over these)."""

    listen: str = "0.0.0.0:8443"  # the API server calls the pod IP through the Service
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    health_address: str = "0.0.0.0:8099"
    reload_interval_seconds: Annotated[float, Field(gt=0, le=300)] = 2.0
    max_request_bytes: Annotated[int, Field(ge=4096, le=16 * 1024 * 1024)] = 3 * 1024 * 1024
    read_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = Field(
        default=10.0,
        description="Deadline for a request's TLS handshake, head and body; the API server "
        "gives up after the webhook's timeoutSeconds (at most 10) anyway.",
    )
    sidecar: SidecarTemplate = SidecarTemplate()

    @field_validator("listen", "health_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        ServerConfig(address=value)  # the sidecar's own HOST:PORT rule
        return value


class VaultDefaults(_Section):
    """The vault section, as validated by the sidecar's own schema, with the role optional."""

    settings: VaultConfig
    role: str | None
    explicit: frozenset[str]  # top-level vault keys the file set

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class InjectorConfig(_Section):
    vault: VaultDefaults
    log: LogConfig = LogConfig()
    injector: InjectorSettings = InjectorSettings()

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


_STAND_IN_ROLE = "stand-in"


def _vault_defaults(raw: Any) -> tuple[VaultDefaults | None, list[str]]:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        return None, ["vault: must be a mapping"]
    auth = raw.get("auth") or {}
    if not isinstance(auth, Mapping):
        return None, ["vault.auth: must be a mapping"]
    problems: list[str] = []
    method = auth.get("method", "kubernetes")
    if method not in SUPPORTED_METHODS:
        problems.append(
            "vault.auth.method: the injector supports kubernetes and jwt (the others need "
            "files from Secrets a pod annotation cannot name)"
        )
    for key in ("jwt_file", "role_id_file", "secret_id_file", "token_file"):
        if key in auth:
            problems.append(f"vault.auth.{key}: set by the injector, not configurable here")
    if problems:
        return None, problems
    role = auth.get("role") or None
    checked = {**raw, "auth": {**auth, "method": method, "role": role or _STAND_IN_ROLE}}
    try:
        settings = VaultConfig.model_validate(checked)
    except ValidationError as exc:
        return None, _messages(exc, "vault")
    explicit = frozenset(str(key) for key in raw)
    return VaultDefaults(settings=settings, role=role, explicit=explicit), []


def _messages(exc: ValidationError, prefix: str) -> list[str]:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = ".".join(
            str(p) for p in error["loc"] if not str(p).startswith(("function-", "constrained-"))
        )
        where = f"{prefix}.{loc}" if loc else prefix
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{where}: {message}")
    return problems


def parse_settings(data: Mapping[str, Any]) -> InjectorConfig:
    """Validate a parsed config file; raise ConfigError naming every problem's key."""
    problems = [f"{key}: unknown key" for key in data if key not in ("vault", "log", "injector")]
    vault, vault_problems = _vault_defaults(data.get("vault"))
    problems += vault_problems
    sections: dict[str, Any] = {}
    for name, model in (("log", LogConfig), ("injector", InjectorSettings)):
        raw = data.get(name)
        if raw is None:
            continue
        try:
            sections[name] = model.model_validate(raw)
        except ValidationError as exc:
            problems += _messages(exc, name)
    if problems or vault is None:
        raise ConfigError(problems)
    return InjectorConfig(vault=vault, **sections)

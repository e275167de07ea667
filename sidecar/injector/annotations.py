"""The ``token-sidecar.io/*`` pod annotations: the catalogue and a parser without I/O.

Pod-wide keys are fixed names (``inject``, ``role``, ``containers``, ...); per-credential keys
are ``<key>-<name>``, where ``credential-<name>`` (the KV path) declares the credential and
the others (``token-endpoint-<name>``, ``scope-<name>``, ...) configure it. No credential key
is another's prefix, so ``client-id-billing`` can only be ``client-id`` of ``billing``.

:func:`parse` checks each value's type and shape and returns what it found, every problem
(each naming its annotation) and warnings about what is allowed but suspicious. Whether the
combination is a valid sidecar configuration is checked afterwards by the sidecar's own schema
(:mod:`sidecar.injector.review`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, get_args

from sidecar.config import NAME_PATTERN
from sidecar.injector.settings import QUANTITY_PATTERN
from sidecar.model import ClientAuthMethod, GrantType

__all__ = [
    "CREDENTIAL_KEYS",
    "POD_KEYS",
    "PREFIX",
    "Parsed",
    "Problem",
    "annotation",
    "parse",
    "quantity_value",
]

PREFIX = "token-sidecar.io/"
STATUS_INJECTED = "injected"

#: Pod-wide keys and what each means (docs/injector.md has the full catalogue).
POD_KEYS: Mapping[str, str] = {
    "inject": '"true" to inject the sidecar; "false" or absent: leave the pod alone',
    "status": 'written "injected" by the injector; a pod carrying it is left alone',
    "role": "the Vault role (kubernetes, jwt auth); default from the injector's config",
    "auth-method": "kubernetes | jwt; default from the injector's config",
    "auth-mount": "the Vault auth mount path; default from the injector's config",
    "vault-address": "the Vault address; default from the injector's config",
    "containers": "comma list of the containers that get the token mount; default every one",
    "cpu-request": "the sidecar's CPU request (a quantity)",
    "cpu-limit": "the sidecar's CPU limit (a quantity)",
    "memory-request": "the sidecar's memory request (a quantity)",
    "memory-limit": "the sidecar's memory limit (a quantity)",
}

#: Per-credential keys (``<key>-<name>``) and the sidecar config key each sets.
CREDENTIAL_KEYS: Mapping[str, str] = {
    "credential": "kv_path",
    "grant": "grant",
    "kv-mount": "kv_mount",
    "token-endpoint": "token_endpoint",
    "issuer": "issuer",
    "client-id": "client_id",
    "client-auth": "client_auth",
    "scope": "scope",
    "audience": "audience",
    "resource": "resource",
    "file-mode": "file_mode",
    "file-group": "file_group",
    "required": "required",
    "allow-insecure-http": "allow_insecure_http",
}
#: The annotation key for each credential config key, for messages.
ANNOTATION_FOR_FIELD: Mapping[str, str] = {v: k for k, v in CREDENTIAL_KEYS.items()}

_BOOLEANS = {"true": True, "false": False}
_KV_SEGMENT = re.compile(r"[A-Za-z0-9._@-]+")
_CONTAINER_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_CLIENT_AUTH = get_args(ClientAuthMethod)
_GRANTS = get_args(GrantType)
_SUFFIXES = {
    "m": Decimal("0.001"),
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}


def annotation(key: str, name: str | None = None) -> str:
    """The full annotation name: ``token-sidecar.io/<key>`` or ``.../<key>-<name>``."""
    return f"{PREFIX}{key}-{name}" if name else f"{PREFIX}{key}"


@dataclass(frozen=True)
class Problem:
    """A reason to deny: the annotation at fault and what is wrong with it."""

    annotation: str
    message: str

    def __str__(self) -> str:
        return f"annotation {self.annotation}: {self.message}"


@dataclass
class Parsed:
    """What the pod's annotations ask for (only keys that were set and valid)."""

    inject: bool = False
    status: str | None = None
    pod: dict[str, str] = field(default_factory=dict)
    containers: tuple[str, ...] | None = None
    resources: dict[str, str] = field(default_factory=dict)  # "cpu-request": "10m", ...
    credentials: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def quantity_value(text: str) -> Decimal:
    """A Kubernetes quantity as a number (``500m`` -> 0.5, ``1Mi`` -> 1048576)."""
    match = re.fullmatch(r"([0-9.]+)(?:[eE]([0-9]+))?([a-zA-Z]*)", text)
    if not match or match.group(3) not in _SUFFIXES:
        raise ValueError(text)
    try:
        number = Decimal(match.group(1))
    except InvalidOperation as exc:
        raise ValueError(text) from exc
    exponent = int(match.group(2) or 0)
    return number * (Decimal(10) ** exponent) * _SUFFIXES[match.group(3)]


def _split_credential_key(rest: str) -> tuple[str, str] | None:
    for key in sorted(CREDENTIAL_KEYS, key=len, reverse=True):
        if rest.startswith(f"{key}-"):
            return key, rest[len(key) + 1 :]
    return None


def parse(annotations: Mapping[str, Any]) -> Parsed:
    """Parse every ``token-sidecar.io/*`` annotation; other annotations are ignored."""
    parsed = Parsed()
    raw_credentials: dict[str, dict[str, str]] = {}
    for full, value in sorted(annotations.items()):
        if not full.startswith(PREFIX):
            continue
        rest = full.removeprefix(PREFIX)
        if not isinstance(value, str):
            parsed.problems.append(Problem(full, "the value must be a string"))
            continue
        if rest in POD_KEYS:
            _pod_key(parsed, rest, value)
            continue
        split = _split_credential_key(rest)
        if split is None:
            parsed.problems.append(Problem(full, f"unknown annotation under {PREFIX}"))
            continue
        key, name = split
        if not re.fullmatch(NAME_PATTERN, name):
            parsed.problems.append(
                Problem(
                    full,
                    f"credential name {name!r} must be 1-63 of a-z, 0-9 and '-', starting "
                    "and ending alphanumeric",
                )
            )
            continue
        raw_credentials.setdefault(name, {})[key] = value
    for name, keys in raw_credentials.items():
        if "credential" not in keys:
            for key in sorted(keys):
                parsed.problems.append(
                    Problem(
                        annotation(key, name),
                        f"no {annotation('credential', name)} declares credential {name!r}",
                    )
                )
            continue
        parsed.credentials[name] = _credential(parsed, name, keys)
    return parsed


def _boolean(value: str) -> tuple[Any, str | None]:
    if value not in _BOOLEANS:
        return None, 'must be "true" or "false"'
    return _BOOLEANS[value], None


def _status(value: str) -> tuple[Any, str | None]:
    if value != STATUS_INJECTED:
        return None, f'written by the injector; the only value is "{STATUS_INJECTED}"'
    return value, None


def _auth_method(value: str) -> tuple[Any, str | None]:
    if value not in ("kubernetes", "jwt"):
        return None, "must be kubernetes or jwt (the methods a pod can log in with)"
    return value, None


def _vault_name(value: str) -> tuple[Any, str | None]:
    if not re.fullmatch(r"[A-Za-z0-9._@/-]+", value) or not value.strip("/"):
        return None, "must be a Vault name (letters, digits, '.', '_', '-', '/')"
    return value.strip("/"), None


def _containers(value: str) -> tuple[Any, str | None]:
    names = tuple(part.strip() for part in value.split(","))
    if not any(names) or not all(_CONTAINER_NAME.fullmatch(n) for n in names if n):
        return None, "must be a comma-separated list of container names"
    return tuple(n for n in names if n), None


def _quantity(value: str) -> tuple[Any, str | None]:
    if not re.fullmatch(QUANTITY_PATTERN, value) or quantity_value(value) <= 0:
        return None, "must be a positive Kubernetes quantity such as 100m or 64Mi"
    return value, None


def _as_is(value: str) -> tuple[Any, str | None]:
    return value, None  # vault-address: its URL rules are the sidecar's, checked in review


_POD_VALUES = {
    "inject": _boolean,
    "status": _status,
    "auth-method": _auth_method,
    "role": _vault_name,
    "auth-mount": _vault_name,
    "vault-address": _as_is,
    "containers": _containers,
    "cpu-request": _quantity,
    "cpu-limit": _quantity,
    "memory-request": _quantity,
    "memory-limit": _quantity,
}


def _pod_key(parsed: Parsed, key: str, value: str) -> None:
    checked, problem = _POD_VALUES[key](value)
    if problem is not None:
        parsed.problems.append(Problem(annotation(key), problem))
        if key == "status":
            parsed.status = value
        return
    if key == "inject":
        parsed.inject = checked
    elif key == "status":
        parsed.status = checked
    elif key == "containers":
        parsed.containers = checked
    elif key.startswith(("cpu-", "memory-")):
        parsed.resources[key] = checked
    else:
        parsed.pod[key] = checked


def _credential(parsed: Parsed, name: str, keys: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    for key, value in keys.items():
        full = annotation(key, name)
        problem = _credential_value(out, key, value)
        if problem:
            parsed.problems.append(Problem(full, problem))
    if out.get("allow_insecure_http"):
        parsed.warnings.append(
            f"{annotation('allow-insecure-http', name)}: tokens for {name!r} may cross the "
            "network unencrypted"
        )
    path = out.get("kv_path", "")
    if path.startswith("data/") or "/data/" in f"/{path}":
        parsed.warnings.append(
            f"{annotation('credential', name)}: the path contains a 'data/' segment; KV v2 "
            "paths are given without it (the sidecar adds it)"
        )
    return out


def _kv_path(value: str) -> tuple[Any, str | None]:
    segments = value.strip("/").split("/")
    if not value.strip("/") or not all(_KV_SEGMENT.fullmatch(s) for s in segments):
        return (
            None,
            "must be a KV path: segments of letters, digits, '.', '_', '-', '@' joined by '/'",
        )
    if any(s in (".", "..") for s in segments):
        return None, "must be a KV path without '.' or '..' segments"
    return value.strip("/"), None


def _group(value: str) -> tuple[Any, str | None]:
    if not value.isdigit() or not 0 <= int(value) <= 4_294_967_294:
        return None, "must be a numeric group id"
    return int(value), None


def _mode(value: str) -> tuple[Any, str | None]:
    if not re.fullmatch(r"0?[0-7]{3}", value):
        return None, "must be an octal mode such as 0440"
    return value, None


def _client_auth(value: str) -> tuple[Any, str | None]:
    if value not in _CLIENT_AUTH:
        return None, f"must be one of {', '.join(_CLIENT_AUTH)}"
    return value, None


def _grant(value: str) -> tuple[Any, str | None]:
    if value not in _GRANTS:
        return None, f"must be one of {', '.join(_GRANTS)}"
    return value, None


def _resources(value: str) -> tuple[Any, str | None]:
    resources = [part for part in re.split(r"[,\s]+", value) if part]
    if not resources:
        return None, "must list at least one resource URI"
    return resources, None


def _line(value: str) -> tuple[Any, str | None]:
    if not value.strip() or any(ord(c) < 32 for c in value):
        return None, "must be a non-empty single line"
    return value.strip(), None


_CREDENTIAL_VALUES = {
    "credential": _kv_path,
    "kv-mount": _kv_path,
    "required": _boolean,
    "allow-insecure-http": _boolean,
    "file-group": _group,
    "file-mode": _mode,
    "client-auth": _client_auth,
    "grant": _grant,
    "resource": _resources,
}


def _credential_value(out: dict[str, Any], key: str, value: str) -> str | None:
    checked, problem = _CREDENTIAL_VALUES.get(key, _line)(value)
    if problem is None:
        out[CREDENTIAL_KEYS[key]] = checked
    return problem

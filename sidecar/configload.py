"""Loading the configuration: the YAML file, ``VAULT_*`` and the environment, checked at once.

The file may be YAML or JSON (a subset of YAML, which is what the chart renders): a file whose
text after any leading ``#`` comment lines starts with ``{`` is read with the standard
library's parser first, and PyYAML is imported only for a file that is not JSON, which keeps
its import off the chart's start-up.

Unknown keys and bad values stop start-up: :func:`load_settings` raises :class:`ConfigError`
with one message per problem, each naming its key (``credentials[0].token_endpoint``). Values
are never echoed, since a misplaced secret could be among them.

Every problem is reported at once, contradictions between keys included. Pydantic checks a
model's cross-key rules (its ``after`` validators) only when each of its fields is valid, so
when anything failed, :func:`load_settings` checks each rule again on its own keys (see
``_RULES``) and adds what that finds.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from sidecar.config import (
    CLAIM_TOO_SHORT,
    ENV_PREFIX,
    CoordinationConfig,
    CredentialConfig,
    HttpConfig,
    InvalidSettings,
    RefreshConfig,
    Settings,
    VaultAuthConfig,
    VaultConfig,
    claim_too_short,
    duplicate_credentials,
)
from sidecar.errors import ConfigError

__all__ = ["load_settings"]

_VAULT_ENV = {"VAULT_ADDR": "address", "VAULT_CACERT": "ca_cert", "VAULT_NAMESPACE": "namespace"}


def load_settings(path: Path | None = None) -> Settings:
    """Read the file (if any) and the environment; raise ConfigError listing every problem."""
    env = os.environ
    data = _read_file(path) if path is not None else {}
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
    except InvalidSettings as exc:
        found = _problems(exc.error) + _cross_key_problems(exc.data)
        raise ConfigError(list(dict.fromkeys(found))) from None
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None
    except SettingsError as exc:
        # A TOKEN_SIDECAR_* variable that must hold JSON (a list or a section) does not.
        field = re.search(r'field "([^"]+)"', str(exc))
        name = f"{ENV_PREFIX}{field.group(1).upper()}" if field else f"{ENV_PREFIX}*"
        raise ConfigError(
            [f"{name}: not valid JSON for this key (the value is not shown)"]
        ) from None


_JSON_BODY = re.compile(r"(?:[ \t]*(?:#[^\n]*)?\r?\n)*[ \t]*(\{.*)", re.DOTALL)
"""A JSON object, after blank lines and ``#`` comment lines (the chart's ConfigMap has one)."""


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"--config {path}: cannot read ({exc.strerror})"]) from exc
    body = _JSON_BODY.match(text)
    if body:
        try:
            return _top_level(path, json.loads(body.group(1)))
        except json.JSONDecodeError:
            pass  # a YAML flow mapping, or broken: PyYAML reads it or says where it breaks
    return _top_level(path, _parse_yaml(path, text))


def _parse_yaml(path: Path, text: str) -> Any:
    import yaml  # noqa: PLC0415  # only for a file that is not JSON (see the module docstring)

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"--config {path}: not valid YAML{where}"]) from exc


def _top_level(path: Path, data: Any) -> dict[str, Any]:
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


#: The keys each cross-key rule reads, per model: validated alone (other keys at their
#: defaults), a rule reports its problem even when unrelated keys of the model are invalid.
_RULES: dict[type[BaseModel], tuple[tuple[str, ...], ...]] = {
    VaultAuthConfig: (("method", "role", "role_id_file", "secret_id_file"),),
    VaultConfig: (("address", "allow_insecure_http"),),
    CredentialConfig: (
        ("token_endpoint", "issuer", "allow_insecure_http"),
        (
            "grant",
            "kv_path",
            "client_auth",
            "client_id",
            "client_secret_file",
            "private_key_file",
            "client_cert_file",
            "client_key_file",
            "token_endpoint",
            "issuer",
            "allow_insecure_http",
        ),
    ),
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
        stand_ins = {k: v for k, v in _STAND_INS.get(model, {}).items() if k not in keys}
        subset = {**stand_ins, **{k: raw[k] for k in keys if k in raw}}
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
        problems += duplicate_credentials(pairs)
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
        if claim_too_short(claim, timeout):
            problems.append(CLAIM_TOO_SHORT)
    return problems


def _section(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name)
    return value if isinstance(value, Mapping) else {}

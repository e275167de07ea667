"""What every section of the schema shares: strictness, the name pattern, URL checks."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
)

__all__ = ["ENV_PREFIX", "NAME_PATTERN", "Section", "check_url", "is_loopback"]

ENV_PREFIX = "TOKEN_SIDECAR_"
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class Section(BaseModel):
    """A section of the configuration: unknown keys refused, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def is_loopback(host: str) -> bool:
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
    if parts.scheme == "http" and not (allow_http or is_loopback(parts.hostname)):
        raise ValueError(
            f"{what}: plain http to a non-loopback host (use https, "
            "or set allow_insecure_http: true)"
        )
    return value

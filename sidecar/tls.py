"""The TLS client context for Vault and the token endpoints: verification always on."""

from __future__ import annotations

import ssl
from pathlib import Path

from sidecar.errors import ConfigError

__all__ = ["client_context"]


def client_context(ca_cert: Path | None, *, needed: bool, setting: str) -> ssl.SSLContext:
    """Certificates and host names verified against ``ca_cert``, else the system trust store
    (``SSL_CERT_FILE``/``SSL_CERT_DIR`` apply).

    ``needed=False`` (no ``https://`` URL configured) loads no trust store, which costs
    megabytes per process: an ``https://`` URL met anyway then fails verification, never goes
    unverified. Raises ConfigError naming ``setting`` when the bundle cannot be loaded.
    """
    if not needed:
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        return ssl.create_default_context(cafile=str(ca_cert) if ca_cert else None)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or exc.__class__.__name__
        problem = f"{setting}: cannot load a CA bundle from {ca_cert} ({reason})"
        raise ConfigError([problem]) from exc

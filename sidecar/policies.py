"""The pure core's policies, built from the settings (each default lives in :mod:`sidecar.config`).

Wiring, beside :mod:`sidecar.app`: the refresher, the schedule, the backoff and the
coordination take plain dataclasses, never the settings; ``client_template`` also reads the
credential's key and secret files once, at start.
"""

from __future__ import annotations

from pathlib import Path

from sidecar.backoff import BackoffPolicy
from sidecar.client_auth import ClientTemplate
from sidecar.config import CoordinationConfig, CredentialConfig, RefreshConfig, Settings
from sidecar.coordination import CoordinationPolicy
from sidecar.errors import ConfigError
from sidecar.schedule import RefreshPolicy, SchedulePolicy

__all__ = [
    "backoff_policy",
    "client_template",
    "coordination_policy",
    "refresh_policy",
    "schedule_policy",
]


def _read_file(credential: CredentialConfig, key: str, path: Path | None) -> str | None:
    """A key or secret file's text, read at start; None when not configured."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not ASCII"
        raise ConfigError(
            [f"credentials.{credential.name}.{key}: cannot read {path} ({reason})"]
        ) from exc
    # A mounted Secret file often ends with a newline the value never had.
    return text.strip() if key == "client_secret_file" else text


def schedule_policy(refresh: RefreshConfig) -> SchedulePolicy:
    return SchedulePolicy(
        fraction=refresh.fraction,
        jitter=refresh.jitter,
        min_margin=refresh.min_margin_seconds,
        min_interval=refresh.min_interval_seconds,
        default_expires_in=refresh.default_expires_in,
        max_expires_in=refresh.max_expires_in,
    )


def backoff_policy(refresh: RefreshConfig) -> BackoffPolicy:
    return BackoffPolicy(
        initial=refresh.backoff_initial_seconds,
        maximum=refresh.backoff_max_seconds,
        max_retry_after=refresh.max_retry_after_seconds,
    )


def coordination_policy(coordination: CoordinationConfig) -> CoordinationPolicy:
    return CoordinationPolicy(
        claim_seconds=coordination.claim_seconds,
        clock_skew_seconds=coordination.clock_skew_seconds,
        poll_seconds=coordination.poll_seconds,
        exclusive=coordination.exclusive,
    )


def refresh_policy(settings: Settings) -> RefreshPolicy:
    return RefreshPolicy(
        schedule=schedule_policy(settings.refresh),
        backoff=backoff_policy(settings.refresh),
        coordination=coordination_policy(settings.coordination),
        secret_poll=settings.refresh.secret_poll_seconds,
        operation_timeout=settings.vault.timeout_seconds,
        exchange_timeout=settings.http.timeout_seconds,
    )


def client_template(credential: CredentialConfig) -> ClientTemplate:
    return ClientTemplate(
        method=credential.client_auth,
        client_id=credential.client_id,
        private_key=_read_file(credential, "private_key_file", credential.private_key_file),
        signing_alg=credential.signing_alg,
        key_id=credential.key_id,
        client_secret=_read_file(credential, "client_secret_file", credential.client_secret_file),
        cert_file=credential.client_cert_file,
        key_file=credential.client_key_file,
    )

"""The core's policies as a sidecar with default settings runs them, with a few changes.

Built through the wiring (:func:`sidecar.policies.refresh_policy`) from the settings' defaults, so
the tests run with the defaults users get and no test keeps a copy of them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sidecar.backoff import BackoffPolicy
from sidecar.config import CoordinationConfig, HttpConfig, RefreshConfig, Settings, VaultConfig
from sidecar.coordination import CoordinationPolicy
from sidecar.policies import refresh_policy
from sidecar.schedule import RefreshPolicy, SchedulePolicy

__all__ = ["DEFAULTS", "backoff", "coordination", "policy", "schedule"]

# Every section at its defaults; built without reading the environment.
DEFAULTS: RefreshPolicy = refresh_policy(
    Settings.model_construct(
        vault=VaultConfig(),
        refresh=RefreshConfig(),
        http=HttpConfig(),
        coordination=CoordinationConfig(holder="test"),
    )
)


def schedule(**changes: Any) -> SchedulePolicy:
    return replace(DEFAULTS.schedule, **changes)


def backoff(**changes: Any) -> BackoffPolicy:
    return replace(DEFAULTS.backoff, **changes)


def coordination(**changes: Any) -> CoordinationPolicy:
    return replace(DEFAULTS.coordination, **changes)


def policy(**changes: Any) -> RefreshPolicy:
    return replace(DEFAULTS, **changes)

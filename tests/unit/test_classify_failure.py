"""classify_failure: the one mapping from the error tree to what a loop does next (R6)."""

from __future__ import annotations

import pytest

from sidecar import errors
from sidecar.errors import Severity, SidecarError, classify_failure

EVERY_ERROR = sorted(
    (
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, SidecarError)
    ),
    key=lambda cls: cls.__name__,
)

EXPECTED = {
    "InvalidGrant": Severity.REJECTED,
    "ResponseLostTwice": Severity.REJECTED,
    # retryable: transient, back off
    "VaultUnavailable": Severity.RETRYABLE,
    "CasConflict": Severity.RETRYABLE,
    "ClaimExpired": Severity.RETRYABLE,
    "TokenEndpointUnavailable": Severity.RETRYABLE,
    "ResponseLost": Severity.RETRYABLE,
    "MalformedResponse": Severity.RETRYABLE,
    "ExpiredAnswer": Severity.RETRYABLE,
    "SinkError": Severity.RETRYABLE,
    "JournalError": Severity.RETRYABLE,
    "JournalBusy": Severity.RETRYABLE,
    "NotifyFailed": Severity.RETRYABLE,
    "RetryableError": Severity.RETRYABLE,
    # final: wait for a change
    "SidecarError": Severity.FINAL,
    "ConfigError": Severity.FINAL,
    "FinalError": Severity.FINAL,
    "ClientRejected": Severity.FINAL,
    "ClientCertificateInvalid": Severity.FINAL,
    "VaultPermissionDenied": Severity.FINAL,
    "VaultAuthFailed": Severity.FINAL,
    "SecretNotFound": Severity.FINAL,
    "SecretInvalid": Severity.FINAL,
    "SecretRetired": Severity.FINAL,
    "SecretExists": Severity.FINAL,
    "AuthorizationDenied": Severity.FINAL,
    "AuthorizationExpired": Severity.FINAL,
}


def test_every_error_class_has_an_expected_severity() -> None:
    assert {cls.__name__ for cls in EVERY_ERROR} == set(EXPECTED)


@pytest.mark.parametrize("cls", EVERY_ERROR, ids=lambda cls: cls.__name__)
def test_severity_of(cls: type[SidecarError]) -> None:
    if cls is errors.ConfigError:
        exc: SidecarError = errors.ConfigError(["x"])
    elif cls is errors.NotifyFailed:
        exc = errors.NotifyFailed("timeout", "x")
    else:
        exc = cls("x")
    assert classify_failure(exc) is EXPECTED[cls.__name__]

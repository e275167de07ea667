"""The project's one error tree.

Adapters translate third-party exceptions (httpx, OS errors) into these classes at the
boundary with ``raise ... from exc``; the core decides what to do from the class alone.

::

    SidecarError
    ├── ConfigError                  bad configuration; stops start-up (never retried)
    ├── RetryableError               transient; back off (honouring retry_after) and try again
    │   ├── VaultUnavailable         connection refused/reset, timeout, 5xx, 429, sealed
    │   ├── CasConflict              KV check-and-set lost to another writer; re-read
    │   ├── ClaimExpired             this replica's claim ran out before it could exchange
    │   ├── TokenEndpointUnavailable connection refused, timeout, 5xx, 429,
    │   │   │                        temporarily_unavailable, server_error
    │   │   └── ResponseLost         request sent, answer lost: the server may have rotated
    │   ├── MalformedResponse        the token endpoint answered something that is not RFC 6749
    │   │                            (``salvaged_refresh_token``: a rotated token it still held)
    │   ├── ExpiredAnswer            a 2xx answer whose access token is already expired
    │   ├── SinkError                the token file could not be written (disk full, read-only)
    │   │   └── JournalError         the journal could not be created, written, read or cleared
    │   │       └── JournalBusy      another live process of this sidecar uses the journal
    │   └── NotifyFailed             the app was not told of a new token (``kind`` says how)
    └── FinalError                   retrying the same input cannot help; wait for a change
        ├── InvalidGrant             refresh token rejected (invalid_grant): never present it again
        ├── ResponseLostTwice        the retry's answer was lost too: the token may be spent
        ├── ClientRejected           invalid_client, unauthorized_client, invalid_scope, ...
        ├── ClientCertificateInvalid the TLS client certificate or key is unreadable, expired,
        │                            not yet valid or mismatched (read again at the next try)
        ├── VaultPermissionDenied    403 after a fresh login
        ├── VaultAuthFailed          login refused (role, JWT, AppRole credentials)
        ├── SecretNotFound           no secret at the KV path
        ├── SecretInvalid            the secret lacks a usable ``refresh_token`` field
        ├── SecretRetired            an operator retired the credential (``retire``)
        ├── SecretExists             ``seed`` found a refresh token and was not told to replace it
        ├── AuthorizationDenied      the user refused a ``seed`` login (access_denied)
        └── AuthorizationExpired     a ``seed`` login was not completed in time (expired_token)

Every error has a short ``kind`` used in metrics, health output and log events. Messages name
what was wrong and where; they never contain a token, a client secret or a response body.
:func:`classify_failure` is the one place that turns the class into what a loop does next.
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "AuthorizationDenied",
    "AuthorizationExpired",
    "CasConflict",
    "ClaimExpired",
    "ClientCertificateInvalid",
    "ClientRejected",
    "ConfigError",
    "ExpiredAnswer",
    "FinalError",
    "InvalidGrant",
    "JournalBusy",
    "JournalError",
    "MalformedResponse",
    "NotifyFailed",
    "ResponseLost",
    "ResponseLostTwice",
    "RetryableError",
    "SecretExists",
    "SecretInvalid",
    "SecretNotFound",
    "SecretRetired",
    "Severity",
    "SidecarError",
    "SinkError",
    "TokenEndpointUnavailable",
    "VaultAuthFailed",
    "VaultPermissionDenied",
    "VaultUnavailable",
    "classify_failure",
    "expired_answer",
]


class SidecarError(Exception):
    """Base of every error the sidecar raises on purpose."""

    kind = "error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: seconds the other side asked us to wait (``Retry-After``), if it said so.
        self.retry_after = retry_after


class ConfigError(SidecarError):
    """The configuration is invalid; ``problems`` lists one message per problem."""

    kind = "config"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class RetryableError(SidecarError):
    kind = "retryable"


class VaultUnavailable(RetryableError):
    kind = "vault_unavailable"


class CasConflict(RetryableError):
    kind = "cas_conflict"


class ClaimExpired(RetryableError):
    """The claim on a shared secret has less time left than one exchange could take.

    The refresh token is not presented (another replica may claim the secret once this one
    runs out); the loop reads the secret again after a backoff. Not a Vault fault.
    """

    kind = "claim_expired"


class TokenEndpointUnavailable(RetryableError):
    kind = "endpoint_unavailable"


class ResponseLost(TokenEndpointUnavailable):
    """The request reached the server but its answer did not reach us.

    The server may have rotated the refresh token. R1 allows exactly one immediate retry of
    the same request; after that the outcome is classified, never looped.
    """

    kind = "response_lost"


class MalformedResponse(RetryableError):
    """A 2xx answer that is not a usable RFC 6749 token response (or one over the size bound).

    ``salvaged_refresh_token`` is the complete rotated refresh token the answer still carried,
    if any: the server has probably rotated, so the caller persists it (R2). It is never part
    of the message or the ``repr``.
    """

    kind = "malformed_response"

    def __init__(
        self,
        message: str,
        *,
        salvaged_refresh_token: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.salvaged_refresh_token = salvaged_refresh_token


class ExpiredAnswer(RetryableError):
    """The token endpoint answered 2xx with an access token that is already expired
    (``expires_in`` zero or negative, or an expiry before the answer arrived). A refresh
    token the answer rotated is still persisted (R2); the published token stays.
    """

    kind = "expired_answer"


class SinkError(RetryableError):
    kind = "sink_error"


class NotifyFailed(RetryableError):
    """A notification of a new token did not reach the app; retried until a newer one.

    ``kind`` names how it failed, for the metric's ``outcome`` label: ``unreachable``,
    ``status``, ``timeout``, ``no_pid_file``, ``no_process``, ``forbidden``, ``exit_status``,
    ``not_runnable``, and ``error`` for an unexpected fault in a sender.
    """

    kind = "notify_failed"

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class JournalError(SinkError):
    kind = "journal_error"


class JournalBusy(JournalError):
    """Another live process holds the journal's lock (a ``once`` beside a ``run``)."""

    kind = "journal_busy"


class FinalError(SidecarError):
    kind = "final"


class InvalidGrant(FinalError):
    kind = "invalid_grant"


class ResponseLostTwice(FinalError):
    """The one retry R1 allows lost its answer too: the refresh token may be spent."""

    kind = "response_lost_twice"


class ClientRejected(FinalError):
    kind = "client_rejected"

    def __init__(self, message: str, *, oauth_error: str = "invalid_client") -> None:
        super().__init__(message)
        self.oauth_error = oauth_error


class ClientCertificateInvalid(FinalError):
    """The message names the file or secret field, never the certificate's or key's text."""

    kind = "client_certificate"


class VaultPermissionDenied(FinalError):
    kind = "vault_forbidden"


class VaultAuthFailed(FinalError):
    kind = "vault_auth_failed"


class SecretNotFound(FinalError):
    kind = "secret_not_found"


class SecretInvalid(FinalError):
    kind = "secret_invalid"


class SecretRetired(FinalError):
    kind = "retired"


class SecretExists(FinalError):
    kind = "secret_exists"


class AuthorizationDenied(FinalError):
    kind = "access_denied"


class AuthorizationExpired(FinalError):
    kind = "expired_token"


class Severity(Enum):
    """What a failed attempt means for the next one (R6)."""

    REJECTED = "rejected"
    """The refresh token is given up (never presented again) until Vault holds another."""
    FINAL = "final"
    """Retrying the same input cannot help: look again at the secret-poll pace."""
    RETRYABLE = "retryable"
    """Transient: back off, honouring ``retry_after``, and try again."""


def classify_failure(exc: SidecarError) -> Severity:
    """The severity of ``exc``: what to share with the other replicas, which phase to report,
    how long to wait. A configuration error is final (it needs a change, not a retry)."""
    if isinstance(exc, InvalidGrant | ResponseLostTwice):
        return Severity.REJECTED
    if isinstance(exc, RetryableError):
        return Severity.RETRYABLE
    return Severity.FINAL


def expired_answer(expires_in: float | None) -> ExpiredAnswer:
    """The error for a 2xx answer whose access token is already expired (R4)."""
    return ExpiredAnswer(
        "the token endpoint answered with an access token that is already expired "
        f"(expires_in {expires_in}); the published token stays"
    )

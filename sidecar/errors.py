"""The project's one error tree.

Adapters translate third-party exceptions (httpx, OS errors) into these classes at the
boundary with ``raise ... from exc``; the core decides what to do from the class alone.

::

    SidecarError
    ├── ConfigError                  bad configuration; stops start-up (never retried)
    ├── RetryableError               transient; back off (honouring retry_after) and try again
    │   ├── VaultUnavailable         connection refused/reset, timeout, 5xx, 429, sealed
    │   ├── CasConflict              KV check-and-set lost to another writer; re-read
    │   ├── TokenEndpointUnavailable connection refused, timeout, 5xx, 429,
    │   │   │                        temporarily_unavailable, server_error
    │   │   └── ResponseLost         request sent, answer lost: the server may have rotated
    │   ├── MalformedResponse        the token endpoint answered something that is not RFC 6749
    │   └── SinkError                the token file could not be written (disk full, read-only)
    └── FinalError                   retrying the same input cannot help; wait for a change
        ├── InvalidGrant             refresh token rejected (invalid_grant): never present it again
        ├── ResponseLostTwice        the retry's answer was lost too: the token may be spent
        ├── ClientRejected           invalid_client, unauthorized_client, invalid_scope, ...
        ├── VaultPermissionDenied    403 after a fresh login
        ├── VaultAuthFailed          login refused (role, JWT, AppRole credentials)
        ├── SecretNotFound           no secret at the KV path
        └── SecretInvalid            the secret lacks a usable ``refresh_token`` field

Every error has a short ``kind`` used in metrics, health output and log events. Messages name
what was wrong and where; they never contain a token, a client secret or a response body.
"""

from __future__ import annotations

__all__ = [
    "CasConflict",
    "ClientRejected",
    "ConfigError",
    "FinalError",
    "InvalidGrant",
    "MalformedResponse",
    "ResponseLost",
    "ResponseLostTwice",
    "RetryableError",
    "SecretInvalid",
    "SecretNotFound",
    "SidecarError",
    "SinkError",
    "TokenEndpointUnavailable",
    "VaultAuthFailed",
    "VaultPermissionDenied",
    "VaultUnavailable",
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


class TokenEndpointUnavailable(RetryableError):
    kind = "endpoint_unavailable"


class ResponseLost(TokenEndpointUnavailable):
    """The request reached the server but its answer did not reach us.

    The server may have rotated the refresh token. R1 allows exactly one immediate retry of
    the same request; after that the outcome is classified, never looped.
    """

    kind = "response_lost"


class MalformedResponse(RetryableError):
    kind = "malformed_response"


class SinkError(RetryableError):
    kind = "sink_error"


class FinalError(SidecarError):
    kind = "final"


class InvalidGrant(FinalError):
    kind = "invalid_grant"


class ResponseLostTwice(FinalError):
    kind = "response_lost"


class ClientRejected(FinalError):
    kind = "client_rejected"

    def __init__(self, message: str, *, oauth_error: str = "invalid_client") -> None:
        super().__init__(message)
        self.oauth_error = oauth_error


class VaultPermissionDenied(FinalError):
    kind = "vault_forbidden"


class VaultAuthFailed(FinalError):
    kind = "vault_auth_failed"


class SecretNotFound(FinalError):
    kind = "secret_not_found"


class SecretInvalid(FinalError):
    kind = "secret_invalid"

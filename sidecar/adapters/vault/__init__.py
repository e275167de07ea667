"""Vault (or OpenBao): one logged-in session, and KV v2 secrets read and CAS-written.

- :mod:`.lease`: when the Vault token is renewed or replaced (pure);
- :mod:`.api`: the few HTTP calls, over ``httpx`` (the same HTTP stack as the token endpoint);
- :mod:`.auth`: what a login sends (credential files read at every login) and what it returns;
- :mod:`.failures`: a failed request as one of :mod:`sidecar.errors`;
- :mod:`.session`: :class:`VaultSession`, the process's login, shared by every credential;
- :mod:`.kv`: :class:`VaultSecretStore`, one credential's secret (``sidecar.ports.SecretStore``).
"""

from sidecar.adapters.vault.kv import VaultSecretStore, secret_from_kv
from sidecar.adapters.vault.lease import (
    RENEW_FRACTION,
    TokenLease,
    TokenPlan,
    plan_token,
    renewal_is_useful,
)
from sidecar.adapters.vault.session import VaultSession, tls_context

__all__ = [
    "RENEW_FRACTION",
    "TokenLease",
    "TokenPlan",
    "VaultSecretStore",
    "VaultSession",
    "plan_token",
    "renewal_is_useful",
    "secret_from_kv",
    "tls_context",
]

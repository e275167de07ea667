"""token-sidecar: keeps a service supplied with short-lived OAuth 2.0 access tokens.

The refresh token lives in Vault (KV v2); the sidecar exchanges it at the authorization
server's token endpoint, writes the access token to a shared in-memory volume ahead of every
expiry, and writes rotated refresh tokens back to Vault.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"

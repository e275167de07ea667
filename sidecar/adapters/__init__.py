"""Adapters: the only modules that do I/O (Vault, token endpoint, files, HTTP, logs).

Adapters implement the protocols in :mod:`sidecar.ports`; they never import each other.
"""

"""The sidecar with exceptions forced inside it, for the leak tests (never for production).

``python -m tests.hostile.faulty_sidecar [--config FILE] COMMAND`` runs the real CLI after
patching these points; ``HOSTILE_FAULTS`` lists the faults to force, each once per fault
directory (``HOSTILE_FAULT_DIR`` keeps a marker, so a restarted process does not fire it again),
and in the order listed (a fault waits until the ones before it have fired):

``exchange_request``
    the token request raises before it is sent, with its URL, headers (the client's Basic
    credentials) and body (the refresh token) in the message;
``exchange_answer``
    the answer is received and parsed, then an exception carries the new access and refresh
    tokens in its message (the server has rotated; the process dies before it can keep the
    new token, which is the window no client can close);
``writeback``
    the write of a rotated refresh token to Vault raises with the secret's whole data (the new
    refresh token, the client secret, the shared access token) in its message;
With ``HOSTILE_K8S_API`` set, the Kubernetes client talks to that URL instead of the
in-cluster API server (the raw server records the Events, for the scan).

None of these exceptions is one of the sidecar's own: the process crashes as it would on a
bug, and what it prints about the crash is what the leak tests scan.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sidecar.adapters import exchange, vault
from sidecar.cli import main as sidecar_main
from sidecar.model import ClientCredentials, StoredSecret, TokenGrant

__all__ = ["install"]


def _fire(name: str) -> bool:
    """True the first time fault ``name`` is due (per fault directory, in the listed order)."""
    faults = os.environ.get("HOSTILE_FAULTS", "").split(",")
    if name not in faults:
        return False
    directory = Path(os.environ.get("HOSTILE_FAULT_DIR", "."))
    marker = directory / f"{name}.fired"
    earlier = faults[: faults.index(name)]
    if marker.exists() or not all((directory / f"{e}.fired").exists() for e in earlier):
        return False
    directory.mkdir(parents=True, exist_ok=True)
    marker.write_text("fired")
    return True


def install() -> None:
    request = exchange.TokenEndpoint._request
    refresh = exchange.TokenEndpoint.refresh
    write = vault.VaultSecretStore.write

    async def failing_request(
        self: exchange.TokenEndpoint, method: str, url: str, **kwargs: Any
    ) -> Any:
        if method == "POST" and _fire("exchange_request"):
            raise RuntimeError(
                f"forced in the exchange: POST {url} headers={kwargs.get('headers')!r} "
                f"body={kwargs.get('content')!r}"
            )
        return await request(self, method, url, **kwargs)

    async def failing_refresh(
        self: exchange.TokenEndpoint, refresh_token: str, client: ClientCredentials
    ) -> TokenGrant:
        grant = await refresh(self, refresh_token, client)
        if _fire("exchange_answer"):
            raise RuntimeError(
                f"forced after the exchange: access={grant.access_token} "
                f"refresh={grant.refresh_token} presented={refresh_token}"
            )
        return grant

    async def failing_write(
        self: vault.VaultSecretStore, secret: StoredSecret, data: Mapping[str, Any]
    ) -> StoredSecret:
        if data.get("refresh_token") != secret.refresh_token and _fire("writeback"):
            raise RuntimeError(f"forced in the write-back: {dict(data)!r}")
        return await write(self, secret, data)

    exchange.TokenEndpoint._request = failing_request  # type: ignore[method-assign]
    exchange.TokenEndpoint.refresh = failing_refresh  # type: ignore[method-assign]
    vault.VaultSecretStore.write = failing_write  # type: ignore[method-assign]
    api = os.environ.get("HOSTILE_K8S_API")
    if api:
        _fake_in_cluster(api)


def _fake_in_cluster(host: str) -> None:
    import kubernetes.client  # noqa: PLC0415  # only with Events enabled
    import kubernetes.config  # noqa: PLC0415

    def load_incluster_config(*args: Any, **kwargs: Any) -> None:
        configuration = kubernetes.client.Configuration()
        configuration.host = host
        kubernetes.client.Configuration.set_default(configuration)

    kubernetes.config.load_incluster_config = load_incluster_config


if __name__ == "__main__":
    install()
    raise SystemExit(sidecar_main())

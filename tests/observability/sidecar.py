"""A real token-sidecar process for the monitoring tests, on top of the shared Deployment.

Set up as a platform engineer would (a Vault policy and Kubernetes-auth role, a seeded secret)
and configured only through documented keys, with short back-off and secret polling so that
failures and recoveries show within seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import httpx

from tests.support.deployment import KV_PATH, ROLE, Deployment, wait_for

__all__ = ["KV_PATH", "SidecarProcess", "wait_for"]

CLIENT = "client-basic"


@dataclass
class SidecarProcess(Deployment):
    seeded: str = ""
    grant_id: str = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def provision(self) -> None:
        """Vault policy, role and service-account token; a fresh grant seeded in the secret."""
        policy = self.openbao.write_kv_policy("observability-billing", KV_PATH)
        self.openbao.create_role(ROLE, [policy])
        (self.root / "sa-token").write_text(self.openbao.mint_sa_jwt())
        grant = self.idp.seed(CLIENT)
        self.grant_id = grant.grant_id
        self.seeded = grant.refresh_token
        self.openbao.put_secret(
            KV_PATH,
            {
                "refresh_token": grant.refresh_token,
                "client_id": CLIENT,
                "client_secret": self.idp.client_secret(CLIENT),
            },
        )
        self.write_config(
            refresh={
                "backoff_initial_seconds": 0.5,
                "backoff_max_seconds": 2,
                "secret_poll_seconds": 1,
            }
        )

    def token_expires_at(self) -> float | None:
        """``expires_at`` of the published token.json (Unix time), or None before the first."""
        try:
            document = json.loads((self.output_dir / "token.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        stamp = datetime.fromisoformat(document["expires_at"].replace("Z", "+00:00"))
        return stamp.timestamp()

    def state(self) -> str | None:
        try:
            body = self.get("/healthz").json()
        except (httpx.HTTPError, ValueError):
            return None
        state: str = body["credentials"]["billing"]["state"]
        return state

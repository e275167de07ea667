"""A real token-sidecar process against the real OpenBao and oidc-provider test servers.

Set up as a platform engineer would (a Vault policy and Kubernetes-auth role, a seeded secret)
and configured only through documented keys, with short back-off and secret polling so that
failures and recoveries show within seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.observability.prometheus import free_port
from tests.support.idp import IdpServer
from tests.support.openbao import OpenBaoServer

__all__ = ["KV_PATH", "SidecarProcess", "wait_for"]

ROLE = "observability"
KV_PATH = "apps/observability/billing"
CLIENT = "client-basic"


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll until ``predicate()`` is truthy; return its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


@dataclass
class SidecarProcess:
    openbao: OpenBaoServer
    idp: IdpServer
    root: Path
    grant_id: str = ""
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def output_dir(self) -> Path:
        return self.root / "tokens" / "billing"

    @property
    def log_path(self) -> Path:
        return self.root / "sidecar.log"

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
        self.openbao.put_secret(
            KV_PATH,
            {
                "refresh_token": grant.refresh_token,
                "client_id": CLIENT,
                "client_secret": self.idp.client_secret(CLIENT),
            },
        )
        config = {
            "vault": {
                "address": self.openbao.address,
                "auth": {
                    "method": "kubernetes",
                    "role": ROLE,
                    "jwt_file": str(self.root / "sa-token"),
                },
            },
            "credentials": [
                {
                    "name": "billing",
                    "kv_path": KV_PATH,
                    "token_endpoint": self.idp.token_endpoint,
                    "output_dir": str(self.output_dir),
                }
            ],
            "server": {"address": self.address},
            "log": {"level": "debug", "format": "json"},
            "journal": {"dir": str(self.root / "journal")},
            "refresh": {
                "min_margin_seconds": 1,
                "ready_margin_seconds": 1,
                "backoff_initial_seconds": 0.5,
                "backoff_max_seconds": 2,
                "secret_poll_seconds": 1,
                "shutdown_grace_seconds": 5,
            },
        }
        (self.root / "config.yaml").write_text(yaml.safe_dump(config))

    def start(self) -> None:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("TOKEN_SIDECAR_", "VAULT_"))
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sidecar",
                    "run",
                    "--config",
                    str(self.root / "config.yaml"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; only the process this object started."""
        process = self.process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout=timeout)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://{self.address}{path}", timeout=5)

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

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

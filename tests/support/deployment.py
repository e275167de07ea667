"""A sidecar deployment for end-to-end tests: real OpenBao, real oidc-provider, real processes.

:class:`Deployment` is what a platform engineer would set up for one replica (policy, role,
seeded secret, config file) plus handles to inspect the result; :meth:`Deployment.replica`
adds another replica sharing the same secret.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.idp import IdpServer
from tests.support.openbao import OpenBaoServer

__all__ = [
    "KV_PATH",
    "ROLE",
    "Deployment",
    "Reader",
    "assert_vault_holds_the_live_token",
    "deployment",
    "free_port",
    "idp_secret",
    "set_up",
    "wait_for",
]

ROLE = "e2e"
KV_PATH = "apps/e2e/billing"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Deployment:
    """Everything a platform engineer would set up, plus handles to inspect the result."""

    openbao: OpenBaoServer
    idp: IdpServer
    root: Path
    seeded: str
    name: str = "app-0"
    """The pod name (``POD_NAME``), the readable part of each process's identity in claims."""
    pod_name: bool = True
    """Whether ``POD_NAME`` is set; without it the host name (shared by every process of the
    test, like systemd units on one VM) is the readable part."""
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    replicas: list[Deployment] = field(default_factory=list)

    def replica(self, name: str) -> Deployment:
        """Another replica of the same app: same secret, its own pod, files and journal."""
        root = self.root / "replicas" / name
        root.mkdir(parents=True)
        (root / "sa-token").write_text((self.root / "sa-token").read_text())
        other = Deployment(
            self.openbao, self.idp, root, self.seeded, name=name, pod_name=self.pod_name
        )
        other.write_config(**self.overrides)
        self.replicas.append(other)
        return other

    @property
    def output_dir(self) -> Path:
        return self.root / "tokens" / "billing"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log_path(self) -> Path:
        return self.root / "sidecar.log"

    def write_config(
        self,
        *,
        refresh: dict[str, Any] | None = None,
        sections: dict[str, dict[str, Any]] | None = None,
        **credential_overrides: Any,
    ) -> None:
        """Write the config file; ``sections`` adds top-level sections (``http``, ...)."""
        self.overrides = {**credential_overrides}
        if refresh:
            self.overrides["refresh"] = refresh
        if sections:
            self.overrides["sections"] = sections
        credential: dict[str, Any] = {
            "name": "billing",
            "kv_path": KV_PATH,
            "token_endpoint": self.idp.token_endpoint,
            "client_auth": "client_secret_basic",
            "output_dir": str(self.output_dir),
            **credential_overrides,
        }
        config: dict[str, Any] = {
            "vault": {
                "address": self.openbao.address,
                "auth": {
                    "method": "kubernetes",
                    "role": ROLE,
                    "jwt_file": str(self.root / "sa-token"),
                },
            },
            "credentials": [credential],
            "server": {"address": f"127.0.0.1:{self.port}"},
            "log": {"level": "debug", "format": "json"},
            "journal": {"dir": str(self.root / "journal")},
            "refresh": {
                "min_margin_seconds": 1,
                "ready_margin_seconds": 1,
                "shutdown_grace_seconds": 5,
                **(refresh or {}),
            },
            **(sections or {}),
        }
        self.config_path.write_text(yaml.safe_dump(config))

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sidecar", "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            check=False,
        )

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=log,
            env=self.env(),
        )
        log.close()

    def env(self) -> dict[str, str]:
        return {**clean_env(), **({"POD_NAME": self.name} if self.pod_name else {})}

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; only the process this object started."""
        process = self.process
        if process is None:
            return None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout=timeout)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def vault_secret(self) -> tuple[dict[str, Any], int]:
        return self.openbao.read_secret(KV_PATH)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TOKEN_SIDECAR_", "VAULT_")) and k != "POD_NAME"
    }


def set_up(openbao: OpenBaoServer, idp: IdpServer, root: Path) -> Deployment:
    """What a platform engineer does for one app: policy, role, seeded secret, config file.

    Access tokens last 4 s from here on, so rotations come every few seconds."""
    idp.set_ttl(access_token=4)
    policy = openbao.write_kv_policy("e2e-billing", KV_PATH)
    openbao.create_role(ROLE, [policy])
    (root / "sa-token").write_text(openbao.mint_sa_jwt())
    seeded = idp.seed_refresh_token("client-basic")
    openbao.put_secret(
        KV_PATH,
        {
            "refresh_token": seeded,
            "client_id": "client-basic",
            "client_secret": idp.client_secret("client-basic"),
            "owner": "team-billing",
        },
    )
    dep = Deployment(openbao=openbao, idp=idp, root=root, seeded=seeded)
    dep.write_config()
    return dep


@pytest.fixture
def deployment(openbao: OpenBaoServer, idp: IdpServer, tmp_path: Path) -> Iterator[Deployment]:
    dep = set_up(openbao, idp, tmp_path)
    yield dep
    for each in [dep, *dep.replicas]:
        if each.process is not None and each.process.poll() is None:
            each.process.kill()
            each.process.wait(timeout=10)


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """Poll until ``predicate()`` is truthy; return its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class Reader(threading.Thread):
    """An app that reads its token files as fast as it can and records anything wrong."""

    def __init__(self, directory: Path) -> None:
        super().__init__(daemon=True)
        self.directory = directory
        self.stopping = threading.Event()
        self.problems: list[str] = []
        self.reads = 0
        self.tokens: set[str] = set()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                token = (self.directory / "access_token").read_text()
                doc = json.loads((self.directory / "token.json").read_text())
            except FileNotFoundError:
                continue
            except json.JSONDecodeError as exc:
                self.problems.append(f"torn token.json: {exc}")
                continue
            self.reads += 1
            self.tokens.add(token)
            if not token or token != token.strip():
                self.problems.append("access_token empty or padded")
            expires = datetime.fromisoformat(doc["expires_at"].replace("Z", "+00:00"))
            # expires_at has whole seconds, rounded down: the token lasts until the next second
            if expires + timedelta(seconds=1) <= datetime.now(tz=UTC):
                self.problems.append(f"expired token published: {doc['expires_at']}")
            if set(doc) - {
                "access_token",
                "token_type",
                "expires_at",
                "issued_at",
                "scope",
                "generation",
            }:
                self.problems.append(f"unexpected keys {sorted(doc)}")


def assert_vault_holds_the_live_token(dep: Deployment) -> None:
    """Present Vault's refresh token once, as the next replica would: it must be accepted."""
    data, _ = dep.vault_secret()
    response = httpx.post(
        dep.idp.token_endpoint,
        data={"grant_type": "refresh_token", "refresh_token": data["refresh_token"]},
        auth=("client-basic", idp_secret(dep)),
    )
    assert response.status_code == 200, response.text


def idp_secret(dep: Deployment) -> str:
    secret = dep.idp.client_secret("client-basic")
    assert secret
    return secret

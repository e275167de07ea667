"""The main job end to end: the real CLI against a real OpenBao and a real oidc-provider.

The sidecar runs as a separate process configured only through its documented keys. The
authorization server rotates the refresh token on every use and revokes the whole grant when a
spent one is presented, so any reuse fails these tests.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.idp import IdpServer
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.integration

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
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def output_dir(self) -> Path:
        return self.root / "tokens" / "billing"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log_path(self) -> Path:
        return self.root / "sidecar.log"

    def write_config(self, **credential_overrides: Any) -> None:
        credential: dict[str, Any] = {
            "name": "billing",
            "kv_path": KV_PATH,
            "token_endpoint": self.idp.token_endpoint,
            "client_auth": "client_secret_basic",
            "output_dir": str(self.output_dir),
            **credential_overrides,
        }
        config = {
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
            },
        }
        self.config_path.write_text(yaml.safe_dump(config))

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sidecar", "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(),
            check=False,
        )

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=log,
            env=clean_env(),
        )
        log.close()

    def stop(self, timeout: float = 10) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def vault_secret(self) -> tuple[dict[str, Any], int]:
        return self.openbao.read_secret(KV_PATH)

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("TOKEN_SIDECAR_", "VAULT_"))}


@pytest.fixture
def deployment(openbao: OpenBaoServer, idp: IdpServer, tmp_path: Path) -> Iterator[Deployment]:
    idp.set_ttl(access_token=4)
    policy = openbao.write_kv_policy("e2e-billing", KV_PATH)
    openbao.create_role(ROLE, [policy])
    (tmp_path / "sa-token").write_text(openbao.mint_sa_jwt())
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
    dep = Deployment(openbao=openbao, idp=idp, root=tmp_path, seeded=seeded)
    dep.write_config()
    yield dep
    if dep.process is not None and dep.process.poll() is None:
        dep.process.kill()
        dep.process.wait(timeout=10)


def wait_for(predicate: Any, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


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
            if expires <= datetime.now(tz=UTC):
                self.problems.append(f"expired token published: {doc['expires_at']}")
            if set(doc) - {"access_token", "token_type", "expires_at", "issued_at", "scope"}:
                self.problems.append(f"unexpected keys {sorted(doc)}")


def test_run_keeps_a_valid_token_through_many_rotations(deployment: Deployment) -> None:
    dep = deployment
    started = time.monotonic()
    dep.start()
    token_file = dep.output_dir / "access_token"
    assert wait_for(token_file.exists, timeout=10), dep.logs()
    first_token_after = time.monotonic() - started
    assert first_token_after < 2.0 + 1.5, f"first token after {first_token_after:.2f}s"

    reader = Reader(dep.output_dir)
    reader.start()
    # 4 s tokens are refreshed every 2 s: wait for at least five rotations.
    assert wait_for(lambda: dep.vault_secret()[1] >= 11, timeout=20), dep.logs()
    reader.stopping.set()
    reader.join(timeout=5)

    assert reader.problems == []
    assert reader.reads > 100
    assert len(reader.tokens) >= 4

    # The published token is accepted by the resource server side of the IdP.
    def consistent_pair() -> dict[str, Any] | None:
        # token.json is replaced first, access_token second: between the two a reader may see
        # a newer token.json, so read until both files show the same token.
        doc: dict[str, Any] = json.loads((dep.output_dir / "token.json").read_text())
        return doc if doc["access_token"] == token_file.read_text() else None

    assert wait_for(lambda: consistent_pair() is not None, timeout=5)
    doc = consistent_pair() or json.loads((dep.output_dir / "token.json").read_text())
    assert doc["token_type"] == "Bearer"
    assert oct(token_file.stat().st_mode & 0o777) == "0o440"
    userinfo = httpx.get(
        f"{dep.idp.issuer}/me", headers={"Authorization": f"Bearer {doc['access_token']}"}
    )
    assert userinfo.status_code == 200, userinfo.text
    assert userinfo.json()["sub"]

    health = dep.get("/healthz")
    assert health.status_code == 200
    body = health.json()
    assert body["credentials"]["billing"]["state"] == "valid"
    assert body["credentials"]["billing"]["writeback_pending"] is False
    assert dep.get("/readyz").status_code == 200
    assert dep.get("/livez").status_code == 200
    metrics = dep.get("/metrics").text
    assert 'token_sidecar_refresh_total{credential="billing",outcome="success"}' in metrics
    assert "token_sidecar_access_token_expiry_timestamp_seconds" in metrics
    assert 'token_sidecar_writeback_pending{credential="billing"} 0.0' in metrics
    assert 'token_sidecar_vault_requests_total{operation="write",outcome="success"}' in metrics

    stop_started = time.monotonic()
    assert dep.stop() == 0
    assert time.monotonic() - stop_started < 5

    stats = dep.idp.stats()
    assert stats["refresh_token_reuse"] == 0, stats
    assert stats["grants_revoked"] == 0, stats
    data, version = dep.vault_secret()
    assert data["owner"] == "team-billing"  # other fields survive every write-back
    assert data["refresh_token"] != dep.seeded
    # per rotation: one claim and one result write, each a new version
    assert version - 1 == 2 * stats["refresh_succeeded"]

    # The token Vault holds is the live one: the chain survives a restart.
    assert_vault_holds_the_live_token(dep)

    logs = dep.logs()
    assert '"event": "token.refreshed"' in logs or '"event":"token.refreshed"' in logs
    for secret in [dep.seeded, data["refresh_token"], *reader.tokens]:
        assert secret not in logs
    assert idp_secret(dep) not in logs


def assert_vault_holds_the_live_token(dep: Deployment) -> None:
    """Present Vault's refresh token once, as the next replica would: it must be accepted."""
    data, _ = dep.vault_secret()
    response = httpx.post(
        dep.idp.token_endpoint,
        data={"grant_type": "refresh_token", "refresh_token": data["refresh_token"]},
        auth=("client-basic", idp_secret(dep)),
    )
    assert response.status_code == 200, response.text
    assert dep.idp.stats()["refresh_token_reuse"] == 0


def idp_secret(dep: Deployment) -> str:
    secret = dep.idp.client_secret("client-basic")
    assert secret
    return secret


def test_once_writes_the_files_and_the_rotated_token(deployment: Deployment) -> None:
    dep = deployment
    result = dep.cli("once")
    assert result.returncode == 0, result.stderr
    assert (dep.output_dir / "access_token").read_text()
    data, version = dep.vault_secret()
    assert version == 3  # claim, then result
    assert data["refresh_token"] != dep.seeded
    assert "claim" not in data["token_sidecar"]
    assert not list((dep.root / "journal").glob("*.json"))
    assert dep.seeded not in result.stderr + result.stdout


def test_once_reports_a_rejected_token_and_exits_non_zero(deployment: Deployment) -> None:
    dep = deployment
    dep.openbao.put_secret(KV_PATH, {**dep.vault_secret()[0], "refresh_token": "not-a-live-token"})
    result = dep.cli("once")
    assert result.returncode == 1
    assert "invalid_grant" in result.stderr
    assert not (dep.output_dir / "access_token").exists()


def test_check_reaches_everything_and_exchanges_nothing(deployment: Deployment) -> None:
    dep = deployment
    before = dep.idp.stats()
    result = dep.cli("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout
    assert dep.idp.stats()["refresh_succeeded"] == before["refresh_succeeded"]
    assert dep.vault_secret()[1] == 1


def test_check_reports_every_problem(deployment: Deployment) -> None:
    dep = deployment
    dep.write_config(kv_path="apps/e2e/missing", token_endpoint=f"http://127.0.0.1:{free_port()}/t")
    result = dep.cli("check")
    assert result.returncode == 1
    assert "secret/apps/e2e/missing" in result.stdout
    assert "2 problem(s)" in result.stdout


def test_invalid_config_exits_2_naming_the_key(deployment: Deployment) -> None:
    dep = deployment
    dep.write_config(client_auth="client_secret_jwt")
    result = dep.cli("run")
    assert result.returncode == 2
    assert "credentials[0].client_auth" in result.stderr


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.startswith("token-sidecar ")


@pytest.mark.parametrize(
    ("client_id", "method", "discovery"),
    [
        ("client-basic", "client_secret_basic", True),
        ("client-post", "client_secret_post", False),
        ("client-jwt", "private_key_jwt", True),
        ("client-public", "none", False),
    ],
)
def test_every_client_auth_method_end_to_end(
    deployment: Deployment, client_id: str, method: str, discovery: bool
) -> None:
    dep = deployment
    seeded = dep.idp.seed_refresh_token(client_id)
    secret: dict[str, Any] = {"refresh_token": seeded}
    overrides: dict[str, Any] = {"client_auth": method, "client_id": client_id}
    if dep.idp.client_secret(client_id):
        secret["client_secret"] = dep.idp.client_secret(client_id)
    if method == "private_key_jwt":
        key_file = dep.root / "client.pem"
        key_file.write_text(dep.idp.private_key_pem)
        overrides["private_key_file"] = str(key_file)
    if discovery:
        overrides.update(token_endpoint=None, issuer=dep.idp.issuer)
    dep.openbao.put_secret(KV_PATH, secret)
    dep.write_config(**overrides)
    for _ in range(2):
        result = dep.cli("once")
        assert result.returncode == 0, result.stderr
    # the second run reuses the fresh token the first one shared through Vault
    assert dep.idp.stats()["refresh_succeeded"] == 1
    assert dep.idp.stats()["refresh_token_reuse"] == 0
    assert json.loads((dep.output_dir / "token.json").read_text())["access_token"]


def test_sigterm_waits_for_a_pending_write_back(deployment: Deployment) -> None:
    dep = deployment
    dep.start()
    assert wait_for(lambda: dep.vault_secret()[1] >= 2, timeout=10), dep.logs()
    dep.openbao.seal()
    try:
        # The next rotation cannot reach Vault: journalled, published, write-back pending.
        assert wait_for(lambda: "writeback.failed" in dep.logs(), timeout=10), dep.logs()
        assert (
            'token_sidecar_writeback_pending{credential="billing"} 1.0' in dep.get("/metrics").text
        )
        assert list((dep.root / "journal").glob("*.json"))
        assert dep.process is not None
        dep.process.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert dep.process.poll() is None, "exited holding an unpersisted refresh token"
    finally:
        dep.openbao.unseal()
    assert dep.process.wait(timeout=15) == 0
    assert not list((dep.root / "journal").glob("*.json"))
    assert_vault_holds_the_live_token(dep)
    stats = dep.idp.stats()
    assert stats["refresh_token_reuse"] == 0
    assert stats["grants_revoked"] == 0


def test_a_crash_with_a_pending_write_back_loses_nothing(deployment: Deployment) -> None:
    dep = deployment
    dep.start()
    assert wait_for(lambda: dep.vault_secret()[1] >= 2, timeout=10), dep.logs()
    dep.openbao.seal()
    try:
        assert wait_for(lambda: "writeback.failed" in dep.logs(), timeout=10), dep.logs()
        assert dep.process is not None
        dep.process.kill()
        dep.process.wait(timeout=5)
    finally:
        dep.openbao.unseal()
    # Vault still holds a spent token; only the journal has the live one.
    dep.start()
    assert wait_for(lambda: "journal.recovered" in dep.logs(), timeout=10), dep.logs()
    assert wait_for(lambda: dep.vault_secret()[1] >= 4, timeout=15), dep.logs()
    assert dep.stop() == 0
    stats = dep.idp.stats()
    assert stats["refresh_token_reuse"] == 0, stats
    assert stats["grants_revoked"] == 0, stats
    assert_vault_holds_the_live_token(dep)

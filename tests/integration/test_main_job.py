"""The main job end to end: the real CLI against a real OpenBao and a real oidc-provider.

The sidecar runs as a separate process configured only through its documented keys. The
authorization server rotates the refresh token on every use and revokes the whole grant when a
spent one is presented, so any reuse fails these tests.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from tests.support.deployment import (
    KV_PATH,
    Deployment,
    Reader,
    assert_vault_holds_the_live_token,
    free_port,
    idp_secret,
    wait_for,
)

pytestmark = pytest.mark.integration


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


def test_runs_as_the_image_runs_it_with_pythonoptimize_2(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The image sets PYTHONOPTIMIZE=2: no docstrings, no asserts. Nothing may depend on them.
    monkeypatch.setenv("PYTHONOPTIMIZE", "2")
    dep = deployment
    check = dep.cli("check")
    assert check.returncode == 0, check.stderr
    result = dep.cli("once")
    assert result.returncode == 0, result.stderr
    assert (dep.output_dir / "access_token").read_text()
    assert dep.vault_secret()[0]["refresh_token"] != dep.seeded


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
    existed = dep.output_dir.exists()
    result = dep.cli("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout
    assert dep.idp.stats()["refresh_succeeded"] == before["refresh_succeeded"]
    assert dep.vault_secret()[1] == 1
    assert dep.output_dir.exists() == existed  # a check validates; it does not prepare


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
    # Long enough that the second run finds the first one's token still fresh under any load
    # (with 4 s tokens it had to start within about 2.5 s).
    dep.idp.set_ttl(access_token=60)
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
    dep.write_config(sections={"coordination": {"exclusive": True}})  # rotates while sealed
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
    dep.write_config(sections={"coordination": {"exclusive": True}})  # rotates while sealed
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

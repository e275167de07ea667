"""``status`` and ``retire`` against the real servers, and what ``seed`` does with answers
oidc-provider never gives (``slow_down``, a revocation endpoint answering 503), from a raw
server (:mod:`tests.support.rawserver`)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.deployment import KV_PATH, Deployment, wait_for
from tests.support.idp_user import User
from tests.support.operator import OperatorCli
from tests.support.rawserver import RawServer, Recorded, Reply, Route

pytestmark = pytest.mark.integration

POLICY = "e2e-billing"


@pytest.fixture
def operator(deployment: Deployment) -> Iterator[OperatorCli]:
    cli = OperatorCli(deployment, deployment.openbao.create_token([POLICY]))
    yield cli
    cli.close()


@pytest.fixture
def raw() -> Iterator[Route]:
    with RawServer() as server:
        yield server.route()


def ready(dep: Deployment) -> bool:
    try:
        return dep.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def health(dep: Deployment) -> dict[str, object]:
    return dict(dep.get("/healthz").json()["credentials"]["billing"])


def test_status_reports_rejected_with_exit_1_and_seed_replace_recovers(
    operator: OperatorCli, deployment: Deployment
) -> None:
    """The runbook: status shows the rejected grant, seed --replace fixes it."""
    grant = deployment.idp.seed("client-basic")
    data, _ = deployment.vault_secret()
    deployment.openbao.put_secret(KV_PATH, {**data, "refresh_token": grant.refresh_token})
    deployment.start()
    assert wait_for(lambda: ready(deployment), timeout=30), deployment.logs()[-3000:]

    healthy = operator.run("status")
    assert healthy.process.returncode == 0, healthy.stderr
    (report,) = healthy.events()
    _, version = deployment.vault_secret()
    assert report["event"] == "status"
    assert report["credential"] == "billing"
    assert report["state"] == "ok"
    assert report["required"] is True
    assert report["rejected"] is False
    assert report["version"] <= version
    assert report["refresh_token"]["obtained_by"].startswith("app-0_")  # pod name, UUID
    assert report["access_token_expires_at"]

    text = operator.run("status", "--credential", "billing", output="text")
    assert text.process.returncode == 0
    assert "".join(text.stdout).startswith("billing: ok (secret/apps/e2e/billing version ")
    assert text.stderr == ""  # the configuration's debug log only with --verbose

    deployment.idp.revoke(grant.grant_id)
    assert wait_for(lambda: health(deployment)["state"] == "rejected", timeout=30)
    rejected = operator.run("status")
    assert rejected.process.returncode == 1
    assert rejected.events()[0]["state"] == "rejected"
    words = "".join(operator.run("status", output="text").stdout)
    assert "billing: rejected" in words
    assert "seed --replace" in words

    deployment.write_config(issuer=deployment.idp.issuer, token_endpoint=None)
    seed = operator.start("seed", "--credential", "billing", "--replace")
    shown = seed.event("device.authorization")
    with User(deployment.idp.issuer) as user:
        user.approve_device(shown["user_code"])
    assert seed.wait(60) == 0, seed.stderr
    assert wait_for(lambda: health(deployment)["state"] == "valid", timeout=60)
    recovered = operator.run("status")
    assert recovered.process.returncode == 0
    assert recovered.events()[0]["state"] == "ok"
    assert recovered.events()[0]["seeded"]["flow"] == "device"
    assert deployment.stop() == 0


def test_status_of_a_missing_secret_and_an_optional_credential(
    operator: OperatorCli, deployment: Deployment
) -> None:
    deployment.openbao.put_secret(KV_PATH, {"client_id": "client-basic"})
    missing = operator.run("status")
    assert missing.process.returncode == 1
    assert missing.events()[0]["state"] == "missing"
    deployment.write_config(required=False)
    assert operator.run("status").process.returncode == 0


def test_status_with_the_vault_cli_token_file(
    operator: OperatorCli, deployment: Deployment, tmp_path: Path
) -> None:
    """An operator who ran ``vault login``: no VAULT_TOKEN, the token in ~/.vault-token."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".vault-token").write_text(operator.vault_token)
    operator.vault_token = ""
    operator.extra_env["HOME"] = str(home)
    status = operator.run("status")
    assert status.process.returncode == 0, status.stderr
    assert status.events()[0]["state"] == "ok"


def test_retire_revokes_and_replicas_stop_and_report_it(
    operator: OperatorCli, deployment: Deployment
) -> None:
    grant = deployment.idp.seed("client-basic")
    data, _ = deployment.vault_secret()
    deployment.openbao.put_secret(KV_PATH, {**data, "refresh_token": grant.refresh_token})
    deployment.write_config(issuer=deployment.idp.issuer, token_endpoint=None)
    replicas = [deployment, deployment.replica("app-1")]
    for replica in replicas:
        replica.start()
    for replica in replicas:
        assert wait_for(lambda r=replica: ready(r), timeout=30), replica.logs()[-3000:]

    retire = operator.run("retire", "--credential", "billing", "--by", "ops-bot")
    assert retire.process.returncode == 0, retire.stderr
    names = [e["event"] for e in retire.events() if e["event"] != "claim.wait"]
    assert names == ["retire.marked", "revoked", "retired"]
    stats = deployment.idp.stats()
    assert stats["revocation_requests"] == 1
    assert grant.grant_id in stats["revoked_grants"]
    presented = stats["refresh_by_grant"].get(grant.grant_id, 0)
    stored, _ = deployment.vault_secret()
    assert "refresh_token" not in stored
    assert stored["token_sidecar"] == {
        "retired": {
            "at": stored["token_sidecar"]["retired"]["at"],
            "by": "ops-bot",
            "revoked": True,
        }
    }
    assert stored["client_secret"] == data["client_secret"]

    # Every replica stops and says why; none presents the revoked token.
    for replica in replicas:
        assert wait_for(lambda r=replica: health(r)["last_error"] == "retired", timeout=30)
        retired_events = [
            json.loads(line)
            for line in replica.logs().splitlines()
            if '"error": "retired"' in line or '"error":"retired"' in line
        ]
        assert retired_events, replica.logs()[-2000:]
    after = deployment.idp.stats()
    assert after["refresh_by_grant"].get(grant.grant_id, 0) == presented
    assert after["refresh_invalid_grant"] == 0

    status = operator.run("status")
    assert status.process.returncode == 1
    assert status.events()[0]["state"] == "retired"
    assert status.events()[0]["retired"]["revoked"] is True
    again = operator.run("retire", "--credential", "billing")
    assert again.process.returncode == 0
    assert again.events()[-1]["already"] is True
    for replica in replicas:
        assert replica.stop() == 0


def test_retire_honours_retry_after_of_a_503(
    operator: OperatorCli, deployment: Deployment, raw: Route
) -> None:
    busy = Reply(503, {"error": "temporarily_unavailable"}, headers={"Retry-After": "1"})
    raw.on("/revoke", busy, Reply(200, b""))
    data, _ = deployment.vault_secret()
    retire = operator.run(
        "retire", "--credential", "billing", "--revocation-endpoint", raw.url("/revoke")
    )
    assert retire.process.returncode == 0, retire.stderr
    retry = [e for e in retire.events() if e["event"] == "revocation.retry"]
    assert [(e["error"], e["retry_in"]) for e in retry] == [("endpoint_unavailable", 1.0)]
    requests = raw.requests("/revoke")
    assert len(requests) == 2
    assert requests[1].at - requests[0].at >= 1.0
    for request in requests:
        assert request.form["token"] == [data["refresh_token"]]
        assert request.form["token_type_hint"] == ["refresh_token"]
        assert (request.header("Authorization") or "").startswith("Basic ")


def test_retire_keeps_the_token_when_revocation_fails(
    operator: OperatorCli, deployment: Deployment, raw: Route
) -> None:
    raw.on("/revoke", Reply(400, {"error": "unsupported_token_type"}))
    data, _ = deployment.vault_secret()
    retire = operator.run(
        "retire", "--credential", "billing", "--revocation-endpoint", raw.url("/revoke")
    )
    assert retire.process.returncode == 1
    assert "unsupported_token_type" in retire.events()[-1]["message"]
    stored, _ = deployment.vault_secret()
    assert stored["refresh_token"] == data["refresh_token"]
    assert stored["token_sidecar"]["retired"]["revoked"] is False
    report = operator.run("status").events()[0]
    assert report["state"] == "retired"
    assert report["retired"]["revoked"] is False


def test_device_flow_slows_down_by_five_seconds(
    operator: OperatorCli, deployment: Deployment, raw: Route
) -> None:
    """oidc-provider never sends slow_down: a raw server does, once."""
    deployment.openbao.put_secret(KV_PATH, {"client_id": "client-basic", "client_secret": "cs"})
    raw.on(
        "/device",
        Reply(
            200,
            {
                "device_code": "dc-0123456789",
                "user_code": "WDJB-MJHT",
                "verification_uri": raw.url("/verify"),
                "expires_in": 60,
                "interval": 0.2,
            },
        ),
    )

    def grant(request: Recorded) -> Reply:
        return Reply(
            200,
            {
                "access_token": "at-0123456789",
                "token_type": "Bearer",
                "refresh_token": "rt-9876543210",
            },
        )

    raw.on(
        "/token",
        Reply(403, {"error": "authorization_pending"}),
        Reply(400, {"error": "slow_down"}),
        Reply(429, {"error": "authorization_pending"}),
        grant,
    )
    deployment.write_config(token_endpoint=raw.url("/token"))
    seed = operator.run(
        "seed", "--credential", "billing", "--device-authorization-endpoint", raw.url("/device")
    )
    assert seed.process.returncode == 0, seed.stderr
    slowed = [e for e in seed.events() if e["event"] == "device.slow_down"]
    assert [e["interval"] for e in slowed] == [5.2]
    polls = raw.requests("/token")
    assert len(polls) == 4
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(polls)]
    assert gaps[0] >= 0.2
    assert gaps[1] >= 5.2
    assert gaps[2] >= 5.2
    for poll in polls:
        assert poll.form["grant_type"] == ["urn:ietf:params:oauth:grant-type:device_code"]
        assert poll.form["device_code"] == ["dc-0123456789"]
    stored, _ = deployment.vault_secret()
    assert stored["refresh_token"] == "rt-9876543210"

"""``token-sidecar seed`` against the real servers: OpenBao and node oidc-provider.

The user's side of every login is driven with httpx through oidc-provider's own pages
(:mod:`tests.support.idp_user`); the command runs as a process, as an operator runs it, with
the ``token`` auth method and a Vault token limited to the credential's policy.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.deployment import KV_PATH, Deployment, wait_for
from tests.support.idp_user import User
from tests.support.operator import OperatorCli

pytestmark = pytest.mark.integration

POLICY = "e2e-billing"
CONFIDENTIAL = ("client-basic", "client-post")


def clients_only(dep: Deployment, client_id: str = "client-basic") -> dict[str, Any]:
    """The secret as a platform engineer prepares it before the first seed."""
    fields: dict[str, Any] = {"client_id": client_id, "owner": "team-billing"}
    secret = dep.idp.client_secret(client_id) if client_id in CONFIDENTIAL else None
    if secret:
        fields["client_secret"] = secret
    dep.openbao.put_secret(KV_PATH, fields)
    return fields


@pytest.fixture
def operator(deployment: Deployment) -> Iterator[OperatorCli]:
    deployment.write_config(issuer=deployment.idp.issuer, token_endpoint=None)
    cli = OperatorCli(deployment, deployment.openbao.create_token([POLICY]))
    yield cli
    cli.close()


def present_once(dep: Deployment, refresh_token: str, client_id: str = "client-basic") -> str:
    """Exchange ``refresh_token`` as the sidecar would; the rotated token."""
    secret = dep.idp.client_secret(client_id) if client_id in CONFIDENTIAL else None
    response = httpx.post(
        dep.idp.token_endpoint,
        data={"grant_type": "refresh_token", "refresh_token": refresh_token}
        | ({} if secret else {"client_id": client_id}),
        auth=(client_id, secret) if secret else None,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["refresh_token"])


def test_device_flow_pending_then_approved(operator: OperatorCli, deployment: Deployment) -> None:
    before = clients_only(deployment)
    _, version_before = deployment.vault_secret()
    seed = operator.start("seed", "--credential", "billing")
    shown = seed.event("device.authorization")
    assert shown["user_code"]
    assert shown["verification_uri"] == f"{deployment.idp.issuer}/device"
    assert shown["expires_in"] > 0
    # Nobody approved yet: the command polls (oidc-provider sends no interval: every 5 s).
    assert wait_for(lambda: deployment.idp.stats()["device_polls"] >= 1, timeout=15)
    assert seed.process.poll() is None
    with User(deployment.idp.issuer) as user:
        user.approve_device(shown["user_code"])
    assert seed.wait(30) == 0, seed.stderr
    done = seed.events()[-1]
    data, version = deployment.vault_secret()
    assert done == {
        "event": "seeded",
        "credential": "billing",
        "location": f"secret/{KV_PATH}",
        "version": version,
        "flow": "device",
        "replaced": False,
        "refresh_expires_at": done["refresh_expires_at"],
    }
    assert version == version_before + 1
    # The user's fields are kept; the facts recorded carry no secret.
    assert {k: data[k] for k in before} == before
    facts = data["token_sidecar"]
    assert facts["seeded"]["flow"] == "device"
    assert facts["seeded"]["by"]
    assert facts["refresh"]["obtained_by"] == "seed"
    assert set(facts) == {"seeded", "refresh"}
    # The token works, and it is a grant with offline access.
    present_once(deployment, data["refresh_token"])
    # Neither token was printed.
    assert data["refresh_token"] not in "".join(seed.stdout) + seed.stderr


def test_creates_an_absent_secret_with_cas_0(operator: OperatorCli, deployment: Deployment) -> None:
    """A public client named in the configuration: no secret at all before the seed."""
    deployment.openbao.root_client().secrets.kv.v2.delete_metadata_and_all_versions(
        KV_PATH, mount_point="secret"
    )
    deployment.write_config(
        issuer=deployment.idp.issuer,
        token_endpoint=None,
        client_id="client-native",
        client_auth="none",
    )
    seed = operator.start("seed", "--credential", "billing", "--by", "alice")
    shown = seed.event("device.authorization")
    with User(deployment.idp.issuer) as user:
        user.approve_device(shown["user_code"])
    assert seed.wait(30) == 0, seed.stderr
    data, version = deployment.vault_secret()
    assert version == 1
    assert set(data) == {"refresh_token", "token_sidecar"}
    assert data["token_sidecar"]["seeded"]["by"] == "alice"
    present_once(deployment, data["refresh_token"], "client-native")


def test_access_denied_has_its_own_exit_code(operator: OperatorCli, deployment: Deployment) -> None:
    clients_only(deployment)
    _, version = deployment.vault_secret()
    seed = operator.start("seed", "--credential", "billing")
    shown = seed.event("device.authorization")
    with User(deployment.idp.issuer) as user:
        user.deny_device(shown["user_code"])
    assert seed.wait(30) == 3
    error = seed.events()[-1]
    assert error["event"] == "error"
    assert error["error"] == "access_denied"
    assert "denied" in error["message"]
    assert deployment.vault_secret()[1] == version


def test_expired_code_has_its_own_exit_code(operator: OperatorCli, deployment: Deployment) -> None:
    clients_only(deployment)
    _, version = deployment.vault_secret()
    deployment.idp.set_ttl(device_code=2)
    seed = operator.start("seed", "--credential", "billing")
    shown = seed.event("device.authorization")
    assert shown["expires_in"] == 2
    assert seed.wait(30) == 4
    error = seed.events()[-1]
    assert error["error"] == "expired_token"
    assert "expired" in error["message"]
    assert deployment.vault_secret()[1] == version


def test_expired_token_answer_from_the_server(
    operator: OperatorCli, deployment: Deployment
) -> None:
    """The code runs out while a poll is due: the server's own expired_token ends it."""
    clients_only(deployment)
    deployment.idp.set_ttl(device_code=7)  # the first poll comes after 5 s
    seed = operator.start("seed", "--credential", "billing", "--flow", "device")
    seed.event("device.authorization")
    assert seed.wait(30) == 4
    assert seed.events()[-1]["error"] == "expired_token"


def test_ctrl_c_while_waiting_stops_quietly(operator: OperatorCli, deployment: Deployment) -> None:
    clients_only(deployment)
    before = deployment.vault_secret()
    seed = operator.start("seed", "--credential", "billing", output="text")
    assert wait_for(lambda: "enter the code" in seed.stderr, timeout=30), seed.stderr
    seed.process.send_signal(signal.SIGINT)
    assert seed.wait(30) == 130
    assert seed.stderr.rstrip().endswith("interrupted")
    assert "Traceback" not in seed.stderr
    assert deployment.vault_secret() == before


def test_refuses_an_existing_token_without_replace(
    operator: OperatorCli, deployment: Deployment
) -> None:
    data, version = deployment.vault_secret()
    seed = operator.run("seed", "--credential", "billing")
    assert seed.process.returncode == 1
    error = seed.events()[-1]
    assert error["error"] == "secret_exists"
    assert "--replace" in error["message"]
    # Refused before anyone was asked to log in.
    assert not [e for e in seed.events() if e["event"] == "device.authorization"]
    assert deployment.idp.stats()["device_polls"] == 0
    assert deployment.vault_secret() == (data, version)


def test_browser_flow_through_the_loopback_listener(
    operator: OperatorCli, deployment: Deployment
) -> None:
    clients_only(deployment, "client-native")
    deployment.write_config(issuer=deployment.idp.issuer, token_endpoint=None, client_auth="none")
    seed = operator.start("seed", "--credential", "billing", "--flow", "browser", "--no-browser")
    shown = seed.event("browser.authorization")
    url = httpx.URL(shown["authorization_url"])
    assert url.params["code_challenge_method"] == "S256"
    assert url.params["prompt"] == "consent"
    assert "offline_access" in url.params["scope"].split()
    assert url.params["redirect_uri"].startswith("http://127.0.0.1:")
    assert shown["browser_opened"] is False
    with User(deployment.idp.issuer) as user:
        landing = user.log_in(shown["authorization_url"])
    assert landing.status_code == 200
    assert "return to the terminal" in landing.text
    assert seed.wait(30) == 0, seed.stderr
    data, version = deployment.vault_secret()
    assert seed.events()[-1]["version"] == version
    assert data["token_sidecar"]["seeded"]["flow"] == "browser"
    present_once(deployment, data["refresh_token"], "client-native")


def test_browser_flow_on_a_fixed_port_accepts_one_callback(
    operator: OperatorCli, deployment: Deployment
) -> None:
    from tests.support.deployment import free_port  # noqa: PLC0415

    clients_only(deployment, "client-native")
    deployment.write_config(issuer=deployment.idp.issuer, token_endpoint=None, client_auth="none")
    port = free_port()
    seed = operator.start(
        "seed", "--credential", "billing", "--flow", "browser", "--no-browser", "--port", str(port)
    )
    shown = seed.event("browser.authorization")
    assert shown["redirect_uri"] == f"http://127.0.0.1:{port}/callback"
    # A callback that is not this login's (wrong state) is the one accepted, and refused.
    forged = httpx.get(f"http://127.0.0.1:{port}/callback?code=forged&state=forged")
    assert forged.status_code == 200
    assert seed.wait(30) == 1
    assert seed.events()[-1]["error"] == "client_rejected"
    assert "state" in seed.events()[-1]["message"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/callback?code=late&state=late")


def test_no_refresh_token_in_the_answer_writes_nothing(
    operator: OperatorCli, deployment: Deployment
) -> None:
    """A client the server issues no refresh token to; the endpoint given on the command line
    (no issuer configured, so no metadata)."""
    clients_only(deployment, "client-no-refresh")
    _, version = deployment.vault_secret()
    deployment.write_config(client_auth="none", scope="openid offline_access")
    seed = operator.start(
        "seed",
        "--credential",
        "billing",
        "--device-authorization-endpoint",
        f"{deployment.idp.issuer}/device/auth",
    )
    shown = seed.event("device.authorization")
    with User(deployment.idp.issuer) as user:
        user.approve_device(shown["user_code"])
    assert seed.wait(30) == 1
    error = seed.events()[-1]
    assert error["error"] == "client_rejected"
    assert "no refresh token" in error["message"]
    assert deployment.vault_secret()[1] == version


def test_vault_refusing_the_write_revokes_the_new_token(
    operator: OperatorCli, deployment: Deployment
) -> None:
    clients_only(deployment)
    data, version = deployment.vault_secret()
    deployment.openbao.write_kv_policy("read-only", KV_PATH, write=False)
    operator.vault_token = deployment.openbao.create_token(["read-only"])
    seed = operator.start("seed", "--credential", "billing")
    shown = seed.event("device.authorization")
    with User(deployment.idp.issuer) as user:
        user.approve_device(shown["user_code"])
    assert seed.wait(30) == 1
    events = seed.events()
    assert events[-1]["error"] == "vault_forbidden"
    assert [e["revoked"] for e in events if e["event"] == "seed.undone"] == [True]
    stats = deployment.idp.stats()
    assert stats["revocation_requests"] == 1
    assert len(stats["revoked_grants"]) == 1
    assert deployment.vault_secret() == (data, version)


def ready(dep: Deployment) -> bool:
    try:
        return dep.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def test_replace_while_three_replicas_run(operator: OperatorCli, deployment: Deployment) -> None:
    """All three adopt the new token; after the seed no replica presents the old grant's."""
    old_grant = deployment.idp.seed("client-basic")
    data, _ = deployment.vault_secret()
    deployment.openbao.put_secret(KV_PATH, {**data, "refresh_token": old_grant.refresh_token})
    replicas = [deployment, deployment.replica("app-1"), deployment.replica("app-2")]
    for replica in replicas:
        replica.start()
    for replica in replicas:
        assert wait_for(lambda r=replica: ready(r), timeout=30), replica.logs()[-3000:]
    assert wait_for(
        lambda: deployment.idp.stats()["refresh_by_grant"].get(old_grant.grant_id, 0) >= 2,
        timeout=30,
    )
    seed = operator.start("seed", "--credential", "billing", "--replace")
    shown = seed.event("device.authorization")
    with User(deployment.idp.issuer) as user:
        user.approve_device(shown["user_code"])
    assert seed.wait(60) == 0, seed.stderr
    done = seed.events()[-1]
    assert done["replaced"] is True
    presented_old = deployment.idp.stats()["refresh_by_grant"].get(old_grant.grant_id, 0)
    held = {r.name: (r.output_dir / "access_token").read_text() for r in replicas}
    seeded, _ = deployment.vault_secret()
    user_fields = {k: v for k, v in data.items() if k not in ("refresh_token", "token_sidecar")}
    assert {k: v for k, v in seeded.items() if k in user_fields} == user_fields

    def adopted(replica: Deployment) -> bool:
        health = replica.get("/healthz").json()["credentials"]["billing"]
        token = (replica.output_dir / "access_token").read_text()
        return health["secret_version"] > done["version"] and token != held[replica.name]

    # Every replica publishes a token obtained after the seed, from the new grant only.
    for replica in replicas:
        assert wait_for(lambda r=replica: adopted(r), timeout=30), replica.logs()[-3000:]
    stats = deployment.idp.stats()
    assert stats["refresh_by_grant"].get(old_grant.grant_id, 0) == presented_old
    assert sum(n for g, n in stats["refresh_by_grant"].items() if g != old_grant.grant_id) >= 1
    assert stats["refresh_token_reuse"] == 0
    assert stats["refresh_invalid_grant"] == 0
    for replica in replicas:
        assert ready(replica)
        assert replica.stop() == 0

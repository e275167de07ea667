"""The in-cluster drivers of the kind test, run against the local servers of the integration
tests: the same Vault set-up commands (with the local ``bao`` CLI instead of the one in the
OpenBao pod), and the same IdP calls and TCP forwarder (with the local ``node``).

What only a cluster can show is left to ``test_kind.py``: the Kubernetes auth login itself
(OpenBao's TokenReview against a real API server), the pod, and the sidecar image.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import hvac
import pytest

from tests.e2e import injection, stack
from tests.e2e.kind import run
from tests.support.idp import IdpServer, find_node
from tests.support.openbao import OpenBaoServer
from tests.support.rawserver import TlsMaterial

pytestmark = pytest.mark.integration

LOCAL_AUTH_MOUNT = "k8s-e2e"  # the shared local server already uses "kubernetes" for JWT tests


@pytest.fixture
def vault(openbao: OpenBaoServer, tmp_path: Path) -> Iterator[stack.Vault]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "BAO_ADDR": openbao.address,
        "BAO_TOKEN": openbao.root_token,
    }

    def bao(args: Sequence[str], stdin: str | None) -> str:
        return run([openbao.binary, *args], stdin=stdin, timeout=30, env=env).stdout

    yield stack.Vault(bao, auth_mount=LOCAL_AUTH_MOUNT)
    openbao.root_client().sys.disable_auth_method(LOCAL_AUTH_MOUNT)


def test_vault_setup_gives_the_role_exactly_the_secret(
    vault: stack.Vault, openbao: OpenBaoServer, tmp_path: Path
) -> None:
    # In the OpenBao pod, kubernetes_host alone is enough: the plugin reads the pod's own CA and
    # token. Here there are none, so the CA is given and the local defaults are switched off.
    ca_file = TlsMaterial(tmp_path).ca
    local = (
        f"kubernetes_host={stack.KUBERNETES_HOST}",
        f"kubernetes_ca_cert=@{ca_file}",
        "disable_local_ca_jwt=true",
    )
    vault.configure(local)
    vault.configure(local)  # safe to run again
    root = openbao.root_client()
    mounts = root.sys.list_auth_methods()["data"]
    assert mounts[f"{LOCAL_AUTH_MOUNT}/"]["type"] == "kubernetes"
    config = root.read(f"auth/{LOCAL_AUTH_MOUNT}/config")["data"]
    assert config["kubernetes_host"] == stack.KUBERNETES_HOST
    role = root.read(f"auth/{LOCAL_AUTH_MOUNT}/role/{stack.VAULT_ROLE}")["data"]
    assert role["bound_service_account_names"] == [stack.SERVICE_ACCOUNT]
    assert role["bound_service_account_namespaces"] == [stack.APP_NAMESPACE]
    assert role["audience"] == stack.AUDIENCE
    assert role["token_policies"] == [stack.VAULT_POLICY]
    assert role["token_ttl"] == 3600
    policy = root.sys.read_acl_policy(stack.VAULT_POLICY)["data"]["policy"]
    assert policy == stack.adapted_policy()

    version = vault.put({"refresh_token": "rt-1", "client_id": stack.CLIENT_ID})
    assert vault.read() == ({"refresh_token": "rt-1", "client_id": stack.CLIENT_ID}, version)

    # A token with the policy does what the sidecar does, and nothing else.
    app = hvac.Client(url=openbao.address, token=openbao.create_token([stack.VAULT_POLICY]))
    kv = app.secrets.kv.v2
    read = kv.read_secret_version(
        stack.KV_PATH, mount_point=stack.KV_MOUNT, raise_on_deleted_version=True
    )
    assert read["data"]["data"]["refresh_token"] == "rt-1"
    assert kv.read_secret_metadata(stack.KV_PATH, mount_point=stack.KV_MOUNT)
    kv.create_or_update_secret(
        stack.KV_PATH, {"refresh_token": "rt-2"}, cas=version, mount_point=stack.KV_MOUNT
    )
    with pytest.raises(hvac.exceptions.Forbidden):
        kv.read_secret_version(
            "apps/other/billing", mount_point=stack.KV_MOUNT, raise_on_deleted_version=True
        )
    app.adapter.close()


def test_grant_gives_the_injected_apps_role_exactly_its_secret(
    vault: stack.Vault, openbao: OpenBaoServer, tmp_path: Path
) -> None:
    ca_file = TlsMaterial(tmp_path).ca
    vault.configure(
        (
            f"kubernetes_host={stack.KUBERNETES_HOST}",
            f"kubernetes_ca_cert=@{ca_file}",
            "disable_local_ca_jwt=true",
        )
    )
    policy = vault.grant(
        injection.VAULT_ROLE, injection.SERVICE_ACCOUNT, injection.NAMESPACE, injection.KV_PATH
    )
    root = openbao.root_client()
    role = root.read(f"auth/{LOCAL_AUTH_MOUNT}/role/{injection.VAULT_ROLE}")["data"]
    assert role["bound_service_account_names"] == [injection.SERVICE_ACCOUNT]
    assert role["bound_service_account_namespaces"] == [injection.NAMESPACE]
    assert role["audience"] == stack.AUDIENCE
    assert role["token_policies"] == [policy]
    version = vault.put({"refresh_token": "rt-injected"}, kv_path=injection.KV_PATH)
    assert vault.read(injection.KV_PATH) == ({"refresh_token": "rt-injected"}, version)

    app = hvac.Client(url=openbao.address, token=openbao.create_token([policy]))
    kv = app.secrets.kv.v2
    read = kv.read_secret_version(
        injection.KV_PATH, mount_point=stack.KV_MOUNT, raise_on_deleted_version=True
    )
    assert read["data"]["data"]["refresh_token"] == "rt-injected"
    with pytest.raises(hvac.exceptions.Forbidden):  # not the chart's app's secret
        kv.read_secret_version(
            stack.KV_PATH, mount_point=stack.KV_MOUNT, raise_on_deleted_version=True
        )
    app.adapter.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def local_idp(idp: IdpServer) -> stack.Idp:
    node, _ = find_node()
    env = {**os.environ, "IDP_PORT": str(idp.port)}

    def call(request: str) -> str:
        return run(
            [str(node), str(stack.IDP_SOURCE_FILES["idp_call.mjs"])],
            stdin=request,
            timeout=30,
            env=env,
        ).stdout

    return stack.Idp(call)


@pytest.fixture
def forwarder(idp: IdpServer) -> Iterator[int]:
    """idp_forward.mjs in front of the local server, as the pod's second container is."""
    node, _ = find_node()
    port = _free_port()
    env = {
        **os.environ,
        "FORWARD_LISTEN_HOST": "127.0.0.1",
        "FORWARD_LISTEN_PORT": str(port),
        "FORWARD_TARGET_PORT": str(idp.port),
    }
    process = subprocess.Popen(
        [str(node), str(stack.IDP_SOURCE_FILES["idp_forward.mjs"])],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], 15)  # printed once listening
        assert readable, "idp_forward.mjs did not start listening within 15 s"
        ready = json.loads(process.stdout.readline())
        assert ready == {"ready": True, "port": port, "target": idp.port}
        yield port
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_seed_exchange_through_the_forwarder_and_userinfo(
    idp: IdpServer, local_idp: stack.Idp, forwarder: int
) -> None:
    refresh_token = local_idp.seed().refresh_token
    # The sidecar's request, with the Host header it sends in the cluster.
    response = httpx.post(
        f"http://127.0.0.1:{forwarder}/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        auth=(stack.CLIENT_ID, idp.client_secret(stack.CLIENT_ID) or ""),
        headers={"Host": f"idp.{stack.INFRA_NAMESPACE}.svc:8080"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["refresh_token"] != refresh_token  # rotated
    assert local_idp.userinfo(answer["access_token"]) == (200, {"sub": stack.ACCOUNT})
    status, _ = local_idp.userinfo("not-a-token")
    assert status == 401
    stats = local_idp.stats()
    assert stats["refresh_succeeded"] == 1
    assert stats["grants_seeded"] >= 1
    assert stats["refresh_token_reuse"] == 0


def test_a_revoked_grant_is_refused_and_the_runbook_reseed_keeps_the_other_fields(
    idp: IdpServer, local_idp: stack.Idp, vault: stack.Vault
) -> None:
    grant = local_idp.seed()
    local_idp.revoke(grant.grant_id)
    response = httpx.post(
        idp.token_endpoint,
        data={"grant_type": "refresh_token", "refresh_token": grant.refresh_token},
        auth=(stack.CLIENT_ID, idp.client_secret(stack.CLIENT_ID) or ""),
        timeout=10,
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")

    shared = '{"claim": null}'
    version = vault.put(
        {
            "refresh_token": grant.refresh_token,
            "client_id": stack.CLIENT_ID,
            "token_sidecar": shared,
        }
    )
    fresh = local_idp.seed()
    assert vault.reseed(fresh.refresh_token) == version + 1
    assert vault.read() == (
        {
            "refresh_token": fresh.refresh_token,
            "client_id": stack.CLIENT_ID,
            "token_sidecar": shared,
        },
        version + 1,
    )
    assert fresh.refresh_token not in repr(fresh)  # kept out of failure messages


def test_idp_call_rejects_a_bad_request(idp: IdpServer) -> None:
    node, _ = find_node()
    result = subprocess.run(
        [str(node), str(stack.IDP_SOURCE_FILES["idp_call.mjs"])],
        input="not json",
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "IDP_PORT": str(idp.port)},
        check=False,
    )
    assert result.returncode == 2
    assert "stdin is not a JSON request" in result.stderr

"""The Vault adapter against the real OpenBao dev server: logins, KV v2 reads, CAS writes, outages.

Kubernetes auth is exercised from the client side exactly as in a cluster: OpenBao's JWT plugin
is mounted at ``auth/kubernetes`` trusting a test key, and the pod's service-account token is a
JWT signed with that key (see tests/support/openbao.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sidecar.adapters.vault import VaultSecretStore, VaultSession
from sidecar.clock import SystemClock
from sidecar.config import VaultAuthConfig, VaultConfig
from sidecar.errors import (
    CasConflict,
    SecretInvalid,
    SecretNotFound,
    VaultAuthFailed,
    VaultPermissionDenied,
    VaultUnavailable,
)
from sidecar.ports import Clock
from tests.support.clock import VirtualClock
from tests.support.loop import PerTestLoop
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.integration

KV_PATH = "team/app"
LOCATION = f"secret/{KV_PATH}"
SEED = {
    "refresh_token": "rt-seed",
    "client_id": "app-client",
    "client_secret": "cs-seed",
    "note": "kept across write-backs",
}


@dataclass
class Pod:
    """What a pod brings to Vault: its service-account token file, and what it saw."""

    bao: OpenBaoServer
    jwt_file: Path
    events: list[tuple[str, str]] = field(default_factory=list)

    def config(self, auth: VaultAuthConfig | None = None, **vault: Any) -> VaultConfig:
        auth = auth or VaultAuthConfig(method="kubernetes", role="app", jwt_file=self.jwt_file)
        return VaultConfig(address=self.bao.address, auth=auth, **vault)

    @contextmanager
    def session(
        self,
        auth: VaultAuthConfig | None = None,
        *,
        clock: Clock | None = None,
        environ: dict[str, str] | None = None,
        **vault: Any,
    ) -> Iterator[tuple[VaultSession, VaultSecretStore]]:
        session = VaultSession(
            self.config(auth, **vault),
            on_request=lambda op, outcome: self.events.append((op, outcome)),
            environ=environ or {},
            clock=clock or SystemClock(),
        )
        try:
            yield session, VaultSecretStore(session, "secret", KV_PATH)
        finally:
            run(session.aclose())


@pytest.fixture
def pod(openbao: OpenBaoServer, tmp_path: Path) -> Pod:
    """A seeded secret, a least-privilege policy for it, and a role bound to default/app."""
    openbao.write_kv_policy("app", KV_PATH)
    openbao.create_role("app", ["app"])
    openbao.put_secret(KV_PATH, SEED)
    jwt_file = tmp_path / "token"
    jwt_file.write_text(openbao.mint_sa_jwt())
    return Pod(openbao, jwt_file)


LOOP = PerTestLoop()
run = LOOP.run


@pytest.fixture(autouse=True)
def event_loop_of_the_test() -> Iterator[None]:
    """One event loop per test, as in the sidecar: the session's connections belong to it."""
    with LOOP.scope():
        yield


# -- logins --------------------------------------------------------------------------------------


def test_kubernetes_login_reads_the_seeded_secret(pod: Pod) -> None:
    mark = pod.bao.audit_mark()
    with pod.session() as (session, store):
        run(session.login())
        secret = run(store.read())
    assert (secret.location, secret.version) == (LOCATION, 1)
    assert (secret.refresh_token, secret.client_id, secret.client_secret) == (
        "rt-seed",
        "app-client",
        "cs-seed",
    )
    assert secret.private_key is None
    assert secret.data == SEED
    assert pod.events == [("login", "success"), ("read", "success")]
    assert pod.bao.audit_requests(mark) == [
        ("update", "auth/kubernetes/login"),
        ("read", "secret/data/team/app"),
    ]


def test_jwt_method(pod: Pod) -> None:
    pod.bao.create_role("app", ["app"], mount="jwt")
    auth = VaultAuthConfig(method="jwt", role="app", jwt_file=pod.jwt_file)
    with pod.session(auth) as (_, store):
        assert run(store.read()).version == 1
    assert pod.events == [("login", "success"), ("read", "success")]


def test_approle_method(pod: Pod, tmp_path: Path) -> None:
    role_id, secret_id = pod.bao.create_approle("app", ["app"])
    (tmp_path / "role-id").write_text(role_id)
    (tmp_path / "secret-id").write_text(secret_id + "\n")
    auth = VaultAuthConfig(
        method="approle", role_id_file=tmp_path / "role-id", secret_id_file=tmp_path / "secret-id"
    )
    with pod.session(auth) as (_, store):
        assert run(store.read()).refresh_token == "rt-seed"
    (tmp_path / "secret-id").write_text("not-the-secret-id")
    with pod.session(auth) as (session, _), pytest.raises(VaultAuthFailed):
        run(session.login())


def test_token_method_from_file_and_from_environment(pod: Pod, tmp_path: Path) -> None:
    token_file = tmp_path / "vault-token"
    token_file.write_text(pod.bao.create_token(["app"]))
    with pod.session(VaultAuthConfig(method="token", token_file=token_file)) as (_, store):
        assert run(store.read()).version == 1
    environ = {"VAULT_TOKEN": pod.bao.create_token(["app"])}
    with pod.session(VaultAuthConfig(method="token"), environ=environ) as (_, store):
        assert run(store.read()).version == 1
    assert pod.events == [("lookup", "success"), ("read", "success")] * 2
    bogus = {"VAULT_TOKEN": "hvs.bogus"}
    with pod.session(VaultAuthConfig(method="token"), environ=bogus) as (session, _):
        with pytest.raises(VaultAuthFailed, match="auth/token"):
            run(session.login())
        assert pod.events[-1] == ("lookup", "vault_auth_failed")


def test_jwt_file_is_read_at_every_login(pod: Pod) -> None:
    with pod.session() as (session, _):
        run(session.login())
        pod.jwt_file.write_text(pod.bao.mint_sa_jwt(service_account="intruder"))
        with pytest.raises(VaultAuthFailed) as caught:
            run(session.login())
        assert caught.value.message == (
            "vault login auth/kubernetes: login as role 'app' refused (HTTP 400)"
        )
        # expired long ago (beyond the plugin's default 150 s leeway)
        pod.jwt_file.write_text(pod.bao.mint_sa_jwt(now=time.time() - 3600))
        with pytest.raises(VaultAuthFailed):
            run(session.login())
        pod.jwt_file.write_text(pod.bao.mint_sa_jwt())  # the kubelet rotated it
        run(session.login())
    assert [outcome for op, outcome in pod.events if op == "login"] == [
        "success",
        "vault_auth_failed",
        "vault_auth_failed",
        "success",
    ]


def test_missing_jwt_file_names_the_file(pod: Pod) -> None:
    pod.jwt_file.unlink()
    with pod.session() as (_, store), pytest.raises(VaultAuthFailed, match=str(pod.jwt_file)):
        run(store.read())
    assert pod.events == []


# -- read and write ------------------------------------------------------------------------------


def test_write_keeps_other_fields_and_bumps_the_version(pod: Pod) -> None:
    with pod.session() as (_, store):
        secret = run(store.read())
        mark = pod.bao.audit_mark()
        written = run(store.write_refresh_token(secret, "rt-next"))
        assert pod.bao.audit_requests(mark) == [("update", "secret/data/team/app")]
        again = run(store.read())
    assert written.version == again.version == 2
    assert written.data == again.data == {**SEED, "refresh_token": "rt-next"}
    assert pod.bao.read_secret(KV_PATH) == ({**SEED, "refresh_token": "rt-next"}, 2)
    assert pod.events[-2:] == [("write", "success"), ("read", "success")]


def test_stale_write_is_a_cas_conflict(pod: Pod) -> None:
    with pod.session() as (_, store):
        secret = run(store.read())
        pod.bao.put_secret(KV_PATH, {**SEED, "refresh_token": "rt-other-replica"})
        with pytest.raises(CasConflict, match=LOCATION):
            run(store.write_refresh_token(secret, "rt-mine"))
    assert pod.bao.read_secret(KV_PATH) == ({**SEED, "refresh_token": "rt-other-replica"}, 2)
    assert pod.events[-1] == ("write", "cas_conflict")


def test_missing_deleted_and_destroyed_secrets_are_not_found(pod: Pod) -> None:
    pod.bao.write_kv_policy("app", "team/*")
    with pod.session() as (session, store):
        missing = VaultSecretStore(session, "secret", "team/nothing-here")
        with pytest.raises(SecretNotFound, match="secret/team/nothing-here"):
            run(missing.read())
        pod.bao.delete_latest(KV_PATH)
        with pytest.raises(SecretNotFound, match=LOCATION):
            run(store.read())
        version = pod.bao.put_secret(KV_PATH, SEED)
        pod.bao.destroy_versions(KV_PATH, [version])
        with pytest.raises(SecretNotFound, match=LOCATION):
            run(store.read())


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"client_id": "app-client"}, "field 'refresh_token' is missing"),
        ({"refresh_token": "", "client_id": "app-client"}, "field 'refresh_token' is empty"),
        ({"refresh_token": ["a"]}, "field 'refresh_token' is not a string"),
        ({"refresh_token": "rt", "client_id": 12}, "field 'client_id' is not a string"),
    ],
)
def test_unusable_secret_is_invalid(pod: Pod, data: dict[str, Any], problem: str) -> None:
    pod.bao.put_secret(KV_PATH, data)
    with pod.session() as (_, store), pytest.raises(SecretInvalid) as caught:
        run(store.read())
    assert caught.value.message == f"{LOCATION}: {problem}"
    assert pod.events[-1] == ("read", "secret_invalid")


def test_policy_without_write_is_permission_denied(pod: Pod) -> None:
    pod.bao.write_kv_policy("app", KV_PATH, write=False)
    with pod.session() as (_, store):
        secret = run(store.read())
        with pytest.raises(VaultPermissionDenied, match="after a fresh login"):
            run(store.write_refresh_token(secret, "rt-next"))
    assert pod.events == [
        ("login", "success"),
        ("read", "success"),
        ("write", "vault_forbidden"),
        ("login", "success"),
        ("write", "vault_forbidden"),
    ]
    assert pod.bao.read_secret(KV_PATH) == (SEED, 1)


# -- outages and token lifecycle -----------------------------------------------------------------


def test_sealed_vault_is_unavailable_and_recovers_after_unseal(pod: Pod) -> None:
    with pod.session() as (_, store):
        secret = run(store.read())
        pod.bao.seal()
        with pytest.raises(VaultUnavailable, match="sealed"):
            run(store.read())
        with pytest.raises(VaultUnavailable):
            run(store.write_refresh_token(secret, "rt-next"))
        pod.bao.unseal()
        assert run(store.write_refresh_token(secret, "rt-next")).version == 2
    assert pod.events == [
        ("login", "success"),
        ("read", "success"),
        ("read", "vault_unavailable"),
        ("write", "vault_unavailable"),
        ("write", "success"),  # the token survived the seal: no new login
    ]


def test_hanging_vault_times_out(pod: Pod) -> None:
    with pod.session(timeout_seconds=0.3) as (_, store):
        run(store.read())
        with pod.bao.frozen(), pytest.raises(VaultUnavailable, match="no answer"):
            run(store.read())
        assert run(store.read()).version == 1
    assert pod.events[-2:] == [("read", "vault_unavailable"), ("read", "success")]


def test_stopped_vault_is_unavailable(pod: Pod) -> None:
    with pod.session() as (_, store):
        pod.bao.stop()
        with pytest.raises(VaultUnavailable, match="cannot connect"):
            run(store.read())
    assert pod.events == [("login", "vault_unavailable")]


def test_token_is_renewed_at_two_thirds_of_its_ttl(pod: Pod) -> None:
    clock = VirtualClock()
    with pod.session(clock=clock) as (_, store):
        run(store.read())
        clock.advance(401)  # the role grants 600 s
        run(store.read())
        clock.advance(399)
        run(store.read())
    assert pod.events == [
        ("login", "success"),
        ("read", "success"),
        ("renew", "success"),
        ("read", "success"),
        ("read", "success"),
    ]


def test_non_renewable_token_is_replaced_by_a_fresh_login(pod: Pod) -> None:
    pod.bao.create_role("app", ["app"], token_type="batch")
    clock = VirtualClock()
    with pod.session(clock=clock) as (_, store):
        run(store.read())
        clock.advance(401)
        run(store.read())
    assert pod.events == [
        ("login", "success"),
        ("read", "success"),
        ("login", "success"),
        ("read", "success"),
    ]


def test_revoked_token_is_replaced_transparently(pod: Pod) -> None:
    with pod.session() as (_, store):
        secret = run(store.read())
        pod.bao.revoke_logins("kubernetes")
        assert run(store.write_refresh_token(secret, "rt-next")).version == 2
    assert pod.events == [
        ("login", "success"),
        ("read", "success"),
        ("write", "vault_forbidden"),
        ("login", "success"),
        ("write", "success"),
    ]


def test_short_ttl_token_in_real_time(pod: Pod) -> None:
    """Real clocks on both sides: renewed at 2/3 of 4 s, then a token that expires unseen."""
    pod.bao.create_role("app", ["app"], token_ttl=4)
    with pod.session() as (_, store):
        run(store.read())
        time.sleep(2.8)
        run(store.read())
    assert ("renew", "success") in pod.events
    pod.events.clear()
    pod.bao.create_role("app", ["app"], token_ttl=1)
    frozen = VirtualClock()  # the session never sees the TTL pass; the server does
    with pod.session(clock=frozen) as (_, store):
        run(store.read())
        time.sleep(1.2)
        assert run(store.read()).version == 1
    assert pod.events == [
        ("login", "success"),
        ("read", "success"),
        ("read", "vault_forbidden"),
        ("login", "success"),
        ("read", "success"),
    ]


def test_tls_with_the_configured_ca(tmp_path: Path) -> None:
    with OpenBaoServer(tls=True) as bao:
        bao.write_kv_policy("app", KV_PATH)
        bao.put_secret(KV_PATH, SEED)
        token_file = tmp_path / "vault-token"
        token_file.write_text(bao.create_token(["app"]))
        pod = Pod(bao, tmp_path / "unused")
        auth = VaultAuthConfig(method="token", token_file=token_file)
        assert bao.address.startswith("https://")
        with pod.session(auth, ca_cert=bao.ca_cert) as (_, store):
            assert run(store.read()).version == 1
        with (
            pod.session(auth) as (session, _),
            pytest.raises(VaultUnavailable, match="TLS handshake"),
        ):
            run(session.login())

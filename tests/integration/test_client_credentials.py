"""client_credentials and mutual TLS end to end: the real CLI, OpenBao and oidc-provider.

The authorization server runs an HTTPS listener that asks for client certificates and hands
the peer certificate to oidc-provider (``features.mTLS``); its discovery document names that
listener in ``mtls_endpoint_aliases``. Clients: the usual secret and key ones, ``client-tls``
(``tls_client_auth``, subject ``CN=svc``, CA-issued) and ``client-self``
(``self_signed_tls_client_auth``, two registered self-signed certificates, tokens bound to
the certificate). The server's own counters (tokens issued per client, certificates presented
by thumbprint, tokens bound) are the ground truth.
"""

from __future__ import annotations

import contextlib
import http.server
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.deployment import KV_PATH, ROLE, Deployment, wait_for
from tests.support.idp_user import User
from tests.support.mtls import (
    Certificates,
    configure,
    events,
    install,
    pem,
    put,
    state,
    thumbprint,
    token,
)
from tests.support.openbao import OpenBaoServer
from tests.support.operator import OperatorCli
from tests.support.rawserver import TlsMaterial

pytestmark = pytest.mark.integration

# -- once, with each client authentication method -------------------------------------------


@pytest.mark.parametrize(
    "method",
    [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "tls_client_auth",
        "self_signed_tls_client_auth",
    ],
)
def test_once_with_each_client_auth_method(
    cc: Deployment, certificates: Certificates, method: str
) -> None:
    idp = cc.idp
    overrides: dict[str, Any] = {"client_auth": method}
    if method.startswith("client_secret"):
        client_id = "client-basic" if method.endswith("basic") else "client-post"
        secret = idp.client_secret(client_id)
        assert secret is not None
        version = put(cc, client_id=client_id, client_secret=secret)
    elif method == "private_key_jwt":
        client_id = "client-jwt"
        version = put(cc, client_id=client_id, private_key=idp.private_key_pem)
        overrides.update(key_id=idp.key_id, token_endpoint=None, issuer=idp.issuer)
    elif method == "tls_client_auth":
        # Certificate and key as fields of the Vault secret; the mTLS endpoint configured.
        client_id = "client-tls"
        version = put(
            cc,
            client_id=client_id,
            client_cert=pem(certificates.svc[0]),
            client_key=pem(certificates.svc[1]),
        )
        overrides.update(token_endpoint=idp.mtls_token_endpoint)
    else:
        # Certificate files; the endpoint found through discovery's mtls_endpoint_aliases.
        client_id = "client-self"
        version = put(cc, client_id=client_id)
        cert, key = install(certificates.self_a, cc.root / "certs")
        overrides.update(
            token_endpoint=None,
            issuer=idp.issuer,
            client_cert_file=str(cert),
            client_key_file=str(key),
        )
    configure(cc, certificates, **overrides)

    result = cc.cli("once")

    assert result.returncode == 0, result.stderr
    stats = idp.stats()
    assert stats["client_credentials_by_client"] == {client_id: 1}, stats
    assert stats["refresh_succeeded"] == 0
    doc = token(cc)
    assert doc["access_token"] == (cc.output_dir / "access_token").read_text()
    assert doc["token_type"] == "Bearer"
    assert cc.vault_secret()[1] == version  # read-only: nothing written
    if method == "tls_client_auth":
        assert thumbprint(certificates.svc[0]) in stats["client_certificates"]
    if method == "self_signed_tls_client_auth":
        bound = thumbprint(certificates.self_a[0])
        assert stats["client_certificates"] == {bound: 1}
        assert stats["bound_tokens"] == {bound: 1}  # cnf.x5t#S256 of the certificate


def test_without_vault_everything_from_files(cc: Deployment, certificates: Certificates) -> None:
    """No kv_path: the client id in configuration, the certificate from files; check and once
    never log in to Vault."""
    cert, key = install(certificates.svc, cc.root / "certs")
    configure(
        cc,
        certificates,
        kv_path=None,
        client_id="client-tls",
        client_auth="tls_client_auth",
        token_endpoint=None,
        issuer=cc.idp.issuer,
        client_cert_file=str(cert),
        client_key_file=str(key),
    )
    check = cc.cli("check")
    assert check.returncode == 0, check.stderr + check.stdout
    assert "vault" not in check.stdout.lower().split("credential")[0]
    assert "with the client certificate" in check.stdout
    result = cc.cli("once")
    assert result.returncode == 0, result.stderr
    assert cc.idp.stats()["client_credentials_by_client"] == {"client-tls": 1}
    assert events(result.stderr, "vault.login") == []


def test_refresh_token_grant_with_mutual_tls(
    openbao: OpenBaoServer, cc: Deployment, certificates: Certificates
) -> None:
    """tls_client_auth for the refresh_token grant: rotation and write-back as ever."""
    writer = openbao.write_kv_policy("cc-write", KV_PATH)
    openbao.create_role(ROLE, [writer])
    seeded = cc.idp.seed_refresh_token("client-tls")
    put(
        cc,
        refresh_token=seeded,
        client_id="client-tls",
        client_cert=pem(certificates.svc[0]),
        client_key=pem(certificates.svc[1]),
    )
    cc.write_config(
        client_auth="tls_client_auth",
        token_endpoint=None,
        issuer=cc.idp.issuer,
        sections={"http": {"ca_cert": str(certificates.material.ca)}},
    )

    result = cc.cli("once")

    assert result.returncode == 0, result.stderr
    stats = cc.idp.stats()
    assert stats["refresh_succeeded"] == 1
    assert stats["refresh_token_reuse"] == 0
    assert thumbprint(certificates.svc[0]) in stats["client_certificates"]
    data, _ = cc.vault_secret()
    assert data["refresh_token"] != seeded  # rotated and written back


# -- certificates the server refuses, rotated, expired ------------------------------------------


def test_a_certificate_the_server_does_not_accept_is_final(
    cc: Deployment, certificates: Certificates
) -> None:
    put(cc, client_id="client-self")
    cert, key = install(certificates.stranger, cc.root / "certs")
    configure(
        cc,
        certificates,
        client_auth="self_signed_tls_client_auth",
        token_endpoint=cc.idp.mtls_token_endpoint,
        client_cert_file=str(cert),
        client_key_file=str(key),
    )
    result = cc.cli("once")
    assert result.returncode == 1
    [failed] = events(result.stderr, "once.failed")
    assert failed["error"] == "client_rejected"
    assert "invalid_client" in failed["message"]

    cc.start()
    assert wait_for(lambda: state(cc).get("state") == "failed", timeout=15), cc.logs()
    assert state(cc)["last_error"] == "client_rejected"
    assert state(cc)["grant"] == "client_credentials"
    metrics = cc.get("/metrics").text
    assert 'token_sidecar_refresh_total{credential="billing",outcome="client_rejected"}' in metrics
    assert (
        'token_sidecar_credential_info{client_auth="self_signed_tls_client_auth",'
        'credential="billing",grant="client_credentials"} 1.0' in metrics
    )
    # Final: tried again only after secret_poll_seconds (1 s here), never in a hot loop.
    time.sleep(3)
    errors = cc.idp.stats()["client_credentials_errors"].get("invalid_client", 0)
    assert 1 <= errors <= 1 + 5, errors

    # The operator registers the right certificate (here: installs a registered one).
    install(certificates.self_b, cc.root / "certs")
    assert wait_for((cc.output_dir / "access_token").exists, timeout=15), cc.logs()
    assert cc.stop() == 0


def test_a_certificate_rotated_on_disk_is_used_from_the_next_exchange(
    cc: Deployment, certificates: Certificates
) -> None:
    """The files change as a mounted Secret's do: the ..data symlink is swapped atomically."""
    put(cc, client_id="client-self")
    mount = cc.root / "mount"
    install(certificates.self_a, mount / "a")
    install(certificates.self_b, mount / "b")
    (mount / "..data").symlink_to("a")
    for name in ("tls.crt", "tls.key"):
        (mount / name).symlink_to(Path("..data") / name)
    configure(
        cc,
        certificates,
        client_auth="self_signed_tls_client_auth",
        token_endpoint=None,
        issuer=cc.idp.issuer,
        client_cert_file=str(mount / "tls.crt"),
        client_key_file=str(mount / "tls.key"),
    )
    first, second = thumbprint(certificates.self_a[0]), thumbprint(certificates.self_b[0])
    cc.start()
    assert wait_for(lambda: first in cc.idp.stats()["bound_tokens"], timeout=15), cc.logs()
    before = cc.idp.stats()["client_credentials_issued"]

    swap = mount / "..data_tmp"
    swap.symlink_to("b")
    swap.replace(mount / "..data")

    # 4 s tokens are replaced every ~2.7 s: the next exchange presents the new certificate.
    assert wait_for(lambda: second in cc.idp.stats()["bound_tokens"], timeout=15), cc.logs()
    stats = cc.idp.stats()
    assert stats["client_credentials_issued"] > before
    assert stats["client_credentials_errors"] == {}
    loaded = events(cc.logs(), "tls.client_certificate_loaded")
    assert [e["rotated"] for e in loaded] == [False, True]
    assert all(e["source"] == f"client_cert_file {mount / 'tls.crt'}" for e in loaded)
    assert wait_for(lambda: token(cc)["access_token"], timeout=5)
    assert cc.stop() == 0


def test_an_expired_certificate_is_named_by_its_file_never_shown(
    cc: Deployment, certificates: Certificates
) -> None:
    put(cc, client_id="client-tls")
    cert, key = install(certificates.svc_expired, cc.root / "certs")
    configure(
        cc,
        certificates,
        client_auth="tls_client_auth",
        token_endpoint=cc.idp.mtls_token_endpoint,
        client_cert_file=str(cert),
        client_key_file=str(key),
    )
    for command in ("once", "check"):
        result = cc.cli(command)
        assert result.returncode == 1, command
        output = result.stdout + result.stderr
        assert f"client_cert_file {cert}: the client certificate expired at " in output
        for path in (cert, key):
            body = [line for line in path.read_text().splitlines() if "-----" not in line]
            assert not any(line in output for line in body), f"{path.name} leaked ({command})"
        assert "BEGIN" not in output
    assert cc.idp.stats()["token_requests"] == 0  # refused before anything was sent


# -- replicas -------------------------------------------------------------------------------------


def test_replicas_each_obtain_their_own_tokens_and_never_write(
    cc: Deployment, certificates: Certificates
) -> None:
    """Three replicas with one secret: each keeps its own token fresh; Vault is only read.

    Also the measurement behind not sharing the token: N replicas cost N exchanges per
    refresh period (about 2/3 of the token's lifetime), counted by the server.
    """
    secret = cc.idp.client_secret("client-basic")
    assert secret is not None
    version = put(cc, client_id="client-basic", client_secret=secret)
    configure(cc, certificates, client_auth="client_secret_basic")
    replicas = [cc]
    replicas += [cc.replica(name) for name in ("app-1", "app-2")]
    for each in replicas:
        each.start()
    for each in replicas:
        assert wait_for((each.output_dir / "access_token").exists, timeout=15), each.logs()
    started = cc.idp.stats()["client_credentials_issued"]
    window = 12.0
    time.sleep(window)
    issued = cc.idp.stats()["client_credentials_issued"] - started
    for each in replicas:
        assert each.get("/readyz").status_code == 200
        assert each.stop() == 0
    tokens = {token(each)["access_token"] for each in replicas}
    assert len(tokens) == 3  # each its own
    refreshed = [len(events(each.logs(), "token.refreshed")) for each in replicas]
    # 4 s tokens, refreshed at 2/3 +- 5 % of the lifetime: 12 s is 4 to 5 periods per replica.
    assert all(count >= 4 for count in refreshed), refreshed
    assert 3 * 3 <= issued <= 3 * 6, issued
    assert cc.vault_secret()[1] == version
    assert cc.idp.stats()["client_credentials_errors"] == {}


@contextlib.contextmanager
def strict_tls_server(material: TlsMaterial) -> Iterator[str]:
    """A TLS terminator that requires a client certificate issued by the test CA (as nginx with
    ``ssl_verify_client on``): it refuses any other in the handshake, with an alert."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*material.good)
    context.load_verify_locations(material.ca)
    context.verify_mode = ssl.CERT_REQUIRED

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # the http.server API
            self.send_response(500)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/token"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_certificate_refused_in_the_handshake_is_final_and_spends_no_refresh_token(
    openbao: OpenBaoServer, cc: Deployment, certificates: Certificates
) -> None:
    """TLS 1.3 reports the server's alert only when the client reads the answer; it must not
    pass for a lost answer, which would give up the refresh token (response_lost_twice)."""
    openbao.create_role(ROLE, [openbao.write_kv_policy("cc-write", KV_PATH)])
    version = put(
        cc,
        refresh_token="rt-never-presented-0123456789",
        client_id="client-self",
        client_cert=pem(certificates.stranger[0]),
        client_key=pem(certificates.stranger[1]),
    )
    with strict_tls_server(certificates.material) as endpoint:
        cc.write_config(
            client_auth="self_signed_tls_client_auth",
            token_endpoint=endpoint,
            sections={"http": {"ca_cert": str(certificates.material.ca)}},
        )
        result = cc.cli("once")
    assert result.returncode == 1, result.stderr
    [failed] = events(result.stderr, "once.failed") or [{"stderr": result.stderr[-3000:]}]
    assert failed.get("error") == "client_rejected", failed
    assert "refused the client certificate in the TLS handshake" in failed["message"]
    assert events(result.stderr, "token.response_lost") == []
    data, _ = cc.vault_secret()
    assert data["refresh_token"] == "rt-never-presented-0123456789"
    assert "rejected" not in data.get("token_sidecar", {})
    assert cc.vault_secret()[1] >= version


# -- the operator commands with a client certificate ----------------------------------------


def test_seed_and_retire_present_the_client_certificate(
    openbao: OpenBaoServer, cc: Deployment, certificates: Certificates
) -> None:
    """seed (device flow) and retire for a tls_client_auth client: the server authenticates
    the client at the device authorization, token and revocation endpoints, which it can do
    only over the mTLS listener its ``mtls_endpoint_aliases`` name; nothing secret is shown."""
    openbao.create_role(ROLE, [openbao.write_kv_policy("cc-write", KV_PATH)])
    cert, key = pem(certificates.svc[0]), pem(certificates.svc[1])
    put(cc, client_id="client-tls", client_cert=cert, client_key=key)
    cc.write_config(
        client_auth="tls_client_auth",
        token_endpoint=None,
        issuer=cc.idp.issuer,
        sections={"http": {"ca_cert": str(certificates.material.ca)}},
    )
    operator = OperatorCli(cc, openbao.create_token([openbao.write_kv_policy("op", KV_PATH)]))
    try:
        seed = operator.start("seed", "--credential", "billing", "--flow", "device")
        shown = seed.event("device.authorization")
        with User(cc.idp.issuer) as user:
            user.approve_device(shown["user_code"])
        assert seed.wait(30) == 0, seed.stderr
        stats = cc.idp.stats()
        assert stats["client_certificates"] == {thumbprint(certificates.svc[0]): 1}
        seeded, _ = cc.vault_secret()
        assert seeded["token_sidecar"]["seeded"]["flow"] == "device"
        assert (seeded["client_cert"], seeded["client_key"]) == (cert, key)  # kept

        # The seeded token works for the sidecar, with the same certificate.
        assert cc.cli("once").returncode == 0
        rotated, _ = cc.vault_secret()
        assert rotated["refresh_token"] != seeded["refresh_token"]

        retire = operator.run("retire", "--credential", "billing")
        assert retire.process.returncode == 0, retire.stderr
        assert [e["event"] for e in retire.events() if e["event"] != "claim.wait"] == [
            "retire.marked",
            "revoked",
            "retired",
        ]
        stats = cc.idp.stats()
        assert stats["revocation_requests"] == 1
        assert stats["grants_revoked"] == 1
        assert "refresh_token" not in cc.vault_secret()[0]
    finally:
        operator.close()
    key_body = "".join(key.splitlines()[1:-1])
    shown_text = "".join(seed.stdout + retire.stdout) + seed.stderr + retire.stderr
    for secret in (
        key_body,
        key_body[:40],
        seeded["refresh_token"],
        rotated["refresh_token"],
    ):
        assert secret not in shown_text

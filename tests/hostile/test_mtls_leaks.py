"""The canary scan over client certificates, their private keys and client secrets.

Real sidecar processes at debug level, in both log formats, against the real oidc-provider's
mutual-TLS listener and a real OpenBao: certificates and keys from the Vault secret's fields
and from files, a key that does not match its certificate, an expired certificate, one the
server refuses, and client secrets from a file. Nothing any of them prints (logs, ``check``
and ``once`` output, ``/healthz``, ``/readyz``, ``/livez``, ``/metrics``) may contain any
line of a private key or of a certificate, the client secret, or an access token issued.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile.canary import CanaryScan
from tests.support.deployment import Deployment, wait_for
from tests.support.mtls import Certificates, configure, install, pem, put, state, token

pytestmark = pytest.mark.integration


def register_pem(scan: CanaryScan, path: Path, what: str) -> None:
    """The base64 body of a PEM file, whole and line by line (a partial key is a leak too)."""
    body = [line for line in path.read_text().splitlines() if line and "-----" not in line]
    scan.secret("".join(body), what)
    for number, line in enumerate(body):
        scan.secret(line, f"{what}, line {number + 1}")


def record(scan: CanaryScan, dep: Deployment, label: str, *args: str) -> int:
    result = dep.cli(*args)
    scan.text(f"{label}: {' '.join(args)} stdout", result.stdout)
    scan.text(f"{label}: {' '.join(args)} stderr", result.stderr)
    return result.returncode


def look_everywhere(scan: CanaryScan, dep: Deployment, label: str) -> None:
    for path in ("/healthz", "/readyz", "/livez", "/metrics"):
        scan.text(f"{label}: {path}", dep.get(path).text)


def test_no_key_certificate_or_secret_leaves(
    cc: Deployment, certificates: Certificates, leaks: CanaryScan
) -> None:
    for pair, what in (
        (certificates.svc, "client-tls's certificate"),
        (certificates.svc_expired, "an expired certificate"),
        (certificates.self_a, "client-self's certificate"),
        (certificates.stranger, "an unregistered certificate"),
        (certificates.intruder, "another subject's certificate"),
    ):
        register_pem(leaks, pair[0], what)
        register_pem(leaks, pair[1], f"the private key of {what}")
    idp = cc.idp
    secret = idp.client_secret("client-basic")
    assert secret is not None
    leaks.secret(secret, "client-basic's client secret")
    issued: list[str] = []

    # 1. Certificate and key from the Vault secret, console logs: check and once succeed.
    put(cc, client_id="client-tls", client_cert=pem(certificates.svc[0]),
        client_key=pem(certificates.svc[1]))  # fmt: skip
    configure(
        cc,
        certificates,
        client_auth="tls_client_auth",
        token_endpoint=None,
        issuer=idp.issuer,
        sections={"log": {"level": "debug", "format": "console"}},
    )
    assert record(leaks, cc, "vault fields", "check") == 0
    assert record(leaks, cc, "vault fields", "once") == 0
    issued.append(token(cc)["access_token"])

    # 2. A key that does not match its certificate (in Vault), JSON logs.
    put(cc, client_id="client-tls", client_cert=pem(certificates.svc[0]),
        client_key=pem(certificates.intruder[1]))  # fmt: skip
    configure(cc, certificates, client_auth="tls_client_auth", token_endpoint=None,
              issuer=idp.issuer)  # fmt: skip
    assert record(leaks, cc, "mismatched key", "once") == 1
    assert record(leaks, cc, "mismatched key", "check") == 1

    # 3. An expired certificate from files.
    put(cc, client_id="client-tls")
    cert, key = install(certificates.svc_expired, cc.root / "expired")
    configure(cc, certificates, client_auth="tls_client_auth",
              token_endpoint=idp.mtls_token_endpoint, client_cert_file=str(cert),
              client_key_file=str(key))  # fmt: skip
    assert record(leaks, cc, "expired", "once") == 1

    # 4. A certificate the server refuses, in run mode; then one it accepts, rotated in.
    put(cc, client_id="client-self")
    mount = cc.root / "mount"
    cert, key = install(certificates.stranger, mount)
    configure(cc, certificates, client_auth="self_signed_tls_client_auth",
              token_endpoint=None, issuer=idp.issuer, client_cert_file=str(cert),
              client_key_file=str(key))  # fmt: skip
    cc.start()
    assert wait_for(lambda: state(cc).get("state") == "failed", timeout=15), cc.logs()
    look_everywhere(leaks, cc, "refused")
    install(certificates.self_a, mount)
    assert wait_for(lambda: state(cc).get("state") == "valid", timeout=15), cc.logs()
    assert wait_for(lambda: idp.stats()["client_credentials_issued"] >= 3, timeout=15)
    look_everywhere(leaks, cc, "accepted")
    issued.append(token(cc)["access_token"])
    assert cc.stop() == 0

    # 5. A client secret from a file (a mounted Secret, with its trailing newline).
    put(cc)
    secret_file = cc.root / "client-secret"
    secret_file.write_text(secret + "\n")
    configure(cc, certificates, client_id="client-basic", client_auth="client_secret_basic",
              client_secret_file=str(secret_file))  # fmt: skip
    assert record(leaks, cc, "secret file", "once") == 0
    issued.append(token(cc)["access_token"])

    for number, value in enumerate(issued):
        leaks.secret(value, f"access token {number + 1}")
    leaks.text("sidecar.log", cc.logs())
    assert len(leaks.texts) > 10

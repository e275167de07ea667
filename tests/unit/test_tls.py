"""The TLS client context shared by Vault and the token endpoints."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from sidecar.errors import ConfigError
from sidecar.tls import client_context


def test_without_https_no_trust_store_is_loaded_yet_verification_stays_on(
    tmp_path: Path,
) -> None:
    context = client_context(tmp_path / "never-read.pem", needed=False, setting="http.ca_cert")
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert context.cert_store_stats() == {"crl": 0, "x509_ca": 0, "x509": 0}


def test_with_https_the_system_store_is_loaded() -> None:
    context = client_context(None, needed=True, setting="http.ca_cert")
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    default = ssl.create_default_context()
    assert context.cert_store_stats() == default.cert_store_stats()


@pytest.mark.parametrize("content", [None, "-----BEGIN CERTIFICATE-----\nno\n"])
def test_an_unloadable_bundle_names_the_setting(tmp_path: Path, content: str | None) -> None:
    bundle = tmp_path / "ca.pem"
    if content is not None:
        bundle.write_text(content)
    with pytest.raises(ConfigError) as caught:
        client_context(bundle, needed=True, setting="vault.ca_cert")
    [problem] = caught.value.problems
    assert problem.startswith(f"vault.ca_cert: cannot load a CA bundle from {bundle} (")

"""The TLS client context shared by Vault and the token endpoints, and client certificates."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest

from sidecar.errors import ClientCertificateInvalid, ConfigError
from sidecar.model import ClientCertificate
from sidecar.tls import (
    MAX_PEM_BYTES,
    client_context,
    load_client_certificate,
    pem_secrets,
    read_client_certificate,
)
from tests.support.rawserver import TlsMaterial


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


# -- client certificates (mutual TLS) ----------------------------------------------------------


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return TlsMaterial(tmp_path_factory.mktemp("tls"))


def from_files(cert: Path, key: Path) -> ClientCertificate:
    return ClientCertificate(cert_file=cert, key_file=key, source=f"client_cert_file {cert}")


def test_a_valid_certificate_loads_and_a_rotation_changes_the_digest(
    material: TlsMaterial, tmp_path: Path
) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(material.good[0].read_bytes())
    key.write_bytes(material.good[1].read_bytes())
    first = read_client_certificate(from_files(cert, key))
    loaded = load_client_certificate(first, material.ca, now=time.time())
    assert loaded.digest == first.digest
    assert loaded.not_before < time.time() < loaded.not_after
    loaded.check_valid(time.time())
    cert.write_bytes(material.self_signed[0].read_bytes())
    key.write_bytes(material.self_signed[1].read_bytes())
    assert read_client_certificate(from_files(cert, key)).digest != first.digest


def test_from_the_secret_fields(material: TlsMaterial) -> None:
    certificate = ClientCertificate(
        cert_pem=material.good[0].read_text(),
        key_pem=material.good[1].read_text(),
        source="secret secret/apps/x field client_cert",
    )
    text = read_client_certificate(certificate)
    assert text.key_source == "secret secret/apps/x field client_key"
    load_client_certificate(text, None, now=time.time())


def test_an_expired_certificate_names_the_file_and_never_its_contents(
    material: TlsMaterial,
) -> None:
    cert, key = material.expired
    with pytest.raises(ClientCertificateInvalid) as caught:
        load_client_certificate(
            read_client_certificate(from_files(cert, key)), None, now=time.time()
        )
    message = caught.value.message
    assert message.startswith(f"client_cert_file {cert}: the client certificate expired at ")
    assert "BEGIN" not in message and key.read_text().splitlines()[1] not in message
    # A loaded certificate that expires later is refused on use, too.
    loaded = load_client_certificate(
        read_client_certificate(from_files(*material.good)), None, now=time.time()
    )
    with pytest.raises(ClientCertificateInvalid, match="expired at"):
        loaded.check_valid(loaded.not_after + 1)
    with pytest.raises(ClientCertificateInvalid, match="not valid before"):
        loaded.check_valid(loaded.not_before - 1)


def test_a_key_that_does_not_match_names_the_key_file(material: TlsMaterial) -> None:
    certificate = from_files(material.good[0], material.self_signed[1])
    with pytest.raises(ClientCertificateInvalid) as caught:
        load_client_certificate(read_client_certificate(certificate), None, now=time.time())
    assert caught.value.message.startswith(
        f"client_key_file {material.self_signed[1]}: the key does not load or does not match"
    )


def test_unreadable_and_non_pem_files(material: TlsMaterial, tmp_path: Path) -> None:
    missing = tmp_path / "missing.crt"
    with pytest.raises(ClientCertificateInvalid, match=f"client_cert_file {missing}: cannot read"):
        read_client_certificate(from_files(missing, material.good[1]))
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate at all")
    text = read_client_certificate(from_files(junk, material.good[1]))
    with pytest.raises(ClientCertificateInvalid, match="no PEM certificate in it"):
        load_client_certificate(text, None, now=time.time())
    text = read_client_certificate(from_files(material.good[0], junk))
    with pytest.raises(ClientCertificateInvalid, match=f"client_key_file {junk}: no PEM private"):
        load_client_certificate(text, None, now=time.time())
    huge = tmp_path / "huge.crt"
    huge.write_bytes(b"x" * (MAX_PEM_BYTES + 1))
    with pytest.raises(ClientCertificateInvalid, match="larger than"):
        read_client_certificate(from_files(huge, material.good[1]))


def test_pem_secrets_cover_the_key_and_each_of_its_lines(material: TlsMaterial) -> None:
    pem = material.good[1].read_text()
    found = pem_secrets(pem)
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    assert found[0] == pem
    assert found[1] == "".join(body)
    assert set(body) <= set(found)


def test_a_client_certificate_is_presented_over_tls_1_2_at_most(material: TlsMaterial) -> None:
    """So that a server refusing it does so in the handshake, before any request is sent."""
    certificate = from_files(*material.good)
    loaded = load_client_certificate(read_client_certificate(certificate), None, now=time.time())
    assert loaded.context.maximum_version == ssl.TLSVersion.TLSv1_2
    assert loaded.context.verify_mode == ssl.CERT_REQUIRED
    assert loaded.context.check_hostname

"""TLS client contexts for Vault and the token endpoints (verification always on), and the
client certificate of mutual TLS (RFC 8705).

A client certificate comes as PEM text, from files or from the secret's fields. Its text is
read, checked (one certificate, a usable key, inside its validity period) and loaded into a
fresh context without touching the disk: :mod:`ssl` loads only from paths, so the PEM goes
through an anonymous in-memory file (``memfd_create``), else a private temporary file removed
at once. Every message names the file or field and never shows the text.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sidecar.errors import ClientCertificateInvalid, ConfigError
from sidecar.model import ClientCertificate

__all__ = [
    "MAX_PEM_BYTES",
    "CertificateText",
    "LoadedCertificate",
    "client_context",
    "load_client_certificate",
    "pem_secrets",
    "read_client_certificate",
]

#: A certificate chain or key larger than this is not a certificate chain or key.
MAX_PEM_BYTES = 256 * 1024


def client_context(ca_cert: Path | None, *, needed: bool, setting: str) -> ssl.SSLContext:
    """Certificates and host names verified against ``ca_cert``, else the system trust store
    (``SSL_CERT_FILE``/``SSL_CERT_DIR`` apply).

    ``needed=False`` (no ``https://`` URL configured) loads no trust store, which costs
    megabytes per process: an ``https://`` URL met anyway then fails verification, never goes
    unverified. Raises ConfigError naming ``setting`` when the bundle cannot be loaded.
    """
    if not needed:
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        return ssl.create_default_context(cafile=str(ca_cert) if ca_cert else None)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or exc.__class__.__name__
        problem = f"{setting}: cannot load a CA bundle from {ca_cert} ({reason})"
        raise ConfigError([problem]) from exc


@dataclass(frozen=True, slots=True)
class LoadedCertificate:
    """A client certificate loaded into a TLS context, with the facts checked on each use."""

    context: ssl.SSLContext = field(repr=False)
    digest: str
    """SHA-256 of the certificate and key text: a change means a rotation."""
    not_before: float
    not_after: float
    source: str

    def check_valid(self, now: float) -> None:
        """Raise ClientCertificateInvalid when ``now`` is outside the validity period."""
        _check_period(self.source, self.not_before, self.not_after, now)


def _read(path: Path, setting: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise ClientCertificateInvalid(
            f"{setting} {path}: cannot read ({exc.strerror or exc.__class__.__name__})"
        ) from None
    if len(data) > MAX_PEM_BYTES:
        raise ClientCertificateInvalid(f"{setting} {path}: larger than {MAX_PEM_BYTES} bytes")
    return data


@dataclass(frozen=True, slots=True)
class CertificateText:
    """A client certificate's and key's PEM text as read, and where each came from."""

    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)
    cert_source: str
    key_source: str

    @property
    def digest(self) -> str:
        """SHA-256 of both texts: a change means the certificate was rotated."""
        return hashlib.sha256(self.cert + b"\0" + self.key).hexdigest()


def read_client_certificate(certificate: ClientCertificate) -> CertificateText:
    """The certificate and key text, and where each came from (for messages).

    Files are read now, every time: a mounted Secret or cert-manager replaces them in place.
    """
    if certificate.cert_file is not None and certificate.key_file is not None:
        return CertificateText(
            _read(certificate.cert_file, "client_cert_file"),
            _read(certificate.key_file, "client_key_file"),
            f"client_cert_file {certificate.cert_file}",
            f"client_key_file {certificate.key_file}",
        )
    if certificate.cert_pem is None or certificate.key_pem is None:
        raise ClientCertificateInvalid(f"{certificate.source}: no certificate and key")
    return CertificateText(
        certificate.cert_pem.encode("utf-8"),
        certificate.key_pem.encode("utf-8"),
        certificate.source,
        certificate.source.replace("field client_cert", "field client_key"),
    )


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_period(source: str, not_before: float, not_after: float, now: float) -> None:
    if now >= not_after:
        raise ClientCertificateInvalid(
            f"{source}: the client certificate expired at {_stamp(not_after)}; renew it "
            "(it is read again before every exchange)"
        )
    if now < not_before:
        raise ClientCertificateInvalid(
            f"{source}: the client certificate is not valid before {_stamp(not_before)}"
        )


def _validity(cert: bytes, source: str) -> tuple[float, float]:
    # cryptography costs ~30 ms and megabytes to import: only for mutual TLS credentials.
    from cryptography import x509  # noqa: PLC0415

    if b"-----BEGIN CERTIFICATE-----" not in cert:
        raise ClientCertificateInvalid(f"{source}: no PEM certificate in it")
    try:
        parsed = x509.load_pem_x509_certificate(cert)
    except ValueError:
        raise ClientCertificateInvalid(f"{source}: not a valid PEM certificate") from None
    return parsed.not_valid_before_utc.timestamp(), parsed.not_valid_after_utc.timestamp()


def _no_password() -> bytes:
    return b""  # an encrypted key then fails to load instead of prompting on a terminal


def _load_chain(context: ssl.SSLContext, pem: bytes) -> None:
    """Load certificate and key from memory (``ssl`` only reads paths)."""
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fd = os.memfd_create("token-sidecar-client-cert", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}", password=_no_password)
        finally:
            os.close(fd)
        return
    fd, name = tempfile.mkstemp(prefix="token-sidecar-", suffix=".pem")  # mode 0600
    try:
        os.write(fd, pem)
        os.close(fd)
        fd = -1
        context.load_cert_chain(name, password=_no_password)
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            Path(name).unlink()


def load_client_certificate(
    text: CertificateText, ca_cert: Path | None, *, now: float
) -> LoadedCertificate:
    """Check ``text`` and load it into a verifying client context.

    Raises ClientCertificateInvalid (not PEM, expired or not yet valid, a key that does not
    load or does not match) naming the file or field; ConfigError for the CA bundle.
    """
    not_before, not_after = _validity(text.cert, text.cert_source)
    _check_period(text.cert_source, not_before, not_after, now)
    if b"PRIVATE KEY-----" not in text.key:
        raise ClientCertificateInvalid(f"{text.key_source}: no PEM private key in it")
    context = client_context(ca_cert, needed=True, setting="http.ca_cert")
    # TLS 1.2 at most when presenting a certificate: there the server accepts or refuses it
    # during the handshake, before any request is sent. Under TLS 1.3 a refusal reaches the
    # client only after it has sent the request, and over asyncio it shows as a broken
    # connection, the same as an answer lost in transit, which costs a rotating refresh token
    # (R1 gives it up after the retry). RFC 8705 and FAPI work over TLS 1.2.
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        _load_chain(context, text.cert.rstrip(b"\n") + b"\n" + text.key)
    except ssl.SSLError as exc:
        reason = exc.reason or "unusable"
        raise ClientCertificateInvalid(
            f"{text.key_source}: the key does not load or does not match the certificate "
            f"({reason}; encrypted keys are not supported)"
        ) from None
    return LoadedCertificate(context, text.digest, not_before, not_after, text.cert_source)


def pem_secrets(pem: str) -> list[str]:
    """What of a PEM private key to keep out of every output: the text, its base64 body joined,
    and each body line (so that even a partial key is caught)."""
    lines = [line.strip() for line in pem.splitlines()]
    body = [line for line in lines if line and not line.startswith("-----")]
    return [pem, "".join(body), *body]

"""A scripted HTTP(S) server on 127.0.0.1 for answers no real server gives on demand.

Tests script what each path answers: wrong bodies, a slow drip, many megabytes, a body cut
off mid-way, a connection closed without an answer, redirects, or anything computed from the
request (a fake token issuer, a fault-injecting proxy in front of a real server). Every
request is recorded, so a test can also assert what was *not* sent (nothing follows a
redirect). TLS variants serve certificates made here with ``cryptography``: one a test CA
signed for 127.0.0.1, a self-signed one, one for another host name and an expired one.

::

    with RawServer() as raw:
        route = raw.route()                       # a fresh path prefix, /r1, /r2, ...
        route.on("/token", Reply(200, b"<html>"), Reply(200, {"access_token": ...}))
        url = route.url("/token")                 # http://127.0.0.1:PORT/r1/token
        ...
        assert route.requests("/token")[0].form["refresh_token"] == [...]

A path answers its replies in order and repeats the last one; a reply may also be computed
from the request: :class:`TokenIssuer` is a rotating token endpoint issuing recognisable
canary tokens, :func:`forward` a proxy, and :class:`Faults` a proxy in front of a real server
(OpenBao) that answers chosen requests itself. Servers listen on 127.0.0.1 only;
:meth:`RawServer.close` stops the threads this object started.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import secrets
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "Action",
    "Faults",
    "RawServer",
    "Recorded",
    "Reply",
    "Route",
    "TlsMaterial",
    "TokenIssuer",
    "forward",
]

_FILLER = b"x" * 65536


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as the server received it."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)
    """When it arrived (monotonic seconds)."""

    @property
    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode("latin-1"))

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)


@dataclass(frozen=True, slots=True)
class Reply:
    """What to send back. ``body`` may be bytes, text, or a JSON-able dict or list.

    ``size`` sends that many filler bytes instead of ``body``; ``drip`` sends the body in
    ``drip_bytes`` pieces with that many seconds between them; ``cut_after`` closes the
    connection after that many body bytes (with the full ``Content-Length`` declared);
    ``declare_length=False`` leaves ``Content-Length`` out (the end of the body is the end of
    the connection); ``hang`` waits before answering; ``drop`` closes without answering.
    """

    status: int = 200
    body: bytes | str | Mapping[str, Any] | list[Any] = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = "application/json"
    size: int | None = None
    drip: float | None = None
    drip_bytes: int = 1
    cut_after: int | None = None
    declare_length: bool = True
    hang: float = 0.0
    drop: bool = False

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body).encode("utf-8")

    @property
    def length(self) -> int:
        return self.size if self.size is not None else len(self.payload())


Action = Reply | Callable[[Recorded], Reply]


class Route:
    """A path prefix of the server with its own script and request log."""

    def __init__(self, server: RawServer, prefix: str) -> None:
        self._server = server
        self.prefix = prefix
        self._scripts: dict[str, list[Action]] = {}
        self._fallback: Action | None = None
        self._log: list[Recorded] = []
        self._lock = threading.Lock()

    def url(self, path: str = "") -> str:
        return f"{self._server.base_url}{self.prefix}{path}"

    def on(self, path: str, *actions: Action) -> Self:
        """Answer ``path`` (below the prefix) with ``actions`` in order, repeating the last."""
        if not actions:
            raise ValueError("at least one reply")
        with self._lock:
            self._scripts[path] = list(actions)
        return self

    def otherwise(self, action: Action) -> Self:
        """Answer every path without a script (a proxy, typically)."""
        self._fallback = action
        return self

    def requests(self, path: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self._log if path is None or r.path == path]

    def _next(self, request: Recorded) -> Reply:
        with self._lock:
            self._log.append(request)
            script = self._scripts.get(request.path)
            if script is None:
                action = self._fallback
            else:
                action = script.pop(0) if len(script) > 1 else script[0]
        if action is None:
            return Reply(404, {"error": "not_found"})
        return action if isinstance(action, Reply) else action(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(5)
            try:
                self.request.do_handshake()
            except (OSError, ssl.SSLError):
                # The client refused the certificate, as it should in most TLS tests.
                self.server.handshake_failures += 1
                raise
        super().setup()

    def handle(self) -> None:
        with contextlib.suppress(OSError):
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  # stdlib signature
        """Silent: a test reads what it needs from the recorded requests."""

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        owner = self.server.owner
        route, path = owner.route_for(self.path)
        request = Recorded(self.command, path, dict(self.headers.items()), body)
        if route is None:
            self._send(Reply(404, {"error": "no such route"}))
            return
        self._send(route._next(request))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_LIST = _serve  # noqa: N815

    def _send(self, reply: Reply) -> None:
        self.close_connection = True
        stopping = self.server.owner.stopping
        if reply.hang and stopping.wait(reply.hang):
            return
        if reply.drop:
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            phrase = HTTPStatus(reply.status).phrase
        except ValueError:
            phrase = "Whatever"
        head = [f"HTTP/1.1 {reply.status} {phrase}", "Connection: close"]
        if reply.content_type:
            head.append(f"Content-Type: {reply.content_type}")
        if reply.declare_length:
            head.append(f"Content-Length: {reply.length}")
        head += [f"{k}: {v}" for k, v in reply.headers.items()]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        limit = reply.length if reply.cut_after is None else min(reply.cut_after, reply.length)
        for piece in self._pieces(reply, limit):
            self.wfile.write(piece)
            self.wfile.flush()
            if reply.drip and stopping.wait(reply.drip):
                return
        if reply.cut_after is not None:
            self.connection.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _pieces(reply: Reply, limit: int) -> Iterator[bytes]:
        step = reply.drip_bytes if reply.drip else 65536
        if reply.size is None:
            data = reply.payload()[:limit]
            for start in range(0, len(data), step):
                yield data[start : start + step]
            return
        sent = 0
        while sent < limit:
            piece = _FILLER[: min(step, limit - sent)]
            sent += len(piece)
            yield piece


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, owner: RawServer, context: ssl.SSLContext | None) -> None:
        self.owner = owner
        self.context = context
        self.handshake_failures = 0
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about refused handshakes and clients hanging up: tests provoke those."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        if self.context is None:
            return sock, address
        # The handshake runs in the handler's thread, so a stalled client blocks nobody.
        return self.context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False
        ), address


class RawServer:
    """One listener on 127.0.0.1 (plain HTTP, or TLS with ``cert``/``key``); a context manager."""

    def __init__(self, *, cert: Path | None = None, key: Path | None = None) -> None:
        context = None
        if cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
        self.tls = context is not None
        self.stopping = threading.Event()
        self._server = _Server(self, context)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._routes: dict[str, Route] = {}
        self._count = 0
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def handshake_failures(self) -> int:
        return self._server.handshake_failures

    def route(self) -> Route:
        with self._lock:
            self._count += 1
            route = Route(self, f"/r{self._count}")
            self._routes[route.prefix] = route
        return route

    def route_for(self, raw_path: str) -> tuple[Route | None, str]:
        path = raw_path.split("?", 1)[0]
        # RFC 8414 puts the well-known segment before the issuer's path: /.well-known/x/r1
        for well_known in ("/.well-known/oauth-authorization-server",):
            if path.startswith(well_known + "/r"):
                rest = path[len(well_known) :]
                prefix = "/" + rest.split("/")[1]
                return self._routes.get(prefix), well_known + rest[len(prefix) :]
        prefix = "/" + path.split("/")[1] if path.count("/") >= 1 else path
        route = self._routes.get(prefix)
        return route, path[len(prefix) :] or "/"

    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- computed replies ----------------------------------------------------------------------------


def forward(base_url: str, *, timeout: float = 10.0) -> Callable[[Recorded], Reply]:
    """A proxy: send the request on to ``base_url`` + its path and answer what came back."""

    def send(request: Recorded) -> Reply:
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "content-length", "connection", "accept-encoding")
        }
        with httpx.Client(timeout=timeout) as client:
            answer = client.request(
                request.method, base_url + request.path, headers=headers, content=request.body
            )
        kept = {
            k: v
            for k, v in answer.headers.items()
            if k.lower() in ("retry-after", "cache-control", "www-authenticate")
        }
        return Reply(
            answer.status_code,
            answer.content,
            headers=kept,
            content_type=answer.headers.get("content-type"),
        )

    return send


@dataclass
class _Rule:
    reply: Reply
    method: str | None
    path: str | None
    body: bytes | None
    count: int


class Faults:
    """A fault-injecting proxy: forward to ``target`` unless an armed rule matches.

    A rule matches on the method, a substring of the path and a substring of the body, and
    answers its reply ``count`` times (-1: until disarmed). :attr:`hits` lists the requests
    that got a fault.
    """

    def __init__(self, target: str) -> None:
        self._forward = forward(target)
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self.hits: list[Recorded] = []

    def arm(
        self,
        reply: Reply,
        *,
        method: str | None = None,
        path: str | None = None,
        body: bytes | None = None,
        count: int = 1,
    ) -> None:
        with self._lock:
            self._rules.append(_Rule(reply, method, path, body, count))

    def disarm(self) -> None:
        with self._lock:
            self._rules.clear()

    def _match(self, request: Recorded) -> Reply | None:
        with self._lock:
            for rule in self._rules:
                if (
                    (rule.method is None or request.method == rule.method)
                    and (rule.path is None or rule.path in request.path)
                    and (rule.body is None or rule.body in request.body)
                ):
                    if rule.count > 0:
                        rule.count -= 1
                    if rule.count == 0:
                        self._rules.remove(rule)
                    self.hits.append(request)
                    return rule.reply
        return None

    def __call__(self, request: Recorded) -> Reply:
        reply = self._match(request)
        return reply if reply is not None else self._forward(request)


class TokenIssuer:
    """A rotating token endpoint that issues recognisable tokens: ``<prefix>-AT-…``, ``-RT-…``.

    It accepts the last refresh token it issued (or ``first``) once; a consumed one gets
    ``invalid_grant`` and is counted in :attr:`reuse`. ``shape`` edits each successful body
    before it is sent (drop or change fields); ``client_secret``, when set, is required in
    HTTP Basic credentials.
    """

    def __init__(
        self,
        prefix: str,
        first: str,
        *,
        expires_in: Any = 60,
        client_secret: str | None = None,
        shape: Callable[[dict[str, Any]], Mapping[str, Any] | bytes] | None = None,
    ) -> None:
        self.prefix = prefix
        self.current = first
        self.expires_in = expires_in
        self.client_secret = client_secret
        self.shape = shape
        self.issued_access: list[str] = []
        self.issued_refresh: list[str] = []
        self.consumed: set[str] = set()
        self.reuse = 0
        self._lock = threading.Lock()

    @property
    def secrets(self) -> list[str]:
        return [*self.issued_access, *self.issued_refresh]

    def _mint(self, kind: str) -> str:
        return f"{self.prefix}-{kind}-{len(self.issued_refresh) + 1}-{secrets.token_urlsafe(18)}"

    def __call__(self, request: Recorded) -> Reply:
        presented = (request.form.get("refresh_token") or [""])[0]
        with self._lock:
            if self.client_secret is not None and not _basic_matches(
                request.header("Authorization"), self.client_secret
            ):
                return Reply(401, {"error": "invalid_client"})
            if presented != self.current:
                if presented in self.consumed:
                    self.reuse += 1
                return Reply(400, {"error": "invalid_grant"})
            self.consumed.add(presented)
            access, refresh = self._mint("AT"), self._mint("RT")
            self.issued_access.append(access)
            self.issued_refresh.append(refresh)
            self.current = refresh
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": refresh,
        }
        shaped = self.shape(body) if self.shape is not None else body
        return Reply(200, shaped if isinstance(shaped, bytes) else dict(shaped))


def _basic_matches(header: str | None, secret: str) -> bool:
    import base64  # noqa: PLC0415  # only the issuer needs it

    if not header or not header.startswith("Basic "):
        return False
    try:
        decoded = base64.b64decode(header[6:]).decode()
    except ValueError:
        return False
    from urllib.parse import unquote_plus  # noqa: PLC0415

    return unquote_plus(decoded.partition(":")[2]) == secret


# -- certificates --------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class TlsMaterial:
    """A test CA and leaf certificates as PEM files in ``directory``.

    ``good``: signed by the CA for 127.0.0.1; ``self_signed``: for 127.0.0.1, signed by
    itself; ``wrong_host``: signed by the CA for ``wrong.example`` only; ``expired``: signed
    by the CA for 127.0.0.1, expired a day ago. Each is a ``(cert, key)`` pair of paths.

    Every certificate conforms to RFC 5280 as Python 3.13's strict verification
    (``VERIFY_X509_STRICT``) requires: key identifiers (subject and authority), basic
    constraints and key usage, critical where the RFC says so.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        now = dt.datetime.now(dt.UTC)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        self._ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("token-sidecar test CA"))
            .issuer_name(_name("token-sidecar test CA"))
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._ca_key.public_key()),
                critical=False,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca = directory / "ca.pem"
        self.ca.write_bytes(self._ca_cert.public_bytes(serialization.Encoding.PEM))
        loopback = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        self.good = self._leaf("good", loopback, now, now + dt.timedelta(days=1))
        self.self_signed = self._leaf(
            "self-signed", loopback, now, now + dt.timedelta(days=1), self_signed=True
        )
        self.wrong_host = self._leaf(
            "wrong-host", [x509.DNSName("wrong.example")], now, now + dt.timedelta(days=1)
        )
        self.expired = self._leaf(
            "expired", loopback, now - dt.timedelta(days=30), now - dt.timedelta(days=1)
        )

    def client(
        self, name: str, *, self_signed: bool = False, expired: bool = False
    ) -> tuple[Path, Path]:
        """A TLS client certificate (extended key usage clientAuth) with subject ``CN=name``,
        signed by the CA (or by itself), valid for a day (or expired a day ago)."""
        now = dt.datetime.now(dt.UTC)
        not_before, not_after = (
            (now - dt.timedelta(days=30), now - dt.timedelta(days=1))
            if expired
            else (now, now + dt.timedelta(days=1))
        )
        return self._leaf(
            name,
            [x509.DNSName(f"{name}.clients.test")],
            not_before,
            not_after,
            self_signed=self_signed,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            stem=f"client-{name}-{x509.random_serial_number():x}",  # several per subject
        )

    def _leaf(
        self,
        name: str,
        alt_names: Sequence[x509.GeneralName],
        not_before: dt.datetime,
        not_after: dt.datetime,
        *,
        self_signed: bool = False,
        usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH,
        stem: str | None = None,
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        issuer = _name(name) if self_signed else self._ca_cert.subject
        signer = key if self_signed else self._ca_key
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before - dt.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                critical=False,
            )
            .sign(signer, hashes.SHA256())
        )
        cert_path = self.directory / f"{stem or name}.pem"
        key_path = self.directory / f"{stem or name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path

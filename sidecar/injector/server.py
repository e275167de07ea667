"""A small HTTP/1.1 server for the injector: ``POST /mutate`` over TLS, and the probes.

The same approach as the sidecar's :mod:`sidecar.adapters.server`: plain asyncio, one request
per connection (``Connection: close``), the head read under a size limit and a deadline, every
handler task tracked and cancelled on close. What this one adds is a request body (bounded by
``Content-Length``; chunked bodies are refused with 411, as the API server always sends a
length) and TLS whose certificate and key are re-read when their files change.

:class:`CertificateReloader` watches the two files (cert-manager rewrites the Secret, the
kubelet swaps the mounted files) and loads a changed pair into the live ``SSLContext``:
connections from then on get the new certificate, connections already open keep the old one.
A half-written pair (a new certificate beside the old key) is detected on a throwaway context
first, logged once (``tls.reload_failed``) and tried again when either file changes, so the
server never serves a mismatched pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from http import HTTPStatus
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509

__all__ = [
    "CertificateReloader",
    "HttpServer",
    "Request",
    "Response",
    "Route",
    "is_loopback_host",
    "text",
]

log = structlog.get_logger(__name__)

Response = tuple[int, str, bytes]
_TEXT = "text/plain; charset=utf-8"
_MAX_HEADERS = 100


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str]  # names in lower case
    body: bytes


@dataclass(frozen=True)
class Route:
    methods: tuple[str, ...]
    handler: Callable[[Request], Awaitable[Response]]


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus) -> None:
        super().__init__(status.phrase)
        self.status = status


def text(status: HTTPStatus, message: str | None = None) -> Response:
    return status.value, _TEXT, f"{message or f'{status.value} {status.phrase}'}\n".encode()


class HttpServer:
    """Serves ``routes`` on ``host:port`` (port 0 picks a free one), over TLS when given."""

    def __init__(
        self,
        host: str,
        port: int,
        routes: Mapping[str, Route],
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_body_bytes: int = 3 * 1024 * 1024,
        read_timeout: float = 10.0,
        write_timeout: float = 10.0,
        max_head_bytes: int = 16384,
        name: str = "http",
    ) -> None:
        self._host = host
        self._requested_port = port
        self._routes = dict(routes)
        self._ssl = ssl_context
        self._max_body = max_body_bytes
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._max_head = max_head_bytes
        self._name = name
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the server is already started")
        self._closing = False
        self._server = await asyncio.start_server(
            self._handle,
            self._host,
            self._requested_port,
            ssl=self._ssl,
            ssl_handshake_timeout=self._read_timeout if self._ssl else None,
            limit=self._max_head,
        )
        log.info(
            "server.started",
            server=self._name,
            host=self._host,
            port=self.port,
            tls=bool(self._ssl),
        )

    async def close(self) -> None:
        self._closing = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await asyncio.sleep(0)
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
        if server is not None:
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            if not self._closing:
                await self._serve_one(reader, writer)
        except (ConnectionError, TimeoutError, ssl.SSLError):
            pass  # the client went away, stalled or broke TLS while we answered
        except Exception:  # one bad connection must never stop the server
            log.exception("server.connection_failed", server=self._name)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError, ssl.SSLError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self._read_timeout):
                request = await self._read_request(reader)
        except _HttpError as bad:
            await self._send(writer, text(bad.status), head_only=False)
            return
        except TimeoutError:
            await self._send(writer, text(HTTPStatus.REQUEST_TIMEOUT), head_only=False)
            return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        route = self._routes.get(request.path)
        extra: dict[str, str] = {}
        if route is None:
            response = text(HTTPStatus.NOT_FOUND)
        elif request.method not in route.methods:
            response = text(HTTPStatus.METHOD_NOT_ALLOWED)
            extra = {"Allow": ", ".join(route.methods)}
        else:
            try:
                response = await route.handler(request)
            except Exception:  # answer 500 and keep serving
                log.exception("server.endpoint_failed", server=self._name, path=request.path)
                response = text(HTTPStatus.INTERNAL_SERVER_ERROR)
        await self._send(writer, response, head_only=request.method == "HEAD", extra=extra)

    async def _read_request(self, reader: asyncio.StreamReader) -> Request:
        budget = self._max_head
        request_line = b""
        headers: dict[str, str] = {}
        lines = 0
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                raise _HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE) from exc
            budget -= len(line)
            lines += 1
            if budget < 0 or lines > _MAX_HEADERS:
                raise _HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            if not request_line:
                request_line = line if line.strip() else b""
                continue
            if line in (b"\r\n", b"\n"):
                break
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep or not name.strip() or name != name.strip():
                raise _HttpError(HTTPStatus.BAD_REQUEST)
            headers[name.lower()] = value.strip()
        method, path = _parse_request_line(request_line)
        if "transfer-encoding" in headers:
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED)
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise _HttpError(HTTPStatus.BAD_REQUEST)
        length = int(length_text)
        if length > self._max_body:
            raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        body = await reader.readexactly(length) if length else b""
        return Request(method, path, headers, body)

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        response: Response,
        *,
        head_only: bool,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        status, content_type, body = response
        headers = {
            "Content-Type": content_type,
            "Content-Length": str(len(body)),
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Connection": "close",
            **(extra or {}),
        }
        head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()
        )
        writer.write(head.encode("latin-1") + b"\r\n")
        if not head_only:
            writer.write(body)
        async with asyncio.timeout(self._write_timeout):
            await writer.drain()


def _parse_request_line(line: bytes) -> tuple[str, str]:
    try:
        parts = line.decode("ascii").strip().split(" ")
    except UnicodeDecodeError as exc:
        raise _HttpError(HTTPStatus.BAD_REQUEST) from exc
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _HttpError(HTTPStatus.BAD_REQUEST)
    method, target, _ = parts
    if not method.isalpha() or not method.isupper() or not target.startswith("/"):
        raise _HttpError(HTTPStatus.BAD_REQUEST)
    return method, target.split("?", 1)[0]


def _signature(*paths: Path) -> tuple[tuple[int, int, int], ...]:
    signature = []
    for path in paths:
        info = path.stat()  # follows the kubelet's ..data symlinks
        signature.append((info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(signature)


class CertificateReloader:
    """The server's TLS context, loaded from two files and re-loaded when they change."""

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        *,
        on_reload: Callable[[bool, float | None], None] | None = None,
    ) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self._on_reload = on_reload
        self.context = self._new_context()
        self._signature = _signature(cert_file, key_file)
        self._failed: tuple[tuple[int, int, int], ...] | None = None
        self.context.load_cert_chain(cert_file, key_file)  # a bad pair stops start-up
        self.not_after = _not_after(cert_file)
        self._report(ok=True)

    @staticmethod
    def _new_context() -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def _report(self, *, ok: bool) -> None:
        if self._on_reload is not None:
            self._on_reload(ok, self.not_after)

    def check(self) -> bool:
        """Load the files again if they changed; True when a new pair is now served."""
        try:
            signature = _signature(self.cert_file, self.key_file)
        except OSError as exc:
            log.warning("tls.reload_failed", error=exc.strerror, file=exc.filename)
            return False
        if signature in (self._signature, self._failed):
            return False  # unchanged, or the same broken pair as last time: wait for a change
        try:
            self._new_context().load_cert_chain(self.cert_file, self.key_file)
            self.context.load_cert_chain(self.cert_file, self.key_file)
            not_after = _not_after(self.cert_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            # Most likely caught between the two files' updates: look again next time.
            log.warning("tls.reload_failed", error=type(exc).__name__)
            self._failed = signature
            self._report(ok=False)
            return False
        self._signature = signature
        self.not_after = not_after
        log.info("tls.reloaded", not_after=not_after)
        self._report(ok=True)
        return True

    async def watch(self, interval: float) -> None:
        """Look at the files every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            # In the loop's thread: the context must not change under a handshake in progress,
            # and reading two small files takes microseconds.
            self.check()


def _not_after(cert_file: Path) -> float:
    certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return certificate.not_valid_after_utc.astimezone(UTC).timestamp()


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` can only be reached from this machine (plain HTTP is allowed there)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

"""A minimal HTTP/1.1 server for the probes and Prometheus: ``/livez``, ``/readyz``,
``/healthz`` and ``/metrics``.

Plain asyncio, no framework: the clients are the kubelet, Prometheus and a person with curl,
and the whole protocol needed is one GET (or HEAD) per connection. Every response closes the
connection. The request head is read under a size limit and a deadline, so a client that
sends garbage, too much or nothing costs one short-lived task and never the server: it gets a
400, 431 or 408 when it can still be told, and the connection is closed.

Handler tasks are tracked and cancelled by :meth:`HealthServer.close`, so shutting down leaves
no task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import structlog

from sidecar import health
from sidecar.health import Response
from sidecar.metrics import Metrics
from sidecar.ports import Clock
from sidecar.status import StatusBoard

__all__ = ["HealthServer"]

log = structlog.get_logger(__name__)

_METHODS = ("GET", "HEAD")
_MAX_HEADERS = 100
_TEXT = "text/plain; charset=utf-8"


class _BadRequestError(Exception):
    def __init__(self, status: HTTPStatus) -> None:
        super().__init__(status.phrase)
        self.status = status


class HealthServer:
    """Serves the health endpoints and metrics on ``host:port`` (port 0 picks a free one)."""

    def __init__(  # noqa: PLR0917  # positional order is the documented wiring contract
        self,
        host: str,
        port: int,
        board: StatusBoard,
        metrics: Metrics,
        clock: Clock,
        ready_margin: float,
        *,
        read_timeout: float = 5.0,
        write_timeout: float = 10.0,
        max_head_bytes: int = 8192,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._board = board
        self._metrics = metrics
        self._clock = clock
        self._ready_margin = ready_margin
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._max_head_bytes = max_head_bytes
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._routes: dict[str, Callable[[], Response]] = {
            "/livez": self._livez,
            "/readyz": self._readyz,
            "/healthz": self._healthz,
            "/metrics": self._render_metrics,
        }

    @property
    def port(self) -> int:
        """The port actually bound; useful when the server was asked for port 0."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start accepting connections."""
        if self._server is not None:
            raise RuntimeError("the server is already started")
        self._closing = False
        self._server = await asyncio.start_server(
            self._handle,
            self._host,
            self._requested_port,
            # A line longer than this (the request line or one header) fails the read.
            limit=self._max_head_bytes,
        )
        log.info("server.started", host=self._host, port=self.port)

    async def close(self) -> None:
        """Stop accepting, end every open connection, and wait until their tasks are done."""
        self._closing = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # Let connections accepted just now reach their handler, which sees ``_closing``.
        await asyncio.sleep(0)
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
        if server is not None:
            await server.wait_closed()

    # -- endpoints ---------------------------------------------------------------------------

    def _livez(self) -> Response:
        return health.livez(self._board, self._clock.monotonic())

    def _readyz(self) -> Response:
        return health.readyz(
            self._board, self._clock.time(), self._ready_margin, self._clock.monotonic()
        )

    def _healthz(self) -> Response:
        return health.healthz(
            self._board, self._clock.time(), self._clock.monotonic(), self._ready_margin
        )

    def _render_metrics(self) -> Response:
        body, content_type = self._metrics.render()
        return 200, content_type, body

    # -- connections -------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            if not self._closing:
                await self._serve_one(reader, writer)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stalled while we answered; nothing left to do
        except Exception:  # one bad connection must never stop the server
            log.exception("server.connection_failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self._read_timeout):
                method, path = await self._read_head(reader)
        except _BadRequestError as bad:
            await self._send(writer, _error(bad.status), head_only=False)
            return
        except TimeoutError:
            await self._send(writer, _error(HTTPStatus.REQUEST_TIMEOUT), head_only=False)
            return
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # closed before a whole request arrived: nobody to answer
        route = self._routes.get(path)
        if route is None:
            response = _error(HTTPStatus.NOT_FOUND)
            extra: dict[str, str] = {}
        elif method not in _METHODS:
            response = _error(HTTPStatus.METHOD_NOT_ALLOWED)
            extra = {"Allow": ", ".join(_METHODS)}
        else:
            try:
                response = route()
            except Exception:  # answer 500 and keep serving
                log.exception("server.endpoint_failed", path=path)
                response = _error(HTTPStatus.INTERNAL_SERVER_ERROR)
            extra = {}
        await self._send(writer, response, head_only=method == "HEAD", extra=extra)

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[str, str]:
        """Read the request line and headers; return the method and the path."""
        budget = self._max_head_bytes
        request_line = b""
        headers = 0
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                raise _BadRequestError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE) from exc
            budget -= len(line)
            if budget < 0:
                raise _BadRequestError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            if not request_line:
                if line.strip():
                    request_line = line
                continue  # RFC 9112 §2.2: ignore empty lines before the request line
            if line in (b"\r\n", b"\n"):
                break
            headers += 1
            if headers > _MAX_HEADERS:
                raise _BadRequestError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        return _parse_request_line(request_line)

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        response: Response,
        *,
        head_only: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        status, content_type, body = response
        phrase = HTTPStatus(status).phrase
        headers = {
            "Content-Type": content_type,
            "Content-Length": str(len(body)),
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Connection": "close",
            **(extra or {}),
        }
        head = f"HTTP/1.1 {status} {phrase}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()
        )
        writer.write(head.encode("latin-1") + b"\r\n")
        if not head_only:
            writer.write(body)
        async with asyncio.timeout(self._write_timeout):
            await writer.drain()


def _parse_request_line(line: bytes) -> tuple[str, str]:
    try:
        text = line.decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise _BadRequestError(HTTPStatus.BAD_REQUEST) from exc
    parts = text.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequestError(HTTPStatus.BAD_REQUEST)
    method, target, _version = parts
    if not method.isalpha() or not method.isupper():
        raise _BadRequestError(HTTPStatus.BAD_REQUEST)
    if target.startswith("/"):
        path = target.split("?", 1)[0]
    elif target.startswith(("http://", "https://")):
        path = urlsplit(target).path or "/"
    else:
        raise _BadRequestError(HTTPStatus.BAD_REQUEST)
    return method, path


def _error(status: HTTPStatus) -> Response:
    return status.value, _TEXT, f"{status.value} {status.phrase}\n".encode("ascii")

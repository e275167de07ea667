"""The loopback redirect listener of a native app's browser login (RFC 8252 §7.3).

:class:`LoopbackListener` listens on ``127.0.0.1`` only (a free port, or the one given for
servers that match redirect URIs exactly), answers the first request to ``/callback`` with a
short page that tells the user to go back to the terminal, hands that request's query string
to the caller and stops listening: exactly one callback is accepted. Other paths (a
browser's ``/favicon.ico``) get 404 and do not count. Nothing received is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Self

from sidecar.errors import ClientRejected

__all__ = ["LoopbackListener"]

_PAGE = (
    b"<!DOCTYPE html><html><head><meta charset='utf-8'><title>token-sidecar</title></head>"
    b"<body><p>The login reached token-sidecar. You can close this window and return to "
    b"the terminal.</p></body></html>"
)
_MAX_REQUEST = 16 * 1024


def _response(status: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
        "Referrer-Policy: no-referrer\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class LoopbackListener:
    """``async with LoopbackListener(port) as listener: ... await listener.callback(t)``."""

    def __init__(self, port: int = 0, path: str = "/callback") -> None:
        self._port = port
        self._path = path
        self._server: asyncio.Server | None = None
        self._received: asyncio.Future[str] | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the listener is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> Self:
        self._received = asyncio.get_running_loop().create_future()
        try:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self._port)
        except OSError as exc:
            raise ClientRejected(
                f"cannot listen on 127.0.0.1:{self._port} for the login's redirect "
                f"({exc.strerror or type(exc).__name__})",
                oauth_error="loopback_unavailable",
            ) from None
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def callback(self, timeout: float) -> str:
        """The query string of the one callback; ClientRejected when none comes in time."""
        assert self._received is not None  # noqa: S101
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(self._received)
        except TimeoutError:
            raise ClientRejected(
                f"no login reached 127.0.0.1:{self.port}{self._path} within {timeout:.0f} s",
                oauth_error="login_timeout",
            ) from None
        finally:
            await self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        if len(head) > _MAX_REQUEST:
            writer.close()
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, _, rest = request_line.partition(" ")
        target = rest.rpartition(" ")[0]
        path, _, query = target.partition("?")
        accepted = (
            method == "GET"
            and path == self._path
            and self._received is not None
            and not self._received.done()
        )
        if accepted:
            writer.write(_response("200 OK", _PAGE))
        else:
            writer.write(_response("404 Not Found", b"not found"))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
        if accepted and self._received is not None and not self._received.done():
            self._received.set_result(query)

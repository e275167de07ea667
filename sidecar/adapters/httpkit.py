"""What the two HTTP adapters share: the user agent, one bounded request, TLS failures named.

Vault (:mod:`sidecar.adapters.vault`) and the token endpoint (:mod:`sidecar.adapters.exchange`)
each translate failures into their own errors; how a request is sent and read lives here once:

- :data:`USER_AGENT`, ``token-sidecar/<version>``, on every request;
- :func:`fetch`: one request with an overall deadline (httpx's timeouts are per phase, so a
  server dripping bytes would never time out) and a bound on the body, counted after
  decoding so a compressed bomb counts too; what arrived is kept in a :class:`Progress` so a
  caller can look at an answer cut off mid-body;
- :func:`tls_problem`: the TLS failure somewhere in an exception's cause chain, described;
- :func:`make_http_client`: the client for authorization servers (token endpoint, discovery,
  the operator commands' endpoints).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from sidecar import __version__
from sidecar.tls import client_context

__all__ = [
    "USER_AGENT",
    "BodyTooLarge",
    "Progress",
    "fetch",
    "make_http_client",
    "tls_problem",
]

USER_AGENT = f"token-sidecar/{__version__}"


class BodyTooLarge(Exception):
    """The answer is longer than the bound (declared or counted); nothing more was read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"an answer of more than {limit} bytes")
        self.limit = limit


@dataclass(slots=True)
class Progress:
    """How far a request got: the status once headers arrived, the body bytes read so far."""

    status: int | None = None
    body: bytearray = field(default_factory=bytearray)


async def fetch(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    deadline: float | None,
    limit: int,
    progress: Progress,
    read_body: bool = True,
) -> httpx.Response:
    """Send ``request`` and read its body into ``progress`` within ``deadline`` seconds.

    Never follows a redirect. Raises :class:`TimeoutError` when the deadline passes,
    :class:`BodyTooLarge`, or httpx's own exceptions; the response is closed on return.
    """
    async with asyncio.timeout(deadline):
        response = await client.send(request, stream=True, follow_redirects=False)
        try:
            progress.status = response.status_code
            if read_body:
                await _read(response, limit, progress.body)
        finally:
            await response.aclose()
    return response


async def _read(response: httpx.Response, limit: int, body: bytearray) -> None:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    async for chunk in response.aiter_bytes():  # decoded: a compressed bomb counts too
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)


def tls_problem(exc: BaseException) -> str | None:
    """The TLS failure somewhere in ``exc``'s cause chain, described; ``None`` if there is none."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            reason = getattr(current, "verify_message", None) or "certificate rejected"
            return f"TLS verification failed: {reason}"
        if isinstance(current, ssl.SSLError):
            return f"TLS handshake failed: {current.reason or 'unknown reason'}"
        current = current.__cause__ or current.__context__
    return None


def make_http_client(
    ca_cert: Path | None,
    timeout: float,
    *,
    tls: bool = True,
    context: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    """The HTTP client for every token endpoint and discovery document.

    ``ca_cert`` replaces the system trust store (``SSL_CERT_FILE``/``SSL_CERT_DIR`` apply
    otherwise). Proxies come from the usual environment variables. Raises ConfigError naming
    ``http.ca_cert`` when the bundle cannot be loaded. ``tls=False`` (every endpoint is plain
    http and redirects are never followed) loads no trust store at all: an https URL would
    then fail verification rather than go unverified. ``context`` (one holding a client
    certificate, for mutual TLS) replaces the one built from ``ca_cert``.
    """
    if context is None:
        context = client_context(ca_cert, needed=tls, setting="http.ca_cert")
    return httpx.AsyncClient(
        verify=context,
        follow_redirects=False,
        timeout=httpx.Timeout(timeout),
        http1=True,
        http2=False,
        headers={"User-Agent": USER_AGENT},
    )

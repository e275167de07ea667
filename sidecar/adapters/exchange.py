"""The token endpoint over HTTP: the httpx adapter behind :class:`sidecar.ports.TokenExchanger`.

It moves bytes and translates failures; the protocol itself (request shape, response
classification, discovery validation) lives in the pure :mod:`sidecar.oauth`.

- One :func:`sidecar.adapters.httpkit.make_http_client` is shared by every credential: TLS
  verification always on, redirects never followed, HTTP/1.1, bounded timeouts,
  ``User-Agent: token-sidecar/<version>``.
- Each request has an overall deadline equal to the client's timeout, on top of httpx's
  per-phase timeouts, and its body is read with a size bound.
- ``refresh`` posts exactly once; the refresher decides about retries. Failures become project
  errors: nothing sent (connection refused, connect or pool timeout, TLS) is
  :class:`TokenEndpointUnavailable`; a request that may have reached the server without its
  answer reaching us (read/write errors and timeouts, the server hanging up) is
  :class:`ResponseLost`, because the server may have rotated the refresh token. For
  ``client_credentials`` (which spends nothing) the same failure is only unavailable.
- A 2xx answer cut off mid-body (the connection failed, or the overall deadline struck while
  it dripped in) is not treated as lost when the part that arrived holds a complete rotated
  ``refresh_token``: retrying the spent token would make a rotating server revoke the whole
  grant, so it becomes a :class:`MalformedResponse` carrying that token, to be persisted (R2).
- Every token this adapter handles is registered with the redactor the moment it exists (the
  parsed access and refresh tokens, a salvaged refresh token, each client assertion), so an
  exception raised anywhere afterwards cannot print it.
- TLS failures stay retryable: a wrong certificate does not fix itself, but a rotated server
  certificate or a corrected CA bundle does, and backing off costs nothing meanwhile.
- With ``issuer`` configured, the metadata document is fetched on first use (RFC 8414
  location first, then OpenID Connect's) and cached for the life of the process; a redirect or
  404 from the token endpoint drops the cache so a moved endpoint is looked up again.

- Mutual TLS (RFC 8705): a client with a certificate is sent through its own
  :class:`sidecar.adapters.mtls.CertificateClient` (the certificate re-read before every
  exchange), to discovery's ``mtls_endpoint_aliases.token_endpoint`` when the server names
  one. A handshake in which the server refuses the certificate is :class:`ClientRejected`
  (``invalid_client``), never a lost answer (:func:`sidecar.adapters.mtls.refused_handshake`).

Log events: ``token.exchange`` and ``token.discovery`` at debug, with status, duration and
sizes; never a body, a header value or a token.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import structlog

from sidecar.adapters.httpkit import (
    USER_AGENT,
    BodyTooLarge,
    Progress,
    fetch,
    make_http_client,
    tls_problem,
)
from sidecar.adapters.mtls import CertificateClient, refused_handshake
from sidecar.config import CredentialConfig
from sidecar.discovery import DiscoveryInfo, discovery_urls, parse_discovery
from sidecar.errors import (
    ClientRejected,
    MalformedResponse,
    ResponseLost,
    SidecarError,
    TokenEndpointUnavailable,
)
from sidecar.model import ClientCredentials, GrantType, TokenGrant
from sidecar.oauth import (
    TokenRequest,
    build_client_credentials_request,
    build_refresh_request,
    parse_error_body,
    parse_token_response,
    salvage_refresh_token,
)
from sidecar.ports import Clock
from sidecar.redact import REDACTOR, Redactor
from sidecar.retry_after import parse_retry_after

__all__ = ["USER_AGENT", "TokenEndpoint", "make_http_client"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


def _endpoint_name(url: str) -> str:
    """``host[:port]`` for messages: never the path, query or user info."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


def _translate(exc: Exception, *, url: str, what: str, exchange: bool) -> SidecarError:
    """A project error for a transport failure; ``exchange`` marks a token-spending request."""
    where = f"{what} {_endpoint_name(url)}"
    kind = exc.__class__.__name__
    if isinstance(exc, httpx.ConnectError):
        tls = tls_problem(exc)
        detail = (
            f"{tls}; retrying with backoff, since a renewed server certificate or a corrected "
            "http.ca_cert fixes this without a restart"
            if tls is not None
            else f"cannot connect ({str(exc) or kind})"
        )
        return TokenEndpointUnavailable(f"{where}: {detail}")
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout | httpx.ProxyError):
        return TokenEndpointUnavailable(f"{where}: {kind}, the request was not sent")
    if isinstance(exc, httpx.DecodingError):
        return MalformedResponse(f"{where}: the response body could not be decoded")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError | httpx.InvalidURL):
        return ClientRejected(
            f"{where}: the request cannot be made ({kind})", oauth_error="unusable_request"
        )
    if exchange:
        return ResponseLost(
            f"{where}: {kind} after the request may have reached the server; "
            "it may have rotated the refresh token"
        )
    return TokenEndpointUnavailable(f"{where}: {kind}")


class TokenEndpoint:
    """One credential's token endpoint (and discovery document); implements TokenExchanger."""

    def __init__(
        self,
        credential: CredentialConfig,
        http: httpx.AsyncClient,
        *,
        clock: Clock,
        max_response_bytes: int,
        redactor: Redactor = REDACTOR,
        ca_cert: Path | None = None,
    ) -> None:
        self._credential = credential
        self._ca_cert = ca_cert
        self._mtls: CertificateClient | None = None
        self._redactor = redactor
        self._assertion: str | None = None
        self._http = http
        self._max_bytes = max_response_bytes
        self._clock = clock
        phases = (http.timeout.connect, http.timeout.read, http.timeout.write, http.timeout.pool)
        self._request_timeout = max((t for t in phases if t is not None), default=None)
        self._discovery: DiscoveryInfo | None = None
        self._discovery_lock = asyncio.Lock()
        self._log = log.bind(credential=credential.name)

    # -- TokenExchanger ---------------------------------------------------------------

    def _time(self) -> float:
        return self._clock.time()

    async def refresh(self, refresh_token: str, client: ClientCredentials) -> TokenGrant:
        def build(assertion: str | None) -> TokenRequest:
            return build_refresh_request(
                refresh_token,
                client,
                scope=self._credential.scope,
                resource=self._credential.resource,
                audience=self._credential.audience,
                client_assertion=assertion,
            )

        return await self._exchange(client, build, "refresh_token")

    async def client_credentials(self, client: ClientCredentials) -> TokenGrant:
        def build(assertion: str | None) -> TokenRequest:
            return build_client_credentials_request(
                client,
                scope=self._credential.scope,
                resource=self._credential.resource,
                audience=self._credential.audience,
                client_assertion=assertion,
            )

        return await self._exchange(client, build, "client_credentials")

    def _assertion_for(self, client: ClientCredentials, url: str) -> str | None:
        if client.method != "private_key_jwt":
            return None
        if not client.private_key:
            raise ClientRejected(
                "client_auth private_key_jwt needs a private key: set private_key_file "
                "or the secret's private_key field",
                oauth_error="invalid_client",
            )
        # PyJWT and cryptography cost ~9 MB and ~30 ms to import: only for this method.
        from sidecar.client_assertion import make_client_assertion  # noqa: PLC0415

        assertion = make_client_assertion(
            client.client_id,
            url,
            client.private_key,
            alg=client.signing_alg,
            key_id=client.key_id,
            now=self._time(),
            jti=secrets.token_urlsafe(24),
        )
        # Single-use (jti), so only the newest needs scrubbing; the old one is spent.
        self._redactor.discard(self._assertion)
        self._redactor.add(assertion)
        self._assertion = assertion
        return assertion

    async def _exchange(
        self,
        client: ClientCredentials,
        build: Callable[[str | None], TokenRequest],
        grant: GrantType,
    ) -> TokenGrant:
        http = await self._http_for(client)
        url = await self.token_endpoint(mtls=client.certificate is not None)
        request = build(self._assertion_for(client, url))
        started = self._clock.monotonic()
        try:
            answer = await self._request(
                "POST",
                url,
                headers=request.headers,
                content=request.body(),
                # Only a refresh token is spent by a request whose answer is lost; asking for a
                # client_credentials token again is harmless, so that is merely unavailable.
                exchange=grant == "refresh_token",
                http=http,
            )
        except SidecarError as exc:
            if isinstance(exc, MalformedResponse):
                self._redactor.add(exc.salvaged_refresh_token)
            self._log.debug(
                "token.exchange",
                error=exc.kind,
                duration_seconds=round(self._clock.monotonic() - started, 4),
            )
            raise
        fields: dict[str, object] = {}
        if not 200 <= answer.status < 300:
            oauth = parse_error_body(answer.body)
            fields = {
                "oauth_error": oauth.error,
                "error_description_length": oauth.description_length,
            }
        self._log.debug(
            "token.exchange",
            status=answer.status,
            duration_seconds=round(self._clock.monotonic() - started, 4),
            response_bytes=len(answer.body),
            **fields,
        )
        try:
            result = parse_token_response(
                answer.status, answer.headers, answer.body, now=self._time(), grant=grant
            )
        except MalformedResponse as exc:
            self._redactor.add(exc.salvaged_refresh_token)
            raise
        except ClientRejected:
            if self._credential.issuer and (300 <= answer.status < 400 or answer.status == 404):
                self._discovery = None  # the endpoint may have moved: look it up again next time
            raise
        self._redactor.add(result.access_token, result.refresh_token)
        return result

    async def probe(self, client: ClientCredentials | None = None) -> None:
        """Reach the discovery document (validated) and the token endpoint; exchange nothing.

        Any HTTP answer from the token endpoint (405 and 400 included) proves it reachable;
        connection and TLS failures raise TokenEndpointUnavailable. With ``client`` holding a
        certificate, that certificate is loaded (ClientCertificateInvalid when expired or
        unusable) and presented, at the mutual-TLS alias when discovery names one.
        """
        http = await self._http_for(client) if client is not None else self._http
        mtls = client is not None and client.certificate is not None
        if self._credential.issuer:
            await self._discover(self._credential.issuer, fresh=True)
        url = await self.token_endpoint(mtls=mtls)
        answer = await self._request("GET", url, exchange=False, read_body=False, http=http)
        self._log.debug("token.probe", status=answer.status)

    async def aclose(self) -> None:
        """Close the mutual-TLS client, if one was made (the shared client is the caller's)."""
        if self._mtls is not None:
            await self._mtls.aclose()

    # -- mutual TLS -------------------------------------------------------------------

    async def _http_for(self, client: ClientCredentials) -> httpx.AsyncClient:
        """The client presenting ``client``'s certificate (re-read now), else the shared one."""
        if client.certificate is None:
            return self._http
        if self._mtls is None:
            timeout = self._http.timeout.read or self._request_timeout or 10.0
            self._mtls = CertificateClient(
                ca_cert=self._ca_cert,
                timeout=timeout,
                redactor=self._redactor,
                time=self._time,
                log=self._log,
            )
        return await self._mtls.get(client.certificate)

    # -- endpoint and discovery -------------------------------------------------------

    @property
    def configured_endpoint(self) -> str:
        if self._credential.token_endpoint is None:
            raise ValueError("no token_endpoint configured (issuer is used instead)")
        return self._credential.token_endpoint

    async def token_endpoint(self, *, mtls: bool = False) -> str:
        """The token endpoint URL: configured, or from the (cached) discovery document.

        ``mtls`` (a client certificate is presented) picks the server's
        ``mtls_endpoint_aliases.token_endpoint`` when it names one (RFC 8705 §5).
        """
        if self._credential.issuer is None:
            return self.configured_endpoint
        info = await self._discover(self._credential.issuer)
        if mtls and info.mtls_token_endpoint is not None:
            return info.mtls_token_endpoint
        return info.token_endpoint

    async def _discover(self, issuer: str, *, fresh: bool = False) -> DiscoveryInfo:
        async with self._discovery_lock:
            if self._discovery is None or fresh:
                self._discovery = await self._fetch_discovery(issuer)
                supported = self._discovery.token_endpoint_auth_methods_supported
                method = self._credential.client_auth
                if supported is not None and method not in supported:
                    self._log.warning("token.auth_method_not_advertised", client_auth=method)
            return self._discovery

    async def _fetch_discovery(self, issuer: str) -> DiscoveryInfo:
        tried: list[str] = []
        rejected: ClientRejected | None = None
        for url in discovery_urls(issuer):
            path = urlsplit(url).path
            started = self._clock.monotonic()
            answer = await self._request("GET", url, exchange=False, what="discovery document")
            self._log.debug(
                "token.discovery",
                path=path,
                status=answer.status,
                duration_seconds=round(self._clock.monotonic() - started, 4),
            )
            if answer.status in (408, 429) or 500 <= answer.status < 600:
                raise TokenEndpointUnavailable(
                    f"issuer: discovery document {path} unavailable (HTTP {answer.status})",
                    retry_after=parse_retry_after(answer.headers.get("Retry-After"), self._time()),
                )
            if not 200 <= answer.status < 300:
                tried.append(f"{path} (HTTP {answer.status})")
                continue
            try:
                return parse_discovery(
                    answer.body, issuer, allow_http=self._credential.allow_insecure_http
                )
            except ClientRejected as exc:
                rejected = rejected or exc
                tried.append(f"{path} ({exc.oauth_error})")
            except MalformedResponse:
                tried.append(f"{path} (not a metadata document)")
        if rejected is not None:
            raise rejected
        raise ClientRejected(
            f"issuer: no usable discovery document at {' or '.join(tried)}",
            oauth_error="discovery_failed",
        )

    # -- transport --------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        url: str,
        *,
        exchange: bool,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        what: str = "token endpoint",
        read_body: bool = True,
        http: httpx.AsyncClient | None = None,
    ) -> _Answer:
        request_headers = {"Accept": "application/json", **(headers or {})}
        progress = Progress()
        try:
            client = http or self._http
            request = client.build_request(method, url, headers=request_headers, content=content)
            response = await fetch(
                client,
                request,
                deadline=self._request_timeout,
                limit=self._max_bytes,
                progress=progress,
                read_body=read_body,
            )
        except BodyTooLarge:
            raise MalformedResponse(
                f"{what}: response larger than {self._max_bytes} bytes"
            ) from None
        except TimeoutError as exc:  # the overall deadline, not one of httpx's phase timeouts
            raise self._failure(exc, url, what, exchange, progress) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._failure(exc, url, what, exchange, progress) from exc
        return _Answer(response.status_code, response.headers, bytes(progress.body))

    @staticmethod
    def _failure(
        exc: Exception, url: str, what: str, exchange: bool, progress: Progress
    ) -> SidecarError:
        error = refused_handshake(exc, f"{what} {_endpoint_name(url)}") or _translate(
            exc, url=url, what=what, exchange=exchange
        )
        status = progress.status
        if not (isinstance(error, ResponseLost) and status is not None and 200 <= status < 300):
            return error
        salvaged = salvage_refresh_token(bytes(progress.body))
        if salvaged is None:
            return error
        return MalformedResponse(
            f"{what} {_endpoint_name(url)}: the answer (HTTP {status}) was cut off after "
            f"{len(progress.body)} bytes ({exc.__class__.__name__}); it carried a rotated "
            "refresh token, which is kept instead of retrying the spent one",
            salvaged_refresh_token=salvaged,
        )

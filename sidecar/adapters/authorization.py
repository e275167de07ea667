"""The authorization server as the operator commands meet it, over httpx.

``seed`` and ``retire`` talk to more of the server than the refresher does: its metadata
(every endpoint, ``scopes_supported``), the device authorization endpoint (RFC 8628), the
token endpoint for the device and authorization code grants, and the revocation endpoint
(RFC 7009). The protocol is in the pure modules (:mod:`sidecar.device`, :mod:`sidecar.pkce`,
:mod:`sidecar.revocation`, :mod:`sidecar.oauth`); this adapter moves bytes: one request at
a time, redirects never followed, the whole request under one deadline, the body read up to
a bound (:func:`sidecar.adapters.httpkit.fetch`, as for the token endpoint), transport failures
as :class:`TokenEndpointUnavailable`. Every token it receives is
registered with the redactor before anything else happens to it.

A client that authenticates with a certificate (``tls_client_auth``,
``self_signed_tls_client_auth``) presents it on every back-channel request through a
:class:`sidecar.adapters.mtls.CertificateClient`, at the server's ``mtls_endpoint_aliases``
for the device authorization, token and revocation endpoints where it names them
(RFC 8705 §5); a certificate refused in the handshake is ``invalid_client``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import structlog

from sidecar.adapters.httpkit import BodyTooLarge, Progress, fetch, tls_problem
from sidecar.adapters.mtls import CertificateClient, refused_handshake
from sidecar.config import CredentialConfig, check_url
from sidecar.device import (
    DeviceAuthorization,
    PollOutcome,
    build_device_authorization_request,
    build_device_token_request,
    parse_device_authorization,
    poll_outcome,
)
from sidecar.discovery import DiscoveryInfo, discovery_urls, parse_discovery
from sidecar.errors import ClientRejected, MalformedResponse, TokenEndpointUnavailable
from sidecar.model import ClientCertificate, ClientCredentials, TokenGrant
from sidecar.oauth import TokenRequest, parse_token_response
from sidecar.pkce import build_code_request
from sidecar.redact import REDACTOR, Redactor
from sidecar.revocation import build_revocation_request, parse_revocation_response

__all__ = ["AuthorizationServer", "Endpoints"]


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where each request goes; ``None`` when neither the configuration nor the server's
    metadata names it."""

    token: str
    device_authorization: str | None = None
    authorization: str | None = None
    revocation: str | None = None
    scopes_supported: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


class AuthorizationServer:
    """One credential's authorization server, for ``seed`` and ``retire``."""

    def __init__(
        self,
        credential: CredentialConfig,
        http: httpx.AsyncClient,
        *,
        overrides: Mapping[str, str | None] | None = None,
        max_response_bytes: int = 1_048_576,
        timeout: float = 10.0,
        wall_clock: Callable[[], float] = time.time,
        redactor: Redactor = REDACTOR,
        certificate: ClientCertificate | None = None,
        ca_cert: Path | None = None,
    ) -> None:
        """``overrides`` (``device_authorization``, ``authorization``, ``revocation``) name
        endpoints the metadata does not, or that must win over it (command-line options).
        ``certificate``: the client's, presented on every request but discovery (trusting
        ``ca_cert`` for the server, like ``http``)."""
        self._credential = credential
        self._http = http
        self._certificate = certificate
        self._mtls = (
            None
            if certificate is None
            else CertificateClient(
                ca_cert=ca_cert,
                timeout=timeout,
                redactor=redactor,
                time=wall_clock,
                log=structlog.get_logger(__name__).bind(credential=credential.name),
            )
        )
        self._overrides = {k: v for k, v in (overrides or {}).items() if v}
        self._max_bytes = max_response_bytes
        self._timeout = timeout
        self._time = wall_clock
        self._redactor = redactor
        self._endpoints: Endpoints | None = None

    # -- endpoints ------------------------------------------------------------------------

    async def endpoints(self) -> Endpoints:
        """The endpoints from configuration, options and (with ``issuer``) the metadata."""
        if self._endpoints is None:
            info = None
            if self._credential.issuer:
                info = await self._discover(self._credential.issuer)
            mtls = info is not None and self._certificate is not None
            token = info.token_endpoint if info else self._credential.token_endpoint
            assert token is not None  # noqa: S101  # config requires issuer or token_endpoint
            found = {
                "device_authorization": info.device_authorization_endpoint if info else None,
                "authorization": info.authorization_endpoint if info else None,
                "revocation": info.revocation_endpoint if info else None,
            }
            if mtls:
                assert info is not None  # noqa: S101  # for the type checker
                token = info.mtls_token_endpoint or token
                aliases = {
                    "device_authorization": info.mtls_device_authorization_endpoint,
                    "revocation": info.mtls_revocation_endpoint,
                }
                found.update({name: url for name, url in aliases.items() if url})
            found.update(self._overrides)
            self._endpoints = Endpoints(
                token=token,
                scopes_supported=info.scopes_supported if info else None,
                **{name: self._checked(url, name) for name, url in found.items()},
            )
        return self._endpoints

    def _checked(self, url: str | None, name: str) -> str | None:
        if url is None:
            return None
        try:
            return check_url(
                url, allow_http=self._credential.allow_insecure_http, what=f"{name} endpoint"
            )
        except ValueError as exc:
            raise ClientRejected(str(exc), oauth_error="insecure_endpoint") from exc

    async def _discover(self, issuer: str) -> DiscoveryInfo:
        tried: list[str] = []
        for url in discovery_urls(issuer):
            answer = await self._send("GET", url, "discovery document", present=False)
            if answer.status in (408, 429) or answer.status >= 500:
                raise TokenEndpointUnavailable(
                    f"issuer: discovery document unavailable (HTTP {answer.status})"
                )
            if 200 <= answer.status < 300:
                try:
                    return parse_discovery(
                        answer.body, issuer, allow_http=self._credential.allow_insecure_http
                    )
                except MalformedResponse:
                    pass
            tried.append(f"{urlsplit(url).path} (HTTP {answer.status})")
        raise ClientRejected(
            f"issuer: no usable discovery document at {' or '.join(tried)}",
            oauth_error="discovery_failed",
        )

    # -- the grants -----------------------------------------------------------------------

    async def device_authorization(
        self, client: ClientCredentials, *, scope: str | None
    ) -> DeviceAuthorization:
        endpoints = await self.endpoints()
        if endpoints.device_authorization is None:
            raise ClientRejected(
                "the authorization server names no device_authorization_endpoint "
                "(use --flow browser, or --device-authorization-endpoint)",
                oauth_error="no_device_endpoint",
            )
        request = build_device_authorization_request(
            client,
            scope=scope,
            resource=self._credential.resource,
            audience=self._credential.audience,
            client_assertion=self._assertion(client, endpoints.token),
        )
        answer = await self._post(endpoints.device_authorization, request, "device authorization")
        result = parse_device_authorization(
            answer.status, answer.headers, answer.body, now=self._time()
        )
        self._redactor.add(result.device_code)
        return result

    async def poll_device(
        self, device_code: str, client: ClientCredentials, *, interval: float
    ) -> PollOutcome:
        endpoints = await self.endpoints()
        request = build_device_token_request(
            device_code, client, client_assertion=self._assertion(client, endpoints.token)
        )
        try:
            answer = await self._post(endpoints.token, request, "token endpoint")
        except TokenEndpointUnavailable as exc:
            # The user may still be deciding: poll again, as for a 503.
            return PollOutcome("pending", interval, wait=exc.retry_after)
        outcome = poll_outcome(
            answer.status, answer.headers, answer.body, interval=interval, now=self._time()
        )
        if outcome.grant is not None:
            self._redactor.add(outcome.grant.access_token, outcome.grant.refresh_token)
        return outcome

    async def redeem_code(
        self, code: str, verifier: str, redirect_uri: str, client: ClientCredentials
    ) -> TokenGrant:
        endpoints = await self.endpoints()
        self._redactor.add(code, verifier)
        request = build_code_request(
            code,
            verifier,
            redirect_uri,
            client,
            client_assertion=self._assertion(client, endpoints.token),
        )
        answer = await self._post(endpoints.token, request, "token endpoint")
        grant = parse_token_response(answer.status, answer.headers, answer.body, now=self._time())
        self._redactor.add(grant.access_token, grant.refresh_token)
        return grant

    async def revoke(self, refresh_token: str, client: ClientCredentials) -> None:
        endpoints = await self.endpoints()
        if endpoints.revocation is None:
            raise ClientRejected(
                "the authorization server names no revocation_endpoint "
                "(give one with --revocation-endpoint)",
                oauth_error="no_revocation_endpoint",
            )
        request = build_revocation_request(
            refresh_token, client, client_assertion=self._assertion(client, endpoints.token)
        )
        answer = await self._post(endpoints.revocation, request, "revocation endpoint")
        parse_revocation_response(answer.status, answer.headers, answer.body, now=self._time())

    # -- transport ------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the client that presents the certificate, if any (``http`` is the caller's)."""
        if self._mtls is not None:
            await self._mtls.aclose()

    def _assertion(self, client: ClientCredentials, audience: str) -> str | None:
        if client.method != "private_key_jwt" or not client.private_key:
            return None
        from sidecar.client_assertion import make_client_assertion  # noqa: PLC0415

        assertion = make_client_assertion(
            client.client_id,
            audience,
            client.private_key,
            alg=client.signing_alg,
            key_id=client.key_id,
            now=self._time(),
            jti=secrets.token_urlsafe(24),
        )
        self._redactor.add(assertion)
        return assertion

    async def _post(self, url: str, request: TokenRequest, what: str) -> _Answer:
        return await self._send("POST", url, what, headers=request.headers, content=request.body())

    async def _send(
        self,
        method: str,
        url: str,
        what: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        present: bool = True,
    ) -> _Answer:
        """One request; ``present`` sends the client certificate, if the client has one."""
        where = f"{what} {urlsplit(url).hostname}"
        progress = Progress()
        http = self._http
        if present and self._mtls is not None and self._certificate is not None:
            http = await self._mtls.get(self._certificate)
        try:
            request = http.build_request(
                method,
                url,
                headers={"Accept": "application/json", **(headers or {})},
                content=content,
            )
            response = await fetch(
                http,
                request,
                deadline=self._timeout,
                limit=self._max_bytes,
                progress=progress,
            )
        except TimeoutError as exc:
            raise TokenEndpointUnavailable(f"{where}: no answer within {self._timeout} s") from exc
        except BodyTooLarge as exc:
            raise MalformedResponse(f"{where}: response larger than {exc.limit} bytes") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            refused = refused_handshake(exc, where)
            if refused is not None:
                raise refused from exc
            detail = tls_problem(exc) or type(exc).__name__
            raise TokenEndpointUnavailable(f"{where}: {detail}") from exc
        return _Answer(response.status_code, response.headers, bytes(progress.body))

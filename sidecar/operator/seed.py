"""``token-sidecar seed``: obtain a credential's first refresh token and store it in Vault.

1. Read the secret. A ``refresh_token`` already there is refused unless ``--replace``, before
   anyone is asked to log in.
2. Find the endpoints (configuration, options, the issuer's metadata) and pick the flow: the
   device flow (RFC 8628) when the server has a device authorization endpoint, else the
   browser (authorization code with PKCE and a loopback redirect, RFC 8252). The scope asks
   for ``offline_access`` where the server advertises it.
3. Run the flow; an answer without a refresh token writes nothing.
4. Write with check-and-set (``cas=0`` for a new secret), once no replica holds a live claim
   (see :mod:`sidecar.operator.writes`): the user's fields kept, the sidecar's shared state
   replaced by facts about the new token (:func:`sidecar.lifecycle.seeded_data`), so running
   replicas adopt it as they adopt any re-seed. If Vault refuses the write, the new token is
   revoked at the server (when it has a revocation endpoint), so no grant is left that
   nobody holds.

Neither token is ever printed; the user code and the verification URL are, as they must be.
"""

from __future__ import annotations

import asyncio
import secrets
import webbrowser
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sidecar.adapters.authorization import AuthorizationServer
from sidecar.adapters.loopback import LoopbackListener
from sidecar.config import CredentialConfig
from sidecar.device import next_poll_at
from sidecar.errors import (
    AuthorizationDenied,
    AuthorizationExpired,
    ClientRejected,
    SecretExists,
    SidecarError,
)
from sidecar.lifecycle import has_refresh_token, retirement, seeded_data, seeding_scope
from sidecar.model import ClientCredentials, TokenGrant
from sidecar.operator.context import Operator, find_credential, operator_name
from sidecar.operator.output import EXIT_OK, Reporter
from sidecar.operator.writes import write_when_free
from sidecar.pkce import authorization_url, loopback_redirect_uri, parse_callback
from sidecar.ports import Clock
from sidecar.redact import REDACTOR
from sidecar.status import rfc3339

__all__ = ["SeedOptions", "seed"]

Flow = Literal["device", "browser"]


@dataclass(frozen=True, slots=True)
class SeedOptions:
    credential: str
    flow: Flow | None = None
    replace: bool = False
    no_browser: bool = False
    port: int = 0
    """The loopback port of the browser flow; 0 picks a free one."""
    by: str | None = None
    login_timeout: float = 300.0
    """How long the browser flow waits for the redirect (the device flow: the server's
    ``expires_in``)."""
    endpoints: Mapping[str, str | None] = field(default_factory=dict)
    """``device_authorization``, ``authorization``, ``revocation`` from the command line."""


async def seed(
    operator: Operator,
    options: SeedOptions,
    reporter: Reporter,
    *,
    clock: Clock,
    open_browser: Callable[[str], bool] = webbrowser.open,
) -> int:
    """Run ``seed``; return the exit code (failures raise SidecarError)."""
    credential = find_credential(operator.settings, options.credential)
    store = operator.store(credential)
    data, _ = await store.read_fields()
    if has_refresh_token(data) and not options.replace:
        raise _exists(store.location)
    client = operator.client(credential, data, store.location)
    server = operator.server(credential, client, options.endpoints)
    endpoints = await server.endpoints()
    flow: Flow = options.flow or ("device" if endpoints.device_authorization else "browser")
    scope = seeding_scope(credential.scope, endpoints.scopes_supported)
    if flow == "device":
        grant = await _device_flow(
            server, client, scope=scope, credential=credential, reporter=reporter, clock=clock
        )
    else:
        grant = await _browser_flow(
            server,
            client,
            scope=scope,
            options=options,
            reporter=reporter,
            open_browser=open_browser,
        )
    refresh_token = grant.refresh_token
    if refresh_token is None:
        raise ClientRejected(
            "the authorization server issued no refresh token (is the client allowed "
            "offline_access, or the refresh_token grant?); nothing was written to Vault",
            oauth_error="no_refresh_token",
        )
    REDACTOR.add(refresh_token, grant.access_token)
    at = clock.time()
    by = options.by or operator_name()

    def build(fields: Mapping[str, Any] | None, version: int) -> Mapping[str, Any]:
        if has_refresh_token(fields) and not options.replace:
            raise _exists(store.location)  # somebody seeded while the user logged in
        return seeded_data(
            fields, refresh_token=refresh_token, grant=grant, at=at, by=by, flow=flow
        )

    replaced = has_refresh_token(data) or (data is not None and retirement(data) is not None)
    try:
        version, _ = await write_when_free(
            store,
            build,
            clock=clock,
            skew=operator.settings.coordination.clock_skew_seconds,
            reporter=reporter,
        )
    except SidecarError:
        await _undo(server, client, refresh_token, reporter)
        raise
    expires = grant.refresh_expires_in
    reporter.event(
        "seeded",
        f"seeded {credential.name}: {store.location} version {version} ({flow} flow"
        + (", replacing the previous refresh token)" if replaced else ")"),
        result=True,
        credential=credential.name,
        location=store.location,
        version=version,
        flow=flow,
        replaced=replaced,
        refresh_expires_at=rfc3339(at + expires) if expires is not None else None,
    )
    return EXIT_OK


def _exists(location: str) -> SecretExists:
    return SecretExists(
        f"{location} already holds a refresh token; run seed with --replace to replace it "
        "(running replicas then adopt the new one)"
    )


async def _undo(
    server: AuthorizationServer,
    client: ClientCredentials,
    refresh_token: str,
    reporter: Reporter,
) -> None:
    """The write failed: revoke the new token (nobody holds it), and say so."""
    try:
        await server.revoke(refresh_token, client)
    except SidecarError as exc:
        note, revoked = f"could not be revoked ({exc.kind}); it expires unused", False
    else:
        note, revoked = "revoked at the authorization server", True
    reporter.event(
        "seed.undone",
        f"nothing was written to Vault; the new refresh token was {note}",
        revoked=revoked,
    )


async def _device_flow(
    server: AuthorizationServer,
    client: ClientCredentials,
    *,
    scope: str | None,
    credential: CredentialConfig,
    reporter: Reporter,
    clock: Clock,
) -> TokenGrant:
    auth = await server.device_authorization(client, scope=scope)
    complete = auth.verification_uri_complete
    text = (
        f"To authorize {credential.name}, open {auth.verification_uri} and enter the code "
        f"{auth.user_code}"
        + (f"\n(or open {complete})" if complete else "")
        + f"\nWaiting up to {auth.expires_in:.0f} s for the approval..."
    )
    reporter.event(
        "device.authorization",
        text,
        verification_uri=auth.verification_uri,
        verification_uri_complete=complete,
        user_code=auth.user_code,
        expires_in=auth.expires_in,
        interval=auth.interval,
    )
    never = asyncio.Event()
    expires_at = clock.monotonic() + auth.expires_in
    interval, wait = auth.interval, None
    while True:
        now = clock.monotonic()
        await clock.wait(never, next_poll_at(now, interval, expires_at, wait) - now)
        if clock.monotonic() >= expires_at:
            raise AuthorizationExpired(
                f"the code {auth.user_code} expired after {auth.expires_in:.0f} s without "
                "an approval; run seed again"
            )
        outcome = await server.poll_device(auth.device_code, client, interval=interval)
        if outcome.grant is not None:
            return outcome.grant
        if outcome.kind == "denied":
            raise AuthorizationDenied("the user denied the authorization (access_denied)")
        if outcome.kind == "expired":
            raise AuthorizationExpired(
                f"the code {auth.user_code} expired before it was approved (expired_token); "
                "run seed again"
            )
        if outcome.slowed:
            reporter.event(
                "device.slow_down",
                f"the server asked to poll more slowly: every {outcome.interval:.0f} s",
                interval=outcome.interval,
            )
        interval, wait = outcome.interval, outcome.wait


async def _browser_flow(
    server: AuthorizationServer,
    client: ClientCredentials,
    *,
    scope: str | None,
    options: SeedOptions,
    reporter: Reporter,
    open_browser: Callable[[str], bool],
) -> TokenGrant:
    endpoints = await server.endpoints()
    if endpoints.authorization is None:
        raise ClientRejected(
            "the authorization server names no authorization_endpoint "
            "(use --flow device, or --authorization-endpoint)",
            oauth_error="no_authorization_endpoint",
        )
    state = secrets.token_urlsafe(24)
    verifier = secrets.token_urlsafe(48)
    REDACTOR.add(verifier)
    async with LoopbackListener(options.port) as listener:
        redirect_uri = loopback_redirect_uri(listener.port)
        url = authorization_url(
            endpoints.authorization,
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            state=state,
            verifier=verifier,
            scope=scope,
        )
        opened = False
        if not options.no_browser:
            opened = await asyncio.to_thread(open_browser, url)
        lead = "Log in in the browser window just opened, or open" if opened else "Open"
        reporter.event(
            "browser.authorization",
            f"{lead} this URL to authorize {options.credential}:\n{url}\n"
            f"Waiting up to {options.login_timeout:.0f} s for the login to finish...",
            authorization_url=url,
            redirect_uri=redirect_uri,
            browser_opened=opened,
        )
        query = await listener.callback(options.login_timeout)
    code = parse_callback(query, state)
    return await server.redeem_code(code, verifier, redirect_uri, client)

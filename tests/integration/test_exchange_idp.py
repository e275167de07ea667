"""The token endpoint adapter against the real authorization server (node oidc-provider).

Every auth method refreshes twice in a row with the rotated token; discovery goes through the
server's own metadata; a consumed token comes back as InvalidGrant; injected faults map to the
error classes the refresher relies on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sidecar.adapters.exchange import TokenEndpoint, make_http_client
from sidecar.clock import SystemClock
from sidecar.config import CredentialConfig
from sidecar.errors import (
    ClientRejected,
    InvalidGrant,
    MalformedResponse,
    ResponseLost,
    TokenEndpointUnavailable,
)
from sidecar.model import TokenGrant
from tests.support.idp import CLIENT_IDS, IdpServer

pytestmark = pytest.mark.integration

T = TypeVar("T")


def credential(idp: IdpServer, *, discovery: bool = False) -> CredentialConfig:
    where: dict[str, Any] = (
        {"issuer": idp.issuer} if discovery else {"token_endpoint": idp.token_endpoint}
    )
    return CredentialConfig(
        name="it", kv_path="apps/it", output_dir=Path("/nonexistent/it"), **where
    )


def with_endpoint(
    idp: IdpServer,
    use: Callable[[TokenEndpoint], Awaitable[T]],
    *,
    discovery: bool = False,
    timeout: float = 5.0,
) -> T:
    async def main() -> T:
        async with make_http_client(None, timeout) as http:
            endpoint = TokenEndpoint(
                credential(idp, discovery=discovery),
                http,
                clock=SystemClock(),
                max_response_bytes=1 << 20,
            )
            return await use(endpoint)

    return asyncio.run(main())


def refresh(
    idp: IdpServer, token: str, client_id: str = "client-basic", **options: Any
) -> TokenGrant:
    client = idp.client_credentials(client_id)
    return with_endpoint(idp, lambda ep: ep.refresh(token, client), **options)


@pytest.mark.parametrize("client_id", CLIENT_IDS)
def test_each_auth_method_refreshes_twice_with_the_rotated_token(
    idp: IdpServer, client_id: str
) -> None:
    first_token = idp.seed_refresh_token(client_id=client_id, scope="openid offline_access")
    client = idp.client_credentials(client_id)

    async def twice(ep: TokenEndpoint) -> list[TokenGrant]:
        first = await ep.refresh(first_token, client)
        assert first.refresh_token is not None
        second = await ep.refresh(first.refresh_token, client)
        return [first, second]

    grants = with_endpoint(idp, twice)
    tokens = [first_token] + [g.refresh_token for g in grants]
    assert len(set(tokens)) == 3
    for grant in grants:
        assert grant.access_token
        assert grant.token_type == "Bearer"
        assert grant.expires_in == idp.access_token_ttl
        assert grant.scope is not None
        assert "offline_access" in grant.scope
    stats = idp.stats()
    assert stats["refresh_succeeded"] == 2
    assert stats["refresh_token_reuse"] == 0


def test_discovery_through_the_issuer(idp: IdpServer) -> None:
    token = idp.seed_refresh_token(client_id="client-jwt")
    grant = refresh(idp, token, "client-jwt", discovery=True)
    assert grant.access_token
    assert grant.refresh_token not in (None, token)


def test_probe_with_and_without_discovery(idp: IdpServer) -> None:
    with_endpoint(idp, lambda ep: ep.probe())
    with_endpoint(idp, lambda ep: ep.probe(), discovery=True)
    assert idp.stats()["refresh_succeeded"] == 0


def test_probe_of_a_closed_port_fails() -> None:
    config = CredentialConfig(
        name="it",
        kv_path="apps/it",
        output_dir=Path("/nonexistent/it"),
        token_endpoint="http://127.0.0.1:9/token",
    )

    async def main() -> None:
        async with make_http_client(None, 2.0) as http:
            await TokenEndpoint(
                config, http, clock=SystemClock(), max_response_bytes=1 << 20
            ).probe()

    with pytest.raises(TokenEndpointUnavailable, match="cannot connect"):
        asyncio.run(main())


def test_reusing_a_consumed_token_is_invalid_grant(idp: IdpServer) -> None:
    token = idp.seed_refresh_token(client_id="client-post")
    refresh(idp, token, "client-post")
    with pytest.raises(InvalidGrant, match="invalid_grant"):
        refresh(idp, token, "client-post")
    assert idp.stats()["refresh_token_reuse"] == 1


def test_wrong_client_secret_is_client_rejected(idp: IdpServer) -> None:
    token = idp.seed_refresh_token(client_id="client-basic")
    client = idp.client_credentials("client-basic")
    wrong = type(client)(client.client_id, client.method, client_secret="not-the-secret-0000")
    with pytest.raises(ClientRejected) as caught:
        with_endpoint(idp, lambda ep: ep.refresh(token, wrong))
    assert caught.value.oauth_error == "invalid_client"
    # The token was never consumed: the right client can still use it.
    assert refresh(idp, token, "client-basic").access_token


def test_overload_with_retry_after(idp: IdpServer) -> None:
    token = idp.seed_refresh_token()
    idp.set_fault(mode="status", status=503, retry_after="17")
    with pytest.raises(TokenEndpointUnavailable) as caught:
        refresh(idp, token)
    assert caught.value.retry_after == 17.0
    assert not isinstance(caught.value, ResponseLost)
    assert refresh(idp, token).access_token  # the fault never reached the provider


def test_html_instead_of_json_is_malformed(idp: IdpServer) -> None:
    token = idp.seed_refresh_token()
    idp.set_fault(mode="raw", status=200, body="<html>maintenance</html>", content_type="text/html")
    with pytest.raises(MalformedResponse, match="not a JSON object"):
        refresh(idp, token)


def test_a_client_timeout_before_the_provider_saw_it_is_response_lost(idp: IdpServer) -> None:
    token = idp.seed_refresh_token()
    idp.set_fault(mode="hang", seconds=3)
    with pytest.raises(ResponseLost):
        refresh(idp, token, timeout=0.3)
    # The server held the request until we hung up, so the provider never saw it; the single
    # retry the refresher allows itself succeeds with the very same token.
    assert refresh(idp, token).refresh_token != token


def test_an_answer_lost_after_commit_is_response_lost(idp: IdpServer) -> None:
    token = idp.seed_refresh_token()
    idp.set_fault(mode="drop_after_commit")
    with pytest.raises(ResponseLost, match="may have rotated"):
        refresh(idp, token)
    assert idp.stats()["refresh_succeeded"] == 1
    # The server rotated and committed: this server has no reuse grace period, so presenting
    # the same token again is reuse, and it revokes the grant.
    with pytest.raises(InvalidGrant):
        refresh(idp, token)

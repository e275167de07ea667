"""The bench's world: one OpenBao dev server, authorization servers, and the processes under test.

Everything listens on 127.0.0.1 and every process is started here and stopped by its own
handle (never by name). The servers are the integration tests' launchers
(:mod:`tests.support.openbao`, :mod:`tests.support.idp`), set up the way a platform engineer
would for one app: a policy on ``secret/data/bench/*``, a role ``bench`` on the JWT auth mount
at ``auth/kubernetes`` (the harness's stand-in for Kubernetes auth: the login request is byte
for byte the Kubernetes one), and a service-account-shaped token file both the sidecar and the
agent log in with.
"""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.peer import Agent, launch_agent
from tests.support.idp import IdpServer
from tests.support.openbao import OpenBaoServer

__all__ = ["ROLE", "Lab", "Sidecar", "wait_until"]

ROLE = "bench"
POLICY = """\
path "secret/data/bench/*" {
  capabilities = ["read", "create", "update"]
}
path "secret/metadata/bench/*" {
  capabilities = ["read"]
}
"""
CLIENT = "client-basic"
REPO = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.001) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def start_idps(ttls: Sequence[int]) -> list[IdpServer]:
    """Start one oidc-provider per access-token TTL, in parallel (each takes about a second)."""
    servers = [IdpServer(access_token_ttl=ttl) for ttl in ttls]
    errors: list[BaseException] = []

    def start(server: IdpServer) -> None:
        try:
            server.start()
        except BaseException as exc:  # noqa: BLE001  # reported below, after the others
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        for server in servers:
            server.stop()
        raise errors[0]
    return servers


@dataclass
class Sidecar:
    """One ``token-sidecar run`` process and its files."""

    root: Path
    process: subprocess.Popen[bytes]
    started: float
    """``time.time()`` just before the process was created."""
    output_dirs: list[Path]

    @property
    def pid(self) -> int:
        return self.process.pid

    def token_file(self, index: int = 0) -> Path:
        return self.output_dirs[index] / "access_token"

    def log_lines(self) -> list[str]:
        path = self.root / "sidecar.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode


@dataclass
class Lab:
    """The servers, the shared set-up, and a factory for sidecar processes."""

    root: Path
    source: Path
    """The directory whose ``sidecar`` package runs (the repository, or a scratch copy)."""
    idp_ttls: dict[str, int] = field(default_factory=dict)
    python: str = sys.executable
    """The interpreter every sidecar runs with (see :mod:`bench.runtime`)."""
    python_options: tuple[str, ...] = ()
    """Interpreter options for every sidecar (``-OO`` to measure ``PYTHONOPTIMIZE=2``)."""
    memory: Path | None = None
    """Where token files and journals go: a tmpfs, like the chart's in-memory volumes."""
    bao: OpenBaoServer | None = None
    idps: dict[str, IdpServer] = field(default_factory=dict)
    _serial: int = 0
    _children: list[Sidecar] = field(default_factory=list)

    # -- servers ---------------------------------------------------------------------------

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # The chart mounts the token and journal volumes as emptyDir {medium: Memory}: tmpfs.
        shm = Path("/dev/shm")  # noqa: S108  # a fresh private directory is made inside
        if shm.is_dir() and os.access(shm, os.W_OK):
            self.memory = Path(tempfile.mkdtemp(prefix="token-sidecar-bench-", dir=shm))
        else:
            self.memory = self.root / "memory"
            self.memory.mkdir()
        # The image byte-compiles at install; without this (PYTHONDONTWRITEBYTECODE is common in
        # development shells) every start would compile the sidecar from source first.
        for level in {-1, *(2 for option in self.python_options if option == "-OO")}:
            compileall.compile_dir(str(self.source / "sidecar"), quiet=1, workers=0, optimize=level)
        self.bao = OpenBaoServer().start()
        self.bao.write_policy(ROLE, POLICY)
        # One login's token outlives any single scenario, so neither side renews mid-measurement.
        self.bao.create_role(ROLE, [ROLE], token_ttl=3600)
        self.sa_token.write_text(self.bao.mint_sa_jwt(ttl=6 * 3600))
        names = list(self.idp_ttls)
        for name, server in zip(names, start_idps([self.idp_ttls[n] for n in names]), strict=True):
            self.idps[name] = server

    def close(self) -> None:
        for sidecar in self._children:
            with contextlib.suppress(Exception):
                sidecar.stop(timeout=5)
        for server in self.idps.values():
            server.stop()
        if self.bao is not None:
            self.bao.close()
        if self.memory is not None:
            shutil.rmtree(self.memory, ignore_errors=True)
            self.memory = None

    @property
    def sa_token(self) -> Path:
        return self.root / "sa-token"

    @property
    def vault(self) -> OpenBaoServer:
        if self.bao is None:
            raise RuntimeError("the lab is not started")
        return self.bao

    # -- secrets -----------------------------------------------------------------------------

    def seed(self, path: str, idp: str) -> None:
        """A fresh grant at ``idp`` and its refresh token in ``secret/bench/<path>``."""
        server = self.idps[idp]
        self.vault.put_secret(
            f"bench/{path}",
            {
                "refresh_token": server.seed_refresh_token(CLIENT),
                "client_id": CLIENT,
                "client_secret": server.client_secret(CLIENT),
            },
        )

    def seed_static(self, path: str, data: dict[str, Any]) -> None:
        self.vault.put_secret(f"bench/{path}", data)

    # -- sidecars ----------------------------------------------------------------------------

    def sidecar_config(
        self,
        root: Path,
        credentials: Sequence[tuple[str, str, str]],
        *,
        refresh: dict[str, Any] | None = None,
        port: int = 0,
        level: str = "info",
        grant: str = "refresh_token",
    ) -> Path:
        """Write a config like the chart's (JSON): kubernetes auth, journal, JSON logs at info.

        ``credentials`` are ``(name, kv path below bench/, idp name)``, all with ``grant``.
        """
        root.mkdir(parents=True, exist_ok=True)
        config = {
            "vault": {
                "address": self.vault.address,
                "auth": {"method": "kubernetes", "role": ROLE, "jwt_file": str(self.sa_token)},
            },
            "credentials": [
                {
                    "name": name,
                    "kv_path": f"bench/{path}",
                    "token_endpoint": self.idps[idp].token_endpoint,
                    "client_auth": "client_secret_basic",
                    "output_dir": str(self.volume(root) / "tokens" / name),
                    **({"grant": grant} if grant != "refresh_token" else {}),
                }
                for name, path, idp in credentials
            ],
            "server": {"address": f"127.0.0.1:{port}"},
            "log": {"level": level, "format": "json"},
            "journal": {"dir": str(self.volume(root) / "journal")},
            "refresh": refresh or {},
        }
        path = root / "config.yaml"
        path.write_text(json.dumps(config, indent=2))
        return path

    def volume(self, workdir: Path) -> Path:
        """The in-memory volume of the process whose work directory is ``workdir``."""
        if self.memory is None:
            raise RuntimeError("the lab is not started")
        return self.memory / workdir.relative_to(self.root)

    def workdir(self, kind: str, name: str) -> Path:
        """A directory of its own for one process, never reused within a run."""
        self._serial += 1
        return self.root / kind / f"{self._serial:03d}-{name}"

    def env(self, pod: str) -> dict[str, str]:
        clean = {
            k: v for k, v in os.environ.items() if not k.startswith(("TOKEN_SIDECAR_", "VAULT_"))
        }
        return {**clean, "POD_NAME": pod, "PYTHONPATH": str(self.source)}

    def launch(
        self,
        name: str,
        credentials: Sequence[tuple[str, str, str]],
        *,
        refresh: dict[str, Any] | None = None,
        level: str = "info",
        wrapper: Sequence[str] = (),
        grant: str = "refresh_token",
    ) -> Sidecar:
        """Start ``token-sidecar run`` (``python -m sidecar``) from :attr:`source`.

        ``wrapper``: arguments that replace ``-m sidecar``, for a module of this package
        that runs the sidecar inside an instrumented interpreter (:mod:`bench.imports`).
        """
        root = self.workdir("sidecars", name)
        config = self.sidecar_config(root, credentials, refresh=refresh, level=level, grant=grant)
        log = (root / "sidecar.log").open("wb")
        env = self.env(name)
        if wrapper:
            env["PYTHONPATH"] = f"{self.source}{os.pathsep}{REPO}"
        command = [*wrapper] if wrapper else ["-m", "sidecar"]
        started = time.time()
        process = subprocess.Popen(
            [self.python, *self.python_options, *command, "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            cwd=root,
        )
        log.close()
        sidecar = Sidecar(
            root=root,
            process=process,
            started=started,
            output_dirs=[self.volume(root) / "tokens" / c[0] for c in credentials],
        )
        self._children.append(sidecar)
        return sidecar

    def launch_agent(self, name: str) -> Agent:
        """Start the peer (:mod:`bench.peer`) rendering ``secret/bench/agent`` to a file."""
        root = self.workdir("agents", name)
        return launch_agent(
            self.vault.binary,
            root,
            address=self.vault.address,
            token_file=self.sa_token,
            role=ROLE,
            kv_path="agent",
            volume=self.volume(root),
        )

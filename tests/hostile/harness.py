"""A real sidecar process aimed at hostile servers, with everything it says scanned for canaries.

:class:`Sidecar` wraps a :class:`~tests.support.deployment.Deployment` (real OpenBao, real
oidc-provider, real processes) and adds what the hostile cases need: canary secrets in Vault,
a token endpoint on the raw server (:mod:`tests.support.rawserver`), extra config sections,
processes started with another user, umask or with faults forced inside (see
:mod:`tests.hostile.faulty_sidecar`), and readers for ``/healthz``, ``/metrics`` and the
JSON log. Every text it sees (log lines, CLI output, health and metrics bodies) goes to the
test's :class:`~tests.hostile.canary.CanaryScan`, checked when the test ends.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.hostile.canary import CanaryScan
from tests.support.deployment import (
    KV_PATH,
    Deployment,
    assert_vault_holds_the_live_token,
    wait_for,
)
from tests.support.rawserver import Reply, Route, TokenIssuer

__all__ = [
    "CLIENT_ID",
    "FOREIGN_PYTHON",
    "ReadyWatcher",
    "Sidecar",
    "canary",
    "log_events",
    "metric_value",
]

CLIENT_ID = "client-basic"
#: The system interpreter, given the project's packages, to run as another user: the
#: virtualenv's own interpreter lives under /root, which other users cannot enter.
FOREIGN_PYTHON = "/usr/bin/python3"


def canary(kind: str) -> str:
    """A recognisable secret: ``CANARY-<kind>-<random>``, all VSCHAR."""
    return f"CANARY-{kind}-{secrets.token_urlsafe(24)}"


def log_events(text: str, name: str | None = None) -> list[dict[str, Any]]:
    """The JSON log lines in ``text`` (others skipped), optionally only events ``name``."""
    found = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and (name is None or event.get("event") == name):
            found.append(event)
    return found


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with exactly these labels (a subset match)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


class ReadyWatcher(threading.Thread):
    """Checks, as often as it can, the promise ``/readyz`` makes: while it answers 200, the
    token files are whole and unexpired (R4). Started with the first ``run`` process."""

    def __init__(self, port: int, directory: Path, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.url = f"http://127.0.0.1:{port}/readyz"
        self.directory = directory
        self.stopping = threading.Event()
        self.problems: list[str] = []
        self.ready_checks = 0

    def run(self) -> None:
        with httpx.Client(timeout=2) as client:
            while not self.stopping.wait(self.interval):
                try:
                    ready = client.get(self.url).status_code == 200
                except httpx.HTTPError:
                    continue
                if ready:
                    self.ready_checks += 1
                    self._check()

    def _check(self) -> None:
        try:
            document = json.loads((self.directory / "token.json").read_text())
            token = (self.directory / "access_token").read_text()
        except FileNotFoundError:
            self.problems.append("ready without a token file")
            return
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self.problems.append(f"ready with a torn token.json: {exc}")
            return
        if not token:
            self.problems.append("ready with an empty access_token")
        stamp = datetime.fromisoformat(document["expires_at"].replace("Z", "+00:00"))
        # whole seconds, rounded down: the token lasts until the next second
        if stamp.timestamp() + 1 <= time.time():
            self.problems.append(f"ready with an expired token.json ({document['expires_at']})")


@dataclass
class Sidecar:
    dep: Deployment
    route: Route
    scan: CanaryScan
    refresh_token: str = field(default_factory=lambda: canary("RT"))
    client_secret: str = field(default_factory=lambda: canary("CS"))
    sections: dict[str, Any] = field(default_factory=dict)
    issuers: list[TokenIssuer] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    watcher: ReadyWatcher | None = None
    output_dir: Path | None = None
    """Where the configured credential's files go (the deployment's unless overridden)."""

    def __post_init__(self) -> None:
        self.scan.secret(self.refresh_token, "the seeded refresh token")
        self.scan.secret(self.client_secret, "the client secret")
        self.scan.secret(self.dep.seeded, "the IdP's seeded refresh token")
        self.scan.secret(self.dep.idp.client_secret(CLIENT_ID), "the IdP client secret")
        self.scan.secret((self.dep.root / "sa-token").read_text(), "the service-account JWT")

    # -- set-up ---------------------------------------------------------------------------

    @property
    def token_url(self) -> str:
        return self.route.url("/token")

    def seed(self, *, drop: tuple[str, ...] = (), **fields: Any) -> int:
        """Write the canary secret to Vault (``fields`` override, ``drop`` removes); returns
        the version."""
        data: dict[str, Any] = {
            "refresh_token": self.refresh_token,
            "client_id": CLIENT_ID,
            "client_secret": self.client_secret,
            "owner": "team-billing",
        }
        data.update(fields)
        return self.dep.openbao.put_secret(
            KV_PATH, {k: v for k, v in data.items() if k not in drop}
        )

    def issuer(self, **options: Any) -> TokenIssuer:
        """A canary token issuer that expects the seeded refresh token and client secret."""
        issuer = TokenIssuer(
            "CANARY", self.refresh_token, client_secret=self.client_secret, **options
        )
        self.issuers.append(issuer)
        return issuer

    def configure(
        self,
        *replies: Reply | Callable[..., Reply],
        refresh: dict[str, Any] | None = None,
        sections: dict[str, Any] | None = None,
        **credential: Any,
    ) -> None:
        """Aim the token endpoint at the raw route answering ``replies`` (unless overridden).

        ``refresh`` adds to the deployment's refresh settings; ``sections`` adds or replaces
        top-level sections (``http``, ``vault``, ...), merged one level deep.
        """
        if replies:
            self.route.on("/token", *replies)
        if "token_endpoint" not in credential and "issuer" not in credential:
            credential["token_endpoint"] = self.token_url
        credential = {k: v for k, v in credential.items() if v is not None}
        self.output_dir = Path(credential.get("output_dir", self.dep.output_dir))
        defaults = {"backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.5}
        self.dep.write_config(refresh={**defaults, **(refresh or {})}, **credential)
        if credential.get("issuer"):
            self._edit(lambda c: c["credentials"][0].pop("token_endpoint", None))
        self.sections = sections or {}
        if self.sections:
            self._edit(self._merge_sections)

    def _merge_sections(self, config: dict[str, Any]) -> None:
        for name, value in self.sections.items():
            config[name] = {**config.get(name, {}), **value}

    def _edit(self, change: Callable[[dict[str, Any]], object]) -> None:
        config = yaml.safe_load(self.dep.config_path.read_text())
        change(config)
        self.dep.config_path.write_text(yaml.safe_dump(config))

    def edit_config(self, change: Callable[[dict[str, Any]], object]) -> None:
        self._edit(change)

    # -- processes ------------------------------------------------------------------------

    def command(self, *args: str, faults: str | None = None) -> list[str]:
        module = "tests.hostile.faulty_sidecar" if faults is not None else "sidecar"
        return [sys.executable, "-m", module, "--config", str(self.dep.config_path), *args]

    def env(self, faults: str | None = None, **extra: str) -> dict[str, str]:
        env = {**self.dep.env(), **self.extra_env, **extra}
        if faults is not None:
            env["HOSTILE_FAULTS"] = faults
            env["HOSTILE_FAULT_DIR"] = str(self.dep.root / "faults")
        return env

    def cli(
        self, *args: str, timeout: float = 30, faults: str | None = None, **popen: Any
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(*args, faults=faults),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(faults),
            check=False,
            cwd=Path(__file__).resolve().parents[2],
            **popen,
        )
        self.scan.text(f"{args[-1]} stdout", result.stdout)
        self.scan.text(f"{args[-1]} stderr", result.stderr)
        return result

    def cli_as(
        self, uid: int, gid: int, config: Path, *args: str
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as another user, with a ``config`` that user can read."""
        site = next((Path(sys.prefix) / "lib").glob("python3*/site-packages"))
        repo = Path(__file__).resolve().parents[2]
        result = subprocess.run(
            [FOREIGN_PYTHON, "-m", "sidecar", "--config", str(config), *args],
            capture_output=True,
            text=True,
            env={**self.env(), "PYTHONPATH": f"{site}{os.pathsep}{repo}"},
            user=uid,
            group=gid,
            extra_groups=[],
            cwd="/",
            timeout=30,
            check=False,
        )
        self.scan.text(f"{args[-1]} stdout as {uid}", result.stdout)
        self.scan.text(f"{args[-1]} stderr as {uid}", result.stderr)
        return result

    def once(self, **popen: Any) -> subprocess.CompletedProcess[str]:
        return self.cli("once", **popen)

    def start(self, *, faults: str | None = None, **popen: Any) -> subprocess.Popen[bytes]:
        with self.dep.log_path.open("ab") as log:
            process = subprocess.Popen(
                self.command("run", faults=faults),
                stdout=log,
                stderr=log,
                env=self.env(faults),
                cwd=Path(__file__).resolve().parents[2],
                **popen,
            )
        self.dep.process = process
        self.processes.append(process)
        if self.watcher is None:
            self.watcher = ReadyWatcher(self.dep.port, self.output_dir or self.dep.output_dir)
            self.watcher.start()
        return process

    def stop(self, timeout: float = 15) -> int:
        return self.dep.stop(timeout)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stopping.set()
            self.watcher.join(timeout=5)
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        self.scan.text("sidecar.log", self.dep.logs())
        for issuer in self.issuers:
            self.scan.secret_all(issuer.secrets, "a token the raw server issued")
        self._collect_live_tokens()

    def _collect_live_tokens(self) -> None:
        """Whatever the IdP issued and Vault or the files now hold is a canary too."""
        try:
            data, _ = self.dep.vault_secret()
        except Exception:  # noqa: BLE001  # a sealed or emptied Vault holds nothing to add
            data = {}
        self.scan.secret(data.get("refresh_token"), "the refresh token Vault holds")
        access = (data.get("token_sidecar") or {}).get("access") or {}
        self.scan.secret(access.get("access_token"), "the shared access token in Vault")
        token_file = self.dep.output_dir / "access_token"
        if token_file.is_file() and not token_file.is_symlink():
            self.scan.secret(token_file.read_text(), "the published access token")

    # -- observation ----------------------------------------------------------------------

    def get(self, path: str) -> httpx.Response:
        response = self.dep.get(path)
        self.scan.text(path, response.text)
        return response

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = self.get("/healthz").json()["credentials"]["billing"]
        return body

    def metrics(self) -> str:
        return self.get("/metrics").text

    def metric(self, name: str, **labels: str) -> float | None:
        return metric_value(self.metrics(), name, credential="billing", **labels)

    def vault_requests(self, operation: str, outcome: str) -> float:
        value = metric_value(
            self.metrics(),
            "token_sidecar_vault_requests_total",
            operation=operation,
            outcome=outcome,
        )
        return value or 0.0

    def refreshes(self, outcome: str) -> float:
        return self.metric("token_sidecar_refresh_total", outcome=outcome) or 0.0

    def wait(self, predicate: Callable[[], object], timeout: float = 10) -> None:
        def safe() -> bool:
            try:
                return bool(predicate())
            except (httpx.HTTPError, KeyError, ValueError, OSError):
                return False

        assert wait_for(safe, timeout=timeout), self.dep.logs()[-6000:]

    def wait_state(self, state: str, timeout: float = 10) -> dict[str, Any]:
        self.wait(lambda: self.health()["state"] == state, timeout)
        return self.health()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return log_events(self.dep.logs(), name)

    def vault(self) -> tuple[dict[str, Any], int]:
        return self.dep.vault_secret()

    def token_json(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.dep.output_dir / "token.json").read_text())
        return document

    def files(self) -> Iterator[Path]:
        yield from sorted(self.dep.output_dir.iterdir())


def seed_the_idp_grant(sidecar: Sidecar) -> None:
    """Seed Vault with the deployment's live oidc-provider grant instead of the canary token."""
    sidecar.seed(
        refresh_token=sidecar.dep.seeded,
        client_secret=sidecar.dep.idp.client_secret("client-basic"),
    )


def use_the_idp(sidecar: Sidecar, **config: Any) -> None:
    """The live grant in Vault and the real oidc-provider as the token endpoint."""
    seed_the_idp_grant(sidecar)
    sidecar.configure(token_endpoint=sidecar.dep.idp.token_endpoint, **config)


def assert_chain_intact(sidecar: Sidecar) -> None:
    """No refresh token presented twice, no grant revoked, and Vault holds the live token."""
    stats = sidecar.dep.idp.stats()
    assert stats["refresh_token_reuse"] == 0, stats
    assert stats["grants_revoked"] == 0, stats
    assert_vault_holds_the_live_token(sidecar.dep)

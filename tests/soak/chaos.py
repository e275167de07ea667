"""The chaos driver: N real ``token-sidecar run`` replicas sharing one secret, shaken at random.

Real OpenBao, real oidc-provider, real processes (:mod:`tests.support.deployment`). Each
replica has its own ``POD_NAME``, token directory and journal, and its own ``replica`` tag on
the token endpoint URL so the server's ledger says who presented what. From a seeded random
generator the driver, one action at a time:

- SIGKILLs a running replica and restarts it shortly after with the same journal and
  ``POD_NAME``, as a container restart would;
- freezes one with SIGSTOP for longer than ``claim_seconds`` plus the skew allowance, then
  SIGCONT;
- queues a fault at the token endpoint (503 or 429 with Retry-After, an answer dropped after
  the server committed the rotation, a hang the client outlasts, a hang it gives up on);
- seals Vault and unseals it a few seconds later.

Two situations are outside what any client can prevent (README, "What no client can
prevent"), and the driver treats them as an operator would, counting each separately:

- **the window**: a kill between the server committing a rotation and the journal holding
  the new token. After each kill, the server's rotations for that replica are compared with
  the ``journal.saved`` events in its log; a rotation no journal holds is the window, and the
  driver re-seeds Vault before the replica restarts, as the kill loop in
  ``tests/integration/test_rotation.py`` does;
- **a pause in the middle of a rotation**: a replica stopped while its claim is in Vault
  (its exchange may be committed and unanswered) and kept stopped past the claim is a
  partition longer than ``claim_seconds``. The driver looks at Vault right after SIGSTOP and,
  if the claim names that replica or Vault is sealed, lets it go at once (``freezes_declined``).

A grant revoked by the server (the one retry after a dropped answer, or a bug) is re-seeded so
the run goes on; the ledger (:mod:`tests.soak.ledger`) tells the two apart afterwards. So is a
refresh token the replicas gave up on without presenting it again (its answer lost twice, the
retry included: it may be spent), which they mark in Vault and report as ``rejected``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from sidecar.coordination import fingerprint
from tests.hostile.harness import ReadyWatcher
from tests.soak.plan import Plan
from tests.support.deployment import KV_PATH, Deployment, wait_for
from tests.support.freeze import freeze
from tests.support.idp import IdpServer
from tests.support.openbao import OpenBaoServer

__all__ = ["Chaos", "Replica", "names_replica"]

_SEPARATORS = ("/", "_", ":", "-", ".")


def names_replica(holder: str | None, pod: str) -> bool:
    """Whether a claim's holder is ``pod`` (alone, or followed by a per-process suffix)."""
    if not holder:
        return False
    return holder == pod or any(holder.startswith(pod + sep) for sep in _SEPARATORS)


@dataclass
class Replica:
    dep: Deployment
    watcher: ReadyWatcher
    state: str = "down"  # running | frozen | down
    frozen_at: float = 0.0
    window_hits: int = 0
    _log_read: int = 0
    _saved: int = 0

    @property
    def name(self) -> str:
        return self.dep.name

    def journal_saved(self) -> int:
        """``journal.saved`` events in the log of every incarnation so far (read on from
        where the last call stopped: the log only grows)."""
        with contextlib.suppress(FileNotFoundError), self.dep.log_path.open("rb") as log:
            log.seek(self._log_read)
            chunk = log.read()
            whole = chunk[: chunk.rfind(b"\n") + 1]
            self._log_read += len(whole)
            self._saved += whole.count(b'"event": "journal.saved"')
        return self._saved


@dataclass
class Chaos:
    """One soak: call :meth:`run`; counts accumulate in :attr:`counts`."""

    openbao: OpenBaoServer
    idp: IdpServer
    first: Deployment
    plan: Plan
    replicas: list[Replica] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    unexpected_exits: list[str] = field(default_factory=list)
    window_hits: list[dict[str, Any]] = field(default_factory=list)
    seconds_frozen: float = 0.0
    seconds_sealed: float = 0.0
    grant: str | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.plan.seed)  # chaos, not cryptography
        self._timers: list[tuple[float, str, Replica | None]] = []
        self._sealed_since: float | None = None
        self._ledger: list[dict[str, Any]] = []
        self._next_vault_look = 0.0
        kinds = list(_FAULTS)
        self._faults = itertools.chain.from_iterable(
            self.rng.sample(kinds, len(kinds)) for _ in itertools.count()
        )

    # -- set-up --------------------------------------------------------------------------

    def start(self) -> None:
        self._put_new_grant()
        deps = [self.first]
        deps += [self.first.replica(f"app-{i}") for i in range(1, self.plan.replicas)]
        for dep in deps:
            dep.write_config(
                refresh=self.plan.refresh_settings(),
                sections=self.plan.config_sections(),
                token_endpoint=f"{self.idp.token_endpoint}?replica={dep.name}",
            )
            watcher = ReadyWatcher(dep.port, dep.output_dir, interval=0.1)
            self.replicas.append(Replica(dep, watcher))
        for replica in self.replicas:
            self._launch(replica)
        for replica in self.replicas:
            token = replica.dep.output_dir / "token.json"
            assert wait_for(token.exists, timeout=60, interval=0.1), replica.dep.logs()[-3000:]
            replica.watcher.start()

    def _launch(self, replica: Replica) -> None:
        replica.dep.start()
        replica.state = "running"

    # -- the run -------------------------------------------------------------------------

    def run(self) -> None:
        """Shake the replicas for ``plan.seconds``; leave everything thawed and unsealed."""
        began = time.monotonic()
        end = began + self.plan.seconds
        due = {
            "kill": began + self._uniform(self.plan.kill_every),
            "freeze": began + self._uniform(self.plan.freeze_every),
            "fault": began + self._uniform(self.plan.fault_every),
            "seal": began + self._uniform(self.plan.seal_every),
        }
        actions = {"kill": self._kill, "freeze": self._freeze, "fault": self._fault}
        actions["seal"] = self._seal
        every = {
            "kill": self.plan.kill_every,
            "freeze": self.plan.freeze_every,
            "fault": self.plan.fault_every,
            "seal": self.plan.seal_every,
        }
        while (now := time.monotonic()) < end:
            self._tend(now)
            for kind, at in due.items():
                if now >= at:
                    done = actions[kind]()
                    # an action that could not happen now (nobody to freeze, Vault already
                    # sealed, a fault still queued) is tried again shortly
                    due[kind] = time.monotonic() + (self._uniform(every[kind]) if done else 0.5)
            time.sleep(0.05)
        self.counts["chaos_seconds"] = round(time.monotonic() - began)

    def calm(self) -> None:
        """End the chaos: thaw, unseal, clear faults and restart every replica that is down."""
        self.idp.clear_faults()
        for replica in self.replicas:
            self._thaw(replica)
        if self._sealed_since is not None:
            self._unseal()
        for replica in self.replicas:
            if replica.state == "down":
                self._launch(replica)
                self.counts["restarts"] += 1
        self._timers.clear()

    def recover(self, timeout: float) -> float | None:
        """Seconds until the chain is healthy again (every replica ready, two rotations in
        Vault), re-seeding a revoked grant as an operator would; ``None`` if it never was."""
        began = time.monotonic()
        version = self.first.vault_secret()[1]
        while time.monotonic() < began + timeout:
            self._tend(time.monotonic())
            if self._all_ready() and self.first.vault_secret()[1] >= version + 4:
                return round(time.monotonic() - began, 1)
            time.sleep(0.2)
        return None

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every replica; their exit codes."""
        for replica in self.replicas:
            replica.watcher.stopping.set()
        codes = {}
        for replica in self.replicas:
            replica.watcher.join(timeout=5)
            codes[replica.name] = replica.dep.stop(timeout=15)
            replica.state = "down"
        return codes

    def ledger(self) -> list[dict[str, Any]]:
        """The server's ledger as of now (entries that are done never change: fetched once)."""
        first_open = next((i for i, e in enumerate(self._ledger) if not e["done"]), None)
        start = len(self._ledger) if first_open is None else first_open
        self._ledger[start:] = self.idp.ledger(since=start)
        return self._ledger

    def ledger_settled(
        self, replica: str | None = None, timeout: float = 15
    ) -> list[dict[str, Any]]:
        """The ledger once no request in it (from ``replica``, or anyone) is in flight."""
        deadline = time.monotonic() + timeout
        while True:
            ledger = self.ledger()
            mine = (e for e in ledger if replica is None or e.get("replica") == replica)
            if all(e["done"] for e in mine) or time.monotonic() > deadline:
                return ledger
            time.sleep(0.05)

    def abort(self) -> None:
        """Leave nothing stopped or sealed behind when a run fails half-way."""
        for replica in self.replicas:
            replica.watcher.stopping.set()
            process = replica.dep.process
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCONT)
                process.kill()
                process.wait(timeout=10)
        if self._sealed_since is not None:
            with contextlib.suppress(Exception):
                self.openbao.unseal()

    # -- what happens on its own ---------------------------------------------------------

    def _tend(self, now: float) -> None:
        """Timers that are due, replicas that died on their own, a revoked grant."""
        for timer in [t for t in self._timers if t[0] <= now]:
            self._timers.remove(timer)
            _, what, replica = timer
            if what == "thaw" and replica is not None:
                self._thaw(replica)
            elif what == "restart" and replica is not None:
                self._launch(replica)
                self.counts["restarts"] += 1
            elif what == "unseal":
                self._unseal()
        for replica in self.replicas:
            process = replica.dep.process
            if replica.state != "down" and process is not None and process.poll() is not None:
                tail = "\n".join(replica.dep.logs().splitlines()[-5:])
                self.unexpected_exits.append(f"{replica.name} exited {process.returncode}: {tail}")
                replica.state = "down"
                self._timers.append((now + 1.0, "restart", replica))
        if self.grant_revoked():
            self.reseed("revoked")
        elif now >= self._next_vault_look and self._sealed_since is None:
            self._next_vault_look = now + 0.5
            if self._token_given_up():
                self.reseed("rejected")

    def _token_given_up(self) -> bool:
        """Whether the replicas marked Vault's refresh token as refused or possibly spent
        (``response_lost_twice``): they wait for an operator, who re-seeds."""
        try:
            data, _ = self.first.vault_secret()
        except Exception:  # noqa: BLE001  # Vault unreachable: look again later
            return False
        rejected = (data.get("token_sidecar") or {}).get("rejected")
        return bool(rejected) and rejected == fingerprint(str(data.get("refresh_token", "")))

    def grant_revoked(self) -> bool:
        revoked = self.idp.stats()["revoked_grants"]
        return self.grant in revoked if self.grant is not None else bool(revoked)

    def reseed(self, reason: str) -> None:
        """What the runbook says: a fresh grant's refresh token into Vault (``vault kv put``)."""
        if self._sealed_since is not None:
            self._unseal()
            self.counts["seals_cut_short"] += 1
        self._put_new_grant()
        self.counts[f"reseeds_{reason}"] += 1

    def _put_new_grant(self) -> None:
        grant = self.idp.seed("client-basic")
        data, _ = self.first.vault_secret()
        user = {k: data[k] for k in ("client_id", "client_secret", "owner") if k in data}
        self.openbao.put_secret(KV_PATH, {**user, "refresh_token": grant.refresh_token})
        self.grant = grant.grant_id

    # -- actions: each returns whether it happened -----------------------------------------

    def _running(self) -> list[Replica]:
        return [r for r in self.replicas if r.state == "running"]

    def _kill(self) -> bool:
        running = self._running()
        if not running:
            return False
        replica = self.rng.choice(running)
        replica.dep.kill()
        replica.state = "down"
        self.counts["kills"] += 1
        self._look_for_the_window(replica)
        restart_at = time.monotonic() + self._uniform(self.plan.restart_after)
        self._timers.append((restart_at, "restart", replica))
        return True

    def _look_for_the_window(self, replica: Replica) -> None:
        """A rotation the server committed for this replica that its journal never held."""
        ledger = self.ledger_settled(replica.name)
        mine = [e for e in ledger if e.get("replica") == replica.name]
        committed = sum(
            1 for e in mine if e["outcome"] == "rotated" and e["fault"] != "drop_after_commit"
        )
        lost = committed - replica.journal_saved() - replica.window_hits
        if lost > 0:
            replica.window_hits += lost
            self.window_hits.append(
                {"replica": replica.name, "kill": self.counts["kills"], "rotations_lost": lost}
            )
            self.reseed("window")

    def _freeze(self) -> bool:
        running = self._running()
        if not running:
            return False
        replica = self.rng.choice(running)
        process = replica.dep.process
        assert process is not None
        freeze(process.pid)
        if self._holds_claim(replica):
            os.kill(process.pid, signal.SIGCONT)
            self.counts["freezes_declined"] += 1
            return True
        replica.state = "frozen"
        replica.frozen_at = time.monotonic()
        seconds = self._uniform(self.plan.freeze_for)
        self._timers.append((time.monotonic() + seconds, "thaw", replica))
        self.counts["freezes"] += 1
        return True

    def _holds_claim(self, replica: Replica) -> bool:
        """Whether Vault's claim names the replica (or Vault cannot tell: it is sealed)."""
        if self._sealed_since is not None:
            return True
        try:
            data, _ = self.first.vault_secret()
        except Exception:  # noqa: BLE001  # unreadable counts as unsafe to freeze
            return True
        claim = (data.get("token_sidecar") or {}).get("claim") or {}
        return names_replica(claim.get("holder"), replica.name)

    def _thaw(self, replica: Replica) -> None:
        process = replica.dep.process
        if replica.state == "frozen" and process is not None:
            os.kill(process.pid, signal.SIGCONT)
            replica.state = "running"
            self.seconds_frozen += time.monotonic() - replica.frozen_at

    def _fault(self) -> bool:
        if self.idp.stats()["faults_pending"]:
            return False
        kind = next(self._faults)
        self.idp.set_fault(**_FAULTS[kind](self))
        self.injected[kind] += 1
        return True

    def _seal(self) -> bool:
        if self._sealed_since is not None:
            return False
        self.openbao.seal()
        self._sealed_since = time.monotonic()
        self.counts["seals"] += 1
        self._timers.append((time.monotonic() + self._uniform(self.plan.seal_for), "unseal", None))
        return True

    def _unseal(self) -> None:
        if self._sealed_since is None:
            return
        self.openbao.unseal()
        self.seconds_sealed += time.monotonic() - self._sealed_since
        self._sealed_since = None
        self._timers = [t for t in self._timers if t[1] != "unseal"]

    # -- helpers -------------------------------------------------------------------------

    def _uniform(self, bounds: tuple[float, float]) -> float:
        return self.rng.uniform(*bounds)

    def _all_ready(self) -> bool:
        for replica in self.replicas:
            try:
                if replica.dep.get("/readyz").status_code != 200:
                    return False
            except httpx.HTTPError:
                return False
        return True


def _status(status: int) -> Any:
    return lambda chaos: {
        "mode": "status",
        "status": status,
        "retry_after": str(chaos.rng.randint(1, 3)),
        "count": chaos.rng.randint(1, 2),
    }


_FAULTS: dict[str, Any] = {
    "503 with Retry-After": _status(503),
    "429 with Retry-After": _status(429),
    "answer dropped after commit": lambda chaos: {"mode": "drop_after_commit"},
    "hang, then answered": lambda chaos: {
        "mode": "hang",
        "seconds": round(chaos.rng.uniform(*chaos.plan.slow_answer), 2),
    },
    "hang past the client's timeout": lambda chaos: {
        "mode": "hang",
        "seconds": chaos.plan.hang_past_timeout,
    },
}

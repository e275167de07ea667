"""Wiring: builds the adapters from settings, runs one refresher per credential, handles signals.

This is the only module that knows every concrete class. ``run`` keeps going until SIGTERM or
SIGINT; then no new exchange starts, pending write-backs get ``shutdown_grace_seconds`` to land,
and the process exits 0. A refresher that crashes stops the others (one task group) and the
process exits non-zero so the kubelet restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
import structlog

from sidecar.adapters.exchange import TokenEndpoint, make_http_client
from sidecar.adapters.journal import FileJournal, unusable_reason
from sidecar.adapters.notify import ExecSender, HttpSender, SignalSender
from sidecar.adapters.server import HealthServer
from sidecar.adapters.sink import TOKEN_JSON_FILE, FileSink
from sidecar.adapters.vault import VaultSecretStore, VaultSession
from sidecar.backoff import BackoffPolicy
from sidecar.client_auth import client_credentials
from sidecar.client_grant import ClientCredentialsLoop
from sidecar.clock import SystemClock
from sidecar.config import CredentialConfig, Settings
from sidecar.coordination import claimant_identity
from sidecar.errors import SidecarError
from sidecar.metrics import Metrics
from sidecar.model import Notification, StoredSecret
from sidecar.notify import NotifyLoop, NotifyPolicy
from sidecar.policies import client_template, refresh_policy
from sidecar.ports import Clock, NotifySender, RefreshObserver
from sidecar.refresher import Refresher
from sidecar.status import StatusBoard

if TYPE_CHECKING:
    # Imported where used, only when events are enabled: the adapter and what it loads cost
    # start-up time and memory in every pod that leaves them off (see BENCHMARKS.md).
    from sidecar.adapters.events import KubernetesEvents

__all__ = ["App", "CheckResult"]

log = structlog.get_logger(__name__)


class _Observers:
    """Hands each observer call to several observers (metrics, Events)."""

    def __init__(self, *observers: RefreshObserver) -> None:
        self._observers = observers

    def refresh_finished(self, credential: str, outcome: str, seconds: float) -> None:
        for observer in self._observers:
            observer.refresh_finished(credential, outcome, seconds)

    def phase_changed(self, credential: str, old: str, new: str, reason: str | None) -> None:
        for observer in self._observers:
            observer.phase_changed(credential, old, new, reason)


@dataclass(frozen=True, slots=True)
class CheckResult:
    subject: str
    ok: bool
    detail: str


#: A credential's loop: the refresher for refresh tokens, a simpler one for client_credentials.
Loop = Refresher | ClientCredentialsLoop


class App:
    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.stop = asyncio.Event()
        #: credentials whose rotated token was still not in Vault when the grace ran out.
        self.abandoned: list[str] = []
        self.board = StatusBoard()
        self.metrics = Metrics(
            self.board, self.clock, ready_margin=settings.refresh.ready_margin_seconds
        )
        self.events: KubernetesEvents | None = None
        if settings.events.enabled:
            from sidecar.adapters.events import KubernetesEvents, PodRef  # noqa: PLC0415

            self.events = KubernetesEvents(  # PodRef raises ConfigError naming the missing env
                PodRef.from_environ(),
                on_result=self.metrics.event_result,
                queue_size=settings.events.queue_size,
                dedupe_seconds=settings.events.dedupe_seconds,
            )
        self.observer: RefreshObserver = (
            _Observers(self.metrics, self.events) if self.events is not None else self.metrics
        )
        self.vault = VaultSession(
            settings.vault,
            on_request=self.metrics.vault_request,
            on_lease=self.metrics.vault_token_lease,
            clock=self.clock,
        )
        self.http: httpx.AsyncClient = make_http_client(
            settings.http.ca_cert,
            settings.http.timeout_seconds,
            # A trust store costs megabytes; discovery may name an https endpoint.
            tls=any(
                c.issuer or (c.token_endpoint or "").startswith("https:")
                for c in settings.credentials
            ),
        )
        #: this process's name in claims: unique per process unless configured (see
        #: sidecar.coordination); the pod or host name keeps it readable.
        self.holder = settings.coordination.holder or claimant_identity(
            os.environ.get("POD_NAME") or socket.gethostname(), str(uuid.uuid4())
        )
        self.policy = refresh_policy(settings)
        self.endpoints: list[TokenEndpoint] = []
        self._notify_http: httpx.AsyncClient | None = None
        self.notifiers: list[NotifyLoop] = []
        self.refreshers: list[Loop] = [self._refresher(c) for c in settings.credentials]

    def _refresher(self, credential: CredentialConfig) -> Loop:
        status = self.board.add(
            credential.name,
            required=credential.required,
            grant=credential.grant,
            client_auth=credential.client_auth,
        )
        loops = self._notify_loops(credential)
        self.notifiers.extend(loops)

        def published(generation: int, expires_at: datetime, first: bool) -> None:
            self.metrics.token_published(credential.name, generation)
            change = Notification(credential.name, generation, expires_at)
            for loop in loops:
                loop.rotated(change, first=first)

        sink = FileSink(
            credential.output_dir,
            mode=credential.file_mode,
            group=credential.file_group,
            on_published=published,
        )
        store = self._store(credential)
        if credential.grant == "client_credentials":
            return ClientCredentialsLoop(
                store=store,
                exchanger=self._endpoint(credential),
                sink=sink,
                client=client_template(credential),
                status=status,
                clock=self.clock,
                stop=self.stop,
                policy=self.policy,
                observer=self.observer,
            )
        assert store is not None  # noqa: S101  # config requires kv_path for refresh_token
        journal_dir = self.settings.journal.dir
        return Refresher(
            store=store,
            exchanger=self._endpoint(credential),
            sink=sink,
            client=client_template(credential),
            status=status,
            clock=self.clock,
            stop=self.stop,
            holder=self.holder,
            policy=self.policy,
            observer=self.observer,
            journal=FileJournal(journal_dir, credential.name) if journal_dir else None,
        )

    def _notify_loops(self, credential: CredentialConfig) -> list[NotifyLoop]:
        """One loop per configured method: each retries on its own (a dead receiver of one
        method does not hold back another)."""
        notify = credential.notify
        if notify is None:
            return []
        senders: dict[str, NotifySender] = {}
        if notify.http is not None:
            if self._notify_http is None:
                # Loopback only: no proxy from the environment, no redirects.
                self._notify_http = httpx.AsyncClient(trust_env=False, follow_redirects=False)
            senders["http"] = HttpSender(
                notify.http.url, self._notify_http, notify.http.timeout_seconds
            )
        if notify.signal is not None:
            senders["signal"] = SignalSender(
                notify.signal.pid_file, signal.Signals[notify.signal.signal]
            )
        if notify.exec is not None:
            senders["exec"] = ExecSender(
                notify.exec.command,
                notify.exec.timeout_seconds,
                token_file=credential.output_dir / TOKEN_JSON_FILE,
            )
        policy = NotifyPolicy(
            min_interval=notify.min_interval_seconds,
            max_delay=notify.max_delay_seconds,
            # Retry-After means nothing here; the cap is the longest wait there is.
            backoff=BackoffPolicy(
                initial=1.0,
                maximum=notify.retry_max_seconds,
                max_retry_after=notify.retry_max_seconds,
            ),
        )
        loops = []
        for method, sender in senders.items():
            self.metrics.notify_channel(credential.name, method)
            loops.append(
                NotifyLoop(
                    credential=credential.name,
                    method=method,
                    sender=sender,
                    policy=policy,
                    clock=self.clock,
                    observer=self.metrics,
                )
            )
        return loops

    def _endpoint(self, credential: CredentialConfig) -> TokenEndpoint:
        endpoint = TokenEndpoint(
            credential,
            self.http,
            clock=self.clock,
            max_response_bytes=self.settings.http.max_response_bytes,
            ca_cert=self.settings.http.ca_cert,
        )
        self.endpoints.append(endpoint)
        return endpoint

    def _store(self, credential: CredentialConfig) -> VaultSecretStore | None:
        if credential.kv_path is None:
            return None
        return VaultSecretStore(
            self.vault,
            credential.kv_mount,
            credential.kv_path,
            needs_refresh_token=credential.grant == "refresh_token",
        )

    # -- run --------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the exit code."""
        server = HealthServer(
            self.settings.server.host,
            self.settings.server.port,
            board=self.board,
            metrics=self.metrics,
            clock=self.clock,
            ready_margin=self.settings.refresh.ready_margin_seconds,
        )
        await server.start()
        if self.events is not None:
            self.events.start()
        log.info(
            "sidecar.started",
            credentials=[r.name for r in self.refreshers],
            holder=self.holder,
            address=f"{self.settings.server.host}:{server.port}",
        )
        try:
            with self._signals():
                await self._supervise(lambda loop: loop.run(), notify=True)
        finally:
            await server.close()
            await self.close()
        log.info("sidecar.stopped")
        return 1 if self.abandoned else 0

    async def once(self) -> int:
        """One refresh per credential; 0 when every one succeeded, else 1."""
        failed: list[str] = []

        async def one(refresher: Loop) -> None:
            try:
                await refresher.once()
            except SidecarError as exc:
                failed.append(refresher.name)
                log.error(
                    "once.failed", credential=refresher.name, error=exc.kind, message=exc.message
                )

        if self.events is not None:
            self.events.start()
        try:
            with self._signals():
                await self._supervise(one, stop_when_done=True)
        finally:
            await self.close()
        return 1 if failed or self.abandoned else 0

    async def _supervise(
        self,
        work: Callable[[Loop], Coroutine[Any, Any, None]],
        *,
        stop_when_done: bool = False,
        notify: bool = False,
    ) -> None:
        """One task per credential in one task group, plus the shutdown grace keeper and,
        for ``run``, one task per notification method (``once`` tells nobody: it exits)."""
        async with asyncio.TaskGroup() as group:
            workers = [
                group.create_task(work(r), name=f"refresher:{r.name}") for r in self.refreshers
            ]
            group.create_task(self._enforce_grace(workers), name="grace")
            if notify and self.notifiers:
                for loop in self.notifiers:
                    group.create_task(loop.run(), name=f"notify:{loop.credential}:{loop.method}")
                group.create_task(self._close_notifiers(workers), name="notify-close")
            if stop_when_done:
                group.create_task(self._stop_when_done(workers), name="done")

    async def _close_notifiers(self, workers: list[asyncio.Task[None]]) -> None:
        """Notifications end with the refreshers: after stop, nothing new is published."""
        await asyncio.gather(*workers, return_exceptions=True)
        for loop in self.notifiers:
            loop.close()

    async def _stop_when_done(self, workers: list[asyncio.Task[None]]) -> None:
        await asyncio.gather(*workers, return_exceptions=True)
        self.stop.set()

    async def _enforce_grace(self, workers: list[asyncio.Task[None]]) -> None:
        """After stop, give pending write-backs the grace period, then cancel what is left."""
        await self.stop.wait()
        grace = self.settings.refresh.shutdown_grace_seconds
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await asyncio.gather(*workers, return_exceptions=True)
            return
        pending = [n for n, s in self.board.credentials.items() if s.writeback_pending]
        self.abandoned = pending
        log.critical("shutdown.grace_expired", writeback_pending=pending, grace=grace)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()

        def request_stop(signame: str) -> None:
            if not self.stop.is_set():
                log.info("sidecar.stopping", signal=signame)
            self.stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, request_stop, sig.name)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def close(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.aclose()
        await self.http.aclose()
        if self._notify_http is not None:
            await self._notify_http.aclose()
        await self.vault.aclose()
        if self.events is not None:
            await asyncio.to_thread(self.events.close)

    # -- check ------------------------------------------------------------------------

    async def check(self) -> list[CheckResult]:
        """Log in, read every secret, reach every endpoint, look at every output directory.

        Exchanges nothing and changes nothing: no directory is created, no file removed.
        """
        results: list[CheckResult] = []
        auth = self.settings.vault.auth
        if any(c.kv_path is not None for c in self.settings.credentials):
            try:
                await self.vault.login()
            except SidecarError as exc:
                results.append(CheckResult("vault", ok=False, detail=exc.message))
                results.extend(self._check_journal())
                await self.close()
                return results
            results.append(
                CheckResult(
                    "vault",
                    ok=True,
                    detail=f"logged in with {auth.method} at auth/{auth.mount_path}",
                )
            )
        for credential in self.settings.credentials:
            results += await self._check_credential(credential)
        results.extend(self._check_journal())
        await self.close()
        return results

    def _check_journal(self) -> list[CheckResult]:
        """Whether ``journal.dir`` can be used, by inspection: nothing is created."""
        journal_dir = self.settings.journal.dir
        if journal_dir is None:
            return []
        problem = unusable_reason(journal_dir)
        detail = f"journal.dir: {problem}" if problem else f"{journal_dir} usable"
        return [CheckResult("journal", ok=problem is None, detail=detail)]

    async def _check_credential(self, credential: CredentialConfig) -> list[CheckResult]:
        subject = f"credential {credential.name}"
        results: list[CheckResult] = []
        client = None
        try:
            store = self._store(credential)
            secret: StoredSecret | None = None
            if store is not None:
                secret = await store.read()
            client = client_credentials(client_template(credential), secret)
            detail = (
                f"secret {secret.location} v{secret.version}"
                if secret is not None
                else "client credentials from configuration and files"
            )
            results.append(CheckResult(subject, ok=True, detail=detail))
        except SidecarError as exc:
            results.append(CheckResult(subject, ok=False, detail=exc.message))
        endpoint = self._endpoint(credential)
        target = credential.issuer or credential.token_endpoint
        try:
            await endpoint.probe(client)
            certificate = " with the client certificate" if client and client.certificate else ""
            results.append(CheckResult(subject, ok=True, detail=f"reached {target}{certificate}"))
        except SidecarError as exc:
            results.append(CheckResult(subject, ok=False, detail=exc.message))
        try:
            found = FileSink(credential.output_dir, mode=credential.file_mode).check()
            results.append(CheckResult(subject, ok=True, detail=found))
        except SidecarError as exc:
            results.append(CheckResult(subject, ok=False, detail=exc.message))
        return results

"""Kubernetes Events on the pod for final failures and recoveries, so ``kubectl describe pod``
shows them. Optional and off by default (``events.enabled``).

:class:`KubernetesEvents` is a :class:`~sidecar.ports.RefreshObserver`. Of the phase changes
it is told about, three become an Event (``core/v1``, ``involvedObject`` = this pod):

=========================  ========  =====================================================
phase change               type      reason
=========================  ========  =====================================================
any -> ``rejected``        Warning   ``RefreshTokenRejected``
any -> ``failed``          Warning   ``RefreshFailed``
``rejected``, ``failed``,  Normal    ``TokenRecovered``
``retrying`` -> ``valid``
=========================  ========  =====================================================

Messages name the credential and an error *kind* only (a fixed word from the error tree, such
as ``invalid_grant``); anything else in place of a kind is replaced by ``error``, so no token,
secret or server message can reach the API server (R5).

The refresh loop is never blocked: :meth:`KubernetesEvents.phase_changed` only puts the Event
on a bounded queue, and one background thread sends it. An identical Event (same credential,
reason and message) is sent at most once per ``dedupe_seconds``. Every Event ends as
``sent``, ``failed`` (logged as ``events.emit_failed``), ``dropped`` (queue full) or
``suppressed`` (duplicate), reported to ``on_result(reason, outcome)`` for the metric
``token_sidecar_events_total``; nothing is ever raised to the caller.

The ``kubernetes`` client library (extra ``token-sidecar[kubernetes]``) is imported only in
the background thread, so nothing loads it unless Events are enabled. The pod is identified by
the downward-API environment variables ``POD_NAME``, ``POD_NAMESPACE`` and ``POD_UID``; RBAC:
``create`` on ``events`` (core API group) in the pod's namespace.
"""

from __future__ import annotations

import importlib
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import structlog

from sidecar.errors import ConfigError, SidecarError

__all__ = [
    "COMPONENT",
    "EventPlan",
    "EventsApi",
    "KubernetesEvents",
    "PodRef",
    "in_cluster_api",
    "plan_event",
    "safe_kind",
]

log = structlog.get_logger(__name__)

COMPONENT: Final = "token-sidecar"
SERVICE_ACCOUNT_NAMESPACE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_RECOVERABLE: Final = frozenset({"rejected", "failed", "retrying"})
_MAX_NAME: Final = 253


@dataclass(frozen=True, slots=True)
class PodRef:
    """The pod the Events are about (downward API)."""

    name: str
    namespace: str
    uid: str | None = None

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str] | None = None,
        namespace_file: Path = SERVICE_ACCOUNT_NAMESPACE,
    ) -> PodRef:
        """Read ``POD_NAME``, ``POD_NAMESPACE`` (else the service account's namespace file)
        and ``POD_UID``; raise ConfigError naming what is missing."""
        env = os.environ if environ is None else environ
        name = env.get("POD_NAME", "").strip()
        namespace = env.get("POD_NAMESPACE", "").strip()
        if not namespace:
            try:
                namespace = namespace_file.read_text(encoding="utf-8").strip()
            except OSError:
                namespace = ""
        problems = []
        if not name:
            problems.append(
                "events.enabled: needs the POD_NAME environment variable (downward API)"
            )
        if not namespace:
            problems.append(
                "events.enabled: needs the POD_NAMESPACE environment variable (downward API)"
            )
        if problems:
            raise ConfigError(problems)
        return cls(name=name, namespace=namespace, uid=env.get("POD_UID", "").strip() or None)


@dataclass(frozen=True, slots=True)
class EventPlan:
    """One Event to send: what ``kubectl describe pod`` will show."""

    credential: str
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def _known_kinds() -> set[str]:
    kinds: set[str] = set()
    pending: list[type[SidecarError]] = [SidecarError]
    while pending:
        cls = pending.pop()
        kinds.add(cls.kind)
        pending.extend(cls.__subclasses__())
    return kinds


def safe_kind(reason: str | None) -> str:
    """``reason`` if it is the ``kind`` of an error class, else ``error``: never free text."""
    return reason if reason is not None and reason in _known_kinds() else "error"


def plan_event(
    credential: str, old: str, new: str, reason: str | None, last_failure: str | None = None
) -> EventPlan | None:
    """The Event a phase change deserves, if any (a pure decision).

    ``last_failure`` is the kind that moved the credential out of ``valid`` last time, for
    the recovery message.
    """
    if new == "rejected":
        kind = safe_kind(reason or "invalid_grant")
        served = (
            "no access token was published yet"
            if old == "starting"
            else "the current access token is served until it expires"
        )
        return EventPlan(
            credential,
            "Warning",
            "RefreshTokenRejected",
            f"credential {credential}: the authorization server rejected the refresh token "
            f"({kind}); {served}. Re-seed the refresh token in Vault; the sidecar picks it up "
            "by itself.",
        )
    if new == "failed":
        return EventPlan(
            credential,
            "Warning",
            "RefreshFailed",
            f"credential {credential}: refreshing stopped on a final error ({safe_kind(reason)});"
            " it is tried again only every secret_poll_seconds. Check the configuration, the "
            "client registration and the Vault policy.",
        )
    if new == "valid" and old in _RECOVERABLE:
        after = f"{old}, last error {safe_kind(last_failure)}" if last_failure else old
        return EventPlan(
            credential,
            "Normal",
            "TokenRecovered",
            f"credential {credential}: a fresh access token is published again (was {after}).",
        )
    return None


class EventsApi(Protocol):
    """The one call of ``kubernetes.client.CoreV1Api`` this adapter makes."""

    def create_namespaced_event(
        self, namespace: str, body: Any, *, _request_timeout: float
    ) -> Any: ...


def in_cluster_api() -> EventsApi:
    """A ``CoreV1Api`` with the pod's service account (imports ``kubernetes`` now)."""
    config = importlib.import_module("kubernetes.config")
    client = importlib.import_module("kubernetes.client")
    config.load_incluster_config()
    api: EventsApi = client.CoreV1Api()
    return api


def _event_name(pod: str, now: float, serial: int) -> str:
    # As client-go's recorder names them: the object's name and a unique hex suffix.
    suffix = f".{int(now * 1e9):x}{serial:x}"
    return pod[: _MAX_NAME - len(suffix)] + suffix


def _event_body(plan: EventPlan, pod: PodRef, now: float, serial: int, node: str | None) -> Any:
    client = importlib.import_module("kubernetes.client")
    stamp = datetime.fromtimestamp(int(now), tz=UTC)
    return client.CoreV1Event(
        api_version="v1",
        kind="Event",
        metadata=client.V1ObjectMeta(
            name=_event_name(pod.name, now, serial), namespace=pod.namespace
        ),
        involved_object=client.V1ObjectReference(
            api_version="v1", kind="Pod", name=pod.name, namespace=pod.namespace, uid=pod.uid
        ),
        type=plan.type,
        reason=plan.reason,
        message=plan.message,
        action="Refresh",
        count=1,
        first_timestamp=stamp,
        last_timestamp=stamp,
        source=client.V1EventSource(component=COMPONENT, host=node),
        reporting_component=COMPONENT,
        reporting_instance=pod.name,
    )


_Item = tuple[EventPlan, float] | None


class KubernetesEvents:
    """Sends Events for final failures and recoveries from a background thread.

    ``api_factory`` builds the API client in that thread on first use (default: in-cluster
    configuration). Call :meth:`start` once before use and :meth:`close` at shutdown.
    """

    def __init__(
        self,
        pod: PodRef,
        *,
        api_factory: Callable[[], EventsApi] = in_cluster_api,
        on_result: Callable[[str, str], None] | None = None,
        queue_size: int = 32,
        dedupe_seconds: float = 600.0,
        request_timeout: float = 5.0,
        node_name: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._pod = pod
        self._api_factory = api_factory
        self._on_result = on_result
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=queue_size)
        self._dedupe = dedupe_seconds
        self._timeout = request_timeout
        self._node = node_name if node_name is not None else os.environ.get("NODE_NAME") or None
        self._monotonic = monotonic
        self._wall = wall
        self._sent_at: dict[tuple[str, str, str], float] = {}
        self._last_failure: dict[str, str] = {}
        self._serial = itertools.count()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kubernetes-events", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued within ``timeout`` seconds, then stop the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.warning("events.close_timeout", queued=self._queue.qsize())
            return
        thread.join(timeout)

    # -- RefreshObserver ----------------------------------------------------------------------

    def refresh_finished(self, credential: str, outcome: str, seconds: float) -> None:
        """Individual attempts are for metrics; Events report phase changes only."""

    def phase_changed(self, credential: str, old: str, new: str, reason: str | None) -> None:
        """Queue the Event this change deserves; returns at once and never raises."""
        try:
            self._phase_changed(credential, old, new, reason)
        except Exception as exc:  # noqa: BLE001  # an observer must never break the loop
            log.error("events.emit_failed", credential=credential, error=type(exc).__name__)

    def _phase_changed(self, credential: str, old: str, new: str, reason: str | None) -> None:
        plan = plan_event(credential, old, new, reason, self._last_failure.get(credential))
        if new in _RECOVERABLE and reason is not None:
            self._last_failure[credential] = safe_kind(reason)
        elif new == "valid":
            self._last_failure.pop(credential, None)
        if plan is None:
            return
        key = (plan.credential, plan.reason, plan.message)
        now = self._monotonic()
        sent = self._sent_at.get(key)
        if sent is not None and now - sent < self._dedupe:
            log.debug("events.suppressed", credential=credential, reason=plan.reason)
            self._report(plan.reason, "suppressed")
            return
        try:
            self._queue.put_nowait((plan, self._wall()))
        except queue.Full:
            log.warning("events.dropped", credential=credential, reason=plan.reason)
            self._report(plan.reason, "dropped")
            return
        self._sent_at[key] = now

    # -- background thread ----------------------------------------------------------------------

    def _run(self) -> None:
        api: EventsApi | None = None
        try:
            while (item := self._queue.get()) is not None:
                plan, when = item
                try:
                    if api is None:
                        api = self._api_factory()
                    body = _event_body(plan, self._pod, when, next(self._serial), self._node)
                    api.create_namespaced_event(
                        self._pod.namespace, body, _request_timeout=self._timeout
                    )
                except Exception as exc:  # noqa: BLE001  # logged and counted, never raised
                    # Type and HTTP status only: an API error's text may echo request data.
                    log.warning(
                        "events.emit_failed",
                        credential=plan.credential,
                        reason=plan.reason,
                        error=type(exc).__name__,
                        status=getattr(exc, "status", None),
                    )
                    self._report(plan.reason, "failed")
                else:
                    log.info("events.emitted", credential=plan.credential, reason=plan.reason)
                    self._report(plan.reason, "sent")
        finally:
            api_client = getattr(api, "api_client", None)
            close = getattr(api_client, "close", None)
            if callable(close):
                close()

    def _report(self, reason: str, outcome: str) -> None:
        if self._on_result is not None:
            try:
                self._on_result(reason, outcome)
            except Exception as exc:  # noqa: BLE001  # a metrics hook must not stop Events
                log.error("events.report_failed", error=type(exc).__name__)

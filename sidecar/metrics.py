"""Prometheus metrics in the sidecar's own registry.

Names are a public contract (the shipped alert rules, the dashboard and users' queries use
them); add freely, rename never. ``docs/metrics.md`` is the catalogue. Every per-credential
series carries ``credential``, the configured name; no label value is ever derived from a
token, a secret or a response.

Events (updated as they happen, through :class:`~sidecar.ports.RefreshObserver`, the Vault
adapter's callbacks and the Kubernetes Events adapter's callback):

* ``token_sidecar_refresh_total{credential,outcome}``: refresh attempts by outcome,
  ``success`` or an error ``kind`` (``invalid_grant``, ``endpoint_unavailable``, ...);
* ``token_sidecar_refresh_duration_seconds{credential}``: how long attempts took;
* ``token_sidecar_vault_requests_total{operation,outcome}`` and
  ``token_sidecar_vault_last_success_timestamp_seconds{operation}``;
* ``token_sidecar_vault_token_expiry_timestamp_seconds``, once the Vault adapter reports it;
* ``token_sidecar_events_total{reason,outcome}``: Kubernetes Events sent, failed, dropped;
* ``token_sidecar_token_generation{credential}``: the ``generation`` in ``token.json``;
* ``token_sidecar_notify_total{credential,method,outcome}``,
  ``token_sidecar_notify_acknowledged_generation{credential,method}`` and
  ``token_sidecar_notify_consecutive_failures{credential,method}``: telling the app.

State (computed from the :class:`~sidecar.status.StatusBoard` at scrape time, so a scrape
always agrees with ``/healthz``):

* ``token_sidecar_access_token_expiry_timestamp_seconds{credential}``,
  ``..._expires_in_seconds`` and ``token_sidecar_access_token_issued_timestamp_seconds``;
* ``token_sidecar_last_refresh_success_timestamp_seconds{credential}`` and
  ``token_sidecar_last_refresh_attempt_timestamp_seconds{credential}``;
* ``token_sidecar_refresh_token_expiry_timestamp_seconds{credential}`` and
  ``..._expires_in_seconds``, when the server said;
* ``token_sidecar_refresh_token_obtained_timestamp_seconds{credential}`` and
  ``token_sidecar_refresh_token_age_seconds{credential}``, when known;
* ``token_sidecar_writeback_pending{credential}``, ``token_sidecar_ready{credential}``,
  ``token_sidecar_consecutive_failures{credential}``, ``token_sidecar_secret_version{credential}``;
* ``token_sidecar_state{credential,state}``: 1 for the credential's current phase, 0 otherwise;
* ``token_sidecar_token_valid{credential}``: 1 while the published token is unexpired (the
  token-availability SLI samples it), and ``token_sidecar_credential_required{credential}``;
* ``token_sidecar_credential_info{credential,grant,client_auth}``: always 1, to join on;
* ``token_sidecar_build_info{version}``: always 1.

Series whose value is unknown (no token yet) are left out rather than reported as 0, which
would read as "expired in 1970".
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from sidecar import __version__
from sidecar.ports import Clock
from sidecar.status import CredentialStatus, Phase, StatusBoard

__all__ = ["DURATION_BUCKETS", "PREFIX", "VAULT_OPERATIONS", "Metrics"]

PREFIX = "token_sidecar_"
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.3, 0.5, 1, 2.5, 5, 10, 30)
"""From a loopback refresh (about 2 ms) to the longest timeout worth waiting for; 0.3 is the
refresh-latency SLO's default threshold (the SLO rules read the bucket ``le="0.3"``)."""

VAULT_OPERATIONS = ("login", "lookup", "renew", "read", "write")
"""The Vault operations whose last success is exported; others are counted only."""

_SAMPLES: dict[str, tuple[str, Callable[[CredentialStatus, float], float | None]]] = {
    # family key: (help text, value from the status and the wall time; None leaves it out)
    "access_token_expiry_timestamp_seconds": (
        "When the published access token expires (Unix time).",
        lambda s, now: s.expires_at,
    ),
    "access_token_expires_in_seconds": (
        "Seconds until the published access token expires; negative once expired.",
        lambda s, now: None if s.expires_at is None else s.expires_at - now,
    ),
    "access_token_issued_timestamp_seconds": (
        "When the published access token was requested (Unix time).",
        lambda s, now: s.issued_at,
    ),
    "last_refresh_success_timestamp_seconds": (
        "When the last refresh succeeded (Unix time).",
        lambda s, now: s.last_success_at,
    ),
    "last_refresh_attempt_timestamp_seconds": (
        "When the last refresh attempt started (Unix time).",
        lambda s, now: s.last_attempt_at,
    ),
    "refresh_token_expiry_timestamp_seconds": (
        "When the refresh token expires (Unix time), if the server said.",
        lambda s, now: s.refresh_token_expires_at,
    ),
    "refresh_token_expires_in_seconds": (
        "Seconds until the refresh token expires, if the server said; negative once expired.",
        lambda s, now: (
            None if s.refresh_token_expires_at is None else s.refresh_token_expires_at - now
        ),
    ),
    "refresh_token_obtained_timestamp_seconds": (
        "When the refresh token in use was obtained (Unix time), if known.",
        lambda s, now: s.refresh_token_obtained_at,
    ),
    "refresh_token_age_seconds": (
        "Seconds since the refresh token in use was obtained, if known.",
        lambda s, now: (
            None if s.refresh_token_obtained_at is None else now - s.refresh_token_obtained_at
        ),
    ),
    "writeback_pending": (
        "1 while a rotated refresh token is held in memory and not yet in Vault.",
        lambda s, now: float(s.writeback_pending),
    ),
    "consecutive_failures": (
        "Failed refresh attempts since the last success.",
        lambda s, now: float(s.consecutive_failures),
    ),
    "secret_version": (
        "KV v2 version of the credential's secret as last read or written.",
        lambda s, now: None if s.secret_version is None else float(s.secret_version),
    ),
}


class _StatusCollector:
    """Gauges read from the status board whenever Prometheus scrapes."""

    def __init__(self, board: StatusBoard, clock: Clock, ready_margin: float) -> None:
        self._board = board
        self._clock = clock
        self._ready_margin = ready_margin

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        families = {
            key: GaugeMetricFamily(PREFIX + key, doc, labels=["credential"])
            for key, (doc, _) in _SAMPLES.items()
        }
        families["ready"] = GaugeMetricFamily(
            PREFIX + "ready",
            "1 while the published token is valid for its ready margin and the loop is on "
            "schedule, the test /readyz makes.",
            labels=["credential"],
        )
        families["token_valid"] = GaugeMetricFamily(
            PREFIX + "token_valid",
            "1 while the published access token is unexpired, 0 before the first and after expiry.",
            labels=["credential"],
        )
        families["credential_required"] = GaugeMetricFamily(
            PREFIX + "credential_required",
            "1 when the credential is required (counts towards /readyz and token availability).",
            labels=["credential"],
        )
        families["state"] = GaugeMetricFamily(
            PREFIX + "state",
            "1 for the credential's current state, 0 for the others.",
            labels=["credential", "state"],
        )
        families["credential_info"] = GaugeMetricFamily(
            PREFIX + "credential_info",
            "The credential's grant and client authentication method; always 1.",
            labels=["credential", "grant", "client_auth"],
        )
        return families

    def describe(self) -> Iterator[Metric]:
        yield from self._families().values()

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        now = self._clock.time()
        # A copy: the board may gain entries while a scrape runs on another thread.
        for name, status in list(self._board.credentials.items()):
            for key, (_, read) in _SAMPLES.items():
                sample = read(status, now)
                if sample is not None and math.isfinite(sample):
                    families[key].add_metric([name], sample)
            ready = status.ready(now, self._ready_margin, self._clock.monotonic())
            families["ready"].add_metric([name], float(ready))
            valid = status.expires_at is not None and status.expires_at > now
            families["token_valid"].add_metric([name], float(valid))
            families["credential_required"].add_metric([name], float(status.required))
            for phase in Phase:
                families["state"].add_metric([name, phase.value], float(status.phase is phase))
            families["credential_info"].add_metric([name, status.grant, status.client_auth], 1.0)
        yield from families.values()


class _VaultTokenCollector:
    """The Vault token's expiry, exported only once the Vault adapter has reported one."""

    def __init__(self) -> None:
        self.expires_at: float | None = None

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            PREFIX + "vault_token_expiry_timestamp_seconds",
            "When the sidecar's Vault token expires (Unix time); absent if it never expires.",
        )

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        expires_at = self.expires_at
        if expires_at is not None and math.isfinite(expires_at):
            family.add_metric([], expires_at)
        yield family


class Metrics:
    """Every metric the sidecar exposes, in a registry of its own (never the global one).

    ``clock`` gives the wall time of scrapes and successes. For every credential on the board, the
    ``success`` and duration series exist at zero from the first scrape on, so that ``rate()``
    and absence alerts work before anything happened; credentials added to the board after
    construction get theirs at the next :meth:`render`. ``ready_margin`` should be the one
    ``/readyz`` uses, so that ``token_sidecar_ready`` agrees with it.

    The callbacks (:meth:`refresh_finished`, :meth:`vault_request`, :meth:`vault_token_lease`,
    :meth:`event_result`) are safe to call from any thread.
    """

    def __init__(
        self,
        board: StatusBoard,
        clock: Clock,
        *,
        ready_margin: float,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._time = clock.time
        self._refreshes = Counter(
            PREFIX + "refresh",
            "Refresh attempts by outcome: success or the error kind.",
            ["credential", "outcome"],
            registry=self.registry,
        )
        self._durations = Histogram(
            PREFIX + "refresh_duration_seconds",
            "How long refresh attempts took, whatever their outcome.",
            ["credential"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._vault_requests = Counter(
            PREFIX + "vault_requests",
            "Requests to Vault by operation and outcome.",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self._vault_last_success = Gauge(
            PREFIX + "vault_last_success_timestamp_seconds",
            "When a Vault request of this operation last succeeded (Unix time).",
            ["operation"],
            registry=self.registry,
        )
        self._vault_token = _VaultTokenCollector()
        self.registry.register(self._vault_token)
        self._events = Counter(
            PREFIX + "events",
            "Kubernetes Events by reason and outcome: sent, failed, dropped or suppressed.",
            ["reason", "outcome"],
            registry=self.registry,
        )
        self._generation = Gauge(
            PREFIX + "token_generation",
            "The generation in token.json: one more for every new access token.",
            ["credential"],
            registry=self.registry,
        )
        self._notify = Counter(
            PREFIX + "notify",
            "Notifications of a new token to the app by method and outcome.",
            ["credential", "method", "outcome"],
            registry=self.registry,
        )
        self._notify_acknowledged = Gauge(
            PREFIX + "notify_acknowledged_generation",
            "The newest token generation the app acknowledged, by method.",
            ["credential", "method"],
            registry=self.registry,
        )
        self._notify_failures = Gauge(
            PREFIX + "notify_consecutive_failures",
            "Failed notification attempts since the last success, by method.",
            ["credential", "method"],
            registry=self.registry,
        )
        build_info = Gauge(
            PREFIX + "build_info",
            "The running version; always 1.",
            ["version"],
            registry=self.registry,
        )
        build_info.labels(__version__).set(1)
        self.registry.register(_StatusCollector(board, clock, ready_margin))
        self._board = board
        self._initialised: set[str] = set()
        self._lock = threading.Lock()
        self._initialise_series()

    def _initialise_series(self) -> None:
        with self._lock:
            for name in list(self._board.credentials):
                if name not in self._initialised:
                    self._refreshes.labels(name, "success")
                    self._durations.labels(name)
                    self._initialised.add(name)

    def refresh_finished(self, credential: str, outcome: str, seconds: float) -> None:
        """Count one refresh attempt (``outcome`` is ``success`` or an error kind)."""
        self._refreshes.labels(credential, outcome).inc()
        self._durations.labels(credential).observe(max(seconds, 0.0))

    def phase_changed(self, credential: str, old: str, new: str, reason: str | None) -> None:
        """Phases are exported from the status at scrape time; nothing to count here."""

    def vault_request(self, operation: str, outcome: str) -> None:
        """Count one Vault request (``login``, ``read``, ``write`` ...; ``success`` or a kind)."""
        self._vault_requests.labels(operation, outcome).inc()
        if outcome == "success" and operation in VAULT_OPERATIONS:
            self._vault_last_success.labels(operation).set(self._time())

    def vault_token_lease(self, expires_at: float | None) -> None:
        """The Vault token now in use expires at ``expires_at`` (wall clock; None: never)."""
        self._vault_token.expires_at = expires_at

    def event_result(self, reason: str, outcome: str) -> None:
        """Count one Kubernetes Event (``sent``, ``failed``, ``dropped`` or ``suppressed``)."""
        self._events.labels(reason, outcome).inc()

    def token_published(self, credential: str, generation: int) -> None:
        """A new access token (``generation``) is in the credential's files."""
        self._generation.labels(credential).set(generation)

    def notify_channel(self, credential: str, method: str) -> None:
        """A notification method is configured: its series exist from the first scrape."""
        self._notify.labels(credential, method, "success")
        self._notify_failures.labels(credential, method).set(0)

    def notify_finished(
        self, credential: str, method: str, outcome: str, acknowledged: int, failures: int
    ) -> None:
        """Count one notification attempt (``success`` or a NotifyFailed kind)."""
        self._notify.labels(credential, method, outcome).inc()
        self._notify_acknowledged.labels(credential, method).set(acknowledged)
        self._notify_failures.labels(credential, method).set(failures)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, for ``GET /metrics``."""
        self._initialise_series()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

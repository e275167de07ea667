"""Prometheus metrics in the sidecar's own registry.

Names are a public contract (alert rules and dashboards use them); add freely, rename never.
Every per-credential series carries ``credential``, the configured name, never a token.

Events (updated as they happen, through :class:`~sidecar.ports.RefreshObserver` and the Vault
adapter's callback):

* ``token_sidecar_refresh_total{credential,outcome}``: refresh attempts by outcome,
  ``success`` or an error ``kind`` (``invalid_grant``, ``endpoint_unavailable``, ...);
* ``token_sidecar_refresh_duration_seconds{credential}``: how long attempts took;
* ``token_sidecar_vault_requests_total{operation,outcome}``.

State (computed from the :class:`~sidecar.status.StatusBoard` at scrape time, so a scrape
always agrees with ``/healthz``):

* ``token_sidecar_access_token_expiry_timestamp_seconds{credential}`` and
  ``token_sidecar_access_token_expires_in_seconds{credential}``;
* ``token_sidecar_last_refresh_success_timestamp_seconds{credential}``;
* ``token_sidecar_refresh_token_expiry_timestamp_seconds{credential}``, when the server said;
* ``token_sidecar_writeback_pending{credential}``, ``token_sidecar_ready{credential}``,
  ``token_sidecar_consecutive_failures{credential}``;
* ``token_sidecar_state{credential,state}``: 1 for the credential's current phase, 0 otherwise;
* ``token_sidecar_build_info{version}``: always 1.

Series whose value is unknown (no token yet) are left out rather than reported as 0, which
would read as "expired in 1970".
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from sidecar import __version__
from sidecar.status import Phase, StatusBoard

__all__ = ["DURATION_BUCKETS", "PREFIX", "Metrics"]

PREFIX = "token_sidecar_"
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
"""From a loopback refresh (about 2 ms) to the longest timeout worth waiting for."""


class _StatusCollector:
    """Gauges read from the status board whenever Prometheus scrapes."""

    def __init__(self, board: StatusBoard, time: Callable[[], float], ready_margin: float) -> None:
        self._board = board
        self._time = time
        self._ready_margin = ready_margin

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        def gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, labels=["credential", *labels])

        return {
            "expiry": gauge(
                "access_token_expiry_timestamp_seconds",
                "When the published access token expires (Unix time).",
            ),
            "expires_in": gauge(
                "access_token_expires_in_seconds",
                "Seconds until the published access token expires; negative once expired.",
            ),
            "last_success": gauge(
                "last_refresh_success_timestamp_seconds",
                "When the last refresh succeeded (Unix time).",
            ),
            "refresh_expiry": gauge(
                "refresh_token_expiry_timestamp_seconds",
                "When the refresh token expires (Unix time), if the server said.",
            ),
            "writeback": gauge(
                "writeback_pending",
                "1 while a rotated refresh token is held in memory and not yet in Vault.",
            ),
            "failures": gauge(
                "consecutive_failures",
                "Failed refresh attempts since the last success.",
            ),
            "ready": gauge(
                "ready",
                "1 while the published token is valid for at least the ready margin.",
            ),
            "state": gauge(
                "state",
                "1 for the credential's current state, 0 for the others.",
                "state",
            ),
        }

    def describe(self) -> Iterator[Metric]:
        yield from self._families().values()

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        now = self._time()
        # A copy: the board may gain entries while a scrape runs on another thread.
        for name, status in list(self._board.credentials.items()):
            label = [name]
            if status.expires_at is not None:
                families["expiry"].add_metric(label, status.expires_at)
                families["expires_in"].add_metric(label, status.expires_at - now)
            if status.last_success_at is not None:
                families["last_success"].add_metric(label, status.last_success_at)
            if status.refresh_token_expires_at is not None:
                families["refresh_expiry"].add_metric(label, status.refresh_token_expires_at)
            families["writeback"].add_metric(label, float(status.writeback_pending))
            families["failures"].add_metric(label, status.consecutive_failures)
            families["ready"].add_metric(label, float(status.ready(now, self._ready_margin)))
            for phase in Phase:
                families["state"].add_metric([name, phase.value], float(status.phase is phase))
        yield from families.values()


class Metrics:
    """Every metric the sidecar exposes, in a registry of its own (never the global one).

    ``time`` is the wall clock (``Clock.time``). For every credential on the board, the
    ``success`` and duration series exist at zero from the first scrape on, so that ``rate()``
    and absence alerts work before anything happened; credentials added to the board after
    construction get theirs at the next :meth:`render`. ``ready_margin`` should be the one
    ``/readyz`` uses, so that ``token_sidecar_ready`` agrees with it.
    """

    def __init__(
        self,
        board: StatusBoard,
        time: Callable[[], float] = _time.time,
        *,
        ready_margin: float = 5.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
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
        build_info = Gauge(
            PREFIX + "build_info",
            "The running version; always 1.",
            ["version"],
            registry=self.registry,
        )
        build_info.labels(__version__).set(1)
        self.registry.register(_StatusCollector(board, time, ready_margin))
        self._board = board
        self._initialised: set[str] = set()
        self._initialise_series()

    def _initialise_series(self) -> None:
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

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, for ``GET /metrics``."""
        self._initialise_series()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

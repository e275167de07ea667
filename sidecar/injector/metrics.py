"""The injector's Prometheus metrics, in a registry of its own (``/metrics`` on the health port).

* ``token_sidecar_injector_admissions_total{decision}``: reviews answered, by decision
  (``injected``, ``skipped``, ``denied``);
* ``token_sidecar_injector_injections_total{namespace}`` and
  ``token_sidecar_injector_denials_total{namespace}``: pods injected and pods denied, by
  namespace (a denial is a pod that did not start: alert on its rate);
* ``token_sidecar_injector_bad_requests_total{reason}``: requests answered 400
  (``content_type``, ``empty_body``, ``not_json``, ``not_admission_review``);
* ``token_sidecar_injector_admission_duration_seconds``: time to decide, body parsed to answer;
* ``token_sidecar_injector_certificate_expiry_timestamp_seconds``: the served certificate's
  ``notAfter``; ``token_sidecar_injector_certificate_loads_total{outcome}``;
* ``token_sidecar_injector_build_info{version}``: always 1.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from sidecar import __version__
from sidecar.injector.review import Outcome

__all__ = ["BAD_REQUEST_REASONS", "InjectorMetrics"]

_P = "token_sidecar_injector_"
BAD_REQUEST_REASONS = ("content_type", "empty_body", "not_json", "not_admission_review")


class InjectorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.admissions = Counter(
            f"{_P}admissions_total", "Admission reviews answered.", ["decision"], registry=r
        )
        self.injections = Counter(
            f"{_P}injections_total", "Pods injected with the sidecar.", ["namespace"], registry=r
        )
        self.denials = Counter(
            f"{_P}denials_total", "Pods denied for bad annotations.", ["namespace"], registry=r
        )
        self.bad_requests = Counter(
            f"{_P}bad_requests_total", "Requests answered 400.", ["reason"], registry=r
        )
        self.duration = Histogram(
            f"{_P}admission_duration_seconds",
            "Time to decide one admission review.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=r,
        )
        self.certificate_expiry = Gauge(
            f"{_P}certificate_expiry_timestamp_seconds",
            "notAfter of the served TLS certificate.",
            registry=r,
        )
        self.certificate_loads = Counter(
            f"{_P}certificate_loads_total",
            "Certificate loads: at start and after each change on disk.",
            ["outcome"],
            registry=r,
        )
        Gauge(f"{_P}build_info", "The injector's version.", ["version"], registry=r).labels(
            __version__
        ).set(1)
        for decision in ("injected", "skipped", "denied"):
            self.admissions.labels(decision)
        for reason in BAD_REQUEST_REASONS:
            self.bad_requests.labels(reason)

    def observe(self, outcome: Outcome, seconds: float) -> None:
        self.admissions.labels(outcome.decision).inc()
        if outcome.decision == "injected":
            self.injections.labels(outcome.namespace).inc()
        elif outcome.decision == "denied":
            self.denials.labels(outcome.namespace).inc()
        self.duration.observe(seconds)

    def certificate_loaded(self, ok: bool, not_after: float | None) -> None:
        self.certificate_loads.labels("success" if ok else "failure").inc()
        if ok and not_after is not None:
            self.certificate_expiry.set(not_after)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

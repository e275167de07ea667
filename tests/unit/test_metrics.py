"""Metrics: the public families, scrape-time gauges, and an exposition Prometheus can parse."""

from __future__ import annotations

import prometheus_client
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from sidecar import __version__
from sidecar.metrics import Metrics
from sidecar.status import Phase, StatusBoard
from tests.support.clock import VirtualClock

NOW = 1_800_000_000.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(metrics: Metrics) -> Samples:
    """Parse the exposition as Prometheus would; fails on anything malformed."""
    body, content_type = metrics.render()
    assert content_type == CONTENT_TYPE_LATEST
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample ``token_sidecar_<name>{labels}``, or None when the series is absent."""
    return samples.get(("token_sidecar_" + name, tuple(sorted(labels.items()))))


def make() -> tuple[StatusBoard, VirtualClock, Metrics]:
    board = StatusBoard()
    board.add("app")
    board.add("batch", required=False)
    wall = VirtualClock(start=NOW)
    return board, wall, Metrics(board, wall, ready_margin=5.0)


def test_series_exist_before_anything_happens() -> None:
    _, _, metrics = make()
    samples = scrape(metrics)
    for credential in ("app", "batch"):
        assert value(samples, "refresh_total", credential=credential, outcome="success") == 0.0
        assert value(samples, "refresh_duration_seconds_count", credential=credential) == 0.0
        assert value(samples, "writeback_pending", credential=credential) == 0.0
        assert value(samples, "consecutive_failures", credential=credential) == 0.0
        assert value(samples, "ready", credential=credential) == 0.0
        assert value(samples, "state", credential=credential, state="starting") == 1.0
        # Unknown values are absent, not zero.
        assert (
            value(samples, "access_token_expiry_timestamp_seconds", credential=credential) is None
        )
    assert value(samples, "build_info", version=__version__) == 1.0


def test_credentials_added_later_get_their_series() -> None:
    board = StatusBoard()
    metrics = Metrics(board, VirtualClock(start=NOW), ready_margin=5.0)
    board.add("late")
    samples = scrape(metrics)
    assert value(samples, "refresh_total", credential="late", outcome="success") == 0


def test_refresh_events() -> None:
    _, _, metrics = make()
    metrics.refresh_finished("app", "success", 0.004)
    metrics.refresh_finished("app", "invalid_grant", 0.02)
    metrics.refresh_finished("app", "success", 0.003)
    samples = scrape(metrics)
    assert value(samples, "refresh_total", credential="app", outcome="success") == 2
    assert value(samples, "refresh_total", credential="app", outcome="invalid_grant") == 1
    assert value(samples, "refresh_duration_seconds_count", credential="app") == 3
    bucket = "refresh_duration_seconds_bucket"
    assert value(samples, bucket, credential="app", le="0.001") == 0
    assert value(samples, bucket, credential="app", le="0.005") == 2
    assert value(samples, bucket, credential="app", le="30.0") == 3


def test_vault_requests() -> None:
    _, _, metrics = make()
    metrics.vault_request("read", "success")
    metrics.vault_request("read", "success")
    metrics.vault_request("write", "cas_conflict")
    samples = scrape(metrics)
    total = "vault_requests_total"
    assert value(samples, total, operation="read", outcome="success") == 2
    assert value(samples, total, operation="write", outcome="cas_conflict") == 1


def test_gauges_follow_the_status_at_scrape_time() -> None:
    board, wall, metrics = make()
    app = board.credentials["app"]
    app.phase = Phase.VALID
    app.expires_at = NOW + 300
    app.last_success_at = NOW - 1
    app.refresh_token_expires_at = NOW + 86_400

    samples = scrape(metrics)
    assert value(samples, "access_token_expiry_timestamp_seconds", credential="app") == (NOW + 300)
    assert value(samples, "access_token_expires_in_seconds", credential="app") == 300
    assert value(samples, "last_refresh_success_timestamp_seconds", credential="app") == (NOW - 1)
    assert value(samples, "refresh_token_expiry_timestamp_seconds", credential="app") == (
        NOW + 86_400
    )
    assert value(samples, "ready", credential="app") == 1
    assert value(samples, "state", credential="app", state="valid") == 1
    assert value(samples, "state", credential="app", state="starting") == 0

    wall.advance(297)  # inside the ready margin
    app.phase = Phase.RETRYING
    app.consecutive_failures = 3
    app.writeback_pending = True
    samples = scrape(metrics)
    assert value(samples, "access_token_expires_in_seconds", credential="app") == 3
    assert value(samples, "ready", credential="app") == 0
    assert value(samples, "consecutive_failures", credential="app") == 3
    assert value(samples, "writeback_pending", credential="app") == 1
    assert value(samples, "state", credential="app", state="retrying") == 1


def test_own_registry() -> None:
    _, _, first = make()
    _, _, second = make()  # a second instance would clash in a shared registry
    assert first.registry is not prometheus_client.REGISTRY
    assert first.registry is not second.registry
    assert b"token_sidecar_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


def test_every_family_is_declared_and_prefixed() -> None:
    _, _, metrics = make()
    body, _ = metrics.render()
    families = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    expected = {
        "token_sidecar_refresh": "counter",
        "token_sidecar_refresh_duration_seconds": "histogram",
        "token_sidecar_vault_requests": "counter",
        "token_sidecar_access_token_expiry_timestamp_seconds": "gauge",
        "token_sidecar_access_token_expires_in_seconds": "gauge",
        "token_sidecar_last_refresh_success_timestamp_seconds": "gauge",
        "token_sidecar_refresh_token_expiry_timestamp_seconds": "gauge",
        "token_sidecar_writeback_pending": "gauge",
        "token_sidecar_consecutive_failures": "gauge",
        "token_sidecar_ready": "gauge",
        "token_sidecar_state": "gauge",
        "token_sidecar_build_info": "gauge",
        "token_sidecar_access_token_issued_timestamp_seconds": "gauge",
        "token_sidecar_last_refresh_attempt_timestamp_seconds": "gauge",
        "token_sidecar_refresh_token_expires_in_seconds": "gauge",
        "token_sidecar_refresh_token_obtained_timestamp_seconds": "gauge",
        "token_sidecar_refresh_token_age_seconds": "gauge",
        "token_sidecar_secret_version": "gauge",
        "token_sidecar_vault_last_success_timestamp_seconds": "gauge",
        "token_sidecar_vault_token_expiry_timestamp_seconds": "gauge",
        "token_sidecar_events": "counter",
    }
    assert expected.items() <= families.items()
    assert all(name.startswith("token_sidecar_") for name in families)


def test_token_ages_and_lifetimes_at_scrape_time() -> None:
    board, wall, metrics = make()
    app = board.credentials["app"]
    unknown = scrape(metrics)
    for name in (
        "access_token_issued_timestamp_seconds",
        "last_refresh_attempt_timestamp_seconds",
        "refresh_token_expires_in_seconds",
        "refresh_token_obtained_timestamp_seconds",
        "refresh_token_age_seconds",
        "secret_version",
    ):
        assert value(unknown, name, credential="app") is None, name

    app.issued_at = NOW - 100
    app.expires_at = NOW + 200
    app.last_attempt_at = NOW - 100
    app.refresh_token_obtained_at = NOW - 100
    app.refresh_token_expires_at = NOW + 3600
    app.secret_version = 7
    wall.advance(50)
    samples = scrape(metrics)
    assert value(samples, "access_token_issued_timestamp_seconds", credential="app") == NOW - 100
    assert value(samples, "last_refresh_attempt_timestamp_seconds", credential="app") == NOW - 100
    assert value(samples, "refresh_token_obtained_timestamp_seconds", credential="app") == (
        NOW - 100
    )
    assert value(samples, "refresh_token_age_seconds", credential="app") == 150
    assert value(samples, "refresh_token_expires_in_seconds", credential="app") == 3550
    assert value(samples, "secret_version", credential="app") == 7
    # The other credential knows nothing yet: its series stay absent.
    assert value(samples, "refresh_token_age_seconds", credential="batch") is None


def test_vault_login_state() -> None:
    _, wall, metrics = make()
    samples = scrape(metrics)
    assert value(samples, "vault_token_expiry_timestamp_seconds") is None
    assert value(samples, "vault_last_success_timestamp_seconds", operation="login") is None

    metrics.vault_request("login", "success")
    wall.advance(10)
    metrics.vault_request("login", "vault_auth_failed")
    metrics.vault_request("read", "success")
    metrics.vault_request("something_new", "success")
    metrics.vault_token_lease(NOW + 3600)
    samples = scrape(metrics)
    last = "vault_last_success_timestamp_seconds"
    assert value(samples, last, operation="login") == NOW
    assert value(samples, last, operation="read") == NOW + 10
    assert value(samples, last, operation="something_new") is None
    assert value(samples, "vault_requests_total", operation="something_new", outcome="success")
    assert value(samples, "vault_token_expiry_timestamp_seconds") == NOW + 3600

    metrics.vault_token_lease(float("inf"))  # a token without a TTL
    assert value(scrape(metrics), "vault_token_expiry_timestamp_seconds") is None
    metrics.vault_token_lease(None)
    assert value(scrape(metrics), "vault_token_expiry_timestamp_seconds") is None


def test_kubernetes_event_outcomes() -> None:
    _, _, metrics = make()
    metrics.event_result("RefreshTokenRejected", "sent")
    metrics.event_result("RefreshTokenRejected", "suppressed")
    metrics.event_result("RefreshFailed", "failed")
    samples = scrape(metrics)
    total = "events_total"
    assert value(samples, total, reason="RefreshTokenRejected", outcome="sent") == 1
    assert value(samples, total, reason="RefreshTokenRejected", outcome="suppressed") == 1
    assert value(samples, total, reason="RefreshFailed", outcome="failed") == 1


def test_label_names_are_a_closed_set() -> None:
    """Labels carry credential names, phases, operations, outcomes, versions and configured
    grants and client authentication methods, nothing else."""
    board, _, metrics = make()
    app = board.credentials["app"]
    app.phase = Phase.REJECTED
    app.expires_at = NOW + 10
    metrics.refresh_finished("app", "invalid_grant", 0.01)
    metrics.vault_request("read", "success")
    metrics.event_result("RefreshTokenRejected", "sent")
    body, _ = metrics.render()
    allowed = {"credential", "outcome", "state", "le", "operation", "version", "reason"}
    allowed |= {"grant", "client_auth"}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            assert set(sample.labels) <= allowed, sample


def test_credential_info_shows_each_grant_and_client_auth() -> None:
    board, _wall, metrics = make()
    board.add("svc", grant="client_credentials", client_auth="tls_client_auth")
    samples = scrape(metrics)
    info = "credential_info"
    assert (
        value(
            samples,
            info,
            credential="app",
            grant="refresh_token",
            client_auth="client_secret_basic",
        )
        == 1
    )
    assert (
        value(
            samples,
            info,
            credential="svc",
            grant="client_credentials",
            client_auth="tls_client_auth",
        )
        == 1
    )
    assert sum(1 for name, _ in samples if name == "token_sidecar_credential_info") == 3
